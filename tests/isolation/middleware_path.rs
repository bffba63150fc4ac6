//! The reqwest-middleware path: `CourteousMiddleware` running `CacheLayer -> DedupeLayer` inside a
//! `ClientWithMiddleware`.

use std::time::Duration;

use courteous::cache::{CacheLayer, CacheTtl};
use courteous::{CacheStatus, ContextLayer, CourteousMiddleware, DedupeLayer, Report};
use reqwest_middleware::ClientWithMiddleware;
use tower::ServiceBuilder;

use crate::{Got, Stores, contains, on_memory_and_sqlite, server};

/// A client over `stores` whose `reqwest::Client` has `defaults`, told to the middleware when
/// `tell` is set.
fn client(stores: &Stores, defaults: http::HeaderMap, tell: bool) -> ClientWithMiddleware {
    let reqwest = reqwest::Client::builder()
        .default_headers(defaults.clone())
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(ContextLayer::new())
        .layer(
            CacheLayer::new(stores.cache.clone())
                .default_ttl(CacheTtl::absolute(Duration::from_secs(300))),
        )
        .layer(DedupeLayer::new(stores.dedupe.clone()));
    let mut middleware = CourteousMiddleware::new(stack);
    if tell {
        middleware = middleware.default_headers(defaults);
    }
    reqwest_middleware::ClientBuilder::new(reqwest)
        .with(middleware)
        .build()
}

fn authorization(who: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {who}").parse().unwrap());
    headers
}

async fn got(response: reqwest::Response) -> Got {
    let report = response.extensions().get::<Report>().cloned();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    Got::new(report.as_ref(), &headers, &body)
}

async fn get(client: &ClientWithMiddleware, url: &str) -> Got {
    got(client.get(url).send().await.unwrap()).await
}

on_memory_and_sqlite!(
    clients_with_different_default_headers_never_share,
    default_headers_never_replace_the_requests_own,
    cookie_and_userinfo_are_keyed,
);

/// Regression: reqwest adds `default_headers` after the middleware chain, so two clients with
/// different default `Authorization` over one store shared cache entries and dedupe results.
async fn clients_with_different_default_headers_never_share(stores: Stores) {
    let server = server().await;
    let alice = client(&stores, authorization("alice"), true);
    let bob = client(&stores, authorization("bob"), true);

    // Cache.
    let url = server.url("/api/items/1");
    let a = get(&alice, &url).await;
    let b = get(&bob, &url).await;
    assert_eq!(b.cache, Some(CacheStatus::Miss));
    assert_ne!(a.body, b.body);
    let (a2, b2) = (get(&alice, &url).await, get(&bob, &url).await);
    assert_eq!(
        (a2.cache, b2.cache),
        (Some(CacheStatus::Hit), Some(CacheStatus::Hit))
    );
    assert_eq!((a2.body, b2.body), (a.body, b.body));

    // Dedupe: concurrent identical requests of the two clients are two upstream calls.
    let url = server.url("/api/slow?delay_ms=400");
    let (a, b) = tokio::join!(get(&alice, &url), get(&bob, &url));
    assert_ne!(a.body, b.body);

    let seen: Vec<_> = server
        .seen()
        .iter()
        .map(|s| s.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.iter().filter(|s| *s == "Bearer alice").count(), 2);
    assert_eq!(seen.iter().filter(|s| *s == "Bearer bob").count(), 2);
    let at_rest = stores.bytes_at_rest().await;
    assert!(!contains(&at_rest, "Bearer alice") && !contains(&at_rest, "Bearer bob"));
}

/// A request's own header wins over the default, as in reqwest, and is what the key covers.
async fn default_headers_never_replace_the_requests_own(stores: Stores) {
    let server = server().await;
    let alice = client(&stores, authorization("alice"), true);
    let url = server.url("/api/items/2");
    let as_alice = get(&alice, &url).await;
    let as_carol = got(alice
        .get(&url)
        .header("authorization", "Bearer carol")
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(as_carol.cache, Some(CacheStatus::Miss));
    assert_ne!(as_carol.body, as_alice.body);
    let seen: Vec<_> = server
        .seen()
        .iter()
        .map(|s| {
            let values = s.headers.get_all("authorization");
            values
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(seen, [vec!["Bearer alice"], vec!["Bearer carol"]]);
}

/// `Cookie` and URL userinfo reach the key through the middleware too.
async fn cookie_and_userinfo_are_keyed(stores: Stores) {
    let server = server().await;
    let client = client(&stores, http::HeaderMap::new(), false);
    let url = server.url("/api/items/3?set_cookie=1");
    let with_cookie = |who: &str| {
        let request = client.get(&url).header("cookie", format!("session={who}"));
        async move { got(request.send().await.unwrap()).await }
    };
    let alice = with_cookie("alice").await;
    let bob = with_cookie("bob").await;
    assert_eq!(bob.cache, Some(CacheStatus::Miss));
    assert_ne!(alice.set_cookie, bob.set_cookie);
    let alice_again = with_cookie("alice").await;
    assert_eq!(alice_again.cache, Some(CacheStatus::Hit));
    assert_eq!(alice_again.set_cookie, alice.set_cookie);

    // Userinfo: moved to `Authorization` by reqwest's request builder, kept in the URL by
    // `reqwest::Request::new`; different either way.
    let url = |who: &str| format!("http://{who}:pw-{who}@{}/api/items/4", server.addr);
    let built = get(&client, &url("dave")).await;
    let by_builder = get(&client, &url("erin")).await;
    assert_eq!(by_builder.cache, Some(CacheStatus::Miss));
    assert_ne!(built.body, by_builder.body);
    let request = |who: &str| reqwest::Request::new(http::Method::GET, url(who).parse().unwrap());
    let frank = got(client.execute(request("frank")).await.unwrap()).await;
    let grace = got(client.execute(request("grace")).await.unwrap()).await;
    assert_eq!(grace.cache, Some(CacheStatus::Miss));
    assert_ne!(frank.body, grace.body);
    let frank_again = got(client.execute(request("frank")).await.unwrap()).await;
    assert_eq!(frank_again.cache, Some(CacheStatus::Hit));
    assert_eq!(frank_again.body, frank.body);
    let at_rest = stores.bytes_at_rest().await;
    assert!(!contains(&at_rest, "pw-frank") && !contains(&at_rest, "session=alice"));
}
