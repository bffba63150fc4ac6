//! Extreme settings a user may reasonably write: "wait as long as it takes"
//! (`Duration::MAX`), a window of `Duration::MAX` with a safety margin, pacing of
//! `Duration::MAX`. Each must wait, refuse or admit: never panic.

use std::time::Duration;

use courteous::rate_limit::{
    Limit, Limits, MaxWait, MemoryRateLimitStore, Pacing, RateLimitLayer, RateLimited, TokioClock,
};
use courteous::{BoxError, Priority};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

fn stack(
    layer: RateLimitLayer,
) -> impl Service<
    http::Request<String>,
    Response = http::Response<String>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_req: http::Request<String>| async {
            Ok::<_, BoxError>(http::Response::new(String::new()))
        }))
}

fn request(max_wait: Option<Duration>) -> http::Request<String> {
    let mut req = http::Request::get("http://api.test/items")
        .body(String::new())
        .unwrap();
    req.extensions_mut().insert(Priority::User);
    if let Some(wait) = max_wait {
        req.extensions_mut().insert(MaxWait(wait));
    }
    req
}

fn layer(limit: Limit) -> RateLimitLayer {
    RateLimitLayer::new(
        MemoryRateLimitStore::new(),
        Limits::new().default_limit(limit),
    )
    .unwrap()
    .clock(TokioClock::new())
}

/// `max_wait(Duration::MAX)` and `MaxWait(Duration::MAX)` mean "wait as long as it takes": the
/// second request of a 1-per-second limit waits its second. Before, the deadline
/// `now + max_wait` overflowed `Instant` and the request panicked.
#[tokio::test(start_paused = true)]
async fn a_max_wait_of_duration_max_waits_instead_of_panicking() {
    let service = stack(layer(Limit::per_second(1)).max_wait(Duration::MAX));
    let started = tokio::time::Instant::now();
    for _ in 0..2 {
        service.clone().oneshot(request(None)).await.unwrap();
    }
    assert!(started.elapsed() >= Duration::from_secs(1));

    let service = stack(layer(Limit::per_second(1)));
    let started = tokio::time::Instant::now();
    for _ in 0..2 {
        service
            .clone()
            .oneshot(request(Some(Duration::MAX)))
            .await
            .unwrap();
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
}

/// A window of `Duration::MAX` (one request, ever) with a safety margin: the second request is
/// refused. Before, widening the window by the margin overflowed `Duration` and panicked.
#[tokio::test(start_paused = true)]
async fn a_duration_max_window_with_a_margin_refuses_instead_of_panicking() {
    let service = stack(
        layer(Limit::new(1, Duration::MAX))
            .safety_margin(Duration::from_millis(100))
            .fail_fast(),
    );
    service.clone().oneshot(request(None)).await.unwrap();
    let error = service.oneshot(request(None)).await.unwrap_err();
    assert!(error.is::<RateLimited>(), "{error}");
}

/// Pacing of `Duration::MAX` (one request per host, ever) with `max_wait(Duration::MAX)`: the
/// second request is refused or waits, but nothing panics; with a finite `max_wait` it is
/// refused at once.
#[tokio::test(start_paused = true)]
async fn pacing_of_duration_max_refuses_instead_of_panicking() {
    let service = stack(
        layer(Limit::per_second(100))
            .pacing(Pacing::per_host(Duration::MAX))
            .max_wait(Duration::from_secs(5)),
    );
    service.clone().oneshot(request(None)).await.unwrap();
    let error = service.clone().oneshot(request(None)).await.unwrap_err();
    assert!(error.is::<RateLimited>(), "{error}");
    let waiting = service.oneshot(request(Some(Duration::MAX)));
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), waiting)
            .await
            .is_err(),
        "paced for ever: still waiting after an hour"
    );
}
