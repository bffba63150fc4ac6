//! Forced TTLs, RFC freshness, request directives, cache modes, keys and invalidation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use courteous::cache::{CacheLayer, CacheMode, CacheStatus, CacheTtl, MemoryCacheStore};
use courteous::{BoxError, HttpClient};
use http::StatusCode;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::support::TestServer;
use crate::{TestClock, client, get, send};

fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

#[tokio::test]
async fn forced_ttl_serves_repeats_from_the_cache_without_calling_upstream() {
    let server = TestServer::start().await;
    let layer = CacheLayer::new(MemoryCacheStore::new())
        .default_ttl(CacheTtl::absolute(minutes(5)))
        .status_header(http::HeaderName::from_static("x-cache"));
    let client = client(layer.clone());
    let url = server.url("/api/issues/1");

    let first = send(&client, get(&url)).await;
    let second = send(&client, get(&url)).await;
    assert_eq!(server.hits(), 1);
    assert_eq!(first.cache, Some(CacheStatus::Miss));
    assert_eq!(second.cache, Some(CacheStatus::Hit));
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(first.body, second.body);
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(second.header("age"), Some("0"));
    let stats = layer.stats().await;
    assert_eq!((stats.hits, stats.misses, stats.store.entries), (1, 1, 1));
    assert_eq!(stats.hit_ratio(), 0.5);
}

#[tokio::test]
async fn forced_ttl_expires_and_served_entries_carry_their_age() {
    let server = TestServer::start().await;
    let clock = TestClock::new();
    let layer = clock
        .on(CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::absolute(minutes(5))));
    let client = client(layer);
    let url = server.url("/api/issues/1");

    send(&client, get(&url)).await;
    clock.advance(Duration::from_secs(299));
    let hit = send(&client, get(&url)).await;
    assert_eq!(hit.cache, Some(CacheStatus::Hit));
    assert_eq!(hit.header("age"), Some("299"));
    clock.advance(Duration::from_secs(2));
    let miss = send(&client, get(&url)).await;
    assert_eq!(miss.cache, Some(CacheStatus::Miss));
    assert_eq!(server.hits(), 2);
    assert!(miss.text().contains(r#""n":2"#), "{}", miss.text());
}

#[tokio::test]
async fn per_resource_ttls_apply_to_their_resource_only() {
    let server = TestServer::start().await;
    let clock = TestClock::new();
    let layer = clock.on(CacheLayer::new(MemoryCacheStore::new())
        .resource_ttl("issues", CacheTtl::absolute(minutes(60)))
        .resource_ttl("search", CacheTtl::absolute(minutes(5))));
    let client = client(layer);
    let (issue, search, other) = (
        server.url("/api/issues/1"),
        server.url("/api/search?q=x"),
        server.url("/api/volumes/1"),
    );
    for url in [&issue, &search, &other] {
        send(&client, get(url)).await;
    }
    clock.advance(minutes(6));
    assert_eq!(
        send(&client, get(&issue)).await.cache,
        Some(CacheStatus::Hit)
    );
    assert_eq!(
        send(&client, get(&search)).await.cache,
        Some(CacheStatus::Miss)
    );
    // No TTL for `volumes` and no cache headers from the server: never stored.
    assert_eq!(
        send(&client, get(&other)).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(server.hits_on("/api/issues/1"), 1);
    assert_eq!(server.hits_on("/api/search"), 2);
    assert_eq!(server.hits_on("/api/volumes/1"), 2);
}

#[tokio::test]
async fn a_zero_ttl_means_do_not_store_for_resources_and_requests() {
    let server = TestServer::start().await;
    let layer = CacheLayer::new(MemoryCacheStore::new())
        .default_ttl(CacheTtl::absolute(minutes(5)))
        .resource_ttl("search", CacheTtl::absolute(Duration::ZERO));
    let client = client(layer.clone());
    let search = server.url("/api/search?q=x");
    send(&client, get(&search)).await;
    send(&client, get(&search)).await;
    assert_eq!(server.hits_on("/api/search"), 2);

    let issue = server.url("/api/issues/1");
    let zero = || get(&issue).extension(CacheTtl::absolute(Duration::ZERO));
    send(&client, zero()).await;
    send(&client, zero()).await;
    assert_eq!(server.hits_on("/api/issues/1"), 2);
    assert_eq!(layer.stats().await.store.entries, 0);
}

#[tokio::test]
async fn a_per_request_ttl_overrides_the_configured_one() {
    let server = TestServer::start().await;
    let clock = TestClock::new();
    let client =
        client(clock.on(
            CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::absolute(minutes(1))),
        ));
    let url = server.url("/api/issues/1");
    send(
        &client,
        get(&url).extension(CacheTtl::absolute(minutes(30))),
    )
    .await;
    clock.advance(minutes(10));
    assert_eq!(send(&client, get(&url)).await.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn a_sliding_ttl_is_extended_by_each_hit() {
    let server = TestServer::start().await;
    let clock = TestClock::new();
    let client =
        client(clock.on(
            CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::sliding(minutes(1))),
        ));
    let url = server.url("/api/issues/1");
    send(&client, get(&url)).await;
    for _ in 0..4 {
        clock.advance(Duration::from_secs(50));
        assert_eq!(send(&client, get(&url)).await.cache, Some(CacheStatus::Hit));
    }
    // 200 s after the store, far past an absolute minute; then idle for over a minute.
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        send(&client, get(&url)).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn only_the_configured_statuses_are_stored() {
    let server = TestServer::start().await;
    let url = server.url("/api/issues/1?status=404");
    let default = client(
        CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::absolute(minutes(5))),
    );
    send(&default, get(&url)).await;
    let again = send(&default, get(&url)).await;
    assert_eq!(
        (again.status, again.cache),
        (StatusCode::NOT_FOUND, Some(CacheStatus::Miss))
    );
    assert_eq!(server.hits(), 2);

    let with_404 = client(
        CacheLayer::new(MemoryCacheStore::new())
            .default_ttl(CacheTtl::absolute(minutes(5)))
            .statuses([StatusCode::OK, StatusCode::NOT_FOUND]),
    );
    send(&with_404, get(&url)).await;
    let hit = send(&with_404, get(&url)).await;
    assert_eq!(
        (hit.status, hit.cache),
        (StatusCode::NOT_FOUND, Some(CacheStatus::Hit))
    );
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn rfc_freshness_follows_max_age_and_stores_nothing_without_cache_headers() {
    let server = TestServer::start().await;
    let clock = TestClock::new();
    let client = client(clock.on(CacheLayer::new(MemoryCacheStore::new())));
    let fresh = server.url("/api/issues/1?cache_control=max-age%3D60");
    send(&client, get(&fresh)).await;
    clock.advance(Duration::from_secs(59));
    assert_eq!(
        send(&client, get(&fresh)).await.cache,
        Some(CacheStatus::Hit)
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        send(&client, get(&fresh)).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(server.hits_on("/api/issues/1"), 2);

    let plain = server.url("/api/volumes/1");
    send(&client, get(&plain)).await;
    assert_eq!(
        send(&client, get(&plain)).await.cache,
        Some(CacheStatus::Miss)
    );
    let no_store = server.url("/api/publishers/1?cache_control=no-store%2C%20max-age%3D60");
    send(&client, get(&no_store)).await;
    assert_eq!(
        send(&client, get(&no_store)).await.cache,
        Some(CacheStatus::Miss)
    );
}

#[tokio::test]
async fn private_responses_are_stored_by_a_private_cache_but_not_a_shared_one() {
    let server = TestServer::start().await;
    let url = server.url("/api/issues/1?cache_control=private%2C%20max-age%3D60");
    let private = client(CacheLayer::new(MemoryCacheStore::new()));
    send(&private, get(&url)).await;
    assert_eq!(
        send(&private, get(&url)).await.cache,
        Some(CacheStatus::Hit)
    );
    let shared = client(CacheLayer::new(MemoryCacheStore::new()).shared(true));
    send(&shared, get(&url)).await;
    assert_eq!(
        send(&shared, get(&url)).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn request_directives_no_cache_max_age_min_fresh_and_max_stale() {
    let server = TestServer::start().await;
    let clock = TestClock::new();
    let client = client(clock.on(CacheLayer::new(MemoryCacheStore::new())));
    let url = server.url("/api/issues/1?cache_control=max-age%3D100");
    send(&client, get(&url)).await;
    clock.advance(Duration::from_secs(30));
    let cc = |v: &'static str| get(&url).header("cache-control", v);

    assert_eq!(
        send(&client, cc("no-cache")).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(server.hits(), 2); // and the new response replaced the entry (age 0)
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        send(&client, cc("max-age=20")).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(
        send(&client, cc("max-age=20")).await.cache,
        Some(CacheStatus::Hit)
    );
    clock.advance(Duration::from_secs(50));
    // 50 s old, 50 s left: min-fresh=60 refuses it, min-fresh=40 takes it.
    assert_eq!(
        send(&client, cc("min-fresh=40")).await.cache,
        Some(CacheStatus::Hit)
    );
    assert_eq!(
        send(&client, cc("min-fresh=60")).await.cache,
        Some(CacheStatus::Miss)
    );
    clock.advance(Duration::from_secs(110));
    // 10 s stale.
    assert_eq!(
        send(&client, cc("max-stale=5")).await.cache,
        Some(CacheStatus::Miss)
    );
    clock.advance(Duration::from_secs(110));
    assert_eq!(
        send(&client, cc("max-stale=30")).await.cache,
        Some(CacheStatus::Stale)
    );
    assert_eq!(
        send(&client, cc("max-stale")).await.cache,
        Some(CacheStatus::Stale)
    );
    assert_eq!(server.hits(), 5);
}

#[tokio::test]
async fn only_if_cached_answers_504_on_a_miss_without_calling_upstream() {
    let server = TestServer::start().await;
    let client = client(
        CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::absolute(minutes(5))),
    );
    let url = server.url("/api/issues/1");
    let directive = send(&client, get(&url).header("cache-control", "only-if-cached")).await;
    assert_eq!(directive.status, StatusCode::GATEWAY_TIMEOUT);
    let mode = send(&client, get(&url).extension(CacheMode::OnlyIfCached)).await;
    assert_eq!(mode.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(server.hits(), 0);
    send(&client, get(&url)).await;
    let hit = send(&client, get(&url).header("cache-control", "only-if-cached")).await;
    assert_eq!(
        (hit.status, hit.cache),
        (StatusCode::OK, Some(CacheStatus::Hit))
    );
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn cache_modes_no_store_reload_no_cache_and_force_cache() {
    let server = TestServer::start().await;
    let clock = TestClock::new();
    let client =
        client(clock.on(
            CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::absolute(minutes(5))),
        ));
    let url = server.url("/api/issues/1");
    let with = |mode| get(&url).extension(mode);

    let bypass = send(&client, with(CacheMode::NoStore)).await;
    assert_eq!(bypass.cache, Some(CacheStatus::Bypass));
    assert_eq!(
        send(&client, get(&url).extension(CacheMode::OnlyIfCached))
            .await
            .status,
        504
    );
    assert_eq!(
        send(&client, get(&url)).await.cache,
        Some(CacheStatus::Miss)
    ); // n=2
    assert_eq!(
        send(&client, with(CacheMode::NoStore)).await.cache,
        Some(CacheStatus::Bypass)
    ); // n=3
    let reload = send(&client, with(CacheMode::Reload)).await; // n=4, stored
    assert_eq!(reload.cache, Some(CacheStatus::Miss));
    let hit = send(&client, get(&url)).await;
    assert!(hit.text().contains(r#""n":4"#), "{}", hit.text());
    assert_eq!(
        send(&client, with(CacheMode::NoCache)).await.cache,
        Some(CacheStatus::Miss)
    ); // n=5
    clock.advance(minutes(60));
    let forced = send(&client, with(CacheMode::ForceCache)).await;
    assert_eq!(forced.cache, Some(CacheStatus::Stale));
    assert!(forced.text().contains(r#""n":5"#), "{}", forced.text());
    assert_eq!(
        send(&client, with(CacheMode::OnlyIfCached)).await.cache,
        Some(CacheStatus::Stale)
    );
    assert_eq!(server.hits(), 5);
}

#[tokio::test]
async fn unsafe_requests_invalidate_the_entries_of_their_url() {
    let server = TestServer::start().await;
    let client = client(
        CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::absolute(minutes(5))),
    );
    let (item, item_query, other) = (
        server.url("/api/issues/1"),
        server.url("/api/issues/1?field_list=name"),
        server.url("/api/issues/10"),
    );
    for url in [&item, &item_query, &other] {
        send(&client, get(url)).await;
    }
    let post = send(&client, http::Request::post(&item)).await;
    assert_eq!(post.cache, Some(CacheStatus::Bypass));
    assert_eq!(
        send(&client, get(&item)).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(
        send(&client, get(&item_query)).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(
        send(&client, get(&other)).await.cache,
        Some(CacheStatus::Hit)
    );

    // A failed unsafe request invalidates nothing.
    send(
        &client,
        http::Request::delete(server.url("/api/issues/10?status=500")),
    )
    .await;
    assert_eq!(
        send(&client, get(&other)).await.cache,
        Some(CacheStatus::Hit)
    );
}

#[tokio::test]
async fn one_user_never_receives_another_users_response() {
    let server = TestServer::start().await;
    let client = client(
        CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::absolute(minutes(5))),
    );
    let url = server.url("/api/issues/1");
    let as_user = |who: &str| get(&url).header("authorization", format!("Bearer {who}"));
    let alice = send(&client, as_user("alice")).await;
    let bob = send(&client, as_user("bob")).await;
    assert_eq!(bob.cache, Some(CacheStatus::Miss));
    assert_ne!(alice.body, bob.body);
    let alice_again = send(&client, as_user("alice")).await;
    let bob_again = send(&client, as_user("bob")).await;
    assert_eq!(
        (alice_again.cache, bob_again.cache),
        (Some(CacheStatus::Hit), Some(CacheStatus::Hit))
    );
    assert_eq!(alice_again.body, alice.body);
    assert_eq!(bob_again.body, bob.body);
    let seen: Vec<_> = server
        .seen()
        .iter()
        .map(|s| {
            s.headers
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(seen, ["Bearer alice", "Bearer bob"]);
}

#[tokio::test]
async fn requests_that_cannot_be_cached_pass_through_as_bypass() {
    let server = TestServer::start().await;
    let client = client(
        CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::absolute(minutes(5))),
    );
    let url = server.url("/api/issues/1");
    send(&client, get(&url)).await;
    for request in [
        get(&url).header("range", "bytes=0-3"),
        get(&url).header("if-none-match", "\"x\""),
        http::Request::options(&url),
    ] {
        assert_eq!(
            send(&client, request).await.cache,
            Some(CacheStatus::Bypass)
        );
    }
    // A streaming body has no key.
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from("x"))]);
    let request = http::Request::get(&url)
        .body(reqwest::Body::wrap_stream(stream))
        .unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(
        courteous::Report::of(&response).unwrap().cache,
        Some(CacheStatus::Bypass)
    );
    assert_eq!(server.hits(), 5);
}

/// An inner service that counts how often its readiness is polled.
#[derive(Clone)]
struct CountReady {
    inner: HttpClient,
    polls: Arc<AtomicUsize>,
}

impl Service<http::Request<reqwest::Body>> for CountReady {
    type Response = http::Response<reqwest::Body>;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Service::<http::Request<reqwest::Body>>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<reqwest::Body>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move { Ok(future.await?) })
    }
}

#[tokio::test]
async fn a_hit_never_touches_the_inner_services_readiness() {
    let server = TestServer::start().await;
    let polls = Arc::new(AtomicUsize::new(0));
    let inner = CountReady {
        inner: HttpClient::new(reqwest::Client::new()),
        polls: polls.clone(),
    };
    let mut service = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::absolute(minutes(5))))
        .service(inner);
    let url = server.url("/api/issues/1");
    let request = || {
        http::Request::get(&url)
            .body(reqwest::Body::from(""))
            .unwrap()
    };
    service
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap();
    let after_miss = polls.load(Ordering::SeqCst);
    assert!(after_miss >= 1);
    for _ in 0..3 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        assert_eq!(
            courteous::Report::of(&response).unwrap().cache,
            Some(CacheStatus::Hit)
        );
    }
    assert_eq!(polls.load(Ordering::SeqCst), after_miss);
}

#[tokio::test]
async fn head_requests_are_cached_apart_from_get() {
    let server = TestServer::start().await;
    let client = client(
        CacheLayer::new(MemoryCacheStore::new()).default_ttl(CacheTtl::absolute(minutes(5))),
    );
    let url = server.url("/api/issues/1");
    let head = || http::Request::head(&url);
    assert_eq!(send(&client, head()).await.cache, Some(CacheStatus::Miss));
    let hit = send(&client, head()).await;
    assert_eq!((hit.cache, hit.body.len()), (Some(CacheStatus::Hit), 0));
    // A GET is another request: its body is not the HEAD's empty one.
    let got = send(&client, get(&url)).await;
    assert_eq!(got.cache, Some(CacheStatus::Miss));
    assert!(!got.body.is_empty());
    assert_eq!(server.hits(), 2);
}
