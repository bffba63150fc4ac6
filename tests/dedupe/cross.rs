//! Coalescing across real processes on one SQLite file.

use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use courteous::dedupe::{DedupeLayer, DedupeRole, DedupeStore, KeyStatus, Lead};
use courteous::store::sqlite::SqliteStore;
use courteous::{HttpClient, Report, RequestContext, RequestKey};
use futures_util::future::join_all;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};

use crate::support::server::Log;
use crate::support::{TestServer, child, temp_db};

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

/// Child entry: `N` concurrent identical requests through a dedupe layer over the shared file,
/// started at `START_AT` (Unix ms). Prints one line per request and the layer's stats; any
/// failed request fails the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by the cross-process tests"]
async fn child_requests() {
    if !child::is_child("cross::child_requests") {
        return;
    }
    let path: String = child::param("DB_PATH");
    let url: String = child::param("URL");
    let n: usize = child::param("N");
    let start_at: u64 = child::param("START_AT");
    let lease_ms: u64 = child::param("LEASE_MS");
    let store = SqliteStore::open(&path).await.expect("open");
    let layer = DedupeLayer::new(store.dedupe()).lease_timeout(Duration::from_millis(lease_ms));
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
    let stats = layer.stats();
    println!(
        "stats leaders={} takeovers={} store_errors={}",
        stats.leaders, stats.takeovers, stats.store_errors
    );
    store.close().await.expect("close");
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
    path: &std::path::Path,
    url: &str,
    n: usize,
    start_at: u64,
    lease_ms: u64,
    ready: Option<&std::path::Path>,
) -> Child {
    let mut env = vec![
        ("DB_PATH", path.display().to_string()),
        ("URL", url.to_owned()),
        ("N", n.to_string()),
        ("START_AT", start_at.to_string()),
        ("LEASE_MS", lease_ms.to_string()),
    ];
    if let Some(ready) = ready {
        env.push(("READY_FILE", ready.display().to_string()));
    }
    child::spawn("cross::child_requests", &env)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Four processes × 50 identical concurrent requests on one file: one upstream call in total,
/// every request gets the body, and no store error ("database is locked") reaches anyone.
/// Regression test for DESIGN.md §6 defects 3 (check-then-insert leadership) and 7 (waiters in
/// other processes never woken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_of_fifty_identical_requests_make_one_upstream_call() {
    let (server, answered) = server(|_| Duration::from_millis(1500)).await;
    let (_dir, path) = temp_db();
    SqliteStore::open(&path)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let url = server.url("/api/volumes/42");
    let start_at = unix_us(SystemTime::now()) / 1000 + 2000;
    let children: Vec<_> = (0..4)
        .map(|_| spawn_child(&path, &url, 50, start_at, 30_000, None))
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
        "cross-process wake latency from the upstream's answer, {} followers in 3 processes: median {} µs, p99 {} µs",
        wakes.len(),
        percentile(&wakes, 0.5),
        percentile(&wakes, 0.99)
    );
}

/// A leader process killed with SIGKILL mid-request: a follower in another process takes over
/// when the lease runs out, and every follower completes within lease_timeout + 1 s.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_process_killed_mid_request_is_taken_over() {
    let (server, _) = server(|n| Duration::from_secs(if n == 1 { 600 } else { 0 })).await;
    let (dir, path) = temp_db();
    SqliteStore::open(&path)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let url = server.url("/api/issues/7");
    let lease_ms = 2000;
    let mut leader = spawn_child(&path, &url, 1, 0, lease_ms, None);
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
        .map(|r| spawn_child(&path, &url, 20, 0, lease_ms, Some(r)))
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
        RequestContext::resolve(&mut r).key().unwrap().clone()
    };
    let store = SqliteStore::open(&path).await.unwrap();
    match store.dedupe().status(&key).await.unwrap() {
        KeyStatus::Pending {
            owner,
            lease_expired,
            ..
        } => {
            assert!(owner.starts_with(&format!("{}-", leader.id())), "{owner}");
            assert!(!lease_expired);
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
    println!("all followers done {after_kill:?} after the SIGKILL (lease {lease_ms} ms)");
    assert!(
        after_kill <= Duration::from_millis(lease_ms + 1000),
        "took {after_kill:?}"
    );
    store.close().await.unwrap();
}

/// Two layers over two handles on one file behave like two processes: a published result is
/// served to a late follower within result_ttl, and never after. Regression test for DESIGN.md §6
/// defect 8 (completed jobs kept forever and served as a second, stale cache).
#[tokio::test]
async fn a_published_result_is_not_served_after_result_ttl() {
    let (server, _) = server(|_| Duration::ZERO).await;
    let (_dir, path) = temp_db();
    let (one, two) = (
        SqliteStore::open(&path).await.unwrap(),
        SqliteStore::open(&path).await.unwrap(),
    );
    let ttl = Duration::from_millis(1500);
    let client = |store: &SqliteStore| {
        ServiceBuilder::new()
            .layer(DedupeLayer::new(store.dedupe()).result_ttl(ttl))
            .service(HttpClient::new(reqwest::Client::new()))
    };
    let (a, b) = (client(&one), client(&two));
    let url = server.url("/x");
    let key = {
        let mut r = get(&url);
        RequestContext::resolve(&mut r).key().unwrap().clone()
    };
    let role = |r: &http::Response<reqwest::Body>| Report::of(r).unwrap().dedupe.unwrap();

    assert_eq!(
        role(&a.clone().oneshot(get(&url)).await.unwrap()),
        DedupeRole::Leader
    );
    match two.dedupe().status(&key).await.unwrap() {
        KeyStatus::Completed {
            status, expires_in, ..
        } => {
            assert_eq!(status, Some(200));
            assert!(expires_in <= ttl);
        }
        other => panic!("expected a kept result, found {other:?}"),
    }
    let late = b.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&late), DedupeRole::CrossProcessFollower);
    assert_eq!(
        late.into_body().collect().await.unwrap().to_bytes(),
        "answer 1"
    );
    assert_eq!(server.hits(), 1);

    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(two.dedupe().status(&key).await.unwrap(), KeyStatus::Empty);
    let after = b.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&after), DedupeRole::Leader);
    assert_eq!(
        after.into_body().collect().await.unwrap().to_bytes(),
        "answer 2"
    );
    assert_eq!(server.hits(), 2);
}

/// 2 handles × 50 tasks race to lead one key: exactly one wins. Regression test for DESIGN.md §6
/// defect 3 (check-then-insert registration let two processes lead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_the_lead_is_atomic() {
    let (_dir, path) = temp_db();
    let (one, two) = (
        SqliteStore::open(&path).await.unwrap(),
        SqliteStore::open(&path).await.unwrap(),
    );
    let key = RequestKey::from_parts([3; 32], "GET http://h/race");
    let lease = Duration::from_secs(30);
    let attempts = (0..100).map(|i| {
        let store = if i % 2 == 0 {
            one.dedupe()
        } else {
            two.dedupe()
        };
        let key = key.clone();
        tokio::spawn(async move {
            store
                .try_lead(&key, &format!("owner-{i}"), lease)
                .await
                .unwrap()
        })
    });
    let won = join_all(attempts)
        .await
        .into_iter()
        .filter(|lead| matches!(lead.as_ref().unwrap(), Lead::Acquired { .. }))
        .count();
    assert_eq!(won, 1);
}

/// An expired lease is taken over by the next caller, and reported as a takeover; the old owner
/// can no longer renew or publish.
#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    let store = SqliteStore::open(":memory:").await.unwrap().dedupe();
    let key = RequestKey::from_parts([4; 32], "GET http://h/lease");
    let short = Duration::from_millis(50);
    assert!(matches!(
        store.try_lead(&key, "old", short).await.unwrap(),
        Lead::Acquired { takeover: false }
    ));
    assert!(matches!(
        store.try_lead(&key, "new", short).await.unwrap(),
        Lead::Pending { .. }
    ));
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(matches!(
        store.poll(&key).await.unwrap(),
        courteous::dedupe::KeyState::Expired
    ));
    assert!(matches!(
        store
            .try_lead(&key, "new", Duration::from_secs(30))
            .await
            .unwrap(),
        Lead::Acquired { takeover: true }
    ));
    assert!(!store.renew(&key, "old", short).await.unwrap());
    store
        .publish(
            &key,
            "old",
            courteous::dedupe::Completion::TooLarge,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        matches!(store.status(&key).await.unwrap(), KeyStatus::Pending { owner, .. } if owner == "new")
    );
}

/// Expired rows are swept by a write-behind cleanup, at most once per interval.
#[tokio::test]
async fn expired_rows_are_cleaned_up_on_an_interval() {
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
    assert_eq!(store.stats().cleaned, 5);
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

/// Over two handles on one file: a leader's error reaches the follower on the other handle as
/// its message, and a body over the limit sends that follower upstream on its own.
#[tokio::test]
async fn a_leaders_error_and_an_oversized_body_reach_followers_through_the_store() {
    use courteous::BoxError;
    use courteous::dedupe::{BypassReason, DedupeError};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (_dir, path) = temp_db();
    let (one, two) = (
        SqliteStore::open(&path).await.unwrap(),
        SqliteStore::open(&path).await.unwrap(),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |req: http::Request<reqwest::Body>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if req.uri().path() == "/fails" {
                    return Err::<http::Response<reqwest::Body>, BoxError>(
                        "upstream said no".into(),
                    );
                }
                Ok(http::Response::new(reqwest::Body::from(vec![b'x'; 5000])))
            }
        })
    };
    let client = |store: &SqliteStore| {
        ServiceBuilder::new()
            .layer(DedupeLayer::new(store.dedupe()).max_body(1000))
            .service(upstream.clone())
    };
    let (a, b) = (client(&one), client(&two));

    let leader = tokio::spawn(a.clone().oneshot(get("http://h/fails")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let error = b.clone().oneshot(get("http://h/fails")).await.unwrap_err();
    let error = error.downcast_ref::<DedupeError>().unwrap();
    assert!(
        matches!(error, DedupeError::RemoteUpstream { message } if message.contains("upstream said no")),
        "{error}"
    );
    assert_eq!(
        leader
            .await
            .unwrap()
            .unwrap_err()
            .downcast_ref::<DedupeError>()
            .unwrap()
            .code(),
        "dedupe_upstream"
    );
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

    let leader = tokio::spawn(a.clone().oneshot(get("http://h/large")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let own = b.clone().oneshot(get("http://h/large")).await.unwrap();
    assert_eq!(
        Report::of(&own).unwrap().dedupe,
        Some(DedupeRole::Bypassed(BypassReason::TooLarge))
    );
    assert_eq!(
        own.into_body().collect().await.unwrap().to_bytes().len(),
        5000
    );
    let led = leader.await.unwrap().unwrap();
    assert_eq!(
        led.into_body().collect().await.unwrap().to_bytes().len(),
        5000
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A leader cancelled in one process gives its lease back at once: the follower on the other
/// handle takes over long before the 30 s lease would have run out.
#[tokio::test]
async fn a_cancelled_leader_releases_its_lease_for_other_processes() {
    use courteous::BoxError;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (_dir, path) = temp_db();
    let (one, two) = (
        SqliteStore::open(&path).await.unwrap(),
        SqliteStore::open(&path).await.unwrap(),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |_req: http::Request<reqwest::Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(http::Response::new(reqwest::Body::from(format!(
                    "answer {n}"
                ))))
            }
        })
    };
    let client = |store: &SqliteStore| {
        ServiceBuilder::new()
            .layer(DedupeLayer::new(store.dedupe()))
            .service(upstream.clone())
    };
    let (a, b) = (client(&one), client(&two));
    let leader = tokio::spawn(a.oneshot(get("http://h/x")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let follower = tokio::spawn(b.oneshot(get("http://h/x")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    leader.abort();
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower took over before the lease ran out")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        Report::of(&response).unwrap().dedupe,
        Some(DedupeRole::Leader)
    );
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "answer 2"
    );
}
