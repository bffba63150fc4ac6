//! The tower path: `ContextLayer -> CacheLayer -> DedupeLayer -> HttpClient`.

use std::time::Duration;

use courteous::cache::{CacheLayer, CacheTtl};
use courteous::{
    BoxError, CacheStatus, ContextLayer, DedupeLayer, DefaultKeyExtractor, HttpClient, Report,
};
use http::HeaderName;
use http_body_util::BodyExt;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

use crate::support::TestServer;
use crate::support::server::Log;
use crate::{Got, Stores, contains, on_memory_and_sqlite, server};
use axum::body::Body;
use axum::response::Response;

type Client =
    BoxCloneService<http::Request<reqwest::Body>, http::Response<reqwest::Body>, BoxError>;

const FIVE_MINUTES: Duration = Duration::from_secs(300);

/// `context -> cache -> dedupe -> HttpClient` over `stores`.
fn client(stores: &Stores, context: ContextLayer, cache: CacheLayer) -> Client {
    ServiceBuilder::new()
        .layer(context)
        .layer(cache)
        .layer(DedupeLayer::new(stores.dedupe.clone()))
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone()
}

/// `ContextLayer -> cache -> HttpClient`: no dedupe, whose completed results would answer a
/// repeated request on their own.
fn cache_only(cache: CacheLayer) -> Client {
    ServiceBuilder::new()
        .layer(ContextLayer::new())
        .layer(cache)
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone()
}

/// A private cache with a forced TTL, so that every 200 is stored.
fn forced(stores: &Stores) -> CacheLayer {
    CacheLayer::new(stores.cache.clone()).default_ttl(CacheTtl::absolute(FIVE_MINUTES))
}

async fn send(client: &Client, request: http::request::Builder) -> Got {
    let request = request.body(reqwest::Body::from("")).unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    let report = Report::of(&response).cloned();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got::new(report.as_ref(), &parts.headers, &body)
}

on_memory_and_sqlite!(
    cookie_and_proxy_authorization_are_keyed,
    url_userinfo_is_keyed_and_never_stored,
    credential_looking_headers_bypass_unless_keyed,
    dedupe_never_merges_different_credentials,
    query_bytes_are_compared_as_bytes,
    shared_cache_never_stores_private_or_set_cookie_responses,
    shared_cache_never_stores_a_revalidation_that_sets_a_cookie,
    default_headers_of_the_client_are_keyed,
    host_header_is_keyed,
    dedupe_honours_vary,
);

/// Regression: a request with another `Cookie` (and no `Authorization`) got the first user's
/// cached body and `Set-Cookie`.
async fn cookie_and_proxy_authorization_are_keyed(stores: Stores) {
    let server = server().await;
    let client = client(&stores, ContextLayer::new(), forced(&stores));
    for header in ["cookie", "proxy-authorization"] {
        let url = server.url(&format!("/api/{header}?set_cookie=1"));
        let as_user = |who: &str| http::Request::get(&url).header(header, format!("secret-{who}"));
        let alice = send(&client, as_user("alice")).await;
        let bob = send(&client, as_user("bob")).await;
        assert_eq!(bob.cache, Some(CacheStatus::Miss), "{header}");
        assert_ne!(alice.body, bob.body, "{header}");
        assert_ne!(alice.set_cookie, bob.set_cookie, "{header}");
        // Each user's entry is served to that user only.
        let alice_again = send(&client, as_user("alice")).await;
        let bob_again = send(&client, as_user("bob")).await;
        assert_eq!(alice_again.cache, Some(CacheStatus::Hit), "{header}");
        assert_eq!(bob_again.cache, Some(CacheStatus::Hit), "{header}");
        assert_eq!(
            (&alice_again.body, &alice_again.set_cookie),
            (&alice.body, &alice.set_cookie)
        );
        assert_eq!(
            (&bob_again.body, &bob_again.set_cookie),
            (&bob.body, &bob.set_cookie)
        );
        // Nobody without the credential gets either.
        let anonymous = send(&client, http::Request::get(&url)).await;
        assert_eq!(anonymous.cache, Some(CacheStatus::Miss), "{header}");
    }
    assert_eq!(server.hits(), 6);
    // The credentials are hashed, never stored in clear.
    let at_rest = stores.bytes_at_rest().await;
    assert!(!contains(&at_rest, "secret-alice") && !contains(&at_rest, "secret-bob"));
}

/// Regression: on the tower path, different URL userinfo shared an entry.
async fn url_userinfo_is_keyed_and_never_stored(stores: Stores) {
    let server = server().await;
    let client = client(&stores, ContextLayer::new(), forced(&stores));
    let url = |who: &str| format!("http://{who}:pw-of-{who}@{}/api/items/1", server.addr);
    let alice = send(&client, http::Request::get(url("alice"))).await;
    let bob = send(&client, http::Request::get(url("bob"))).await;
    assert_eq!(bob.cache, Some(CacheStatus::Miss));
    assert_ne!(alice.body, bob.body);
    let alice_again = send(&client, http::Request::get(url("alice"))).await;
    assert_eq!(alice_again.cache, Some(CacheStatus::Hit));
    assert_eq!(alice_again.body, alice.body);
    let anonymous = send(&client, http::Request::get(server.url("/api/items/1"))).await;
    assert_eq!(anonymous.cache, Some(CacheStatus::Miss));
    assert_eq!(server.hits(), 3);
    let at_rest = stores.bytes_at_rest().await;
    assert!(!contains(&at_rest, "pw-of-alice") && !contains(&at_rest, "pw-of-bob"));
}

/// A credential header the key does not cover bypasses cache and dedupe; `key_headers` makes it
/// part of the key.
async fn credential_looking_headers_bypass_unless_keyed(stores: Stores) {
    let server = server().await;
    let url = server.url("/api/items/2");
    let with_key = |key: &str| http::Request::get(&url).header("x-api-key", key);

    let unkeyed = client(&stores, ContextLayer::new(), forced(&stores));
    let first = send(&unkeyed, with_key("key-of-alice")).await;
    let second = send(&unkeyed, with_key("key-of-bob")).await;
    assert_eq!(first.cache, Some(CacheStatus::Bypass));
    assert_eq!(second.cache, Some(CacheStatus::Bypass));
    assert_ne!(first.body, second.body);
    assert_eq!(server.hits(), 2);

    let keys = DefaultKeyExtractor::new().key_headers([HeaderName::from_static("x-api-key")]);
    let keyed = client(
        &stores,
        ContextLayer::new().key_extractor(keys),
        forced(&stores),
    );
    let alice = send(&keyed, with_key("key-of-alice")).await;
    let bob = send(&keyed, with_key("key-of-bob")).await;
    let alice_again = send(&keyed, with_key("key-of-alice")).await;
    assert_eq!(
        (alice.cache, bob.cache, alice_again.cache),
        (
            Some(CacheStatus::Miss),
            Some(CacheStatus::Miss),
            Some(CacheStatus::Hit)
        )
    );
    assert_ne!(alice.body, bob.body);
    assert_eq!(alice_again.body, alice.body);
    assert_eq!(server.hits(), 4);
    let at_rest = stores.bytes_at_rest().await;
    assert!(!contains(&at_rest, "key-of-alice") && !contains(&at_rest, "key-of-bob"));
}

/// Concurrent identical requests of two users are two upstream calls; of one user, one.
async fn dedupe_never_merges_different_credentials(stores: Stores) {
    let server = server().await;
    // No cache: dedupe alone decides.
    let client: Client = ServiceBuilder::new()
        .layer(ContextLayer::new())
        .layer(DedupeLayer::new(stores.dedupe.clone()))
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone();
    let url = server.url("/api/slow?delay_ms=400");
    for header in ["cookie", "authorization", "proxy-authorization"] {
        let before = server.hits();
        let as_user = |who: &str| http::Request::get(&url).header(header, format!("s-{who}"));
        let (alice, bob) = tokio::join!(
            send(&client, as_user("alice")),
            send(&client, as_user("bob"))
        );
        assert_ne!(alice.body, bob.body, "{header}");
        assert_eq!(server.hits() - before, 2, "{header}");
    }
    // The same user's requests are merged (so the layer was active above).
    let before = server.hits();
    // (A user not seen above: a completed result may still serve alice's key.)
    let as_carol = || http::Request::get(&url).header("cookie", "s-carol");
    let (one, two) = tokio::join!(send(&client, as_carol()), send(&client, as_carol()));
    assert_eq!(one.body, two.body);
    assert_eq!(server.hits() - before, 1);
}

/// Regression: `q=%FF`, `q=%FE` and `q=%EF%BF%BD` were one key (decoded lossily to U+FFFD).
async fn query_bytes_are_compared_as_bytes(stores: Stores) {
    let server = server().await;
    let client = client(&stores, ContextLayer::new(), forced(&stores));
    let url = |q: &str| server.url(&format!("/api/search?q={q}"));
    let mut bodies = Vec::new();
    for q in ["%FF", "%FE", "%EF%BF%BD"] {
        let got = send(&client, http::Request::get(url(q))).await;
        assert_eq!(got.cache, Some(CacheStatus::Miss), "{q}");
        bodies.push(got.body);
    }
    assert_eq!(server.hits(), 3);
    for (q, body) in ["%FF", "%FE", "%EF%BF%BD"].iter().zip(&bodies) {
        let got = send(&client, http::Request::get(url(q))).await;
        assert_eq!(got.cache, Some(CacheStatus::Hit), "{q}");
        assert_eq!(&got.body, body, "{q}");
    }
    // The encoding of one byte does not matter.
    let lower = send(&client, http::Request::get(url("%ff"))).await;
    assert_eq!(lower.cache, Some(CacheStatus::Hit));
    assert_eq!(lower.body, bodies[0]);
    assert_eq!(server.hits(), 3);
}

/// Regression: with a forced TTL, a shared cache stored and served `Cache-Control: private` and
/// `Set-Cookie` responses.
async fn shared_cache_never_stores_private_or_set_cookie_responses(stores: Stores) {
    let server = server().await;
    let shared = cache_only(forced(&stores).shared(true));
    for query in [
        "cache_control=private",
        "cache_control=private,max-age=600",
        "set_cookie=1",
    ] {
        let url = server.url(&format!("/api/shared?{query}"));
        let first = send(&shared, http::Request::get(&url)).await;
        let second = send(&shared, http::Request::get(&url)).await;
        assert_eq!(first.cache, Some(CacheStatus::Miss), "{query}");
        assert_eq!(second.cache, Some(CacheStatus::Miss), "{query}");
        assert_ne!(first.body, second.body, "{query}");
    }
    assert_eq!(server.hits(), 6);

    // Opting in shares Set-Cookie responses, never private ones.
    let opted_in = cache_only(forced(&stores).shared(true).share_set_cookie(true));
    let url = server.url("/api/cookie-opt-in?set_cookie=1");
    let first = send(&opted_in, http::Request::get(&url)).await;
    let second = send(&opted_in, http::Request::get(&url)).await;
    assert_eq!(second.cache, Some(CacheStatus::Hit));
    assert_eq!(second.set_cookie, first.set_cookie);
    let url = server.url("/api/private-opt-in?cache_control=private");
    send(&opted_in, http::Request::get(&url)).await;
    let again = send(&opted_in, http::Request::get(&url)).await;
    assert_eq!(again.cache, Some(CacheStatus::Miss));

    // A private cache keeps storing both (it serves one user).
    let private = cache_only(forced(&stores));
    for query in ["cache_control=private", "set_cookie=1"] {
        let url = server.url(&format!("/api/private-cache?{query}"));
        send(&private, http::Request::get(&url)).await;
        let again = send(&private, http::Request::get(&url)).await;
        assert_eq!(again.cache, Some(CacheStatus::Hit), "{query}");
    }
}

/// A `304` that sets a cookie is served to its requester, but the entry it refreshes is not
/// stored with that cookie for the next user.
async fn shared_cache_never_stores_a_revalidation_that_sets_a_cookie(stores: Stores) {
    use axum::extract::{Request, State};
    use std::sync::Arc;

    async fn revalidating(State(log): State<Arc<Log>>, request: Request) -> Response {
        let n = log.record(&request);
        let revalidation = request
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"");
        let response = Response::builder()
            .header("etag", "\"v1\"")
            .header("cache-control", "no-cache");
        if !revalidation {
            return response.body(Body::from(format!("call {n}"))).unwrap();
        }
        let response = response.status(304);
        // Only the first revalidation sets a cookie.
        let response = if n == 2 {
            response.header("set-cookie", "session=second-user")
        } else {
            response
        };
        response.body(Body::empty()).unwrap()
    }

    let server =
        TestServer::with_router(|log| axum::Router::new().fallback(revalidating).with_state(log))
            .await;
    let shared = cache_only(CacheLayer::new(stores.cache.clone()).shared(true));
    let url = server.url("/api/revalidated");
    let first = send(&shared, http::Request::get(&url)).await;
    assert_eq!(first.cache, Some(CacheStatus::Miss));
    let second = send(&shared, http::Request::get(&url)).await;
    assert_eq!(second.cache, Some(CacheStatus::Revalidated));
    assert_eq!(second.set_cookie.as_deref(), Some("session=second-user"));
    let third = send(&shared, http::Request::get(&url)).await;
    assert_eq!(third.cache, Some(CacheStatus::Revalidated));
    assert_eq!(third.body, first.body);
    assert_eq!(
        third.set_cookie, None,
        "the second user's cookie was stored"
    );
    assert_eq!(server.hits(), 3);
}

/// A `reqwest::Client`'s default headers are keyed when `ContextLayer::default_headers` knows
/// them: two clients with different default credentials over one store never share.
async fn default_headers_of_the_client_are_keyed(stores: Stores) {
    let server = server().await;
    let client_of = |who: &str| {
        let mut defaults = http::HeaderMap::new();
        defaults.insert("authorization", format!("Bearer {who}").parse().unwrap());
        let reqwest = reqwest::Client::builder()
            .default_headers(defaults.clone())
            .build()
            .unwrap();
        ServiceBuilder::new()
            .layer(ContextLayer::new().default_headers(defaults))
            .layer(forced(&stores))
            .layer(DedupeLayer::new(stores.dedupe.clone()))
            .service(HttpClient::new(reqwest))
            .boxed_clone()
    };
    let (alice, bob) = (client_of("alice"), client_of("bob"));
    let url = server.url("/api/items/3");
    let a = send(&alice, http::Request::get(&url)).await;
    let b = send(&bob, http::Request::get(&url)).await;
    assert_eq!(b.cache, Some(CacheStatus::Miss));
    assert_ne!(a.body, b.body);
    assert_eq!(send(&alice, http::Request::get(&url)).await.body, a.body);
    assert_eq!(send(&bob, http::Request::get(&url)).await.body, b.body);
    let seen: Vec<_> = server
        .seen()
        .iter()
        .map(|s| s.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["Bearer alice", "Bearer bob"]);
}

/// A `Host` header names the virtual host the request reaches (reqwest sends it instead of the
/// URL's authority): two tenants behind one address, asked for the same URL with different
/// `Host` headers, never share a cache entry or a dedupe result.
async fn host_header_is_keyed(stores: Stores) {
    let server = server().await;
    let client = client(&stores, ContextLayer::new(), forced(&stores));
    let url = server.url("/api/tenant/home");
    let on = |host: &str| http::Request::get(&url).header("host", host);
    let a = send(&client, on("tenant-a.example")).await;
    let b = send(&client, on("tenant-b.example")).await;
    assert_eq!(
        b.cache,
        Some(CacheStatus::Miss),
        "tenant b got tenant a's entry"
    );
    assert_ne!(a.body, b.body);
    let seen: Vec<_> = server
        .seen()
        .iter()
        .map(|s| s.headers["host"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["tenant-a.example", "tenant-b.example"]);
    // Each tenant's entry serves that tenant (the name in any case).
    let again = send(&client, on("TENANT-A.example")).await;
    assert_eq!(
        (again.cache, &again.body),
        (Some(CacheStatus::Hit), &a.body)
    );
    assert_eq!(send(&client, on("tenant-b.example")).await.body, b.body);
    // Concurrent requests of two tenants are two upstream calls.
    let slow = server.url("/api/tenant/slow?delay_ms=300");
    let before = server.hits();
    let (c, d) = tokio::join!(
        send(
            &client,
            http::Request::get(&slow).header("host", "tenant-c.example")
        ),
        send(
            &client,
            http::Request::get(&slow).header("host", "tenant-d.example")
        )
    );
    assert_ne!(c.body, d.body);
    assert_eq!(server.hits() - before, 2);
}

/// A server that answers per user (`X-User-Id`, a header no key covers) after 300 ms, and says
/// so with `Vary: X-User-Id`.
async fn per_user_server() -> TestServer {
    use axum::extract::{Request, State};
    use std::sync::Arc;
    async fn per_user(State(log): State<Arc<Log>>, request: Request) -> Response {
        log.record(&request);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let user = request
            .headers()
            .get("x-user-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nobody")
            .to_owned();
        Response::builder()
            .header("vary", "Accept-Encoding, X-User-Id")
            .body(Body::from(format!("data of {user}")))
            .unwrap()
    }
    TestServer::with_router(|log| axum::Router::new().fallback(per_user).with_state(log)).await
}

/// A response that says it varies on a request header the key does not cover is shared only
/// with requests that sent the leader's values: concurrent requests of two users (`X-User-Id`)
/// never get each other's data, in one layer or across two over one store.
async fn dedupe_honours_vary(stores: Stores) {
    let server = per_user_server().await;
    let dedupe_only = || -> Client {
        ServiceBuilder::new()
            .layer(ContextLayer::new())
            .layer(DedupeLayer::new(stores.dedupe.clone()))
            .service(HttpClient::new(reqwest::Client::new()))
            .boxed_clone()
    };
    let (one, two) = (dedupe_only(), dedupe_only());
    let url = server.url("/api/me");
    let as_user = |who: &str| http::Request::get(&url).header("x-user-id", who);
    // One layer.
    let (alice, bob) = tokio::join!(send(&one, as_user("alice")), send(&one, as_user("bob")));
    assert_eq!(alice.body, "data of alice");
    assert_eq!(bob.body, "data of bob", "bob got alice's data");
    // Two layers over one store (as two processes).
    let (carol, dave) = tokio::join!(send(&one, as_user("carol")), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(&two, as_user("dave")).await
    });
    assert_eq!(carol.body, "data of carol");
    assert_eq!(dave.body, "data of dave", "dave got carol's data");
    assert_eq!(server.hits(), 4);
    // The same user's requests are still merged, in one layer and across two (on a URL no
    // other user's result is kept for).
    let url = server.url("/api/me/again");
    let as_erin = || http::Request::get(&url).header("x-user-id", "erin");
    let (a, b, c) = tokio::join!(send(&one, as_erin()), send(&one, as_erin()), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(&two, as_erin()).await
    });
    assert_eq!((&a.body, &b.body, &c.body), (&a.body, &a.body, &a.body));
    assert_eq!(a.body, "data of erin");
    assert_eq!(
        server.hits(),
        5,
        "one user's requests were not merged: {a:?} {b:?} {c:?}"
    );
}

/// A GET made after a POST to its URL succeeded never receives a response of a GET sent before
/// it, whichever process made the POST. Here the POST goes through a second layer over the same
/// store (as another process would): the store's lease of the first GET is discarded, but the
/// first layer's local flight still takes the later GET as a follower.
async fn an_unsafe_request_elsewhere_ends_local_flights(stores: Stores) {
    let server = server().await;
    let dedupe_only = || -> Client {
        ServiceBuilder::new()
            .layer(ContextLayer::new())
            .layer(DedupeLayer::new(stores.dedupe.clone()))
            .service(HttpClient::new(reqwest::Client::new()))
            .boxed_clone()
    };
    let (one, two) = (dedupe_only(), dedupe_only());
    let url = server.url("/api/doc?delay_ms=800");
    let (before, after) = tokio::join!(send(&one, http::Request::get(&url)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        send(&two, http::Request::post(server.url("/api/doc"))).await;
        send(&one, http::Request::get(&url)).await
    });
    assert_ne!(
        before.body, after.body,
        "a GET made after the POST got the response of a GET sent before it"
    );
}

/// Known defect, not fixed: see [`an_unsafe_request_elsewhere_ends_local_flights`].
mod unsafe_request_elsewhere {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "defect: an unsafe request made through another DedupeLayer (another process) \
                discards the store's lease but not this layer's local flight, so a GET made \
                after the POST joins a GET sent before it and gets the pre-POST response"]
    async fn memory() {
        super::an_unsafe_request_elsewhere_ends_local_flights(crate::Stores::memory()).await;
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "defect: an unsafe request made through another DedupeLayer (another process) \
                discards the store's lease but not this layer's local flight, so a GET made \
                after the POST joins a GET sent before it and gets the pre-POST response"]
    async fn sqlite() {
        super::an_unsafe_request_elsewhere_ends_local_flights(crate::Stores::sqlite().await).await;
    }
}
