//! RFC 9111 section 4.2.4 (serving stale responses) and RFC 5861 (`stale-if-error`,
//! `stale-while-revalidate`): a stored response that says `must-revalidate` or `no-cache`, or,
//! in a shared cache, `proxy-revalidate` or `s-maxage`, is never served stale, on any path.

use std::time::Duration;

use courteous::cache::{CacheMode, CacheStatus, CacheTtl};
use http::StatusCode;

use super::{Case, Reply};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// `path` answers `first` once, then `500`s.
fn good_then_500(case: &Case, path: &str, first: Reply) {
    case.origin.script(path, move |asked| {
        if asked.n == 1 {
            first.clone()
        } else {
            Reply::status(500).body("broken")
        }
    });
}

/// Section 5.2.2.2: `must-revalidate` beats `stale-if-error`, the response's own and the
/// layer's; the 500 comes through. The control path without it is served stale.
async fn s4_2_4_must_revalidate_forbids_stale_if_error(case: Case) {
    let label = case.label();
    good_then_500(
        &case,
        "/must",
        Reply::ok().header(
            "cache-control",
            "max-age=10, must-revalidate, stale-if-error=600",
        ),
    );
    good_then_500(
        &case,
        "/may",
        Reply::ok().header("cache-control", "max-age=10, stale-if-error=600"),
    );
    let client = case.client_with(|l| l.stale_if_error(SECS(600)));
    case.get(&client, "/must").await;
    case.get(&client, "/may").await;
    case.advance(SECS(20));

    let must = case.get(&client, "/must").await;
    assert_eq!(
        (must.status, must.cache),
        (StatusCode::INTERNAL_SERVER_ERROR, Some(CacheStatus::Miss)),
        "{label}"
    );
    let may = case.get(&client, "/may").await;
    assert_eq!(
        (may.status, may.cache, may.text().as_str()),
        (StatusCode::OK, Some(CacheStatus::Stale), "/may 1"),
        "{label}"
    );
    assert_eq!(case.origin.hits("/must"), 2, "{label}");
}
rfc9111!(s4_2_4_must_revalidate_forbids_stale_if_error);

/// Section 5.2.2.4: a `no-cache` response is served only after a successful revalidation; when
/// the revalidation fails, `stale-if-error` does not apply.
async fn s4_2_4_no_cache_is_served_only_after_a_successful_revalidation(case: Case) {
    let label = case.label();
    case.origin.script("/nc", |asked| match asked.n {
        1 => Reply::ok()
            .header("cache-control", "no-cache, stale-if-error=600")
            .header("etag", "\"a\""),
        2 => Reply::status(304)
            .body("")
            .header("cache-control", "no-cache, stale-if-error=600")
            .header("etag", "\"a\""),
        _ => Reply::status(500).body("broken"),
    });
    let client = case.client_with(|l| l.stale_if_error(SECS(600)));
    assert_eq!(
        case.get(&client, "/nc").await.cache,
        Some(CacheStatus::Miss)
    );
    case.advance(SECS(1));
    let revalidated = case.get(&client, "/nc").await;
    assert_eq!(
        (revalidated.cache, revalidated.text().as_str()),
        (Some(CacheStatus::Revalidated), "/nc 1"),
        "{label}"
    );
    case.advance(SECS(1));
    let failed = case.get(&client, "/nc").await;
    assert_eq!(
        (failed.status, failed.cache),
        (StatusCode::INTERNAL_SERVER_ERROR, Some(CacheStatus::Miss)),
        "{label}"
    );
    assert_eq!(case.origin.hits("/nc"), 3, "{label}");
}
rfc9111!(s4_2_4_no_cache_is_served_only_after_a_successful_revalidation);

/// Sections 5.2.2.8 and 5.2.2.10: `proxy-revalidate` and `s-maxage` forbid stale use in a
/// shared cache only; a private cache serves the same responses stale on an error.
async fn s4_2_4_proxy_revalidate_and_s_maxage_forbid_stale_when_shared(case: Case) {
    let label = case.label();
    good_then_500(
        &case,
        "/proxy",
        Reply::ok().header(
            "cache-control",
            "max-age=10, proxy-revalidate, stale-if-error=600",
        ),
    );
    good_then_500(
        &case,
        "/smax",
        Reply::ok().header(
            "cache-control",
            "max-age=10, s-maxage=10, stale-if-error=600",
        ),
    );
    let client = case.client();
    case.get(&client, "/proxy").await;
    case.get(&client, "/smax").await;
    case.advance(SECS(20));
    for path in ["/proxy", "/smax"] {
        let got = case.get(&client, path).await;
        let expected = if case.shared {
            (StatusCode::INTERNAL_SERVER_ERROR, Some(CacheStatus::Miss))
        } else {
            (StatusCode::OK, Some(CacheStatus::Stale))
        };
        assert_eq!((got.status, got.cache), expected, "{label} {path}");
        assert_eq!(case.origin.hits(path), 2, "{label} {path}");
    }
}
rfc9111!(s4_2_4_proxy_revalidate_and_s_maxage_forbid_stale_when_shared);

/// `must-revalidate` also holds on a transport error (the origin is gone), with the layer's
/// `stale_if_error` configured: the error comes through.
async fn s4_2_4_must_revalidate_forbids_stale_on_a_transport_error(case: Case) {
    let label = case.label();
    case.origin.reply(
        "/must",
        Reply::ok().header("cache-control", "max-age=10, must-revalidate"),
    );
    case.origin
        .reply("/may", Reply::ok().header("cache-control", "max-age=10"));
    let client = case.client_with(|l| l.stale_if_error(SECS(600)));
    case.get(&client, "/must").await;
    case.get(&client, "/may").await;
    let (must, may) = (case.url("/must"), case.url("/may"));
    case.advance(SECS(20));
    case.origin.stop().await;

    let error = crate::try_send(&client, http::Request::get(must)).await;
    assert!(error.is_err(), "{label}: {error:?}");
    let may = crate::send(&client, http::Request::get(may)).await;
    assert_eq!(
        (may.cache, may.text().as_str()),
        (Some(CacheStatus::Stale), "/may 1"),
        "{label}"
    );
}
rfc9111!(s4_2_4_must_revalidate_forbids_stale_on_a_transport_error);

/// A forced TTL decides freshness, not whether stale use is allowed: past the TTL, a response
/// that said `must-revalidate` is not served stale on an error.
async fn s4_2_4_forced_ttl_entries_keep_must_revalidate(case: Case) {
    let label = case.label();
    good_then_500(
        &case,
        "/api/items/1",
        Reply::ok().header("cache-control", "must-revalidate"),
    );
    let client = case.client_with(|l| {
        l.default_ttl(CacheTtl::absolute(SECS(10)))
            .stale_if_error(SECS(600))
    });
    case.get(&client, "/api/items/1").await;
    assert_eq!(
        case.get(&client, "/api/items/1").await.cache,
        Some(CacheStatus::Hit),
        "{label}"
    );
    case.advance(SECS(20));
    let got = case.get(&client, "/api/items/1").await;
    assert_eq!(
        (got.status, got.cache),
        (StatusCode::INTERNAL_SERVER_ERROR, Some(CacheStatus::Miss)),
        "{label}"
    );
}
rfc9111!(s4_2_4_forced_ttl_entries_keep_must_revalidate);

/// `CacheMode::OnlyIfCached` and `ForceCache` use an entry "however stale", but not one that
/// forbids stale use: `OnlyIfCached` answers 504 (section 5.2.2.2: a disconnected cache
/// generates an error), `ForceCache` revalidates.
async fn s4_2_4_cache_modes_do_not_serve_what_must_be_revalidated(case: Case) {
    let label = case.label();
    case.origin.script("/must", |asked| {
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
            .header("cache-control", "max-age=10, must-revalidate")
            .header("etag", "\"a\"")
    });
    case.origin
        .reply("/may", Reply::ok().header("cache-control", "max-age=10"));
    let client = case.client();
    case.get(&client, "/must").await;
    case.get(&client, "/may").await;
    case.advance(SECS(20));
    let request = |path: &str, mode| http::Request::get(case.url(path)).extension(mode);

    let only = case
        .send(&client, request("/must", CacheMode::OnlyIfCached))
        .await;
    assert_eq!(only.status, StatusCode::GATEWAY_TIMEOUT, "{label}");
    assert_eq!(case.origin.hits("/must"), 1, "{label}");
    let force = case
        .send(&client, request("/must", CacheMode::ForceCache))
        .await;
    assert_eq!(force.cache, Some(CacheStatus::Revalidated), "{label}");
    assert_eq!(case.origin.hits("/must"), 2, "{label}");

    for mode in [CacheMode::OnlyIfCached, CacheMode::ForceCache] {
        let may = case.send(&client, request("/may", mode)).await;
        assert_eq!(may.cache, Some(CacheStatus::Stale), "{label} {mode:?}");
    }
    assert_eq!(case.origin.hits("/may"), 1, "{label}");
}
rfc9111!(s4_2_4_cache_modes_do_not_serve_what_must_be_revalidated);

/// RFC 5861 section 3 within RFC 9111 section 4.2.4: `stale-while-revalidate` does not serve a
/// `no-cache` response unvalidated, nor (shared) a `proxy-revalidate` one; it serves a plain one.
async fn rfc5861_stale_while_revalidate_respects_what_forbids_stale(case: Case) {
    let label = case.label();
    let validated = |cache_control: &'static str| {
        move |asked: &super::Asked| {
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
                .header("cache-control", cache_control)
                .header("etag", "\"a\"")
        }
    };
    case.origin
        .script("/nc", validated("no-cache, stale-while-revalidate=600"));
    case.origin.script(
        "/proxy",
        validated("max-age=10, proxy-revalidate, stale-while-revalidate=600"),
    );
    case.origin.script(
        "/plain",
        validated("max-age=10, stale-while-revalidate=600"),
    );
    let client = case.client();
    for path in ["/nc", "/proxy", "/plain"] {
        case.get(&client, path).await;
    }
    case.advance(SECS(20));

    let nc = case.get(&client, "/nc").await;
    assert_eq!(nc.cache, Some(CacheStatus::Revalidated), "{label}");
    let proxy = case.get(&client, "/proxy").await;
    let expected = if case.shared {
        CacheStatus::Revalidated
    } else {
        CacheStatus::Stale
    };
    assert_eq!(proxy.cache, Some(expected), "{label}");
    let plain = case.get(&client, "/plain").await;
    assert_eq!(plain.cache, Some(CacheStatus::Stale), "{label}");
}
rfc9111!(rfc5861_stale_while_revalidate_respects_what_forbids_stale);

/// A request that asks for a response no older than N seconds (`max-age=N`) or fresh for N
/// more (`min-fresh=N`) does not want a stale one (RFC 9111 sections 5.2.1.1 and 5.2.1.3,
/// absent `max-stale`): like `no-cache`, it is not answered stale under
/// `stale-while-revalidate`, but revalidated. Found in review: only `no-cache` was refused.
async fn rfc5861_stale_while_revalidate_is_no_answer_to_max_age_or_min_fresh(case: Case) {
    let label = case.label();
    case.origin.script("/swr", |asked| {
        let reply = if asked.headers.contains_key("if-none-match") {
            Reply::status(304).body("")
        } else {
            Reply::ok()
        };
        reply
            .header("cache-control", "max-age=10, stale-while-revalidate=600")
            .header("etag", "\"a\"")
    });
    let client = case.client();
    for directive in ["max-age=5", "MIN-FRESH=1"] {
        case.get(&client, "/swr").await;
        case.advance(SECS(20));
        let got = case
            .send(
                &client,
                http::Request::get(case.url("/swr")).header("cache-control", directive),
            )
            .await;
        assert_eq!(
            got.cache,
            Some(CacheStatus::Revalidated),
            "{label} {directive}"
        );
        case.flush().await;
    }
}
rfc9111!(rfc5861_stale_while_revalidate_is_no_answer_to_max_age_or_min_fresh);
