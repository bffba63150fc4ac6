//! Vary, conditional revalidation, stale-if-error and stale-while-revalidate.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use courteous::cache::{CacheLayer, CacheStatus, CacheTtl, MemoryCacheStore};
use http::StatusCode;

use crate::support::TestServer;
use crate::support::server::Log;
use crate::{TestClock, client, get, send, try_send};

/// `/vary`: `Vary: Accept-Language`, the body names the language.
async fn vary(State(log): State<Arc<Log>>, request: Request) -> Response {
    let n = log.record(&request);
    let lang = request
        .headers()
        .get("accept-language")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    Response::builder()
        .header("cache-control", "max-age=60")
        .header("vary", "Accept-Language")
        .body(Body::from(format!("{lang} {n}")))
        .unwrap()
}

/// `/etag`: `ETag: "v1"`, `max-age=1`; a request with `If-None-Match: "v1"` gets a `304` with
/// `max-age=100` and `x-version: 2`.
async fn etag(State(log): State<Arc<Log>>, request: Request) -> Response {
    let n = log.record(&request);
    let conditional = request
        .headers()
        .get("if-none-match")
        .is_some_and(|v| v == "\"v1\"");
    if conditional {
        return Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=100")
            .header("x-version", "2")
            .body(Body::empty())
            .unwrap();
    }
    Response::builder()
        .header("etag", "\"v1\"")
        .header("cache-control", "max-age=1")
        .header("x-version", "1")
        .body(Body::from(format!("body {n}")))
        .unwrap()
}

/// `/flaky`: the first call succeeds with `max-age=1, stale-if-error=600`, later ones fail with
/// a 500.
async fn flaky(State(log): State<Arc<Log>>, request: Request) -> Response {
    let n = log.record(&request);
    if n == 1 {
        Response::builder()
            .header("cache-control", "max-age=1, stale-if-error=600")
            .body(Body::from("good"))
            .unwrap()
    } else {
        Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("broken"))
            .unwrap()
    }
}

/// `/swr`: `max-age=1, stale-while-revalidate=60`; the body counts calls; calls after the first
/// take 300 ms.
async fn swr(State(log): State<Arc<Log>>, request: Request) -> Response {
    let n = log.record(&request);
    if n > 1 {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Response::builder()
        .header("cache-control", "max-age=1, stale-while-revalidate=60")
        .body(Body::from(format!("version {n}")))
        .unwrap()
}

async fn server() -> TestServer {
    TestServer::with_router(|log| {
        Router::new()
            .route("/vary", axum::routing::get(vary))
            .route("/etag", axum::routing::get(etag))
            .route("/flaky", axum::routing::get(flaky))
            .route("/swr", axum::routing::get(swr))
            .with_state(log)
    })
    .await
}

#[tokio::test]
async fn two_vary_variants_are_stored_side_by_side_and_both_served_from_cache() {
    let server = server().await;
    let client = client(CacheLayer::new(MemoryCacheStore::new()));
    let url = server.url("/vary");
    let lang = |l: &'static str| get(&url).header("accept-language", l);
    assert_eq!(send(&client, lang("en")).await.text(), "en 1");
    assert_eq!(send(&client, lang("fr")).await.text(), "fr 2");
    for _ in 0..2 {
        let en = send(&client, lang("en")).await;
        let fr = send(&client, lang("fr")).await;
        assert_eq!(
            (en.text().as_str(), en.cache),
            ("en 1", Some(CacheStatus::Hit))
        );
        assert_eq!(
            (fr.text().as_str(), fr.cache),
            ("fr 2", Some(CacheStatus::Hit))
        );
    }
    // A third variant is a miss of its own.
    assert_eq!(
        send(&client, lang("de")).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn a_304_revalidates_the_entry_and_updates_its_stored_headers() {
    let server = server().await;
    let clock = TestClock::new();
    let client = client(clock.on(CacheLayer::new(MemoryCacheStore::new())));
    let url = server.url("/etag");
    let first = send(&client, get(&url)).await;
    assert_eq!(
        (first.text().as_str(), first.header("x-version")),
        ("body 1", Some("1"))
    );
    clock.advance(Duration::from_secs(5));

    let revalidated = send(&client, get(&url)).await;
    assert_eq!(revalidated.cache, Some(CacheStatus::Revalidated));
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.text(), "body 1");
    assert_eq!(revalidated.header("x-version"), Some("2"));
    let seen = server.seen();
    assert_eq!(seen[1].headers.get("if-none-match").unwrap(), "\"v1\"");

    // The stored entry took the 304's headers and its max-age=100.
    clock.advance(Duration::from_secs(50));
    let hit = send(&client, get(&url)).await;
    assert_eq!(hit.cache, Some(CacheStatus::Hit));
    assert_eq!(hit.header("x-version"), Some("2"));
    assert_eq!(hit.header("cache-control"), Some("max-age=100"));
    assert_eq!(hit.text(), "body 1");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_entry_on_a_500() {
    let server = server().await;
    let clock = TestClock::new();
    let client = client(clock.on(CacheLayer::new(MemoryCacheStore::new())));
    let url = server.url("/flaky");
    send(&client, get(&url)).await;
    clock.advance(Duration::from_secs(30));
    let stale = send(&client, get(&url)).await;
    assert_eq!(
        (stale.status, stale.cache),
        (StatusCode::OK, Some(CacheStatus::Stale))
    );
    assert_eq!(stale.text(), "good");
    assert_eq!(stale.header("age"), Some("30"));
    assert_eq!(server.hits(), 2);
    // Past the stale-if-error window, the error comes through.
    clock.advance(Duration::from_secs(600));
    let failed = send(&client, get(&url)).await;
    assert_eq!(
        (failed.status, failed.cache),
        (StatusCode::INTERNAL_SERVER_ERROR, Some(CacheStatus::Miss))
    );
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_entry_when_the_connection_is_refused() {
    let server = TestServer::start().await;
    let clock = TestClock::new();
    let layer = clock.on(CacheLayer::new(MemoryCacheStore::new())
        .default_ttl(CacheTtl::absolute(Duration::from_secs(60)))
        .stale_if_error(Duration::from_secs(3600)));
    let client = client(layer);
    let url = server.url("/api/issues/1");
    let stored = send(&client, get(&url)).await;
    server.stop().await;
    clock.advance(Duration::from_secs(120));
    let stale = send(&client, get(&url)).await;
    assert_eq!(stale.cache, Some(CacheStatus::Stale));
    assert_eq!(stale.body, stored.body);
    // Without a stored entry the transport error comes through.
    assert!(
        try_send(&client, get(&format!("{url}?other=1")))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let server = server().await;
    let clock = TestClock::new();
    let client = client(clock.on(CacheLayer::new(MemoryCacheStore::new())));
    let url = server.url("/swr");
    send(&client, get(&url)).await;
    clock.advance(Duration::from_secs(5));
    // Both are served stale at once while the one refresh (300 ms) runs.
    for _ in 0..2 {
        let stale = send(&client, get(&url)).await;
        assert_eq!(
            (stale.text().as_str(), stale.cache),
            ("version 1", Some(CacheStatus::Stale))
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = send(&client, get(&url)).await;
        if got.text() == "version 2" {
            assert_eq!(got.cache, Some(CacheStatus::Hit));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.hits(), 2);
}

/// Through reqwest-middleware a background refresh cannot be sent (the request's middleware
/// chain has finished): one request is served stale, and the next refreshes in the foreground
/// instead of being served stale for the whole window.
#[cfg(feature = "middleware")]
#[tokio::test]
async fn through_reqwest_middleware_a_failed_background_refresh_makes_the_next_request_refresh() {
    let server = server().await;
    let clock = TestClock::new();
    let layer = clock.on(CacheLayer::new(MemoryCacheStore::new()));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(courteous::CourteousMiddleware::new(layer))
        .build();
    let url = server.url("/swr");
    let fetch = || async {
        let response = client.get(&url).send().await.unwrap();
        courteous::Report::of(&http::Response::from(response)).and_then(|r| r.cache)
    };
    let body = || async { client.get(&url).send().await.unwrap().text().await.unwrap() };
    assert_eq!(fetch().await, Some(CacheStatus::Miss));
    clock.advance(Duration::from_secs(5));
    assert_eq!(fetch().await, Some(CacheStatus::Stale));
    // Wait for the background attempt to fail (it never reaches the server).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.hits(), 1);
    assert_eq!(fetch().await, Some(CacheStatus::Miss));
    assert_eq!(server.hits(), 2);
    assert_eq!(body().await, "version 2");
    assert_eq!(server.hits(), 2);
}
