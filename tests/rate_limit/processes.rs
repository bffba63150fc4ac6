//! Real processes sharing one store (a SQLite file, a Redis server) against a real local server:
//! one suite, run for every shared backend (`<behaviour>::sqlite`, `<behaviour>::redis`). Child
//! processes rebuild the store from the environment ([`backend::from_env`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courteous::rate_limit::{
    AdaptiveConfig, AdmissionRequest, Clock, Decision, InFlight, Limit, Limits, MaxWait,
    RateLimitLayer, RateLimitStatus, RateLimitStore, RateLimitStoreStats, RateLimited,
    ServerFeedback, SystemClock, Timestamp,
};
use courteous::store::StoreError;
use courteous::{HttpClient, Priority, Report, Resource};
use tower::{ServiceBuilder, ServiceExt};

use crate::backend::{self, Backend, Time, shared_backends};
use crate::support::{TestServer, child};

shared_backends!(
    four_processes_share_one_limit_exactly,
    retry_after_stops_every_process,
    other_processes_users_hold_back_background_work,
);

const PROCESSES: usize = 4;
const PER_PROCESS: usize = 100;
const MAX: u32 = 20;
const WINDOW: Duration = Duration::from_secs(2);

/// The default configuration (upstream-exact accounting, no margin), waiting long enough for
/// the whole run.
fn layer(store: impl RateLimitStore) -> RateLimitLayer {
    RateLimitLayer::new(store, Limits::new().default_limit(Limit::new(MAX, WINDOW)))
        .unwrap()
        .max_wait(Duration::from_secs(120))
}

/// A store that times every decision: from the call to the answer (request to decision, where
/// the stalls were), and from the decision's stamp to the answer (the stamp must be taken at
/// the decision, not before the request waited).
#[derive(Clone)]
struct Timed {
    inner: Arc<dyn RateLimitStore>,
    /// (request to answer, stamp to answer), per admitted request.
    times: Arc<Mutex<Vec<(Duration, Duration)>>>,
}

#[async_trait::async_trait]
impl RateLimitStore for Timed {
    async fn acquire(&self, request: AdmissionRequest) -> Result<Decision, StoreError> {
        let asked = Instant::now();
        let decision = self.inner.acquire(request).await?;
        if let Decision::Admitted { at, .. } = &decision {
            let stamp_to_answer = SystemClock.now().saturating_since(*at);
            self.times
                .lock()
                .unwrap()
                .push((asked.elapsed(), stamp_to_answer));
        }
        Ok(decision)
    }
    async fn settle(&self, admission: &InFlight, at: Timestamp) -> Result<(), StoreError> {
        self.inner.settle(admission, at).await
    }
    async fn unblock(&self, resource: &Resource) -> Result<(), StoreError> {
        self.inner.unblock(resource).await
    }
    async fn feedback(
        &self,
        resource: &Resource,
        feedback: ServerFeedback,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner.feedback(resource, feedback, now).await
    }
    async fn status(
        &self,
        resource: &Resource,
        limits: &[Limit],
        adaptive: &AdaptiveConfig,
        now: Timestamp,
    ) -> Result<RateLimitStatus, StoreError> {
        self.inner.status(resource, limits, adaptive, now).await
    }
    async fn stats(&self) -> Result<RateLimitStoreStats, StoreError> {
        self.inner.stats().await
    }
}

/// The `p`-quantile of `values` (sorted in place), in ms.
fn quantile_ms(values: &mut [Duration], p: f64) -> f64 {
    values.sort();
    let i = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1;
    values[i].as_secs_f64() * 1000.0
}

/// The server's answer takes 0–150 ms, varying from request to request, so that when a
/// request reaches the server and when its answer arrives differ: the re-stamp matters.
fn latency_ms(process: u32, i: usize) -> u64 {
    (u64::from(process) * 53 + i as u64 * 37) % 151
}

/// Child entry: sends `PER_PROCESS` concurrent requests through a layer on the parent's store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by four_processes_share_one_limit_exactly"]
async fn child_requests() {
    if !child::is_child("processes::child_requests") {
        return;
    }
    let url: String = child::param("SERVER_URL");
    let process: u32 = child::param("PROCESS");
    let handle = backend::from_env().await;
    let timed = Timed {
        inner: handle.store.clone(),
        times: Arc::default(),
    };
    let service = ServiceBuilder::new()
        .layer(layer(timed.clone()))
        .service(HttpClient::new(reqwest::Client::new()));
    let tasks: Vec<_> = (0..PER_PROCESS)
        .map(|i| {
            let delay = latency_ms(process, i);
            let request = http::Request::get(format!("{url}/api/items/{i}?delay_ms={delay}"))
                .body(reqwest::Body::from(""))
                .unwrap();
            tokio::spawn(service.clone().oneshot(request))
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let response = task.await.unwrap().expect("request completes");
        assert_eq!(response.status(), 200);
        ok += 1;
    }
    handle.close().await;
    let times = timed.times.lock().unwrap().clone();
    let (mut asked, mut stamped): (Vec<_>, Vec<_>) = times.into_iter().unzip();
    println!(
        "decisions request-to-decision p99 {:.1} ms max {:.1} ms; stamp-to-answer max {:.1} ms",
        quantile_ms(&mut asked, 0.99),
        quantile_ms(&mut asked, 1.0),
        quantile_ms(&mut stamped, 1.0),
    );
    println!("completed {ok}");
}

/// 4 processes × 100 requests, limit 20 per 2 s, the default configuration (no margin), the
/// server's latency varying from 0 to 150 ms: the server's own log never sees more than 20
/// calls in any 2 s, and the limit is used, not just respected.
async fn four_processes_share_one_limit_exactly(backend: Backend) {
    let server = TestServer::start().await;
    let started = Instant::now();
    let children: Vec<_> = (0..PROCESSES)
        .map(|process| {
            let mut env = backend.child_env();
            env.push(("SERVER_URL", server.url("")));
            env.push(("PROCESS", process.to_string()));
            child::spawn("processes::child_requests", &env)
        })
        .collect();
    let children = tokio::task::spawn_blocking(move || {
        children.into_iter().map(child::wait_ok).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for out in &children {
        assert!(out.contains(&format!("completed {PER_PROCESS}")), "{out}");
    }
    let mut seen: Vec<Instant> = server.seen().iter().map(|s| s.at).collect();
    seen.sort();
    assert_eq!(seen.len(), PROCESSES * PER_PROCESS);
    // The server's own log: no interval of 2 s holds more than 20 calls.
    let worst = (0..seen.len())
        .map(|i| {
            seen[i..]
                .iter()
                .take_while(|t| **t < seen[i] + WINDOW)
                .count()
        })
        .max()
        .unwrap();
    let elapsed = started.elapsed();
    for out in &children {
        // (The test harness may print its own words before it on the same line.)
        if let Some((_, line)) = out.lines().find_map(|l| l.split_once("decisions ")) {
            println!("{:?}: decisions {line}", backend.kind);
        }
    }
    println!(
        "{:?}: 400 calls in {elapsed:?} (ideal 38-40 s); busiest 2 s: {worst}",
        backend.kind
    );
    assert!(worst <= MAX as usize, "{worst} calls within 2 s");
    // And the limit was used, not just respected: 400 calls at 20 per 2 s take about 40 s.
    assert!(elapsed >= Duration::from_secs(38), "{elapsed:?}");
}

/// Child entry: one fail-fast request and one that waits, on a resource the parent's server
/// blocked with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by retry_after_stops_every_process"]
async fn child_after_block() {
    if !child::is_child("processes::child_after_block") {
        return;
    }
    let url: String = child::param("SERVER_URL");
    let handle = backend::from_env().await;
    let service = ServiceBuilder::new()
        .layer(
            RateLimitLayer::new(handle.store.clone(), Limits::new())
                .unwrap()
                .max_wait(Duration::from_secs(20)),
        )
        .service(HttpClient::new(reqwest::Client::new()));
    let request = |fail_fast: bool| {
        let mut request = http::Request::get(format!("{url}/api/busy/"))
            .body(reqwest::Body::from(""))
            .unwrap();
        request.extensions_mut().insert(Priority::Background);
        if fail_fast {
            request.extensions_mut().insert(MaxWait::FAIL_FAST);
        }
        request
    };
    let err = service.clone().oneshot(request(true)).await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("rate limited");
    println!(
        "fail-fast retry_after_ms {}",
        limited.retry_after().as_millis()
    );
    let response = service.clone().oneshot(request(false)).await.unwrap();
    let waited = Report::of(&response).unwrap().rate_limit.unwrap().waited;
    println!("waited_ms {}", waited.as_millis());
    handle.close().await;
}

/// A 429 with `Retry-After: 3` in one process holds back another process's requests until then.
async fn retry_after_stops_every_process(backend: Backend) {
    let server = TestServer::start().await;
    let handle = backend.handle(Time::Real).await;
    let layer = RateLimitLayer::new(handle.store.clone(), Limits::new()).unwrap();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    // The server answers 429 with Retry-After: 3.
    let request = http::Request::get(server.url("/api/busy/?status=429&retry_after=3"))
        .body(reqwest::Body::from(""))
        .unwrap();
    let blocked_at = Instant::now();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 429);
    let report = Report::of(&response).unwrap().rate_limit.unwrap();
    assert!(report.blocked_until.is_some());
    let status = layer
        .status(&courteous::Resource::new("busy").unwrap())
        .await
        .unwrap();
    assert!(status.blocked_until.is_some());
    assert!(
        status.reason.contains("server asked to wait"),
        "{}",
        status.reason
    );

    // Another process, sharing only the store, holds its requests back until then.
    let mut env = backend.child_env();
    env.push(("SERVER_URL", server.url("")));
    let out = tokio::task::spawn_blocking(move || {
        child::wait_ok(child::spawn("processes::child_after_block", &env))
    })
    .await
    .unwrap();
    let fail_fast: u64 = field(&out, "fail-fast retry_after_ms ");
    assert!(fail_fast > 0 && fail_fast <= 3000, "{out}");
    let waited: u64 = field(&out, "waited_ms ");
    assert!(waited > 0, "{out}");
    let seen = server.seen();
    assert_eq!(
        seen.len(),
        2,
        "the fail-fast request must not reach the server"
    );
    let second = seen[1].at.duration_since(blocked_at);
    assert!(
        second >= Duration::from_millis(2000),
        "sent {second:?} after the 429"
    );
    assert_eq!(layer.stats().await.resources["busy"].server_blocks, 1);
    handle.close().await;
}

fn field(out: &str, prefix: &str) -> u64 {
    out.lines()
        .find_map(|l| l.split_once(prefix).map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no {prefix:?} in {out}"))
        .trim()
        .parse()
        .unwrap()
}

fn adaptive_layer(store: impl RateLimitStore) -> RateLimitLayer {
    RateLimitLayer::new(store, Limits::new().default_limit(Limit::per_minute(100)))
        .unwrap()
        .fail_fast()
        .adaptive(
            AdaptiveConfig::default()
                .monitoring_window(Duration::from_secs(60))
                .recalculation_interval(Duration::from_millis(1)),
        )
}

/// Child entry: a background request on the resource whose users are in the parent, and one on
/// a quiet resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by other_processes_users_hold_back_background_work"]
async fn child_background() {
    if !child::is_child("processes::child_background") {
        return;
    }
    let url: String = child::param("SERVER_URL");
    let handle = backend::from_env().await;
    let service = ServiceBuilder::new()
        .layer(adaptive_layer(handle.store.clone()))
        .service(HttpClient::new(reqwest::Client::new()));
    for resource in ["busy", "quiet"] {
        let mut request = http::Request::get(format!("{url}/api/{resource}/"))
            .body(reqwest::Body::from(""))
            .unwrap();
        request.extensions_mut().insert(Priority::Background);
        match service.clone().oneshot(request).await {
            Ok(_) => println!("background {resource}: admitted"),
            Err(err) if err.is::<RateLimited>() => println!("background {resource}: refused"),
            Err(err) => panic!("{err}"),
        }
    }
    handle.close().await;
}

/// Twelve user requests in this process (high and rising activity) pause another process's
/// background work on that resource, and only on that one.
async fn other_processes_users_hold_back_background_work(backend: Backend) {
    let server = TestServer::start().await;
    let handle = backend.handle(Time::Real).await;
    let service = ServiceBuilder::new()
        .layer(adaptive_layer(handle.store.clone()))
        .service(HttpClient::new(reqwest::Client::new()));
    for _ in 0..12 {
        let mut request = http::Request::get(server.url("/api/busy/"))
            .body(reqwest::Body::from(""))
            .unwrap();
        request.extensions_mut().insert(Priority::User);
        service.clone().oneshot(request).await.unwrap();
    }
    handle.flush().await;
    let mut env = backend.child_env();
    env.push(("SERVER_URL", server.url("")));
    let out = tokio::task::spawn_blocking(move || {
        child::wait_ok(child::spawn("processes::child_background", &env))
    })
    .await
    .unwrap();
    assert!(out.contains("background busy: refused"), "{out}");
    assert!(out.contains("background quiet: admitted"), "{out}");
    handle.close().await;
}
