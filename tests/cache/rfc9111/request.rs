//! RFC 9111 section 5.2.1 (request directives), evaluated through `http-cache-semantics`'
//! `before_request` on the cache's own freshness (forced TTLs included), with the request
//! normalised where the crate falls short.

use std::time::Duration;

use courteous::cache::{CacheStatus, CacheTtl};

use super::{Case, Reply};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn with_cc(case: &Case, path: &str, cache_control: &str) -> http::request::Builder {
    http::Request::get(case.url(path)).header("cache-control", cache_control)
}

/// Sections 5.2.1.1 and 5.2.1.3 with directive names in any case (section 5.2: names are
/// case-insensitive): `MAX-AGE`, `Min-Fresh` and `No-Cache` are honoured.
async fn s5_2_1_directive_names_are_case_insensitive(case: Case) {
    let label = case.label();
    case.origin
        .reply("/r", Reply::ok().header("cache-control", "max-age=100"));
    let client = case.client();
    case.get(&client, "/r").await;
    case.advance(SECS(30));
    for (directive, expected) in [
        ("MAX-AGE=40", CacheStatus::Hit),
        ("MAX-AGE=20", CacheStatus::Miss),
        ("Min-Fresh=60", CacheStatus::Hit),
        ("Min-Fresh=200", CacheStatus::Miss),
        ("No-Cache", CacheStatus::Miss),
    ] {
        let got = case.send(&client, with_cc(&case, "/r", directive)).await;
        assert_eq!(got.cache, Some(expected), "{label} {directive}");
    }
    assert_eq!(case.origin.hits("/r"), 4, "{label}");
}
rfc9111!(s5_2_1_directive_names_are_case_insensitive);

/// Section 1.2.2: a delta-seconds value too large to represent means 2^31 s, so a huge
/// `min-fresh` can never be satisfied (the crate alone reads it as absent) and a huge
/// `max-stale` accepts any staleness.
async fn s5_2_1_3_huge_min_fresh_and_max_stale_saturate(case: Case) {
    let label = case.label();
    case.origin
        .reply("/r", Reply::ok().header("cache-control", "max-age=100"));
    let client = case.client();
    case.get(&client, "/r").await;
    let huge = "99999999999999999999999999";
    let fresh = case
        .send(&client, with_cc(&case, "/r", &format!("min-fresh={huge}")))
        .await;
    assert_eq!(fresh.cache, Some(CacheStatus::Miss), "{label}");
    case.advance(SECS(1000));
    let stale = case
        .send(&client, with_cc(&case, "/r", &format!("max-stale={huge}")))
        .await;
    assert_eq!(stale.cache, Some(CacheStatus::Stale), "{label}");
    assert_eq!(case.origin.hits("/r"), 2, "{label}");
}
rfc9111!(s5_2_1_3_huge_min_fresh_and_max_stale_saturate);

/// Section 5.4: `Pragma: no-cache` counts only when the request has no `Cache-Control`.
async fn s5_4_pragma_is_ignored_beside_cache_control(case: Case) {
    let label = case.label();
    case.origin
        .reply("/r", Reply::ok().header("cache-control", "max-age=100"));
    let client = case.client();
    case.get(&client, "/r").await;
    let pragma = http::Request::get(case.url("/r")).header("pragma", "no-cache");
    assert_eq!(
        case.send(&client, pragma).await.cache,
        Some(CacheStatus::Miss),
        "{label}"
    );
    let both = with_cc(&case, "/r", "max-age=600").header("pragma", "no-cache");
    assert_eq!(
        case.send(&client, both).await.cache,
        Some(CacheStatus::Hit),
        "{label}"
    );
    assert_eq!(case.origin.hits("/r"), 2, "{label}");
}
rfc9111!(s5_4_pragma_is_ignored_beside_cache_control);

/// Section 5.4: the `no-cache` pragma is case-insensitive (an ABNF string literal, RFC 5234
/// section 2.3): `Pragma: No-Cache` without `Cache-Control` is a `no-cache` request, which no
/// stored response answers unvalidated, not even a stale-while-revalidate one. Found in
/// review: only the lower-case spelling counted, so the request was a hit.
async fn s5_4_the_no_cache_pragma_in_any_case(case: Case) {
    let label = case.label();
    case.origin.reply(
        "/r",
        Reply::ok().header("cache-control", "max-age=100, stale-while-revalidate=600"),
    );
    let client = case.client();
    case.get(&client, "/r").await;
    for pragma in ["No-Cache", "NO-CACHE"] {
        let request = http::Request::get(case.url("/r")).header("pragma", pragma);
        assert_eq!(
            case.send(&client, request).await.cache,
            Some(CacheStatus::Miss),
            "{label} fresh {pragma}"
        );
        case.flush().await;
    }
    case.advance(std::time::Duration::from_secs(200));
    let request = http::Request::get(case.url("/r")).header("pragma", "No-Cache");
    assert_ne!(
        case.send(&client, request).await.cache,
        Some(CacheStatus::Stale),
        "{label} stale"
    );
    assert_eq!(case.origin.hits("/r"), 4, "{label}");
}
rfc9111!(s5_4_the_no_cache_pragma_in_any_case);

/// Sections 5.2.1.1-5.2.1.3 apply to the cache's freshness, also when a forced TTL made it:
/// `max-age`, `min-fresh` and `max-stale` against a 60 s TTL on a response without cache
/// headers.
async fn s5_2_1_directives_apply_to_forced_ttls(case: Case) {
    let label = case.label();
    let client = case.client_with(|l| l.default_ttl(CacheTtl::absolute(SECS(60))));
    case.get(&client, "/api/items/1").await;
    case.advance(SECS(30));
    let path = "/api/items/1";
    for (directive, expected) in [
        ("max-age=40", CacheStatus::Hit),
        ("min-fresh=20", CacheStatus::Hit),
        ("min-fresh=40", CacheStatus::Miss),
    ] {
        let got = case.send(&client, with_cc(&case, path, directive)).await;
        assert_eq!(got.cache, Some(expected), "{label} {directive}");
    }
    // The Miss stored a new response; 70 s later it is 10 s stale.
    case.advance(SECS(70));
    for (directive, expected) in [
        ("max-stale=600", CacheStatus::Stale),
        ("max-stale=5", CacheStatus::Miss),
    ] {
        let got = case.send(&client, with_cc(&case, path, directive)).await;
        assert_eq!(got.cache, Some(expected), "{label} {directive}");
    }
    assert_eq!(case.origin.hits(path), 3, "{label}");
}
rfc9111!(s5_2_1_directives_apply_to_forced_ttls);

/// Section 5.2.1.2: `max-stale` does not reach a response that said `must-revalidate`
/// (section 5.2.2.2); it does reach one that did not.
async fn s5_2_1_2_max_stale_stops_at_must_revalidate(case: Case) {
    let label = case.label();
    case.origin.reply(
        "/must",
        Reply::ok().header("cache-control", "max-age=10, must-revalidate"),
    );
    case.origin
        .reply("/may", Reply::ok().header("cache-control", "max-age=10"));
    let client = case.client();
    case.get(&client, "/must").await;
    case.get(&client, "/may").await;
    case.advance(SECS(20));
    let must = case
        .send(&client, with_cc(&case, "/must", "max-stale"))
        .await;
    assert_eq!(must.cache, Some(CacheStatus::Miss), "{label}");
    let may = case
        .send(&client, with_cc(&case, "/may", "max-stale"))
        .await;
    assert_eq!(may.cache, Some(CacheStatus::Stale), "{label}");
}
rfc9111!(s5_2_1_2_max_stale_stops_at_must_revalidate);

/// Request directives do not turn an authenticated request into a miss: a `public` response
/// stored for a request with `Authorization` (in a shared cache too, section 3.5) is served to
/// the same credentials under `min-fresh`.
async fn s5_2_1_3_min_fresh_with_authorization(case: Case) {
    let label = case.label();
    case.origin.reply(
        "/r",
        Reply::ok().header("cache-control", "public, max-age=600"),
    );
    let client = case.client();
    let authed = |cc: Option<&str>| {
        let request = http::Request::get(case.url("/r")).header("authorization", "Bearer t");
        match cc {
            Some(cc) => request.header("cache-control", cc),
            None => request,
        }
    };
    case.send(&client, authed(None)).await;
    let got = case.send(&client, authed(Some("min-fresh=10"))).await;
    assert_eq!(got.cache, Some(CacheStatus::Hit), "{label}");
    assert_eq!(case.origin.hits("/r"), 1, "{label}");
}
rfc9111!(s5_2_1_3_min_fresh_with_authorization);

/// Hostile request directives (garbage values, signs, quotes, huge numbers, non-UTF-8, odd
/// `Connection` and `Warning` fields the crate copies) never panic; a fresh entry is served
/// fresh or fetched again, and a stale one is served stale only under a valid `max-stale` (an
/// invalid value does not mean "any staleness").
async fn s5_2_1_hostile_request_directives_are_answered(case: Case) {
    let label = case.label();
    case.origin
        .reply("/r", Reply::ok().header("cache-control", "max-age=100"));
    let client = case.client();
    case.get(&client, "/r").await;
    // (value, whether it allows a stale answer)
    let values: &[(&[u8], bool)] = &[
        (b"max-stale=-1", false),
        (b"max-stale=\"", false),
        (b"max-stale=1.5", false),
        (b"min-fresh=1e9", false),
        (b"max-age=18446744073709551616", false),
        (b"max-age=inf, max-age=5", false),
        (b", ,=, =x, no-cache=", false),
        (b"\xff\xfe max-stale", false),
        (
            b"max-stale=99999999999999999999999999999, must-revalidate",
            true,
        ),
        (b"MAX-STALE, Max-Stale=\"7\"", true),
    ];
    let request = |value: &[u8]| {
        http::Request::get(case.url("/r"))
            .header(
                "cache-control",
                http::HeaderValue::from_bytes(value).unwrap(),
            )
            .header("connection", "x-a, , \t, warning")
            .header("warning", "199 - \"x\", 110 a b")
            .header(
                "pragma",
                http::HeaderValue::from_bytes(b"\xffno-cache").unwrap(),
            )
    };
    for (value, _) in values {
        let got = case.send(&client, request(value)).await;
        assert_eq!(got.status, 200, "{label} {value:?}");
        assert_ne!(got.cache, Some(CacheStatus::Stale), "{label} {value:?}");
    }
    for (value, stale_ok) in values {
        // Whatever the last request stored, it is stale now.
        case.advance(SECS(1000));
        let got = case.send(&client, request(value)).await;
        assert_eq!(got.status, 200, "{label} {value:?}");
        let expected = if *stale_ok {
            CacheStatus::Stale
        } else {
            CacheStatus::Miss
        };
        assert_eq!(got.cache, Some(expected), "{label} {value:?}");
    }
}
rfc9111!(s5_2_1_hostile_request_directives_are_answered);
