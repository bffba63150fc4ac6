//! What dedupe shares, and what it must not: a refusal made before the request left (issue 11,
//! item 5), typed errors through the whole stack (item 6), results from before an unsafe request
//! changed the resource (issue 12, item 10).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use courteous::cache::{CacheLayer, MemoryCacheStore};
use courteous::dedupe::{DedupeError, DedupeLayer, DedupeRole, DedupeStore};
use courteous::error::{find, was_sent};
use courteous::rate_limit::{Limit, Limits, MaxWait, MemoryRateLimitStore, RateLimitLayer};
use courteous::{BoxError, HttpClient, Priority, RateLimited, Report};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};

use crate::backend::{Backend, every_backend, from_env, shared_backends};
use crate::support::server::Log;
use crate::support::{TestServer, child};

every_backend!(
    a_refused_leader_hands_over_to_a_follower_in_another_layer,
    a_post_discards_the_completed_result_for_its_url,
    a_post_detaches_a_leader_in_flight,
);

shared_backends!(
    a_post_in_another_process_discards_this_process_result,
    a_leader_refused_in_another_process_hands_over_to_this_one,
);

type Response = http::Response<reqwest::Body>;

fn request(
    method: http::Method,
    url: &str,
    priority: Priority,
    wait: Duration,
) -> http::Request<reqwest::Body> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(reqwest::Body::from(""))
        .unwrap();
    request.extensions_mut().insert(priority);
    request.extensions_mut().insert(MaxWait(wait));
    request
}

fn get(url: &str) -> http::Request<reqwest::Body> {
    request(
        http::Method::GET,
        url,
        Priority::User,
        Duration::from_secs(30),
    )
}

fn post(url: &str) -> http::Request<reqwest::Body> {
    request(
        http::Method::POST,
        url,
        Priority::User,
        Duration::from_secs(30),
    )
}

fn role(response: &Response) -> DedupeRole {
    Report::of(response).unwrap().dedupe.unwrap()
}

async fn body_of(response: Response) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A limiter with one request per `window` for every resource, and no user reserve (so that
/// both priorities compete for the one slot).
fn one_per(window: Duration) -> RateLimitLayer {
    RateLimitLayer::new(
        MemoryRateLimitStore::new(),
        Limits::new().default_limit(Limit::new(1, window)),
    )
    .unwrap()
    .adaptive(courteous::rate_limit::AdaptiveConfig::default().min_user_reserved(0))
}

/// Issue 11 item 5, as observed: a `Priority::User` request that arrived while a `Background`
/// request for the same URL waited in the limiter followed it, and failed with its
/// `RateLimited` ("retry in 59.9 s") while the user reserve was free. Now it leads its own
/// request and goes out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_request_does_not_wait_behind_a_queued_background_leader() {
    let server = TestServer::start().await;
    // 10 per 3 s; with users idle, background may use 5 and 5 stay reserved for users.
    let limiter = RateLimitLayer::new(
        MemoryRateLimitStore::new(),
        Limits::new().default_limit(Limit::new(10, Duration::from_secs(3))),
    )
    .unwrap();
    let client = ServiceBuilder::new()
        .layer(DedupeLayer::new(courteous::MemoryDedupeStore::new()))
        .layer(limiter)
        .service(HttpClient::new(reqwest::Client::new()));
    let wait = Duration::from_secs(20);
    for i in 0..5 {
        let url = server.url(&format!("/r/fill-{i}"));
        let bg = request(http::Method::GET, &url, Priority::Background, wait);
        client.clone().oneshot(bg).await.unwrap();
    }
    // The background share is used up: this one waits in the limiter for the next window.
    let url = server.url("/r/shared");
    let bg = request(http::Method::GET, &url, Priority::Background, wait);
    let background = tokio::spawn(client.clone().oneshot(bg));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!background.is_finished());

    let user = request(http::Method::GET, &url, Priority::User, wait);
    let response = client.clone().oneshot(user).await.unwrap();
    assert!(
        !background.is_finished(),
        "the user request waited for the background leader"
    );
    assert_eq!(role(&response), DedupeRole::Leader);
    let report = Report::of(&response).unwrap().rate_limit.unwrap();
    // Admitted at once from the user reserve (the background leader waits about 3 s).
    assert!(report.waited < Duration::from_secs(1), "{report:?}");
    assert_eq!(server.hits_on("/r/shared"), 1);

    // The background request goes when its share frees: two calls, one per class.
    let response = background.await.unwrap().unwrap();
    assert_eq!(role(&response), DedupeRole::Leader);
    assert_eq!(server.hits_on("/r/shared"), 2);
}

/// Takes the limiter's one slot, then queues a request that waits for the next: a request of the
/// same priority that arrives now waits behind it in the limiter's queue.
async fn occupy<S>(
    client: &S,
    server: &TestServer,
) -> tokio::task::JoinHandle<Result<Response, BoxError>>
where
    S: tower::Service<http::Request<reqwest::Body>, Response = Response, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    client
        .clone()
        .oneshot(get(&server.url("/r/first")))
        .await
        .unwrap();
    let queued = tokio::spawn(client.clone().oneshot(get(&server.url("/r/queued"))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    queued
}

/// Issue 11 item 5: a leader that timed out in the limiter's queue was refused, not answered.
/// Its follower, with a longer `MaxWait`, is not failed with the leader's refusal: it leads,
/// waits its own turn and gets the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_a_refused_leader_makes_its_own_attempt() {
    let server = TestServer::start().await;
    let dedupe = DedupeLayer::new(courteous::MemoryDedupeStore::new());
    let client = ServiceBuilder::new()
        .layer(dedupe.clone())
        .layer(one_per(Duration::from_secs(2)))
        .service(HttpClient::new(reqwest::Client::new()));
    let queued = occupy(&client, &server).await;

    let url = server.url("/r/x");
    let short = request(
        http::Method::GET,
        &url,
        Priority::User,
        Duration::from_millis(800),
    );
    let leader = tokio::spawn(client.clone().oneshot(short));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let follower = tokio::spawn(client.clone().oneshot(get(&url)));

    let refused = leader.await.unwrap().unwrap_err();
    // The leader's own caller gets the refusal itself, not wrapped.
    assert!(refused.downcast_ref::<RateLimited>().is_some(), "{refused}");
    assert!(!was_sent(&*refused));

    let response = follower.await.unwrap().expect("the follower's own attempt");
    assert_eq!(role(&response), DedupeRole::Leader);
    assert!(body_of(response).await.contains(r#""path":"/r/x""#));
    assert_eq!(server.hits_on("/r/x"), 1);
    queued.await.unwrap().unwrap();
    let stats = dedupe.stats().await;
    assert_eq!((stats.not_sent, stats.followers), (1, 0));
}

/// The same across dedupe layers sharing a store (as processes do): the refused leader releases
/// its lease rather than publishing its refusal, and the follower in the other layer leads.
async fn a_refused_leader_hands_over_to_a_follower_in_another_layer(backend: Backend) {
    let server = TestServer::start().await;
    let limiter = one_per(Duration::from_secs(2));
    let stack = |store: Arc<dyn DedupeStore>| {
        ServiceBuilder::new()
            .layer(DedupeLayer::new(store))
            .layer(limiter.clone())
            .service(HttpClient::new(reqwest::Client::new()))
    };
    let one = stack(backend.handle().await);
    let two = stack(backend.handle().await);
    let queued = occupy(&one, &server).await;

    let url = server.url("/r/x");
    let short = request(
        http::Method::GET,
        &url,
        Priority::User,
        Duration::from_millis(800),
    );
    let leader = tokio::spawn(one.clone().oneshot(short));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let follower = tokio::spawn(two.clone().oneshot(get(&url)));

    let refused = leader.await.unwrap().unwrap_err();
    assert!(refused.downcast_ref::<RateLimited>().is_some(), "{refused}");
    let response = follower.await.unwrap().expect("the follower's own attempt");
    assert_eq!(role(&response), DedupeRole::Leader);
    assert!(body_of(response).await.contains(r#""path":"/r/x""#));
    assert_eq!(server.hits_on("/r/x"), 1);
    queued.await.unwrap().unwrap();
}

/// A connection refused is a failure before sending too: nothing reached the upstream, so the
/// follower does not get the leader's error but tries itself (and, the port being closed, gets
/// its own connect error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_error_is_not_shared_but_a_sent_failure_is() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let layer = DedupeLayer::new(courteous::MemoryDedupeStore::new());
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let url = format!("http://{closed}/r/x");
    let (a, b) = tokio::join!(
        client.clone().oneshot(get(&url)),
        client.clone().oneshot(get(&url))
    );
    for error in [a.unwrap_err(), b.unwrap_err()] {
        // Each caller has its own connect error, found as itself.
        let reqwest = error.downcast_ref::<reqwest::Error>().expect("own error");
        assert!(reqwest.is_connect());
        assert!(!was_sent(&*error));
    }
    assert_eq!(layer.stats().await.followers, 0);

    // A timeout while waiting for the answer happened after sending: shared, and the original
    // error is found by walking `source()`.
    let server = TestServer::start().await;
    let timeout = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let layer = DedupeLayer::new(courteous::MemoryDedupeStore::new());
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(timeout));
    let url = server.url("/r/slow?delay_ms=3000");
    let leader = tokio::spawn(client.clone().oneshot(get(&url)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let follower = client.clone().oneshot(get(&url)).await.unwrap_err();
    let _ = leader.await.unwrap().unwrap_err();
    let shared = follower
        .downcast_ref::<DedupeError>()
        .expect("a DedupeError");
    assert!(matches!(shared, DedupeError::Upstream(_)));
    let original = find::<reqwest::Error>(&*follower).expect("reqwest error in the chain");
    assert!(original.is_timeout());
    assert!(was_sent(&*follower));
    assert_eq!(server.hits_on("/r/slow"), 1);
    assert_eq!(layer.stats().await.followers, 1);
}

/// Issue 11 item 6: through the whole stack (cache, dedupe, rate limit) a refusal is found with
/// `downcast_ref` on the error the caller gets, on the tower path and, inside the
/// `reqwest_middleware::Error::Middleware(anyhow::Error)`, on the reqwest-middleware path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_found_through_every_layer_and_through_reqwest_middleware() {
    let server = TestServer::start().await;
    let stack = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryCacheStore::new()))
        .layer(DedupeLayer::new(courteous::MemoryDedupeStore::new()))
        .layer(one_per(Duration::from_secs(60)));
    let tower = stack
        .clone()
        .service(HttpClient::new(reqwest::Client::new()));
    tower
        .clone()
        .oneshot(get(&server.url("/r/first")))
        .await
        .unwrap();
    let refused = tower
        .clone()
        .oneshot(request(
            http::Method::GET,
            &server.url("/r/second"),
            Priority::Background,
            Duration::ZERO,
        ))
        .await
        .unwrap_err();
    assert!(refused.downcast_ref::<RateLimited>().is_some(), "{refused}");
    assert!(find::<RateLimited>(&*refused).is_some());

    // The same stack (same limiter) inside reqwest-middleware.
    #[cfg(feature = "middleware")]
    {
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(courteous::CourteousMiddleware::new(stack))
            .build();
        let error = client
            .get(server.url("/r/third"))
            .with_extension(MaxWait(Duration::ZERO))
            .send()
            .await
            .unwrap_err();
        let reqwest_middleware::Error::Middleware(error) = error else {
            panic!("expected a middleware error, got {error:?}");
        };
        let limited = error
            .downcast_ref::<RateLimited>()
            .expect("RateLimited in anyhow");
        assert!(limited.retry_after() > Duration::from_secs(30));
        assert!(error.chain().any(|e| e.is::<RateLimited>()));
    }
    assert_eq!(server.hits(), 1);
}

/// A resource that changes on POST: GET answers `version N`, POST bumps N.
async fn versioned() -> (TestServer, Arc<AtomicU64>) {
    let version = Arc::new(AtomicU64::new(0));
    let v = version.clone();
    let server = TestServer::with_router(move |log| {
        Router::new()
            .fallback(move |State(log): State<Arc<Log>>, request: Request| {
                let v = v.clone();
                async move {
                    log.record(&request);
                    let query = request.uri().query().unwrap_or("").to_owned();
                    if request.method() == http::Method::POST {
                        let now = v.fetch_add(1, Ordering::SeqCst) + 1;
                        return format!("posted, now version {now}");
                    }
                    if let Some(ms) = query.strip_prefix("delay_ms=") {
                        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                    }
                    format!("version {}", v.load(Ordering::SeqCst))
                }
            })
            .with_state(log)
    })
    .await;
    (server, version)
}

/// Issue 12 item 10: GET → POST → GET. The second GET arrives within `result_ttl` of the first,
/// whose result the store keeps for late followers; the POST changed the resource, so the second
/// GET must go upstream and see the change (it used to join the pre-POST result, which a cache
/// above then stored for a whole max-age). Checked with a cache layer above, as in the report.
async fn a_post_discards_the_completed_result_for_its_url(backend: Backend) {
    let (server, _) = versioned().await;
    let dedupe = DedupeLayer::new(backend.handle().await).result_ttl(Duration::from_secs(60));
    let client = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryCacheStore::new()))
        .layer(dedupe.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let url = server.url("/things/1?fields=all");
    let first = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(body_of(first).await, "version 0");

    // Another URL's result is kept.
    let other = server.url("/things/2");
    client.clone().oneshot(get(&other)).await.unwrap();

    let posted = client
        .clone()
        .oneshot(post(&server.url("/things/1")))
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(body_of(posted).await, "posted, now version 1");

    let second = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&second), DedupeRole::Leader);
    assert_eq!(body_of(second).await, "version 1");
    // The cache now holds the fresh body, not the old one.
    let third = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(body_of(third).await, "version 1");

    assert_eq!(dedupe.stats().await.invalidations, 1);
    let again = client.clone().oneshot(get(&other)).await.unwrap();
    assert_eq!(role(&again), DedupeRole::CrossProcessFollower);
    assert_eq!(server.hits_on("/things/2"), 1);
}

/// A GET that was already on its way when the POST succeeded may carry the old state: the
/// requests waiting for it still get it, but a GET made after the POST does not join it.
async fn a_post_detaches_a_leader_in_flight(backend: Backend) {
    let (server, _) = versioned().await;
    let dedupe = DedupeLayer::new(backend.handle().await).result_ttl(Duration::from_secs(60));
    let client = ServiceBuilder::new()
        .layer(dedupe.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let url = server.url("/things/1?delay_ms=1500");
    let slow = tokio::spawn(client.clone().oneshot(get(&url)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::spawn(client.clone().oneshot(get(&url)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .clone()
        .oneshot(post(&server.url("/things/1")))
        .await
        .unwrap();

    let after = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&after), DedupeRole::Leader);
    assert_eq!(body_of(after).await, "version 1");
    // The first GET read version 0 before the POST; its follower was already waiting.
    let slow = slow.await.unwrap().unwrap();
    let waiting = waiting.await.unwrap().unwrap();
    assert_eq!(role(&waiting), DedupeRole::Follower);
    assert_eq!(body_of(waiting).await, body_of(slow).await);
    // The old leader's result was not published over the new one.
    let late = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(body_of(late).await, "version 1");
    assert_eq!(server.hits_on("/things/1"), 3);
}

/// Child entry: one request of `METHOD` to `URL` through a dedupe layer over the shared store;
/// prints the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by the cross-process tests"]
async fn child_one_request() {
    if !child::is_child("sharing::child_one_request") {
        return;
    }
    let url: String = child::param("URL");
    let method: String = child::param("METHOD");
    let layer = DedupeLayer::new(from_env().await).result_ttl(Duration::from_secs(60));
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let method = http::Method::from_bytes(method.as_bytes()).unwrap();
    let response = client
        .oneshot(request(
            method,
            &url,
            Priority::User,
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    println!("body={}", body_of(response).await);
    assert_eq!(layer.stats().await.store_errors, 0);
}

/// Issue 12 item 10 across processes: this process keeps a result for 60 s; a POST made by
/// another OS process discards it in the shared store, so this process's next GET goes
/// upstream.
async fn a_post_in_another_process_discards_this_process_result(backend: Backend) {
    let (server, _) = versioned().await;
    let store = backend.handle().await;
    let dedupe = DedupeLayer::new(store.clone()).result_ttl(Duration::from_secs(60));
    let client = ServiceBuilder::new()
        .layer(dedupe.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let url = server.url("/things/1");
    let first = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(body_of(first).await, "version 0");
    // A second GET here joins the kept result.
    let joined = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&joined), DedupeRole::CrossProcessFollower);

    let mut env = backend.child_env();
    env.extend([("URL", url.clone()), ("METHOD", "POST".to_owned())]);
    let stdout = child::wait_ok(child::spawn("sharing::child_one_request", &env));
    assert!(stdout.contains("body=posted, now version 1"), "{stdout}");

    let after = client.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&after), DedupeRole::Leader);
    assert_eq!(body_of(after).await, "version 1");
    assert_eq!(server.hits_on("/things/1"), 3);
}

/// Child entry: over the shared store and a limiter of its own (1 per 3 s), takes the slot,
/// queues a request for the next one, then leads `URL` with a `MaxWait` of 1 s, which times out
/// in the queue. Writes `READY_FILE` while that leader waits; prints `refused` when it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by the cross-process tests"]
async fn child_refused_leader() {
    if !child::is_child("sharing::child_refused_leader") {
        return;
    }
    let base: String = child::param("BASE");
    let url: String = child::param("URL");
    let ready: String = child::param("READY_FILE");
    let layer = DedupeLayer::new(from_env().await);
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(one_per(Duration::from_secs(3)))
        .service(HttpClient::new(reqwest::Client::new()));
    client
        .clone()
        .oneshot(get(&format!("{base}/r/first")))
        .await
        .unwrap();
    let queued = tokio::spawn(client.clone().oneshot(get(&format!("{base}/r/queued"))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let short = request(
        http::Method::GET,
        &url,
        Priority::User,
        Duration::from_secs(1),
    );
    let leader = tokio::spawn(client.clone().oneshot(short));
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(ready, b"leading").unwrap();
    let error = leader.await.unwrap().unwrap_err();
    assert!(error.downcast_ref::<RateLimited>().is_some(), "{error}");
    println!("refused");
    queued.await.unwrap().unwrap();
    assert_eq!(layer.stats().await.not_sent, 1);
}

/// Issue 11 item 5 across OS processes: the leader in a child process is refused by its limiter;
/// the follower here, waiting on the shared store, is not failed with that refusal but leads
/// and gets the response.
async fn a_leader_refused_in_another_process_hands_over_to_this_one(backend: Backend) {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let url = server.url("/r/x");
    let mut env = backend.child_env();
    env.extend([
        ("BASE", server.url("")),
        ("URL", url.clone()),
        ("READY_FILE", ready.display().to_string()),
    ]);
    let refused = child::spawn("sharing::child_refused_leader", &env);
    let started = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the child never led"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let key = courteous::dedupe::store_key(&mut get(&url)).unwrap();
    let store = backend.handle().await;
    assert!(
        matches!(
            store.poll(&key).await.unwrap(),
            courteous::dedupe::KeyState::Pending { .. }
        ),
        "the child leads the key"
    );
    let dedupe = DedupeLayer::new(store);
    let client = ServiceBuilder::new()
        .layer(dedupe.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let response = client.oneshot(get(&url)).await.expect("its own attempt");
    assert_eq!(role(&response), DedupeRole::Leader);
    assert!(body_of(response).await.contains(r#""path":"/r/x""#));
    let stdout = child::wait_ok(refused);
    assert!(stdout.contains("refused"), "{stdout}");
    assert_eq!(server.hits_on("/r/x"), 1);
}

/// Issue 11 item 6, store errors: a rate-limit store that fails (here a closed SQLite store)
/// refuses before sending. Each of two identical requests gets its own `RateLimitStoreFailed`
/// (none is handed the other's as a `DedupeError`), with the `StoreError` found in its chain.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rate_limit_store_is_each_callers_own_typed_error() {
    use courteous::rate_limit::RateLimitStoreFailed;
    use courteous::store::StoreError;
    let server = TestServer::start().await;
    let (_dir, path) = crate::support::temp_db();
    let sqlite = courteous::store::sqlite::SqliteStore::open(&path)
        .await
        .unwrap();
    let limiter = RateLimitLayer::new(
        sqlite.rate_limits(),
        Limits::new().default_limit(Limit::per_second(100)),
    )
    .unwrap();
    sqlite.close().await.unwrap();
    let dedupe = DedupeLayer::new(courteous::MemoryDedupeStore::new());
    let client = ServiceBuilder::new()
        .layer(dedupe.clone())
        .layer(limiter)
        .service(HttpClient::new(reqwest::Client::new()));
    let url = server.url("/r/x");
    let (a, b) = tokio::join!(
        client.clone().oneshot(get(&url)),
        client.clone().oneshot(get(&url))
    );
    for error in [a.unwrap_err(), b.unwrap_err()] {
        let failed = error
            .downcast_ref::<RateLimitStoreFailed>()
            .unwrap_or_else(|| panic!("not a RateLimitStoreFailed: {error:?}"));
        assert_eq!(failed.store_error().backend(), "sqlite");
        assert!(find::<StoreError>(&*error).is_some());
        assert!(!was_sent(&*error));
    }
    assert_eq!(dedupe.stats().await.followers, 0);
    assert_eq!(server.hits(), 0);
}
