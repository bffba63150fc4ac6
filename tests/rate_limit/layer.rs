//! The layer with the memory store and paused time: waiting, failing fast, cancellation,
//! arrival order, priorities, failures counting, configuration errors.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courteous::rate_limit::{
    AdaptiveConfig, AdmissionRequest, Decision, Limit, Limits, MaxWait, MemoryRateLimitStore,
    OnStoreError, RateLimitConfigError, RateLimitLayer, RateLimitStatus, RateLimitStore,
    RateLimitStoreFailed, RateLimitStoreStats, RateLimited, ServerFeedback, Timestamp, TokioClock,
};
use courteous::store::{StoreError, StoreErrorKind};
use courteous::{BoxError, Priority, Report, Resource};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Calls = Arc<Mutex<Vec<(Instant, String)>>>;

/// A stack over a fake upstream that logs when each call arrives (tokio time) and its path.
fn stack(
    layer: RateLimitLayer,
) -> (
    impl Service<
        http::Request<String>,
        Response = http::Response<String>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Calls,
) {
    let calls: Calls = Arc::default();
    let log = calls.clone();
    let service = ServiceBuilder::new().layer(layer).service(service_fn(
        move |req: http::Request<String>| {
            let log = log.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push((Instant::now(), req.uri().path().to_owned()));
                if req.uri().query() == Some("fail") {
                    return Err::<http::Response<String>, BoxError>("upstream failed".into());
                }
                Ok(http::Response::new(String::new()))
            }
        },
    ));
    (service, calls)
}

fn request(path: &str, priority: Priority) -> http::Request<String> {
    let mut req = http::Request::get(format!("http://api.test{path}"))
        .body(String::new())
        .unwrap();
    req.extensions_mut().insert(priority);
    req
}

fn layer(limits: Limits) -> RateLimitLayer {
    RateLimitLayer::new(MemoryRateLimitStore::new(), limits)
        .unwrap()
        .clock(TokioClock::new())
}

fn max_in_any_window(calls: &[(Instant, String)], window: Duration) -> usize {
    let times: Vec<Instant> = calls.iter().map(|(t, _)| *t).collect();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .filter(|t| **t < times[i] + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_all_complete_within_the_limit() {
    let (service, calls) = stack(layer(Limits::new().default_limit(Limit::per_second(2))));
    let started = Instant::now();
    let tasks: Vec<_> = (0..7)
        .map(|_| tokio::spawn(service.clone().oneshot(request("/issues/", Priority::User))))
        .collect();
    let mut waited = Vec::new();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        waited.push(Report::of(&response).unwrap().rate_limit.unwrap().waited);
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 7);
    assert!(max_in_any_window(&calls, Duration::from_secs(1)) <= 2);
    // 7 requests at 2 per second: the last goes out in the fourth second.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    waited.sort();
    assert_eq!(waited[0], Duration::ZERO);
    assert!(waited[6] >= Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn fail_fast_per_layer_and_per_request() {
    let limits = Limits::new().resource("search", Limit::per_second(1));
    let (service, calls) = stack(layer(limits.clone()).fail_fast());
    service
        .clone()
        .oneshot(request("/search/", Priority::User))
        .await
        .unwrap();
    let started = Instant::now();
    let err = service
        .clone()
        .oneshot(request("/search/", Priority::User))
        .await
        .unwrap_err();
    let limited = err
        .downcast_ref::<RateLimited>()
        .expect("a RateLimited error");
    assert_eq!(limited.resource().as_str(), "search");
    assert!(limited.retry_after() > Duration::from_millis(900));
    // One window after the first request's response (its re-stamp is rounded up to the next
    // millisecond), plus 1 ms.
    assert!(limited.retry_after() <= Duration::from_millis(1002));
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "failing fast does not wait"
    );
    // Another resource has no limit of its own and no default: not limited.
    service
        .clone()
        .oneshot(request("/issues/", Priority::User))
        .await
        .unwrap();

    // A request may ask to wait although the layer fails fast...
    let mut patient = request("/search/", Priority::User);
    patient
        .extensions_mut()
        .insert(MaxWait(Duration::from_secs(5)));
    service.clone().oneshot(patient).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(999));
    assert_eq!(calls.lock().unwrap().len(), 3);

    // ...and fail fast although the layer waits.
    let (waiting, _) = stack(layer(limits));
    waiting
        .clone()
        .oneshot(request("/search/", Priority::User))
        .await
        .unwrap();
    let mut hasty = request("/search/", Priority::User);
    hasty.extensions_mut().insert(MaxWait::FAIL_FAST);
    let before = Instant::now();
    assert!(
        waiting
            .clone()
            .oneshot(hasty)
            .await
            .unwrap_err()
            .is::<RateLimited>()
    );
    assert_eq!(before.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_admitted_within_max_wait_fails_without_waiting_in_vain() {
    let limits = Limits::new().default_limit(Limit::per_minute(1));
    let (service, calls) = stack(layer(limits).max_wait(Duration::from_secs(10)));
    service
        .clone()
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap();
    let before = Instant::now();
    let err = service
        .clone()
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().unwrap();
    assert!(limited.retry_after() > Duration::from_secs(59));
    assert!(before.elapsed() < Duration::from_secs(10));
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_records_nothing() {
    let layer = layer(Limits::new().default_limit(Limit::new(1, Duration::from_secs(10))));
    let (service, calls) = stack(layer.clone());
    service
        .clone()
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap();
    let waiter = tokio::spawn(service.clone().oneshot(request("/a/", Priority::User)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    let resource = Resource::new("a").unwrap();
    let status = layer.status(&resource).await.unwrap();
    assert_eq!(status.limits[0].used, 1);
    // When the first admission leaves the window, the next request goes at once: the cancelled
    // waiter took no slot.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let response = service
        .clone()
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap();
    assert_eq!(
        Report::of(&response).unwrap().rate_limit.unwrap().waited,
        Duration::ZERO
    );
    assert_eq!(calls.lock().unwrap().len(), 2);
    assert_eq!(layer.stats().await.resources["a"].admitted_user, 2);
}

#[tokio::test(start_paused = true)]
async fn waiters_of_one_priority_are_served_in_arrival_order() {
    let (service, calls) = stack(layer(Limits::new().default_limit(Limit::per_second(1))));
    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(tokio::spawn(
            service
                .clone()
                .oneshot(request(&format!("/x/{i}"), Priority::User)),
        ));
        // Let each one queue before the next arrives.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let order: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    let expected: Vec<String> = (0..6).map(|i| format!("/x/{i}")).collect();
    assert_eq!(order, expected);
}

#[tokio::test(start_paused = true)]
async fn failed_upstream_calls_count_against_the_limit() {
    let (service, calls) =
        stack(layer(Limits::new().default_limit(Limit::per_minute(2))).fail_fast());
    let failing = || {
        let mut req = request("/a/", Priority::User);
        *req.uri_mut() = "http://api.test/a/?fail".parse().unwrap();
        req
    };
    assert!(service.clone().oneshot(failing()).await.is_err());
    assert!(service.clone().oneshot(failing()).await.is_err());
    let err = service
        .clone()
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");
    assert_eq!(calls.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn users_get_through_while_background_saturates_the_limit() {
    let limit = Limit::per_second(10);
    let layer = layer(Limits::new().default_limit(limit));
    let (service, calls) = stack(layer.clone());
    // 60 background requests keep the resource saturated for several seconds.
    let background: Vec<_> = (0..60)
        .map(|_| {
            tokio::spawn(
                service
                    .clone()
                    .oneshot(request("/r/bg", Priority::Background)),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Users arrive while background work is queued: each goes out without waiting.
    for _ in 0..4 {
        let response = service
            .clone()
            .oneshot(request("/r/user", Priority::User))
            .await
            .unwrap();
        let report = Report::of(&response).unwrap().rate_limit.unwrap();
        assert_eq!(report.waited, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for task in background {
        task.await.unwrap().unwrap();
    }
    let calls = calls.lock().unwrap().clone();
    assert!(max_in_any_window(&calls, Duration::from_secs(1)) <= 10);
    let stats = layer.stats().await;
    assert_eq!(stats.resources["r"].admitted_user, 4);
    assert_eq!(stats.resources["r"].admitted_background, 60);
}

/// Background requests admitted in the first window of a saturated resource, with the users idle.
async fn background_share_when_users_idle(adaptive: AdaptiveConfig) -> usize {
    let layer = layer(Limits::new().default_limit(Limit::per_second(20))).adaptive(adaptive);
    let (service, calls) = stack(layer);
    let started = Instant::now();
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(
                service
                    .clone()
                    .oneshot(request("/r/bg", Priority::Background)),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(999)).await;
    let first_window = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t < started + Duration::from_secs(1))
        .count();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    first_window
}

#[tokio::test(start_paused = true)]
async fn background_gets_everything_but_the_user_reserve_when_users_are_idle() {
    // Default: a reserve of 5 stays free for the next person (the reference gave users 0 after
    // idling, so a user could wait a whole window).
    assert_eq!(
        background_share_when_users_idle(AdaptiveConfig::default()).await,
        15
    );
    // With no minimum reserve, background gets the whole limit.
    assert_eq!(
        background_share_when_users_idle(AdaptiveConfig::default().min_user_reserved(0)).await,
        20
    );
}

#[tokio::test(start_paused = true)]
async fn rising_user_activity_pauses_background_and_status_says_why() {
    let adaptive = AdaptiveConfig::default()
        .monitoring_window(Duration::from_secs(30))
        .recalculation_interval(Duration::from_millis(1));
    let layer = layer(Limits::new().default_limit(Limit::per_minute(100))).adaptive(adaptive);
    let (service, _calls) = stack(layer.clone().fail_fast());
    // 12 user requests in the last third of the monitoring window: high and rising.
    for _ in 0..12 {
        service
            .clone()
            .oneshot(request("/r/u", Priority::User))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let err = service
        .clone()
        .oneshot(request("/r/b", Priority::Background))
        .await
        .unwrap_err();
    assert!(err.is::<RateLimited>());
    let status = layer.status(&Resource::new("r").unwrap()).await.unwrap();
    assert!(status.background_paused);
    assert_eq!(status.limits[0].used, 12);
    assert_eq!(status.limits[0].remaining, 88);
    assert!(
        status.reason.contains("background paused"),
        "{}",
        status.reason
    );
    // Users still go.
    service
        .clone()
        .oneshot(request("/r/u", Priority::User))
        .await
        .unwrap();
}

#[test]
fn bad_configuration_is_refused_when_the_layer_is_built() {
    let zero = Limits::new().resource("issues", Limit::new(5, Duration::ZERO));
    let err = RateLimitLayer::new(MemoryRateLimitStore::new(), zero).unwrap_err();
    assert_eq!(
        err,
        RateLimitConfigError::ZeroWindow {
            resource: "issues".into()
        }
    );
    let sub_ms = Limits::new().default_limit(Limit::new(5, Duration::from_micros(10)));
    assert!(RateLimitLayer::new(MemoryRateLimitStore::new(), sub_ms).is_err());
    let empty = Limits::new().resource("  ", Limit::per_second(1));
    let err = RateLimitLayer::new(MemoryRateLimitStore::new(), empty).unwrap_err();
    assert_eq!(err.code(), "rate_limit_empty_resource");
    assert!(err.to_string().contains("empty resource name"));
}

/// A memory store with the faults a test switches on.
#[derive(Debug, Clone, Default)]
struct Faulty {
    inner: MemoryRateLimitStore,
    /// Decisions fail while set.
    down: Arc<AtomicBool>,
    /// Decisions are refusals whose `retry_at` is already due (as from a broken store, or a
    /// clock stepping back), for the first 10,000 calls.
    stale_refusals: bool,
    /// Each feedback write takes a second.
    slow_feedback: bool,
    /// Decisions asked.
    calls: Arc<AtomicU32>,
    /// Feedback writes asked.
    writes: Arc<AtomicU32>,
}

#[async_trait::async_trait]
impl RateLimitStore for Faulty {
    async fn acquire(&self, request: AdmissionRequest) -> Result<Decision, StoreError> {
        let calls = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                "faulty",
                StoreErrorKind::Unavailable,
                "the store is down",
            ));
        }
        if self.stale_refusals && calls < 10_000 {
            return Ok(Decision::Refused {
                retry_at: request.clock.now(),
                reason: courteous::rate_limit::Refusal::Limit,
            });
        }
        self.inner.acquire(request).await
    }
    async fn settle(
        &self,
        admission: &courteous::rate_limit::InFlight,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner.settle(admission, at).await
    }
    async fn feedback(
        &self,
        resource: &Resource,
        feedback: ServerFeedback,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.slow_feedback {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
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
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                "faulty",
                StoreErrorKind::Unavailable,
                "down",
            ));
        }
        self.inner.stats().await
    }
    async fn unblock(&self, resource: &Resource) -> Result<(), StoreError> {
        self.inner.unblock(resource).await
    }
}

/// Whatever the backend, a decision the store cannot make fails the request at once with a
/// typed error and sends nothing (fail closed, the default), or sends it uncounted and says so
/// (fail open); both are counted in the layer's stats.
#[tokio::test(start_paused = true)]
async fn a_failing_store_fails_closed_by_default_and_open_when_asked() {
    let store = Faulty::default();
    let limits = || Limits::new().default_limit(Limit::per_minute(10));
    let closed = RateLimitLayer::new(store.clone(), limits()).unwrap();
    let open = RateLimitLayer::new(store.clone(), limits())
        .unwrap()
        .on_store_error(OnStoreError::FailOpen);
    let (closed_service, closed_calls) = stack(closed.clone());
    let (open_service, open_calls) = stack(open.clone());
    store.down.store(true, Ordering::SeqCst);

    let started = Instant::now();
    let err = closed_service
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap_err();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no waiting for a failed store"
    );
    let failed = err.downcast_ref::<RateLimitStoreFailed>().expect("typed");
    assert_eq!(failed.code(), "rate_limit_store_failed");
    assert!(failed.is_unavailable());
    assert_eq!(failed.store_error().backend(), "faulty");
    assert_eq!(failed.resource().as_str(), "a");
    assert!(closed_calls.lock().unwrap().is_empty());
    let all = closed.stats().await;
    let stats = all.resources["a"];
    assert_eq!((stats.store_errors, stats.admitted_unchecked), (1, 0));
    // The store cannot tell what it holds either: zeroes, and the failed read counted.
    assert_eq!(all.store, RateLimitStoreStats::default());
    assert_eq!(
        all.store_errors, 2,
        "the decision and the read of the store's stats"
    );

    let response = open_service
        .clone()
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap();
    let report = Report::of(&response).unwrap().rate_limit.unwrap();
    assert!(report.unchecked);
    assert_eq!(report.remaining, 0);
    assert_eq!(open_calls.lock().unwrap().len(), 1);
    let stats = open.stats().await.resources["a"];
    assert_eq!((stats.store_errors, stats.admitted_unchecked), (1, 1));

    // Back up: counted again, and not reported as unchecked.
    store.down.store(false, Ordering::SeqCst);
    let response = open_service
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap();
    let report = Report::of(&response).unwrap().rate_limit.unwrap();
    assert_eq!((report.unchecked, report.remaining), (false, 9));
    // Each layer counts its own decisions; the store holds the admission for both.
    let (open, closed) = (open.stats().await, closed.stats().await);
    assert_eq!(open.resources["a"].admitted_user, 1);
    assert_eq!(closed.resources["a"].admitted_user, 0);
    assert_eq!((open.store.admissions, open.store.in_flight), (1, 0));
    assert_eq!(open.store, closed.store);
}

/// A refusal whose `retry_at` is already due still waits before the store is asked again: the
/// layer never spins on the store for the whole of its wait.
#[tokio::test(start_paused = true)]
async fn a_refusal_that_is_already_due_still_waits_before_asking_again() {
    let store = Faulty {
        stale_refusals: true,
        ..Faulty::default()
    };
    let layer = RateLimitLayer::new(
        store.clone(),
        Limits::new().default_limit(Limit::per_second(1)),
    )
    .unwrap()
    .clock(TokioClock::new())
    .max_wait(Duration::from_secs(1));
    let (service, calls) = stack(layer);
    let started = Instant::now();
    let err = service
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<RateLimited>().is_some(), "{err}");
    assert!(calls.lock().unwrap().is_empty());
    let asked = store.calls.load(Ordering::SeqCst);
    // One call per 10 ms pause over the second of `max_wait`, not thousands.
    assert!((90..=102).contains(&asked), "asked the store {asked} times");
    assert!(started.elapsed() >= Duration::from_millis(990));
}

/// A response's feedback (a `Retry-After` and a budget) is written in one round, so the
/// response waits for one store call, not one per item; after a fail-open admission (the
/// store is failing) nothing is written and the response does not wait for the store at all.
#[tokio::test(start_paused = true)]
async fn feedback_waits_for_one_store_call_and_none_after_an_unchecked_admission() {
    let store = Faulty {
        slow_feedback: true,
        ..Faulty::default()
    };
    let layer = RateLimitLayer::new(
        store.clone(),
        Limits::new().default_limit(Limit::per_minute(10)),
    )
    .unwrap()
    .clock(TokioClock::new())
    .max_wait(Duration::ZERO)
    .on_store_error(OnStoreError::FailOpen);
    let service =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_: http::Request<String>| async {
                let response = http::Response::builder()
                    .status(http::StatusCode::TOO_MANY_REQUESTS)
                    .header("retry-after", "30")
                    .header("ratelimit-remaining", "0")
                    .header("ratelimit-reset", "30")
                    .body(String::new())
                    .unwrap();
                Ok::<_, BoxError>(response)
            }));
    let writes = || store.writes.load(Ordering::SeqCst);

    let started = Instant::now();
    let response = service
        .clone()
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(writes(), 2, "both items are recorded");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "the two writes overlap"
    );

    store.down.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let response = service
        .oneshot(request("/a/", Priority::User))
        .await
        .unwrap();
    let report = Report::of(&response).unwrap().rate_limit.unwrap();
    assert!(report.unchecked);
    assert!(
        report.blocked_until.is_some(),
        "the block is still reported"
    );
    assert_eq!(writes(), 2, "nothing written to a failing store");
    assert_eq!(started.elapsed(), Duration::ZERO);
}
