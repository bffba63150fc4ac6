//! RFC 9111 section 4.3.4 (freshening stored responses upon validation): a `304` whose `Vary`
//! differs from the stored response's is not applied to the old variant.

use std::time::Duration;

use courteous::cache::CacheStatus;

use super::{Asked, Case, Reply};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// `/v`: first `Vary: Accept-Language`, `max-age=10`, `ETag: "a"`; a request with
/// `If-None-Match: "a"` gets a `304` that says `Vary: <vary_304>`; other requests a new `200`
/// with that `Vary` too.
fn vary_changes(vary_304: &'static str) -> impl Fn(&Asked) -> Reply + Send + Sync + 'static {
    move |asked| {
        if asked.n == 1 {
            return Reply::ok()
                .header("cache-control", "max-age=10")
                .header("etag", "\"a\"")
                .header("vary", "Accept-Language");
        }
        let reply = if asked
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"a\"")
        {
            Reply::status(304).body("")
        } else {
            Reply::ok()
        };
        reply
            .header("cache-control", "max-age=600")
            .header("etag", "\"a\"")
            .header("vary", vary_304)
    }
}

fn as_user(case: &Case, user: &str) -> http::request::Builder {
    http::Request::get(case.url("/v"))
        .header("accept-language", "en")
        .header("x-user", user)
}

/// The `304` adds `X-User` to `Vary`: the revalidated body is served to the request that
/// revalidated it and stored under the new `Vary`, so another user (same language) is not
/// served it, and the first user still is.
async fn s4_3_4_304_with_a_new_vary_is_not_applied_to_the_old_variant(case: Case) {
    let label = case.label();
    case.origin
        .script("/v", vary_changes("Accept-Language, X-User"));
    let client = case.client();
    let first = case.send(&client, as_user(&case, "alice")).await;
    assert_eq!(first.cache, Some(CacheStatus::Miss), "{label}");
    case.advance(SECS(20));

    let revalidated = case.send(&client, as_user(&case, "alice")).await;
    assert_eq!(
        (revalidated.cache, revalidated.text().as_str()),
        (Some(CacheStatus::Revalidated), "/v 1"),
        "{label}"
    );
    assert_eq!(
        revalidated.header("vary"),
        Some("Accept-Language, X-User"),
        "{label}"
    );
    case.flush().await;

    let bob = case.send(&client, as_user(&case, "bob")).await;
    assert_eq!(
        (bob.cache, bob.text().as_str()),
        (Some(CacheStatus::Miss), "/v 3"),
        "{label}"
    );
    let alice = case.send(&client, as_user(&case, "alice")).await;
    assert_eq!(
        (alice.cache, alice.text().as_str()),
        (Some(CacheStatus::Hit), "/v 1"),
        "{label}"
    );
    assert_eq!(case.origin.hits("/v"), 3, "{label}");
}
rfc9111!(s4_3_4_304_with_a_new_vary_is_not_applied_to_the_old_variant);

/// A `304` that says `Vary: *` is served to the request that revalidated, and nothing is kept:
/// the next request goes to the origin.
async fn s4_3_4_304_with_vary_star_leaves_nothing_stored(case: Case) {
    let label = case.label();
    case.origin.script("/v", vary_changes("*"));
    let client = case.client();
    case.send(&client, as_user(&case, "alice")).await;
    case.advance(SECS(20));
    let revalidated = case.send(&client, as_user(&case, "alice")).await;
    assert_eq!(
        (revalidated.cache, revalidated.text().as_str()),
        (Some(CacheStatus::Revalidated), "/v 1"),
        "{label}"
    );
    case.flush().await;
    let again = case.send(&client, as_user(&case, "alice")).await;
    assert_eq!(
        (again.cache, again.text().as_str()),
        (Some(CacheStatus::Miss), "/v 3"),
        "{label}"
    );
    assert_eq!(case.origin.hits("/v"), 3, "{label}");
}
rfc9111!(s4_3_4_304_with_vary_star_leaves_nothing_stored);

/// A `304` with the same `Vary` refreshes the variant in place (the control case).
async fn s4_3_4_304_with_the_same_vary_refreshes_the_variant(case: Case) {
    let label = case.label();
    case.origin.script("/v", vary_changes("Accept-Language"));
    let client = case.client();
    case.send(&client, as_user(&case, "alice")).await;
    case.advance(SECS(20));
    let revalidated = case.send(&client, as_user(&case, "alice")).await;
    assert_eq!(revalidated.cache, Some(CacheStatus::Revalidated), "{label}");
    case.flush().await;
    let bob = case.send(&client, as_user(&case, "bob")).await;
    assert_eq!(
        (bob.cache, bob.text().as_str()),
        (Some(CacheStatus::Hit), "/v 1"),
        "{label}"
    );
    assert_eq!(case.origin.hits("/v"), 2, "{label}");
}
rfc9111!(s4_3_4_304_with_the_same_vary_refreshes_the_variant);

/// A `304` that names another entity-tag than the stored response's does not update it ("MUST
/// NOT use the new response to update any stored responses"): the cache drops the entry and
/// fetches the resource whole, so the caller gets the current body, never the old one under
/// the new headers. A `304` without an `ETag` still refreshes (servers often omit it).
async fn s4_3_4_304_with_another_etag_is_not_applied(case: Case) {
    let label = case.label();
    case.origin.script("/e", |asked| {
        let conditional = asked.headers.get("if-none-match").is_some();
        match (asked.n, conditional) {
            (1, _) => Reply::ok()
                .header("cache-control", "max-age=10")
                .header("etag", "\"a\""),
            (_, true) => Reply::status(304)
                .body("")
                .header("cache-control", "max-age=600")
                .header("etag", "\"b\""),
            (_, false) => Reply::ok()
                .header("cache-control", "max-age=600")
                .header("etag", "\"b\""),
        }
    });
    case.origin.script("/no-etag", |asked| {
        if asked.n == 1 {
            Reply::ok()
                .header("cache-control", "max-age=10")
                .header("etag", "\"a\"")
        } else {
            Reply::status(304)
                .body("")
                .header("cache-control", "max-age=600")
        }
    });
    let client = case.client();
    case.get(&client, "/e").await;
    case.get(&client, "/no-etag").await;
    case.advance(SECS(20));

    let got = case.get(&client, "/e").await;
    assert_eq!(
        (got.status.as_u16(), got.cache, got.text().as_str()),
        (200, Some(CacheStatus::Miss), "/e 3"),
        "{label}"
    );
    assert_eq!(got.header("etag"), Some("\"b\""), "{label}");
    let seen = case.origin.seen();
    assert!(
        seen.last().unwrap().headers.get("if-none-match").is_none(),
        "{label}: the second fetch is unconditional"
    );
    case.flush().await;
    let hit = case.get(&client, "/e").await;
    assert_eq!(
        (hit.cache, hit.text().as_str()),
        (Some(CacheStatus::Hit), "/e 3"),
        "{label}"
    );
    assert_eq!(case.origin.hits("/e"), 3, "{label}");

    let refreshed = case.get(&client, "/no-etag").await;
    assert_eq!(
        (refreshed.cache, refreshed.text().as_str()),
        (Some(CacheStatus::Revalidated), "/no-etag 1"),
        "{label}"
    );
}
rfc9111!(s4_3_4_304_with_another_etag_is_not_applied);

/// The same through a stale-while-revalidate background refresh: nobody waits for a body, so
/// the entry the `304` does not describe is dropped (and not refreshed).
async fn s4_3_4_background_304_with_another_etag_drops_the_entry(case: Case) {
    let label = case.label();
    case.origin.script("/swr", |asked| {
        if asked.n == 1 {
            Reply::ok()
                .header("cache-control", "max-age=10, stale-while-revalidate=600")
                .header("etag", "\"a\"")
        } else {
            Reply::status(304)
                .body("")
                .header("cache-control", "max-age=600")
                .header("etag", "\"b\"")
        }
    });
    let client = case.client();
    case.get(&client, "/swr").await;
    case.advance(SECS(20));
    let stale = case.get(&client, "/swr").await;
    assert_eq!(stale.cache, Some(CacheStatus::Stale), "{label}");

    // `OnlyIfCached` reads the store without refreshing: 504 once the entry is gone.
    let only = || {
        http::Request::get(case.url("/swr")).extension(courteous::cache::CacheMode::OnlyIfCached)
    };
    let deadline = std::time::Instant::now() + SECS(20);
    loop {
        let got = case.send(&client, only()).await;
        if got.status == http::StatusCode::GATEWAY_TIMEOUT {
            break;
        }
        assert_eq!(got.text(), "/swr 1", "{label}");
        assert!(
            std::time::Instant::now() < deadline,
            "{label}: the entry was kept after a 304 for another entity-tag"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(case.origin.hits("/swr"), 2, "{label}");
}
rfc9111!(s4_3_4_background_304_with_another_etag_drops_the_entry);

/// A `304` that says `no-store` leaves nothing stored (RFC 9111 section 3: the updated
/// response may not be stored), with or without a forced TTL: the next request goes upstream
/// unconditionally, and a forced TTL does not turn the `304`'s refusal into a hit. Found in
/// review: the merged entry was stored again (and, under a forced TTL, served as fresh).
async fn s4_3_4_304_with_no_store_leaves_nothing_stored(case: Case) {
    let label = case.label();
    for path in ["/n", "/api/things/1"] {
        case.origin.script(path, |asked| {
            if asked.headers.contains_key("if-none-match") {
                Reply::status(304)
                    .body("")
                    .header("cache-control", "no-store")
                    .header("etag", "\"a\"")
            } else {
                Reply::ok()
                    .header("cache-control", "max-age=10")
                    .header("etag", "\"a\"")
            }
        });
    }
    let client = case.client_with(|l| {
        l.resource_ttl(
            "things",
            courteous::cache::CacheTtl::absolute(Duration::from_secs(10)),
        )
    });
    for path in ["/n", "/api/things/1"] {
        case.get(&client, path).await;
        case.advance(SECS(20));
        let revalidated = case.get(&client, path).await;
        assert_eq!(
            revalidated.cache,
            Some(CacheStatus::Revalidated),
            "{label} {path}"
        );
        case.flush().await;
        let next = case.get(&client, path).await;
        assert_ne!(next.cache, Some(CacheStatus::Hit), "{label} {path}");
        let seen = case.origin.seen();
        assert!(
            seen.last().unwrap().headers.get("if-none-match").is_none(),
            "{label} {path}: nothing was stored to revalidate"
        );
        assert_eq!(case.origin.hits(path), 3, "{label} {path}");
    }
}
rfc9111!(s4_3_4_304_with_no_store_leaves_nothing_stored);
