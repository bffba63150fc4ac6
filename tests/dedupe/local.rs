//! Coalescing inside one process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courteous::dedupe::{
    BypassReason, Completion, DedupeError, DedupeLayer, DedupeRole, DedupeStore, DedupeStoreStats,
    KeyState, Lead, MemoryDedupeStore, OnTimeout,
};
use courteous::store::{StoreError, StoreErrorKind};
use courteous::{BoxError, HttpClient, Report, RequestContext, RequestKey};
use futures_util::future::join_all;
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

use crate::support::TestServer;

type Request = http::Request<reqwest::Body>;
type Response = http::Response<reqwest::Body>;

fn get(url: &str) -> Request {
    http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

async fn body_of(response: Response) -> String {
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

fn role(response: &Response) -> DedupeRole {
    Report::of(response).unwrap().dedupe.unwrap()
}

/// An upstream that counts its calls; call `n` (from 1) runs `behave(n)`.
fn counting<F, Fut>(
    calls: &Arc<AtomicUsize>,
    behave: F,
) -> impl Service<Request, Response = Response, Error = BoxError, Future: Send> + Clone + Send + 'static
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, BoxError>> + Send + 'static,
{
    let calls = calls.clone();
    service_fn(move |_req: Request| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        behave(n)
    })
}

fn ok(body: String) -> Result<Response, BoxError> {
    Ok(http::Response::new(reqwest::Body::from(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_identical_concurrent_requests_make_one_upstream_call() {
    let server = TestServer::start().await;
    let layer = DedupeLayer::new(MemoryDedupeStore::new());
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let url = server.url("/api/issues/?delay_ms=500");
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (client, request) = (client.clone(), get(&url));
            tokio::spawn(async move {
                let response = client.oneshot(request).await.unwrap();
                let role = role(&response);
                (role, body_of(response).await)
            })
        })
        .collect();
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(server.hits(), 1);
    let first = &results[0].1;
    assert!(first.contains(r#""n":1"#), "{first}");
    assert!(results.iter().all(|(_, body)| body == first));
    let leaders = results
        .iter()
        .filter(|(r, _)| *r == DedupeRole::Leader)
        .count();
    let followers = results
        .iter()
        .filter(|(r, _)| *r == DedupeRole::Follower)
        .count();
    assert_eq!((leaders, followers), (1, 999));
    let stats = layer.stats().await;
    assert_eq!((stats.leaders, stats.followers), (1, 999));
}

#[tokio::test]
async fn different_keys_are_not_merged() {
    let server = TestServer::start().await;
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(MemoryDedupeStore::new()))
        .service(HttpClient::new(reqwest::Client::new()));
    let mut requests = Vec::new();
    for _ in 0..10 {
        requests.push(get(&server.url("/a?delay_ms=300")));
        requests.push(get(&server.url("/b?delay_ms=300")));
        // Same URL, another user: the key includes Authorization.
        let mut as_alice = get(&server.url("/c?delay_ms=300"));
        as_alice
            .headers_mut()
            .insert("authorization", "Bearer alice".parse().unwrap());
        let mut as_bob = get(&server.url("/c?delay_ms=300"));
        as_bob
            .headers_mut()
            .insert("authorization", "Bearer bob".parse().unwrap());
        requests.extend([as_alice, as_bob]);
    }
    let responses = join_all(requests.into_iter().map(|r| client.clone().oneshot(r))).await;
    assert!(responses.iter().all(Result::is_ok));
    assert_eq!(
        (
            server.hits_on("/a"),
            server.hits_on("/b"),
            server.hits_on("/c")
        ),
        (1, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_leaders_error_reaches_every_follower() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = counting(&calls, |_| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err::<Response, BoxError>(Box::new(std::io::Error::other("connection reset by peer")))
    });
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(MemoryDedupeStore::new()))
        .service(upstream);
    let results = join_all((0..50).map(|_| client.clone().oneshot(get("http://h/x")))).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for result in results {
        let error = result.unwrap_err();
        let error = error.downcast_ref::<DedupeError>().expect("a DedupeError");
        assert_eq!(error.code(), "dedupe_upstream");
        let original = error
            .upstream()
            .unwrap()
            .downcast_ref::<std::io::Error>()
            .unwrap();
        assert_eq!(original.to_string(), "connection reset by peer");
    }
}

#[tokio::test]
async fn a_status_marked_as_failure_reaches_followers_as_an_error() {
    let server = TestServer::start().await;
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(MemoryDedupeStore::new()).fail_on(|s| s.is_server_error()))
        .service(HttpClient::new(reqwest::Client::new()));
    let url = server.url("/x?delay_ms=300&status=503");
    let results = join_all((0..20).map(|_| client.clone().oneshot(get(&url)))).await;
    assert_eq!(server.hits(), 1);
    let (ok, err): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(ok.len(), 1, "the leader gets its response");
    assert_eq!(ok[0].as_ref().unwrap().status(), 503);
    for e in err {
        let e = e.unwrap_err();
        let e = e.downcast_ref::<DedupeError>().unwrap();
        assert!(matches!(e, DedupeError::FailureStatus { status } if *status == 503));
    }
}

/// Upstream call 1 never answers (or panics); later calls answer with their number.
async fn handover(panic: bool) {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = counting(&calls, move |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if n == 1 {
            if panic {
                panic!("the leader's upstream call panicked");
            }
            std::future::pending::<()>().await;
        }
        ok(format!("answer {n}"))
    });
    let layer = DedupeLayer::new(MemoryDedupeStore::new());
    let client = ServiceBuilder::new().layer(layer.clone()).service(upstream);
    let leader = tokio::spawn(client.clone().oneshot(get("http://h/x")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let followers: Vec<_> = (0..20)
        .map(|_| tokio::spawn(client.clone().oneshot(get("http://h/x"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    if panic {
        assert!(leader.await.unwrap_err().is_panic());
    } else {
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
    }
    let mut roles = Vec::new();
    for follower in followers {
        let response = tokio::time::timeout(Duration::from_secs(60), follower)
            .await
            .expect("no follower hangs")
            .unwrap()
            .unwrap();
        roles.push(role(&response));
        assert_eq!(body_of(response).await, "answer 2");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        roles.iter().filter(|r| **r == DedupeRole::Leader).count(),
        1
    );
    assert_eq!(
        roles.iter().filter(|r| **r == DedupeRole::Follower).count(),
        19
    );
    assert_eq!(layer.stats().await.takeovers, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_hands_over_to_one_follower() {
    handover(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_leader_hands_over_to_one_follower() {
    handover(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_follower_that_times_out_fails_or_makes_its_own_request() {
    for then in [OnTimeout::Fail, OnTimeout::OwnRequest] {
        let calls = Arc::new(AtomicUsize::new(0));
        let upstream = counting(&calls, |n| async move {
            let wait = if n == 1 { 10 } else { 0 };
            tokio::time::sleep(Duration::from_secs(wait)).await;
            ok(format!("answer {n}"))
        });
        let layer = DedupeLayer::new(MemoryDedupeStore::new())
            .follower_timeout(Duration::from_secs(1), then);
        let client = ServiceBuilder::new().layer(layer.clone()).service(upstream);
        let leader = tokio::spawn(client.clone().oneshot(get("http://h/x")));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let follower = client.clone().oneshot(get("http://h/x")).await;
        match then {
            OnTimeout::Fail => {
                let error = follower.unwrap_err();
                assert!(error.downcast_ref::<DedupeError>().unwrap().is_timed_out());
                assert_eq!(calls.load(Ordering::SeqCst), 1);
            }
            OnTimeout::OwnRequest => {
                let response = follower.unwrap();
                assert_eq!(
                    role(&response),
                    DedupeRole::Bypassed(BypassReason::TimedOut)
                );
                assert_eq!(body_of(response).await, "answer 2");
            }
        }
        assert_eq!(layer.stats().await.timeouts, 1);
        assert_eq!(body_of(leader.await.unwrap().unwrap()).await, "answer 1");
    }
}

#[tokio::test]
async fn followers_of_a_body_over_the_limit_make_their_own_requests() {
    let server = TestServer::start().await;
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(MemoryDedupeStore::new()).max_body(1000))
        .service(HttpClient::new(reqwest::Client::new()));
    let large = server.url("/large?delay_ms=300&size=5000");
    let small = server.url("/small?delay_ms=300&size=1000");
    let (large, small) = tokio::join!(
        join_all((0..5).map(|_| client.clone().oneshot(get(&large)))),
        join_all((0..5).map(|_| client.clone().oneshot(get(&small)))),
    );
    assert_eq!(server.hits_on("/large"), 5);
    assert_eq!(server.hits_on("/small"), 1);
    for response in large {
        let response = response.unwrap();
        assert!(matches!(
            role(&response),
            DedupeRole::Leader | DedupeRole::Bypassed(BypassReason::TooLarge)
        ));
        assert_eq!(body_of(response).await.len(), 5000);
    }
    for response in small {
        assert_eq!(body_of(response.unwrap()).await.len(), 1000);
    }
}

/// A body with no size hint, larger than the limit: the leader still gets all of it.
#[tokio::test]
async fn a_leader_gets_all_of_a_streamed_body_over_the_limit() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = counting(&calls, |_| async {
        let chunks = (0..10).map(|i| {
            Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(vec![
                b'a' + i;
                300
            ])))
        });
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        Ok(http::Response::new(reqwest::Body::wrap(body)))
    });
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(MemoryDedupeStore::new()).max_body(1000))
        .service(upstream);
    let body = body_of(client.oneshot(get("http://h/x")).await.unwrap()).await;
    assert_eq!(body.len(), 3000);
    assert!(body.starts_with(&"a".repeat(300)) && body.ends_with(&"j".repeat(300)));
}

/// A body that fails while the leader buffers it is an upstream failure: shared with every
/// follower, not retried by each (the buffering of `src/body.rs` returns the error).
#[tokio::test(start_paused = true)]
async fn a_body_that_fails_while_buffered_reaches_every_follower_as_an_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = counting(&calls, |_| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let chunks = [
            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("connection reset by peer")),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        Ok(http::Response::new(reqwest::Body::wrap(body)))
    });
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(MemoryDedupeStore::new()))
        .service(upstream);
    let results = join_all((0..20).map(|_| client.clone().oneshot(get("http://h/x")))).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for result in results {
        let error = result.unwrap_err();
        let error = error.downcast_ref::<DedupeError>().expect("a DedupeError");
        assert_eq!(error.code(), "dedupe_upstream");
    }
}

#[tokio::test(start_paused = true)]
async fn only_the_configured_methods_and_keyed_requests_are_coalesced() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = counting(&calls, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ok(format!("answer {n}"))
    });
    let post = || {
        http::Request::post("http://h/x")
            .body(reqwest::Body::from("{}"))
            .unwrap()
    };
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(MemoryDedupeStore::new()))
        .service(upstream.clone());
    join_all((0..3).map(|_| client.clone().oneshot(post()))).await;
    assert_eq!(
        calls.swap(0, Ordering::SeqCst),
        3,
        "POST is not coalesced by default"
    );

    // A streaming body has no key: it passes through.
    let streaming = || {
        let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(http_body::Frame::data(
            bytes::Bytes::from_static(b"x"),
        ))]);
        let mut r = http::Request::get("http://h/x")
            .body(reqwest::Body::wrap(http_body_util::StreamBody::new(chunks)))
            .unwrap();
        assert!(RequestContext::resolve(&mut r).key().is_none());
        r
    };
    let responses = join_all((0..3).map(|_| client.clone().oneshot(streaming()))).await;
    assert_eq!(calls.swap(0, Ordering::SeqCst), 3);
    assert!(
        responses
            .iter()
            .all(|r| Report::of(r.as_ref().unwrap()).is_none())
    );

    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(MemoryDedupeStore::new()).methods([http::Method::POST]))
        .service(upstream);
    join_all((0..3).map(|_| client.clone().oneshot(post()))).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "POST coalesced when configured"
    );
}

/// Followers never reserve the inner service's readiness: with one slot upstream, all of them
/// still complete on the leader's call.
#[tokio::test(start_paused = true)]
async fn followers_do_not_reserve_the_inner_services_readiness() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = counting(&calls, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ok(format!("answer {n}"))
    });
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(MemoryDedupeStore::new()))
        .concurrency_limit(1)
        .service(upstream);
    // The leader holds the only upstream permit for 100 ms...
    let leader = tokio::spawn(client.clone().oneshot(get("http://h/same")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    // ...and yet the dedupe service is ready at once for followers: it does not wait for (or
    // reserve) upstream capacity it may never use. Delegating `poll_ready` to the inner
    // concurrency limit would leave this pending until the leader finished.
    let mut poller = client.clone();
    tokio::time::timeout(
        Duration::from_millis(10),
        std::future::poll_fn(|cx| poller.poll_ready(cx)),
    )
    .await
    .expect("the dedupe service waited for upstream capacity")
    .unwrap();
    let results = join_all((0..30).map(|_| client.clone().oneshot(get("http://h/same")))).await;
    assert!(results.iter().all(Result::is_ok));
    leader.await.unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_result_is_served_to_late_followers_only_within_result_ttl() {
    let server = TestServer::start().await;
    let layer = DedupeLayer::new(MemoryDedupeStore::new()).result_ttl(Duration::from_secs(2));
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let url = server.url("/x");
    let first = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&first), DedupeRole::Leader);
    let key = {
        let mut r = get(&url);
        courteous::dedupe::store_key(&mut r).unwrap()
    };
    assert_eq!(layer.store().poll(&key).await.unwrap().status(), Some(200));
    let late = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&late), DedupeRole::CrossProcessFollower);
    assert_eq!(server.hits(), 1);

    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(matches!(
        layer.store().poll(&key).await.unwrap(),
        KeyState::Vacant
    ));
    let after = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&after), DedupeRole::Leader);
    assert_eq!(server.hits(), 2);
    assert!(body_of(after).await.contains(r#""n":2"#));
}

/// Through reqwest-middleware: concurrent identical `send()`s share one call, followers see their
/// role in the response's report, and a follower's response keeps the final URL.
#[cfg(feature = "middleware")]
#[tokio::test]
async fn through_reqwest_middleware_identical_sends_share_one_call() {
    use courteous::{ContextLayer, CourteousMiddleware};
    let server = TestServer::start().await;
    let stack = ServiceBuilder::new()
        .layer(ContextLayer::new())
        .layer(DedupeLayer::new(MemoryDedupeStore::new()));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CourteousMiddleware::new(stack))
        .build();
    let url = server.url("/api/volumes/?delay_ms=300");
    let responses = join_all((0..20).map(|_| client.get(&url).send())).await;
    assert_eq!(server.hits(), 1);
    let mut followers = 0;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.url().as_str(), url);
        let report = response.extensions().get::<Report>().unwrap().clone();
        followers += usize::from(report.dedupe == Some(DedupeRole::Follower));
        assert!(response.text().await.unwrap().contains(r#""n":1"#));
    }
    assert_eq!(followers, 19);
}

fn timed_out_after(result: Result<Response, BoxError>) -> Duration {
    match result
        .map(|_| ())
        .unwrap_err()
        .downcast_ref::<DedupeError>()
    {
        Some(DedupeError::TimedOut { waited }) => *waited,
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// A local leader that waits on a leader in another process (here: another layer on the same
/// store) and times out with `OnTimeout::Fail` fails alone, reporting its real wait; a local
/// follower that joined it later times out on its own deadline, with its own wait. Before, every
/// local follower failed with the leader, reporting `follower_timeout` as its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_follower_times_out_on_its_own_deadline_not_its_local_leaders() {
    let store = MemoryDedupeStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let never = counting(&calls, |_| async {
        std::future::pending::<()>().await;
        ok(String::new())
    });
    let remote = ServiceBuilder::new()
        .layer(DedupeLayer::new(store.clone()))
        .service(never.clone());
    let timeout = Duration::from_secs(1);
    let layer = DedupeLayer::new(store.clone()).follower_timeout(timeout, OnTimeout::Fail);
    let local = ServiceBuilder::new().layer(layer.clone()).service(never);
    let url = "http://h/remote-leader";
    let remote = tokio::spawn(remote.oneshot(get(url)));
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let local_leader = {
        let local = local.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = local.oneshot(get(url)).await;
            (timed_out_after(result), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = std::time::Instant::now();
    let late = local.clone().oneshot(get(url)).await;
    let late_elapsed = started.elapsed();
    let late_waited = timed_out_after(late);

    let (leader_waited, leader_elapsed) = local_leader.await.unwrap();
    assert!(leader_waited >= timeout && leader_waited <= leader_elapsed);
    assert!(
        late_elapsed >= Duration::from_millis(950) && late_waited >= Duration::from_millis(950),
        "a follower with a 1 s timeout failed after {late_elapsed:?} (reported {late_waited:?})"
    );
    assert!(late_waited <= late_elapsed);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the remote leader went upstream"
    );
    assert_eq!(layer.stats().await.timeouts, 2);
    remote.abort();
}

/// A memory store with a fault.
#[derive(Debug, Clone)]
struct Faulty(MemoryDedupeStore, Fault);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Every `publish` fails.
    PublishFails,
    /// `try_lead` runs twice and answers the second time, as a backend that retries after a
    /// lost reply does.
    LeadRetried,
}

#[async_trait::async_trait]
impl DedupeStore for Faulty {
    async fn try_lead(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Lead, StoreError> {
        if self.1 == Fault::LeadRetried {
            self.0.try_lead(key, owner, lease).await?;
        }
        self.0.try_lead(key, owner, lease).await
    }
    async fn renew(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.0.renew(key, owner, lease).await
    }
    async fn publish(
        &self,
        key: &RequestKey,
        owner: &str,
        completion: Completion,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if self.1 != Fault::PublishFails {
            return self.0.publish(key, owner, completion, ttl).await;
        }
        Err(StoreError::new(
            "memory",
            StoreErrorKind::Unavailable,
            "publishing is down",
        ))
    }
    async fn release(&self, key: &RequestKey, owner: &str) -> Result<(), StoreError> {
        self.0.release(key, owner).await
    }
    async fn poll(&self, key: &RequestKey) -> Result<KeyState, StoreError> {
        self.0.poll(key).await
    }
    async fn invalidate(&self, path: &str) -> Result<u64, StoreError> {
        self.0.invalidate(path).await
    }
    async fn cleanup(&self) -> Result<u64, StoreError> {
        self.0.cleanup().await
    }
    async fn stats(&self) -> Result<DedupeStoreStats, StoreError> {
        self.0.stats().await
    }
}

/// A leader whose result the store could not publish releases its lease: followers in other
/// processes lead at once instead of waiting `lease_timeout` (30 s) for a lease nobody renews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_publish_fails_releases_its_lease() {
    let store = MemoryDedupeStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = counting(&calls, |n| async move { ok(format!("answer {n}")) });
    let layer = DedupeLayer::new(Faulty(store.clone(), Fault::PublishFails));
    let client = ServiceBuilder::new().layer(layer.clone()).service(upstream);
    let url = "http://h/publish-fails";
    let first = client.clone().oneshot(get(url)).await.unwrap();
    assert_eq!(role(&first), DedupeRole::Leader);
    assert_eq!(layer.stats().await.store_errors, 1);

    let key = {
        let mut r = get(url);
        courteous::dedupe::store_key(&mut r).unwrap()
    };
    let started = std::time::Instant::now();
    loop {
        match store.poll(&key).await.unwrap() {
            KeyState::Vacant => break,
            status => assert!(
                started.elapsed() < Duration::from_secs(5),
                "the key stays {status:?} after a failed publish"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let other_process = ServiceBuilder::new()
        .layer(DedupeLayer::new(store.clone()))
        .service(counting(
            &calls,
            |n| async move { ok(format!("answer {n}")) },
        ));
    let second = tokio::time::timeout(Duration::from_secs(5), other_process.oneshot(get(url)))
        .await
        .expect("the next request waited for the lease of a finished leader")
        .unwrap();
    assert_eq!(role(&second), DedupeRole::Leader);
    assert_eq!(body_of(second).await, "answer 2");
}

/// A leader's owner id is `<pid>-<random>-<n>`: the random part, drawn once per process, keeps
/// processes with the same PID in different PID namespaces (containers sharing a SQLite file or a
/// Redis server) from taking each other's leases for their own.
#[tokio::test]
async fn owner_ids_carry_a_random_part_next_to_the_pid() {
    let store = MemoryDedupeStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let never = counting(&calls, |_| async {
        std::future::pending::<()>().await;
        ok(String::new())
    });
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(store.clone()))
        .service(never);
    let owner_of = |url: &'static str| {
        let (client, store, calls) = (client.clone(), store.clone(), calls.clone());
        async move {
            let before = calls.load(Ordering::SeqCst);
            let leader = tokio::spawn(client.oneshot(get(url)));
            while calls.load(Ordering::SeqCst) == before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut r = get(url);
            let key = courteous::dedupe::store_key(&mut r).unwrap();
            let status = store.poll(&key).await.unwrap();
            leader.abort();
            match status {
                KeyState::Pending { owner, .. } => owner,
                other => panic!("expected a pending leader, found {other:?}"),
            }
        }
    };
    let (one, two) = (
        owner_of("http://h/one").await,
        owner_of("http://h/two").await,
    );
    let parts = |owner: &str| -> Vec<String> { owner.split('-').map(str::to_owned).collect() };
    let (p1, p2) = (parts(&one), parts(&two));
    assert_eq!(p1.len(), 3, "{one}");
    assert_eq!(p1[0], std::process::id().to_string());
    assert_eq!(p1[1].len(), 16, "{one}");
    assert!(p1[1].chars().all(|c| c.is_ascii_hexdigit()), "{one}");
    // One random part per process; the counter tells leaders apart.
    assert_eq!(p1[..2], p2[..2]);
    assert_ne!(p1[2], p2[2]);
}

/// A failure is kept for the followers already waiting (1 s), not for `result_ttl`: a request
/// arriving later goes upstream again instead of receiving an old error.
#[tokio::test]
async fn a_failed_leaders_error_is_not_served_for_result_ttl() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = calls.clone();
        service_fn(move |_req: Request| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    return Err::<Response, BoxError>("upstream said no".into());
                }
                Ok(http::Response::new(reqwest::Body::from("fine")))
            }
        })
    };
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(MemoryDedupeStore::new()).result_ttl(Duration::from_secs(10)))
        .service(upstream);

    let error = client
        .clone()
        .oneshot(get("http://h/flaky"))
        .await
        .unwrap_err();
    assert_eq!(
        error.downcast_ref::<DedupeError>().unwrap().code(),
        "dedupe_upstream"
    );

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = client.clone().oneshot(get("http://h/flaky")).await.unwrap();
    assert_eq!(Report::of(&again).unwrap().dedupe, Some(DedupeRole::Leader));
    assert_eq!(body_of(again).await, "fine");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A lead step that a backend retried after a lost reply finds the lease its first try took,
/// under the caller's own id: the caller leads instead of waiting for itself until its timeout.
#[tokio::test]
async fn a_lease_under_the_callers_own_id_is_its_own() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = counting(&calls, |n| async move { ok(format!("answer {n}")) });
    let layer = DedupeLayer::new(Faulty(MemoryDedupeStore::new(), Fault::LeadRetried))
        .follower_timeout(Duration::from_secs(2), OnTimeout::OwnRequest);
    let client = ServiceBuilder::new().layer(layer.clone()).service(upstream);
    let started = std::time::Instant::now();
    let response = client.oneshot(get("http://h/retried")).await.unwrap();
    assert_eq!(role(&response), DedupeRole::Leader);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited {:?} for its own lease",
        started.elapsed()
    );
    assert_eq!(body_of(response).await, "answer 1");
    assert_eq!(layer.stats().await.timeouts, 0);
}

/// A `no-store` response (the directive in any case) is handed to nobody else (RFC 9111
/// §5.2.2.5): the followers already waiting send their own requests, and nothing of it reaches
/// the store, where other processes would read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_store_response_is_neither_shared_nor_stored() {
    let server = TestServer::start().await;
    let (_dir, path) = crate::support::temp_db();
    let sqlite = courteous::store::sqlite::SqliteStore::open(&path)
        .await
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(sqlite.dedupe()))
        .service(HttpClient::new(reqwest::Client::new()));
    let url = server.url("/secret?delay_ms=300&cache_control=private,%20No-Store");
    let responses = join_all((0..4).map(|_| client.clone().oneshot(get(&url)))).await;
    assert_eq!(server.hits_on("/secret"), 4, "every request went upstream");
    for response in responses {
        let response = response.unwrap();
        assert!(
            matches!(
                role(&response),
                DedupeRole::Leader | DedupeRole::Bypassed(BypassReason::NoStore)
            ),
            "{:?}",
            role(&response)
        );
    }
    let stored: i64 = sqlite
        .call(|conn| {
            Ok(conn.query_row(
                "SELECT count(*) FROM courteous_dedupe WHERE body IS NOT NULL",
                [],
                |row| row.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(stored, 0, "a no-store response was written to the store");
    // A response without it is still shared.
    let shared = server.url("/shared?delay_ms=300");
    join_all((0..4).map(|_| client.clone().oneshot(get(&shared)))).await;
    assert_eq!(server.hits_on("/shared"), 1);
    sqlite.close().await.unwrap();
}
