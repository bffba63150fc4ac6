//! Coalescing across real processes sharing one store: a SQLite file, or a Redis server (each
//! process with its own in-memory state).

use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use courteous::dedupe::{DedupeLayer, DedupeStore, KeyState};
use courteous::{HttpClient, Report};
use futures_util::future::join_all;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};

use crate::backend::{Backend, from_env, shared_backends};
use crate::support::server::Log;
use crate::support::{TestServer, child};

shared_backends!(
    four_processes_of_fifty_identical_requests_make_one_upstream_call,
    a_leader_process_killed_mid_request_is_taken_over,
);

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn get(url: &str) -> http::Request<reqwest::Body> {
    http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

/// A server whose answers on any path take `delay(n)` for hit `n`, and that notes when it
/// answered.
async fn server(delay: fn(u64) -> Duration) -> (TestServer, Arc<Mutex<Vec<SystemTime>>>) {
    let answered = Arc::new(Mutex::new(Vec::new()));
    let times = answered.clone();
    let server = TestServer::with_router(move |log| {
        Router::new()
            .fallback(move |State(log): State<Arc<Log>>, request: Request| {
                let times = times.clone();
                async move {
                    let n = log.record(&request);
                    tokio::time::sleep(delay(n)).await;
                    times.lock().unwrap().push(SystemTime::now());
                    format!("answer {n}")
                }
            })
            .with_state(log)
    })
    .await;
    (server, answered)
}

/// Child entry: `N` concurrent identical requests through a dedupe layer over the shared store,
/// started at `START_AT` (Unix ms). Prints one line per request and the layer's stats; any
/// failed request fails the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by the cross-process tests"]
async fn child_requests() {
    if !child::is_child("cross::child_requests") {
        return;
    }
    let url: String = child::param("URL");
    let n: usize = child::param("N");
    let start_at: u64 = child::param("START_AT");
    let lease_ms: u64 = child::param("LEASE_MS");
    let store = from_env().await;
    let layer = DedupeLayer::new(store).lease_timeout(Duration::from_millis(lease_ms));
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let now = unix_us(SystemTime::now()) / 1000;
    tokio::time::sleep(Duration::from_millis(start_at.saturating_sub(now))).await;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, request) = (client.clone(), get(&url));
            tokio::spawn(async move {
                let response = client.oneshot(request).await?;
                let role = Report::of(&response).unwrap().dedupe.unwrap();
                let body = response.into_body().collect().await?.to_bytes();
                let done = unix_us(SystemTime::now());
                Ok::<_, courteous::BoxError>((
                    role,
                    String::from_utf8_lossy(&body).into_owned(),
                    done,
                ))
            })
        })
        .collect();
    if let Ok(ready) = std::env::var("READY_FILE") {
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(ready, b"waiting").unwrap();
    }
    let mut failed = 0;
    for result in join_all(tasks).await {
        match result.unwrap() {
            Ok((role, body, done)) => println!("ok role={role:?} done_us={done} body={body}"),
            Err(error) => {
                failed += 1;
                println!("error {error}");
            }
        }
    }
    let stats = layer.stats().await;
    println!(
        "stats leaders={} takeovers={} store_errors={}",
        stats.leaders, stats.takeovers, stats.store_errors
    );
    assert_eq!(failed, 0, "requests failed");
    assert_eq!(stats.store_errors, 0);
}

struct Outcome {
    role: String,
    done_us: u64,
    body: String,
}

fn outcomes(stdout: &str) -> Vec<Outcome> {
    stdout
        .lines()
        // The harness prints "test .. ... " before the first line.
        .filter_map(|line| line.split_once("ok role=").map(|(_, rest)| rest))
        .map(|rest| {
            let (role, rest) = rest.split_once(" done_us=").unwrap();
            let (done, body) = rest.split_once(" body=").unwrap();
            Outcome {
                role: role.to_owned(),
                done_us: done.parse().unwrap(),
                body: body.to_owned(),
            }
        })
        .collect()
}

fn stat(stdout: &str, name: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("stats "))
        .expect("stats line");
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap()
        .parse()
        .unwrap()
}

fn spawn_child(
    backend: &Backend,
    url: &str,
    n: usize,
    start_at: u64,
    lease_ms: u64,
    ready: Option<&std::path::Path>,
) -> Child {
    let mut env = backend.child_env();
    env.extend([
        ("URL", url.to_owned()),
        ("N", n.to_string()),
        ("START_AT", start_at.to_string()),
        ("LEASE_MS", lease_ms.to_string()),
    ]);
    if let Some(ready) = ready {
        env.push(("READY_FILE", ready.display().to_string()));
    }
    child::spawn("cross::child_requests", &env)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Four processes × 50 identical concurrent requests on one store: one upstream call in total,
/// every request gets the body, and no store error ("database is locked") reaches anyone.
/// Regression test for DESIGN.md §6 defects 3 (check-then-insert leadership) and 7 (waiters in
/// other processes never woken).
async fn four_processes_of_fifty_identical_requests_make_one_upstream_call(backend: Backend) {
    let (server, answered) = server(|_| Duration::from_millis(1500)).await;
    let url = server.url("/api/volumes/42");
    let start_at = unix_us(SystemTime::now()) / 1000 + 2000;
    let children: Vec<_> = (0..4)
        .map(|_| spawn_child(&backend, &url, 50, start_at, 30_000, None))
        .collect();
    let outputs: Vec<String> = children.into_iter().map(child::wait_ok).collect();
    assert_eq!(server.hits(), 1, "exactly one upstream call in total");
    let answered_us = unix_us(answered.lock().unwrap()[0]);

    let mut leaders = 0;
    let mut wakes = Vec::new();
    for stdout in &outputs {
        let results = outcomes(stdout);
        assert_eq!(results.len(), 50, "{stdout}");
        assert!(results.iter().all(|o| o.body == "answer 1"), "{stdout}");
        assert_eq!(stat(stdout, "store_errors"), 0);
        let led = results.iter().filter(|o| o.role == "Leader").count();
        leaders += led;
        if led == 1 {
            let done = results.iter().map(|o| o.done_us).min().unwrap();
            println!(
                "the leader's process returned {} µs after the upstream's answer",
                done.saturating_sub(answered_us)
            );
        }
        if led == 0 {
            assert!(
                results.iter().any(|o| o.role == "CrossProcessFollower"),
                "{stdout}"
            );
            wakes.extend(
                results
                    .iter()
                    .map(|o| o.done_us.saturating_sub(answered_us)),
            );
        }
    }
    assert_eq!(leaders, 1);
    wakes.sort_unstable();
    println!(
        "{:?}: cross-process wake latency from the upstream's answer, {} followers in 3 processes: median {} µs, p99 {} µs",
        backend.kind,
        wakes.len(),
        percentile(&wakes, 0.5),
        percentile(&wakes, 0.99)
    );
}

/// A leader process killed with SIGKILL mid-request: a follower in another process takes over
/// when the lease runs out, and every follower completes within lease_timeout + 1 s.
async fn a_leader_process_killed_mid_request_is_taken_over(backend: Backend) {
    let (server, _) = server(|n| Duration::from_secs(if n == 1 { 600 } else { 0 })).await;
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/api/issues/7");
    let lease_ms = 2000;
    let mut leader = spawn_child(&backend, &url, 1, 0, lease_ms, None);
    let waited = Instant::now();
    while server.hits() == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the leader never called upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready: Vec<_> = (0..2)
        .map(|i| dir.path().join(format!("ready-{i}")))
        .collect();
    let followers: Vec<_> = ready
        .iter()
        .map(|r| spawn_child(&backend, &url, 20, 0, lease_ms, Some(r)))
        .collect();
    while !ready.iter().all(|r| r.exists()) {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "followers never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Still led by the leader process, whose lease is being renewed.
    let key = {
        let mut r = get(&url);
        courteous::dedupe::store_key(&mut r).unwrap()
    };
    let store = backend.handle().await;
    match store.poll(&key).await.unwrap() {
        KeyState::Pending { owner, .. } => {
            assert!(owner.starts_with(&format!("{}-", leader.id())), "{owner}");
        }
        other => panic!("expected a pending leader, found {other:?}"),
    }
    leader.kill().unwrap(); // SIGKILL
    let killed_us = unix_us(SystemTime::now());
    leader.wait().unwrap();

    let outputs: Vec<String> = followers.into_iter().map(child::wait_ok).collect();
    assert_eq!(server.hits(), 2, "the dead leader's call and one takeover");
    let mut latest = 0;
    let mut leaders = 0;
    for stdout in &outputs {
        let results = outcomes(stdout);
        assert_eq!(results.len(), 20, "{stdout}");
        assert!(results.iter().all(|o| o.body == "answer 2"), "{stdout}");
        leaders += results.iter().filter(|o| o.role == "Leader").count();
        latest = latest.max(results.iter().map(|o| o.done_us).max().unwrap());
    }
    assert_eq!(leaders, 1);
    assert_eq!(outputs.iter().map(|o| stat(o, "takeovers")).sum::<u64>(), 1);
    let after_kill = Duration::from_micros(latest - killed_us);
    println!(
        "{:?}: all followers done {after_kill:?} after the SIGKILL (lease {lease_ms} ms)",
        backend.kind
    );
    assert!(
        after_kill <= Duration::from_millis(lease_ms + 1000),
        "took {after_kill:?}"
    );
}

/// Expired rows are swept by a write-behind cleanup, at most once per interval (SQLite only:
/// Redis expires keys by TTL).
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn expired_rows_are_cleaned_up_on_an_interval() {
    use courteous::RequestKey;
    use courteous::store::sqlite::SqliteStore;

    let sqlite = SqliteStore::open(":memory:").await.unwrap();
    let store = sqlite.dedupe().cleanup_interval(Duration::from_millis(200));
    let short = Duration::from_millis(20);
    for i in 0..5u8 {
        let key = RequestKey::from_parts([i; 32], format!("GET http://h/{i}"));
        store.try_lead(&key, "me", short).await.unwrap();
        if i % 2 == 0 {
            store
                .publish(&key, "me", courteous::dedupe::Completion::TooLarge, short)
                .await
                .unwrap();
        }
    }
    let rows = |sqlite: &SqliteStore| {
        let sqlite = sqlite.clone();
        async move {
            sqlite
                .call(|c| {
                    Ok(
                        c.query_row("SELECT count(*) FROM courteous_dedupe", [], |r| {
                            r.get::<_, i64>(0)
                        })?,
                    )
                })
                .await
                .unwrap()
        }
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        rows(&sqlite).await,
        5,
        "nothing is swept before someone uses the store"
    );
    let live = RequestKey::from_parts([9; 32], "GET http://h/live");
    store
        .try_lead(&live, "me", Duration::from_secs(30))
        .await
        .unwrap();
    sqlite.flush().await.unwrap();
    assert_eq!(rows(&sqlite).await, 1);
    assert_eq!(store.stats().await.unwrap().cleaned, 5);
    // Within the interval, no new sweep is queued.
    let before = sqlite.stats().committed;
    store.poll(&live).await.unwrap();
    store
        .try_lead(&live, "you", Duration::from_secs(30))
        .await
        .unwrap();
    sqlite.flush().await.unwrap();
    assert_eq!(sqlite.stats().committed, before);
    // And cleanup() sweeps on demand.
    assert_eq!(store.cleanup().await.unwrap(), 0);
}
