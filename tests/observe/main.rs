//! The `courteous.request` span, its events and (with the `metrics` feature) the metrics, seen by
//! a real subscriber and a real recorder while a full stack talks to a local server.

#[path = "../support/mod.rs"]
mod support;

#[cfg(feature = "metrics")]
mod metrics;
mod span;

use std::time::Duration;

use courteous::cache::MemoryCacheStore;
use courteous::rate_limit::MemoryRateLimitStore;
use courteous::{
    BoxError, CacheLayer, CacheTtl, ContextLayer, DedupeLayer, HttpClient, Limit, Limits,
    MemoryDedupeStore, PathSegment, RateLimitLayer,
};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

pub type Client =
    BoxCloneService<http::Request<reqwest::Body>, http::Response<reqwest::Body>, BoxError>;

/// Context (resources after `/api/`) -> cache (5 min) -> dedupe -> rate limit (1 per minute,
/// no waiting) -> reqwest, all on memory stores.
pub fn full_stack() -> Client {
    let limits = Limits::new().default_limit(Limit::per_minute(1));
    ServiceBuilder::new()
        .layer(ContextLayer::new().classifier(PathSegment::after("/api/")))
        .layer(
            CacheLayer::new(MemoryCacheStore::new())
                .default_ttl(CacheTtl::absolute(Duration::from_secs(300))),
        )
        .layer(DedupeLayer::new(MemoryDedupeStore::new()))
        .layer(
            RateLimitLayer::new(MemoryRateLimitStore::new(), limits)
                .expect("valid limits")
                .max_wait(Duration::ZERO),
        )
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone()
}

/// Context (resources after `/api/`) -> `layer` -> reqwest.
#[cfg(feature = "sqlite")]
pub fn client_over<L>(layer: L) -> Client
where
    L: tower::Layer<HttpClient>,
    L::Service: tower::Service<
            http::Request<reqwest::Body>,
            Response = http::Response<reqwest::Body>,
            Error = BoxError,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<reqwest::Body>>>::Future: Send + 'static,
{
    ServiceBuilder::new()
        .layer(ContextLayer::new().classifier(PathSegment::after("/api/")))
        .layer(layer)
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone()
}

pub async fn get(client: &Client, url: &str) -> Result<http::Response<reqwest::Body>, BoxError> {
    let request = http::Request::get(url)
        .body(reqwest::Body::from(""))
        .expect("a valid request");
    client.clone().oneshot(request).await
}

/// Through reqwest-middleware, the upstream call is timed in the handoff: the response's report
/// says what the upstream answered, and a hit says nothing.
#[tokio::test]
async fn the_report_carries_the_upstream_answer_on_the_middleware_path() {
    use courteous::{CourteousMiddleware, Report};
    let server = support::server::TestServer::start().await;
    let stack = ServiceBuilder::new()
        .layer(ContextLayer::new().classifier(PathSegment::after("/api/")))
        .layer(
            CacheLayer::new(MemoryCacheStore::new())
                .default_ttl(CacheTtl::absolute(Duration::from_secs(300))),
        );
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CourteousMiddleware::new(stack))
        .build();
    let url = server.url("/api/things/1");
    let first = client.get(&url).send().await.unwrap();
    let upstream = Report::of(&http::Response::from(first))
        .and_then(|r| r.upstream)
        .expect("the miss reached the upstream");
    assert_eq!(upstream.status, http::StatusCode::OK);
    let second = http::Response::from(client.get(&url).send().await.unwrap());
    let report = Report::of(&second).expect("a report");
    assert_eq!(report.cache, Some(courteous::CacheStatus::Hit));
    assert_eq!(report.upstream, None);
    server.stop().await;
}
