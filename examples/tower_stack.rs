//! The layers by hand, in a `tower::ServiceBuilder`: `cargo run --example tower_stack`.
//!
//! The advanced path: each layer built and configured on its own (here over in-memory stores),
//! stacked in the documented order over the [`HttpClient`] adapter, and kept as handles for
//! their statistics. A local API (no network) answers after 30 ms. Three rounds:
//!
//! 1. three identical requests at once: dedupe sends one;
//! 2. the same request again: the cache answers (and says so in an `x-cache` header);
//! 3. eight different pages at once, limited to 4 per second: the limiter paces them.
//!
//! At the end, the same stack comes from the builder ([`Courteous::layers`]) in one line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use courteous::rate_limit::MemoryRateLimitStore;
use courteous::{
    BoxError, CacheLayer, CacheTtl, ContextLayer, Courteous, DedupeLayer, HttpClient, Limit,
    Limits, MemoryCacheStore, MemoryDedupeStore, PathSegment, RateLimitLayer, Report,
};
use http::HeaderName;
use tower::{Service, ServiceBuilder, ServiceExt};

async fn api(State(calls): State<Arc<AtomicU64>>, request: Request) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    format!(r#"{{"path":"{}"}}"#, request.uri())
}

/// Sends GETs of `urls` at once through `service` and prints a line per response.
async fn round<S>(service: &S, round: &str, urls: Vec<String>) -> Result<(), BoxError>
where
    S: Service<http::Request<reqwest::Body>, Response = http::Response<reqwest::Body>> + Clone,
    S::Error: Into<BoxError>,
{
    let sends = urls.into_iter().map(|url| {
        let service = service.clone();
        async move {
            let request = http::Request::get(&url).body(reqwest::Body::from(""))?;
            let response = service.oneshot(request).await.map_err(Into::into)?;
            Ok::<_, BoxError>((url, response))
        }
    });
    for result in futures_util::future::join_all(sends).await {
        let (url, response) = result?;
        let report = Report::of(&response).cloned().unwrap_or_default();
        let header = response
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let path = url.split_once("/api/").map_or(url.as_str(), |(_, p)| p);
        println!(
            "{round:<12} {path:<22} {:>6} {header:>8} {:>10} {:>7}ms",
            response.status().as_u16(),
            report.dedupe.map_or("-".to_owned(), |d| format!("{d:?}")),
            report.rate_limit.map_or(0, |r| r.waited.as_millis()),
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let calls = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = Router::new().fallback(api).with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Each layer on its own, kept for its statistics. Clones share state.
    let cache = CacheLayer::new(MemoryCacheStore::new())
        .default_ttl(CacheTtl::absolute(Duration::from_secs(60)))
        .status_header(HeaderName::from_static("x-cache"));
    let dedupe = DedupeLayer::new(MemoryDedupeStore::new());
    let limits = Limits::new().default_limit(Limit::per_second(4));
    let rate_limit = RateLimitLayer::new(MemoryRateLimitStore::new(), limits)?;
    let service = ServiceBuilder::new()
        .layer(ContextLayer::new().classifier(PathSegment::after("/api/")))
        .layer(cache.clone())
        .layer(dedupe.clone())
        .layer(rate_limit.clone())
        .service(HttpClient::new(reqwest::Client::new()));

    println!(
        "{:<12} {:<22} {:>6} {:>8} {:>10} {:>9}",
        "round", "request", "status", "x-cache", "dedupe", "waited"
    );
    let issue = format!("{base}/api/issue/1/");
    round(&service, "1 dedupe", vec![issue.clone(); 3]).await?;
    round(&service, "2 cache", vec![issue]).await?;
    let pages = (0..8)
        .map(|page| format!("{base}/api/volumes/?offset={}", page * 100))
        .collect();
    round(&service, "3 limit", pages).await?;

    let stats = cache.stats().await;
    println!(
        "\nupstream calls: {}; cache: {} hits, {} misses; dedupe: {} followers; limiter: {} admitted",
        calls.load(Ordering::SeqCst),
        stats.hits,
        stats.misses,
        dedupe.stats().await.followers,
        rate_limit
            .stats()
            .await
            .resources
            .values()
            .map(|r| r.admitted_user + r.admitted_background)
            .sum::<u64>(),
    );

    // The same stack from the builder, as one layer.
    let stack = Courteous::new(reqwest::Client::new())
        .classifier(PathSegment::after("/api/"))
        .default_ttl(Duration::from_secs(60))
        .layers()
        .await?;
    let service = ServiceBuilder::new()
        .layer(stack)
        .service(HttpClient::new(reqwest::Client::new()));
    let request =
        http::Request::get(format!("{base}/api/issue/2/")).body(reqwest::Body::from(""))?;
    let response = service.oneshot(request).await?;
    let report = Report::of(&response).cloned().unwrap_or_default();
    println!(
        "builder stack: status {}, resource {}, cache {}",
        response.status().as_u16(),
        report.resource.map(|r| r.to_string()).unwrap_or_default(),
        report.cache.map(|c| c.to_string()).unwrap_or_default(),
    );
    Ok(())
}
