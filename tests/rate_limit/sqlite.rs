//! The SQLite store: the window invariant, and real processes sharing one file against a real
//! local server.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use courteous::rate_limit::{
    Limit, Limits, MaxWait, RateLimitLayer, RateLimited, SqliteRateLimitStore,
};
use courteous::store::sqlite::SqliteStore;
use courteous::{HttpClient, Priority, Report};
use proptest::prelude::*;
use tower::{ServiceBuilder, ServiceExt};

use crate::support::{TestServer, child, temp_db};
use crate::window::{check_invariants, run_schedule};

const PROCESSES: usize = 4;
const PER_PROCESS: usize = 100;
const MAX: u32 = 20;
const WINDOW: Duration = Duration::from_secs(2);

fn n(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn sqlite_store_never_exceeds_a_window_and_refuses_only_when_full(
        max in 1u32..8,
        window_ms in 1u64..2000,
        arrivals in prop::collection::vec((0u64..300, any::<bool>()), 1..120),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let limits = [Limit::new(n(max), Duration::from_millis(window_ms))];
        let decisions = runtime.block_on(async {
            let sqlite = SqliteStore::open(":memory:").await.unwrap();
            let store: SqliteRateLimitStore = sqlite.rate_limits();
            let decisions = run_schedule(&store, &limits, &arrivals).await;
            sqlite.close().await.unwrap();
            decisions
        });
        check_invariants(&limits, &decisions);
    }
}

fn layer(store: SqliteRateLimitStore) -> RateLimitLayer {
    RateLimitLayer::new(
        store,
        Limits::new().default_limit(Limit::new(n(MAX), WINDOW)),
    )
    .unwrap()
    .max_wait(Duration::from_secs(120))
    // Admission is stamped just before the request leaves; the margin absorbs the variation in
    // how long each request then takes to reach the server.
    .safety_margin(Duration::from_millis(100))
}

/// Child entry: sends `PER_PROCESS` concurrent requests through a SQLite-backed layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by four_processes_share_one_limit_exactly"]
async fn child_requests() {
    if !child::is_child("sqlite::child_requests") {
        return;
    }
    let url: String = child::param("SERVER_URL");
    let path: String = child::param("DB_PATH");
    let sqlite = SqliteStore::open(&path).await.expect("open");
    let service = ServiceBuilder::new()
        .layer(layer(sqlite.rate_limits()))
        .service(HttpClient::new(reqwest::Client::new()));
    let tasks: Vec<_> = (0..PER_PROCESS)
        .map(|i| {
            let request = http::Request::get(format!("{url}/api/items/{i}"))
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
    sqlite.close().await.unwrap();
    println!("completed {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_limit_exactly() {
    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let started = Instant::now();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            child::spawn(
                "sqlite::child_requests",
                &[
                    ("SERVER_URL", server.url("")),
                    ("DB_PATH", path.display().to_string()),
                ],
            )
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
    assert!(worst <= MAX as usize, "{worst} calls within 2 s");
    // And the limit was used, not just respected: 400 calls at 20 per 2 s take about 40 s.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(38), "{elapsed:?}");
    println!("400 calls in {elapsed:?}; busiest 2 s: {worst}");
}

/// Child entry: one fail-fast request and one that waits, on a resource the parent's server
/// blocked with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by retry_after_stops_every_process"]
async fn child_after_block() {
    if !child::is_child("sqlite::child_after_block") {
        return;
    }
    let url: String = child::param("SERVER_URL");
    let path: String = child::param("DB_PATH");
    let sqlite = SqliteStore::open(&path).await.expect("open");
    let service = ServiceBuilder::new()
        .layer(
            RateLimitLayer::new(sqlite.rate_limits(), Limits::new())
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
    sqlite.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_stops_every_process() {
    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let layer = RateLimitLayer::new(sqlite.rate_limits(), Limits::new()).unwrap();
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

    // Another process, sharing only the file, holds its requests back until then.
    let out = tokio::task::spawn_blocking({
        let (url, path) = (server.url(""), path.display().to_string());
        move || {
            child::wait_ok(child::spawn(
                "sqlite::child_after_block",
                &[("SERVER_URL", url), ("DB_PATH", path)],
            ))
        }
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
    assert_eq!(layer.stats().resources["busy"].server_blocks, 1);
    sqlite.close().await.unwrap();
}

fn field(out: &str, prefix: &str) -> u64 {
    out.lines()
        .find_map(|l| l.split_once(prefix).map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no {prefix:?} in {out}"))
        .trim()
        .parse()
        .unwrap()
}

fn adaptive_layer(store: SqliteRateLimitStore) -> RateLimitLayer {
    use courteous::rate_limit::AdaptiveConfig;
    RateLimitLayer::new(
        store,
        Limits::new().default_limit(Limit::per_minute(n(100))),
    )
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
    if !child::is_child("sqlite::child_background") {
        return;
    }
    let url: String = child::param("SERVER_URL");
    let path: String = child::param("DB_PATH");
    let sqlite = SqliteStore::open(&path).await.expect("open");
    let service = ServiceBuilder::new()
        .layer(adaptive_layer(sqlite.rate_limits()))
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
    sqlite.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_processes_users_hold_back_background_work() {
    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let service = ServiceBuilder::new()
        .layer(adaptive_layer(sqlite.rate_limits()))
        .service(HttpClient::new(reqwest::Client::new()));
    // Twelve user requests in this process: high and rising user activity on "busy".
    for _ in 0..12 {
        let mut request = http::Request::get(server.url("/api/busy/"))
            .body(reqwest::Body::from(""))
            .unwrap();
        request.extensions_mut().insert(Priority::User);
        service.clone().oneshot(request).await.unwrap();
    }
    sqlite.flush().await.unwrap();
    let out = tokio::task::spawn_blocking({
        let (url, path) = (server.url(""), path.display().to_string());
        move || {
            child::wait_ok(child::spawn(
                "sqlite::child_background",
                &[("SERVER_URL", url), ("DB_PATH", path)],
            ))
        }
    })
    .await
    .unwrap();
    assert!(out.contains("background busy: refused"), "{out}");
    assert!(out.contains("background quiet: admitted"), "{out}");
    sqlite.close().await.unwrap();
}
