//! Server feedback against a real local server: rate-limit headers lower the budget, and an
//! idempotent request may be retried once after `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use courteous::rate_limit::{
    Limit, Limits, MaxWait, MemoryRateLimitStore, RateLimitLayer, RateLimited,
};
use courteous::{HttpClient, Report, Resource};
use tower::{ServiceBuilder, ServiceExt};

use crate::support::TestServer;
use crate::support::server::Log;

/// `/api/quota/`: says 2 - n requests remain for 30 s (IETF names); `/api/xquota/`: says none remain
/// until 30 s from now in Unix seconds (X- names); `/api/flaky/`: 429 with `Retry-After: 1` on
/// the first call, 200 after.
async fn server() -> TestServer {
    TestServer::with_router(|log| {
        Router::new()
            .fallback(|State(log): State<Arc<Log>>, request: Request| async move {
                let n = log.record(&request);
                let builder = Response::builder();
                let builder = match request.uri().path() {
                    "/api/quota/" => builder
                        .header("ratelimit-remaining", 2u64.saturating_sub(n).to_string())
                        .header("ratelimit-reset", "30"),
                    "/api/xquota/" => {
                        let reset = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_secs()
                            + 30;
                        builder
                            .header("x-ratelimit-remaining", "0")
                            .header("x-ratelimit-reset", reset.to_string())
                    }
                    "/api/flaky/" if n == 1 => builder.status(429).header("retry-after", "1"),
                    _ => builder,
                };
                builder.body(axum::body::Body::from("{}")).unwrap()
            })
            .with_state(log)
    })
    .await
}

fn layer() -> RateLimitLayer {
    let limits = Limits::new().default_limit(Limit::per_minute(NonZeroU32::new(100).unwrap()));
    RateLimitLayer::new(MemoryRateLimitStore::new(), limits)
        .unwrap()
        .fail_fast()
}

fn get(url: String) -> http::Request<reqwest::Body> {
    http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

#[tokio::test]
async fn remaining_headers_lower_the_budget_in_both_spellings() {
    let server = server().await;
    let layer = layer();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));

    // The server says 1 remains: one more goes (and the server then says 0), the next is refused
    // although our own limit has room for 98.
    service
        .clone()
        .oneshot(get(server.url("/api/quota/")))
        .await
        .unwrap();
    let status = layer
        .status(&Resource::new("quota").unwrap())
        .await
        .unwrap();
    assert_eq!(status.server_remaining, Some(1));
    assert_eq!(status.remaining, 1);
    service
        .clone()
        .oneshot(get(server.url("/api/quota/")))
        .await
        .unwrap();
    let err = service
        .clone()
        .oneshot(get(server.url("/api/quota/")))
        .await
        .unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("rate limited");
    assert!(limited.retry_after() > Duration::from_secs(25), "{limited}");
    assert_eq!(server.hits_on("/api/quota/"), 2);

    service
        .clone()
        .oneshot(get(server.url("/api/xquota/")))
        .await
        .unwrap();
    let err = service
        .clone()
        .oneshot(get(server.url("/api/xquota/")))
        .await
        .unwrap_err();
    assert!(err.is::<RateLimited>());
    assert_eq!(server.hits_on("/api/xquota/"), 1);
}

#[tokio::test]
async fn an_idempotent_request_is_retried_once_after_retry_after() {
    let server = server().await;
    let service = ServiceBuilder::new()
        .layer(layer().retry_once(true))
        .service(HttpClient::new(reqwest::Client::new()));
    let mut request = get(server.url("/api/flaky/"));
    request
        .extensions_mut()
        .insert(MaxWait(Duration::from_secs(5)));
    let started = Instant::now();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let report = Report::of(&response).unwrap().rate_limit.unwrap();
    assert!(report.retried);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.hits_on("/api/flaky/"), 2);
}

#[tokio::test]
async fn no_retry_for_a_post_or_past_max_wait_or_when_off() {
    let server = server().await;
    let retrying = ServiceBuilder::new()
        .layer(layer().retry_once(true))
        .service(HttpClient::new(reqwest::Client::new()));
    let post = http::Request::post(server.url("/api/flaky/"))
        .body(reqwest::Body::from("x"))
        .unwrap();
    let response = retrying.clone().oneshot(post).await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(!Report::of(&response).unwrap().rate_limit.unwrap().retried);

    let server = self::server().await;
    let retrying = ServiceBuilder::new()
        .layer(layer().retry_once(true))
        .service(HttpClient::new(reqwest::Client::new()));
    // Fail-fast: a Retry-After of 1 s is past a max_wait of zero.
    let response = retrying
        .clone()
        .oneshot(get(server.url("/api/flaky/")))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);

    let server = self::server().await;
    let plain = ServiceBuilder::new()
        .layer(layer())
        .service(HttpClient::new(reqwest::Client::new()));
    let mut request = get(server.url("/api/flaky/"));
    request
        .extensions_mut()
        .insert(MaxWait(Duration::from_secs(5)));
    let response = plain.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(server.hits_on("/api/flaky/"), 1);
}

#[tokio::test]
async fn pacing_spaces_calls_to_one_host() {
    use courteous::rate_limit::Pacing;
    let server = TestServer::start().await;
    let service = ServiceBuilder::new()
        .layer(
            layer()
                .max_wait(Duration::from_secs(10))
                .pacing(Pacing::per_host(Duration::from_millis(100))),
        )
        .service(HttpClient::new(reqwest::Client::new()));
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            tokio::spawn(
                service
                    .clone()
                    .oneshot(get(server.url(&format!("/api/r{i}/")))),
            )
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let mut seen: Vec<Instant> = server.seen().iter().map(|s| s.at).collect();
    seen.sort();
    assert_eq!(seen.len(), 5);
    for pair in seen.windows(2) {
        // Five different resources, one host: spaced although no limit is near.
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(80),
            "{:?}",
            pair[1] - pair[0]
        );
    }
}

/// Defect 1 of the reference: the priority never reached the limiter. Both priorities arrive
/// through reqwest-middleware and are counted as what they are.
#[tokio::test]
async fn both_priorities_reach_the_decision_through_reqwest_middleware() {
    use courteous::{Middleware, Priority};
    let server = TestServer::start().await;
    let layer = layer();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(Middleware::new(layer.clone()))
        .build();
    for priority in [Priority::User, Priority::Background, Priority::Background] {
        let response = client
            .get(server.url("/api/volumes/"))
            .with_extension(priority)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let stats = layer.stats().resources["volumes"];
    assert_eq!((stats.admitted_user, stats.admitted_background), (1, 2));
}
