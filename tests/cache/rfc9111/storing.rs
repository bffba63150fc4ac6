//! RFC 9111 section 3 (and RFC 9110 section 15.1): which statuses are stored.

use std::time::Duration;

use courteous::cache::{CacheStatus, CacheTtl};
use http::StatusCode;

use super::{Case, Reply};

/// Requests `path` twice; whether the second answer came from the cache.
async fn second_is_hit(case: &Case, client: &crate::Client, path: &str) -> bool {
    case.get(client, path).await;
    case.get(client, path).await.cache == Some(CacheStatus::Hit)
}

/// Any final status may be stored with explicit freshness (`max-age`, `Expires`) or
/// `public`: not only `200`. (`302` without `Location`, so the HTTP client does not follow it.)
async fn s3_any_final_status_with_explicit_freshness_is_stored(case: Case) {
    let client = case.client();
    for code in [201, 203, 204, 302, 403, 404, 418, 429, 500, 503, 599] {
        let path = format!("/max-age/{code}");
        case.origin.reply(
            &path,
            Reply::status(code).header("cache-control", "max-age=600"),
        );
        assert!(
            second_is_hit(&case, &client, &path).await,
            "{}: {code} with max-age not stored",
            case.label()
        );
        let path = format!("/expires/{code}");
        let expires = httpdate::fmt_http_date(case.clock.now() + Duration::from_secs(600));
        case.origin
            .reply(&path, Reply::status(code).header("expires", &expires));
        assert!(
            second_is_hit(&case, &client, &path).await,
            "{}: {code} with Expires not stored",
            case.label()
        );
        // `public` without freshness: stored, stale at once, so revalidated with its ETag.
        let path = format!("/public/{code}");
        case.origin.reply(
            &path,
            Reply::status(code)
                .header("cache-control", "public")
                .header("etag", "\"p\""),
        );
        case.get(&client, &path).await;
        case.get(&client, &path).await;
        let last = case.origin.seen().pop().unwrap();
        assert_eq!(
            last.headers.get("if-none-match").map(|v| v.as_bytes()),
            Some(&b"\"p\""[..]),
            "{}: {code} with public not stored",
            case.label()
        );
    }
}

/// `s-maxage` is explicit freshness for a shared cache only: a `500` with it is stored in
/// shared mode and not in private mode (no heuristic for `500`).
async fn s3_s_maxage_stores_only_in_a_shared_cache(case: Case) {
    case.origin.reply(
        "/s",
        Reply::status(500).header("cache-control", "s-maxage=600"),
    );
    let client = case.client();
    assert_eq!(
        second_is_hit(&case, &client, "/s").await,
        case.shared,
        "{}",
        case.label()
    );
}

/// Without explicit freshness or `public`, only the heuristically cacheable statuses are
/// stored (here with `Last-Modified` a day old, so they are fresh by heuristics).
async fn s3_without_freshness_only_heuristically_cacheable_statuses(case: Case) {
    let modified = httpdate::fmt_http_date(case.clock.now() - Duration::from_secs(86_400));
    let client = case.client();
    for code in [200, 203, 204, 300, 404, 405, 410, 414, 501] {
        let path = format!("/h/{code}");
        case.origin.reply(
            &path,
            Reply::status(code).header("last-modified", &modified),
        );
        assert!(
            second_is_hit(&case, &client, &path).await,
            "{}: heuristically cacheable {code} not stored",
            case.label()
        );
    }
    for code in [201, 302, 403, 500, 503] {
        let path = format!("/n/{code}");
        case.origin.reply(
            &path,
            Reply::status(code).header("last-modified", &modified),
        );
        case.get(&client, &path).await;
        case.get(&client, &path).await;
        assert_eq!(case.origin.hits(&path), 2, "{}: {code}", case.label());
        let last = case.origin.seen().pop().unwrap();
        assert!(
            !last.headers.contains_key("if-modified-since"),
            "{}: {code} without freshness was stored",
            case.label()
        );
    }
}

/// `must-understand` (section 5.2.2.3): a status the cache does not understand is not
/// stored even with explicit freshness; with an understood status, `no-store` is ignored.
async fn s5_2_2_3_must_understand(case: Case) {
    let client = case.client();
    for code in [299, 429, 500] {
        let path = format!("/mu/{code}");
        case.origin.reply(
            &path,
            Reply::status(code).header("cache-control", "max-age=600, must-understand"),
        );
        assert!(
            !second_is_hit(&case, &client, &path).await,
            "{}: {code} stored despite must-understand",
            case.label()
        );
    }
    for code in [200, 404] {
        let path = format!("/ok/{code}");
        case.origin.reply(
            &path,
            Reply::status(code).header("cache-control", "must-understand, no-store, max-age=600"),
        );
        assert!(
            second_is_hit(&case, &client, &path).await,
            "{}: understood {code} with must-understand not stored",
            case.label()
        );
    }
    // Without must-understand, no-store holds.
    case.origin.reply(
        "/plain",
        Reply::ok().header("cache-control", "no-store, max-age=600"),
    );
    assert!(!second_is_hit(&case, &client, "/plain").await);
}

/// `206 Partial Content` is never stored or combined: it passes through.
async fn s3_1_partial_content_passes_through(case: Case) {
    case.origin.reply(
        "/part",
        Reply::status(206)
            .header("cache-control", "max-age=600")
            .header("content-range", "bytes 0-3/10")
            .body("abcd"),
    );
    let client = case.client();
    for _ in 0..2 {
        let got = case.get(&client, "/part").await;
        assert_eq!((got.status.as_u16(), got.text().as_str()), (206, "abcd"));
        assert_eq!(got.cache, Some(CacheStatus::Miss), "{}", case.label());
    }
    assert_eq!(case.origin.hits("/part"), 2);
}

/// A forced TTL stores `200` by default and the configured statuses; other statuses fall
/// back to the RFC rules (a `404` with `max-age` is stored, one without headers is not).
async fn s3_forced_ttl_statuses_are_configurable(case: Case) {
    case.origin.reply("/bare", Reply::status(404));
    case.origin.reply(
        "/explicit",
        Reply::status(404).header("cache-control", "max-age=600"),
    );
    let forced = |l: courteous::cache::CacheLayer| {
        l.default_ttl(CacheTtl::absolute(Duration::from_secs(60)))
    };
    let client = case.client_with(forced);
    assert!(
        !second_is_hit(&case, &client, "/bare").await,
        "{}",
        case.label()
    );
    assert!(
        second_is_hit(&case, &client, "/explicit").await,
        "{}",
        case.label()
    );
    assert!(
        second_is_hit(&case, &client, "/ok").await,
        "{}",
        case.label()
    );

    case.origin.reply("/bare2", Reply::status(404));
    let with_404 =
        case.client_with(|l| forced(l).statuses([StatusCode::OK, StatusCode::NOT_FOUND]));
    assert!(
        second_is_hit(&case, &with_404, "/bare2").await,
        "{}",
        case.label()
    );
}

/// A forced TTL does not widen what RFC 9111 never stores, even when its statuses list them:
/// a `206` (range requests pass through, partial responses are never combined) and a status
/// `must-understand` names that the cache does not understand. Found in review: the forced-TTL
/// path stored both, so a server answering a plain GET with `206` had its fragment served as
/// the whole resource for the TTL.
async fn s3_forced_ttl_never_stores_206_or_a_status_not_understood(case: Case) {
    case.origin.reply(
        "/part",
        Reply::status(206)
            .header("content-range", "bytes 0-3/10")
            .body("abcd"),
    );
    case.origin.reply(
        "/mu",
        Reply::status(299).header("cache-control", "must-understand"),
    );
    let client = case.client_with(|l| {
        l.default_ttl(CacheTtl::absolute(Duration::from_secs(60)))
            .statuses([
                StatusCode::OK,
                StatusCode::PARTIAL_CONTENT,
                StatusCode::from_u16(299).unwrap(),
            ])
    });
    assert!(
        !second_is_hit(&case, &client, "/part").await,
        "{}: 206",
        case.label()
    );
    assert!(
        !second_is_hit(&case, &client, "/mu").await,
        "{}: must-understand",
        case.label()
    );
}

/// The fields specific to the proxy a request went through (`Proxy-Authenticate`,
/// `Proxy-Authentication-Info`) are not stored (RFC 9111 §3.1): the proxy is not part of the
/// key, so a client behind another proxy could be served them. Every other field is.
async fn s3_1_proxy_fields_are_not_stored(case: Case) {
    case.origin.reply(
        "/p",
        Reply::ok()
            .header("cache-control", "max-age=600")
            .header("proxy-authenticate", "Basic realm=\"corp\"")
            .header("proxy-authentication-info", "nextnonce=\"abc\"")
            .header("x-kept", "yes"),
    );
    let client = case.client();
    let first = case.get(&client, "/p").await;
    assert!(
        first.header("proxy-authenticate").is_some(),
        "{}",
        case.label()
    );
    case.flush().await;
    let hit = case.get(&client, "/p").await;
    assert_eq!(hit.cache, Some(CacheStatus::Hit), "{}", case.label());
    assert_eq!(hit.header("x-kept"), Some("yes"), "{}", case.label());
    assert_eq!(hit.header("proxy-authenticate"), None, "{}", case.label());
    assert_eq!(
        hit.header("proxy-authentication-info"),
        None,
        "{}",
        case.label()
    );
}

rfc9111!(
    s3_any_final_status_with_explicit_freshness_is_stored,
    s3_s_maxage_stores_only_in_a_shared_cache,
    s3_without_freshness_only_heuristically_cacheable_statuses,
    s5_2_2_3_must_understand,
    s3_1_partial_content_passes_through,
    s3_forced_ttl_statuses_are_configurable,
    s3_forced_ttl_never_stores_206_or_a_status_not_understood,
    s3_1_proxy_fields_are_not_stored,
);
