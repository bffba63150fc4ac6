//! Issue 11: admissions stamped when the store decides, held in flight until the response head
//! arrives, settled when the response future is dropped, and let go at their bound when their
//! process died. Memory, SQLite and Redis here (`every_backend!`); Redis has
//! more of its own in `redis.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courteous::rate_limit::{
    Accounting, Clock, Limit, Limits, MaxWait, RateLimitLayer, RateLimitStore, RateLimited,
    Refusal, SystemClock, Timestamp,
};
use courteous::{BoxError, HttpClient, Resource};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use crate::backend::{Backend, Time, every_backend};
use crate::support::{TestServer, child};

every_backend!(
    a_decision_is_stamped_when_the_store_decides,
    a_response_future_dropped_mid_flight_settles,
    an_in_flight_admission_counts_until_its_response_arrives,
);

const T0: u64 = 1_700_000_000_000;

/// A clock the test moves by hand.
#[derive(Debug, Clone, Default)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn at(ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// A store in front of another that makes every request wait 5 s (of the injected clock)
/// before the inner store sees it, as a queue or another process's turn would.
struct Queued {
    inner: Arc<dyn RateLimitStore>,
    clock: ManualClock,
}

#[async_trait::async_trait]
impl RateLimitStore for Queued {
    async fn acquire(
        &self,
        request: courteous::rate_limit::AdmissionRequest,
    ) -> Result<courteous::rate_limit::Decision, courteous::store::StoreError> {
        self.clock.advance(Duration::from_secs(5));
        self.inner.acquire(request).await
    }
    async fn settle(
        &self,
        admission: &courteous::rate_limit::InFlight,
        at: Timestamp,
    ) -> Result<(), courteous::store::StoreError> {
        self.inner.settle(admission, at).await
    }
    async fn unblock(&self, resource: &Resource) -> Result<(), courteous::store::StoreError> {
        self.inner.unblock(resource).await
    }
    async fn feedback(
        &self,
        resource: &Resource,
        feedback: courteous::rate_limit::ServerFeedback,
        now: Timestamp,
    ) -> Result<(), courteous::store::StoreError> {
        self.inner.feedback(resource, feedback, now).await
    }
    async fn status(
        &self,
        resource: &Resource,
        limits: &[Limit],
        adaptive: &courteous::rate_limit::AdaptiveConfig,
        now: Timestamp,
    ) -> Result<courteous::rate_limit::RateLimitStatus, courteous::store::StoreError> {
        self.inner.status(resource, limits, adaptive, now).await
    }
    async fn stats(
        &self,
    ) -> Result<courteous::rate_limit::RateLimitStoreStats, courteous::store::StoreError> {
        self.inner.stats().await
    }
}

fn upstream() -> impl tower::Service<
    http::Request<String>,
    Response = http::Response<String>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(|_req: http::Request<String>| async {
        Ok::<_, BoxError>(http::Response::new(String::new()))
    })
}

fn get(path: &str) -> http::Request<String> {
    http::Request::get(format!("http://api.test{path}"))
        .body(String::new())
        .unwrap()
}

/// A request that waited 5 s for the store (its injected clock moved meanwhile) is stamped at
/// the decision, not when it asked: its slot frees one window after the decision. (The layer
/// read the time before `acquire(..).await`, and the stamp was 5 s early: it left the window
/// 5 s early.)
async fn a_decision_is_stamped_when_the_store_decides(backend: Backend) {
    let handle = backend.handle(Time::Injected).await;
    let clock = ManualClock::at(T0);
    let store = Queued {
        inner: handle.store.clone(),
        clock: clock.clone(),
    };
    let window = Duration::from_secs(10);
    let layer = RateLimitLayer::new(store, Limits::new().default_limit(Limit::new(1, window)))
        .unwrap()
        .clock(clock.clone())
        .accounting(Accounting::OnSend)
        .fail_fast();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(upstream());
    service.clone().oneshot(get("/api/items/")).await.unwrap();
    let status = layer
        .status(&Resource::new("items").unwrap())
        .await
        .unwrap();
    assert_eq!(
        status.limits[0].reset,
        Some(Timestamp::from_millis(T0 + 5_000 + 10_000 + 1)),
        "stamped at the decision (T0 + 5 s)"
    );
    // And the exact mode's in-flight admission expires one bound after the decision.
    let clock = ManualClock::at(T0);
    let store = Queued {
        inner: handle.store.clone(),
        clock: clock.clone(),
    };
    let decision = store
        .acquire(
            courteous::rate_limit::AdmissionRequest::new(
                Resource::new("other").unwrap(),
                courteous::Priority::User,
                vec![Limit::new(1, window)].into(),
                Arc::new(Default::default()),
                clock.clone(),
            )
            .in_flight(Some(Duration::from_secs(60))),
        )
        .await
        .unwrap();
    match decision {
        courteous::rate_limit::Decision::Admitted {
            at,
            in_flight: Some(in_flight),
            ..
        } => {
            assert_eq!(at, Timestamp::from_millis(T0 + 5_000));
            assert_eq!(in_flight.expires_at, Timestamp::from_millis(T0 + 65_000));
        }
        other => panic!("{other:?}"),
    }
    handle.close().await;
}

/// While its request is in flight, an admission counts in every window, however long the
/// request takes; when the response head arrives it is re-stamped then, and its slot frees one
/// window later.
async fn an_in_flight_admission_counts_until_its_response_arrives(backend: Backend) {
    let handle = backend.handle(Time::Injected).await;
    let clock = ManualClock::at(T0);
    let window = Duration::from_secs(1);
    let layer = RateLimitLayer::new(
        handle.store.clone(),
        Limits::new().default_limit(Limit::new(1, window)),
    )
    .unwrap()
    .clock(clock.clone())
    .fail_fast();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
    let slow = service_fn(move |_req: http::Request<String>| {
        let released = released.clone();
        async move {
            if let Some(rx) = released.lock().await.take() {
                let _ = rx.await;
            }
            Ok::<_, BoxError>(http::Response::new(String::new()))
        }
    });
    let service = ServiceBuilder::new().layer(layer.clone()).service(slow);
    let first = tokio::spawn(service.clone().oneshot(get("/api/items/")));
    let items = Resource::new("items").unwrap();
    wait_for(|| async { layer.status(&items).await.unwrap().in_flight == 1 }).await;
    // Ten windows later, still in flight: refused, with the earliest retry one window on.
    clock.advance(Duration::from_secs(10));
    let err = service
        .clone()
        .oneshot(get("/api/items/"))
        .await
        .unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("rate limited");
    assert_eq!(limited.retry_after(), window + Duration::from_millis(1));
    let decision = handle
        .store
        .acquire(courteous::rate_limit::AdmissionRequest::new(
            items.clone(),
            courteous::Priority::User,
            vec![Limit::new(1, window)].into(),
            Arc::new(Default::default()),
            clock.clone(),
        ))
        .await
        .unwrap();
    assert!(
        matches!(
            decision,
            courteous::rate_limit::Decision::Refused {
                reason: Refusal::InFlight,
                ..
            }
        ),
        "{decision:?}"
    );
    // The response arrives at T0 + 10 s: stamped then (rounded up to the next ms).
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    let status = layer.status(&items).await.unwrap();
    assert_eq!(status.in_flight, 0);
    assert_eq!(
        status.limits[0].reset,
        Some(Timestamp::from_millis(T0 + 10_001 + 1_000 + 1))
    );
    clock.advance(Duration::from_millis(1_002));
    service.clone().oneshot(get("/api/items/")).await.unwrap();
    handle.close().await;
}

/// Polls `ready` every 10 ms for up to 5 s.
async fn wait_for<F, Fut>(ready: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !ready().await {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not ready after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A response future dropped while its request is in flight (a caller's timeout, a cancelled
/// task) settles its admission at once, in the background: the slot is not held until the
/// in-flight bound (a minute).
async fn a_response_future_dropped_mid_flight_settles(backend: Backend) {
    let handle = backend.handle(Time::Real).await;
    let window = Duration::from_millis(500);
    let layer = RateLimitLayer::new(
        handle.store.clone(),
        Limits::new().default_limit(Limit::new(1, window)),
    )
    .unwrap();
    let (arrived, mut arrival) = tokio::sync::mpsc::unbounded_channel::<()>();
    let never = service_fn(move |_req: http::Request<String>| {
        let _ = arrived.send(());
        std::future::pending::<Result<http::Response<String>, BoxError>>()
    });
    let service = ServiceBuilder::new().layer(layer.clone()).service(never);
    let task = tokio::spawn(service.clone().oneshot(get("/api/items/")));
    arrival.recv().await.unwrap();
    let items = Resource::new("items").unwrap();
    assert_eq!(layer.status(&items).await.unwrap().in_flight, 1);
    task.abort();
    let _ = task.await;
    let dropped = SystemClock.now();
    wait_for(|| async { layer.status(&items).await.unwrap().in_flight == 0 }).await;
    let status = layer.status(&items).await.unwrap();
    let reset = status.limits[0]
        .reset
        .expect("the settled admission counts");
    // Settled when it was dropped: it frees one window after that, not after a minute.
    assert!(
        reset >= dropped + window && reset <= dropped + window + Duration::from_secs(2),
        "reset {reset:?}, dropped {dropped:?}"
    );
    handle.close().await;
}

/// Child entry: one request in flight (bound 3 s) to a server that answers after a minute; the
/// parent kills this process meanwhile.
#[cfg(any(feature = "sqlite", feature = "redis"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by an_in_flight_admission_of_a_killed_process_expires"]
async fn child_in_flight() {
    if !child::is_child("in_flight::child_in_flight") {
        return;
    }
    let url: String = child::param("SERVER_URL");
    let handle = crate::backend::from_env().await;
    let service = ServiceBuilder::new()
        .layer(killed_layer(handle.store.clone()))
        .service(HttpClient::new(reqwest::Client::new()));
    let request = http::Request::get(format!("{url}/api/items/?delay_ms=60000"))
        .body(reqwest::Body::from(""))
        .unwrap();
    println!("sending");
    let _ = service.oneshot(request).await;
    println!("answered (too early: the parent kills this process first)");
}

const KILLED_BOUND: Duration = Duration::from_secs(3);
const KILLED_WINDOW: Duration = Duration::from_secs(1);

fn killed_layer(store: impl RateLimitStore) -> RateLimitLayer {
    RateLimitLayer::new(
        store,
        Limits::new().default_limit(Limit::new(1, KILLED_WINDOW)),
    )
    .unwrap()
    .in_flight_timeout(KILLED_BOUND)
}

#[cfg(any(feature = "sqlite", feature = "redis"))]
mod an_in_flight_admission_of_a_killed_process_expires {
    use crate::backend::{Kind, run};

    #[cfg(feature = "sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        run(
            Kind::Sqlite,
            "an_in_flight_admission_of_a_killed_process_expires",
            super::an_in_flight_admission_of_a_killed_process_expires,
        )
        .await;
    }

    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        run(
            Kind::Redis,
            "an_in_flight_admission_of_a_killed_process_expires",
            super::an_in_flight_admission_of_a_killed_process_expires,
        )
        .await;
    }
}

/// A process killed (SIGKILL) while its request is in flight never settles it: its admission
/// holds the slot until its bound (3 s here), then counts as if stamped then, and another
/// process gets the slot one window later, not never.
#[cfg(any(feature = "sqlite", feature = "redis"))]
async fn an_in_flight_admission_of_a_killed_process_expires(backend: Backend) {
    let server = TestServer::start().await;
    let mut env = backend.child_env();
    env.push(("SERVER_URL", server.url("")));
    let mut process = child::spawn("in_flight::child_in_flight", &env);
    let started = Instant::now();
    while server.hits() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the child never sent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its admission was decided before its request reached the server.
    let sent = SystemClock.now();
    process.kill().unwrap();
    process.wait().unwrap();
    let handle = backend.handle(Time::Real).await;
    let layer = killed_layer(handle.store.clone());
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let items = Resource::new("items").unwrap();
    let status = layer.status(&items).await.unwrap();
    assert_eq!(status.in_flight, 1, "{}", status.reason);
    // Refused while it is in flight...
    let mut request = http::Request::get(server.url("/api/items/"))
        .body(reqwest::Body::from(""))
        .unwrap();
    request.extensions_mut().insert(MaxWait::FAIL_FAST);
    let err = service.clone().oneshot(request).await.unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");
    // ...then admitted once it expired (at most 3 s after it was sent) and left the window.
    let request = http::Request::get(server.url("/api/items/"))
        .body(reqwest::Body::from(""))
        .unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let admitted = SystemClock.now();
    let waited = admitted.saturating_since(sent);
    assert!(
        waited >= KILLED_BOUND + KILLED_WINDOW - Duration::from_millis(500)
            && waited < Duration::from_secs(20),
        "admitted {waited:?} after the killed process's request"
    );
    assert_eq!(server.hits(), 2);
    handle.close().await;
}

/// In SQLite, a request that waits in the store for another process's turn (the lock file
/// beside the database, held here) is stamped when its transaction decides it, with the time
/// the injected clock tells then.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_decision_is_stamped_after_waiting_for_the_turn() {
    let (_dir, path) = crate::support::temp_db();
    let sqlite = courteous::store::sqlite::SqliteStore::open(&path)
        .await
        .unwrap();
    let store = sqlite.rate_limits();
    let mut name = path.as_os_str().to_owned();
    name.push("-ratelimit.lock");
    let turn = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(name)
        .unwrap();
    turn.lock().unwrap();
    let clock = ManualClock::at(T0);
    let asking = {
        let (store, clock) = (store.clone(), clock.clone());
        tokio::spawn(async move {
            store
                .acquire(courteous::rate_limit::AdmissionRequest::new(
                    Resource::new("items").unwrap(),
                    courteous::Priority::User,
                    vec![Limit::new(1, Duration::from_secs(10))].into(),
                    Arc::new(Default::default()),
                    clock,
                ))
                .await
        })
    };
    // The request is queued, and its runner waits for the turn.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!asking.is_finished());
    clock.advance(Duration::from_secs(5));
    turn.unlock().unwrap();
    match asking.await.unwrap().unwrap() {
        courteous::rate_limit::Decision::Admitted { at, .. } => {
            assert_eq!(at, Timestamp::from_millis(T0 + 5_000));
        }
        other => panic!("{other:?}"),
    }
    let status = store
        .status(
            &Resource::new("items").unwrap(),
            &[Limit::new(1, Duration::from_secs(10))],
            &Default::default(),
            Timestamp::from_millis(T0 + 5_000),
        )
        .await
        .unwrap();
    assert_eq!(
        status.limits[0].reset,
        Some(Timestamp::from_millis(T0 + 15_001))
    );
    sqlite.close().await.unwrap();
}

/// In SQLite, a caller that gives up while its request waits for its decision (its runner waits
/// for another process's turn) leaves nothing behind: no admission, none in flight.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_request_whose_caller_left_before_its_turn_leaves_nothing() {
    let (_dir, path) = crate::support::temp_db();
    let sqlite = courteous::store::sqlite::SqliteStore::open(&path)
        .await
        .unwrap();
    let store = sqlite.rate_limits();
    let mut name = path.as_os_str().to_owned();
    name.push("-ratelimit.lock");
    let turn = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(name)
        .unwrap();
    turn.lock().unwrap();
    let limits = [Limit::new(1, Duration::from_secs(1))];
    let asking = {
        let store = store.clone();
        let limits: Arc<[Limit]> = limits.to_vec().into();
        tokio::spawn(async move {
            store
                .acquire(
                    courteous::rate_limit::AdmissionRequest::new(
                        Resource::new("items").unwrap(),
                        courteous::Priority::User,
                        limits,
                        Arc::new(Default::default()),
                        SystemClock,
                    )
                    .in_flight(Some(Duration::from_secs(60))),
                )
                .await
        })
    };
    // Its runner has taken it and waits for the turn; the caller gives up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    asking.abort();
    let _ = asking.await;
    turn.unlock().unwrap();
    let items = Resource::new("items").unwrap();
    wait_for(|| async {
        let status = store
            .status(&items, &limits, &Default::default(), SystemClock.now())
            .await
            .unwrap();
        status.limits[0].used == 0 && status.in_flight == 0
    })
    .await;
    // And the resource is free.
    let decision = store
        .acquire(courteous::rate_limit::AdmissionRequest::new(
            items.clone(),
            courteous::Priority::User,
            limits.to_vec().into(),
            Arc::new(Default::default()),
            SystemClock,
        ))
        .await
        .unwrap();
    assert!(
        matches!(decision, courteous::rate_limit::Decision::Admitted { .. }),
        "{decision:?}"
    );
    sqlite.close().await.unwrap();
}
