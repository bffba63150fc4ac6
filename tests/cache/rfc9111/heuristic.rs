//! RFC 9111 section 4.2.2: heuristic freshness from `Last-Modified`, a fraction of the time
//! since it (default 10 %, configurable, capped, off on request), only for the heuristically
//! cacheable statuses, and never under a forced TTL.

use std::time::Duration;

use courteous::cache::{CacheLayer, CacheStatus, CacheTtl};

use super::{Case, Reply};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// A reply last modified `ago` before the case's clock.
fn modified(case: &Case, code: u16, ago: Duration) -> Reply {
    Reply::status(code).header(
        "last-modified",
        httpdate::fmt_http_date(case.clock.now() - ago),
    )
}

/// Requests `path`, moves the clock by `after`, requests it again: whether that was a hit.
async fn hit_after(case: &Case, client: &crate::Client, path: &str, after: Duration) -> bool {
    case.get(client, path).await;
    case.advance(after);
    case.get(client, path).await.cache == Some(CacheStatus::Hit)
}

/// By default a response modified 10 hours ago is fresh for 10 % of that: one hour.
async fn s4_2_2_default_is_ten_percent_of_the_time_since_last_modified(case: Case) {
    case.origin.reply("/a", modified(&case, 200, 10 * HOUR));
    let client = case.client();
    assert!(
        hit_after(&case, &client, "/a", 50 * MINUTE).await,
        "{}",
        case.label()
    );
    case.advance(20 * MINUTE);
    assert_ne!(
        case.get(&client, "/a").await.cache,
        Some(CacheStatus::Hit),
        "{}",
        case.label()
    );
}

/// The fraction is configurable: 25 % of 10 hours is two and a half.
async fn s4_2_2_the_fraction_is_configurable(case: Case) {
    case.origin.reply("/a", modified(&case, 200, 10 * HOUR));
    let client = case.client_with(|l| l.heuristic_fraction(0.25));
    assert!(
        hit_after(&case, &client, "/a", 2 * HOUR).await,
        "{}",
        case.label()
    );
    case.advance(HOUR);
    assert_ne!(
        case.get(&client, "/a").await.cache,
        Some(CacheStatus::Hit),
        "{}",
        case.label()
    );
}

/// Capped: a response unchanged for 100 days is fresh for one day (the default cap), not
/// ten; the cap is configurable.
async fn s4_2_2_heuristic_freshness_is_capped(case: Case) {
    let old = 100 * 24 * HOUR;
    case.origin.reply("/a", modified(&case, 200, old));
    case.origin.reply("/c", modified(&case, 200, old));
    let client = case.client();
    assert!(
        hit_after(&case, &client, "/a", 23 * HOUR).await,
        "{}",
        case.label()
    );
    case.advance(2 * HOUR);
    assert_ne!(
        case.get(&client, "/a").await.cache,
        Some(CacheStatus::Hit),
        "{}: 25 h",
        case.label()
    );
    let short = case.client_with(|l| l.heuristic_cap(HOUR));
    assert!(
        hit_after(&case, &short, "/c", 50 * MINUTE).await,
        "{}",
        case.label()
    );
    case.advance(20 * MINUTE);
    assert_ne!(
        case.get(&short, "/c").await.cache,
        Some(CacheStatus::Hit),
        "{}",
        case.label()
    );
}

/// `heuristic_fraction(0.0)` turns heuristics off: the entry is stored (it has a validator)
/// but revalidated at once.
async fn s4_2_2_heuristics_can_be_turned_off(case: Case) {
    case.origin.reply("/a", modified(&case, 200, 10 * HOUR));
    let client = case.client_with(|l| l.heuristic_fraction(0.0));
    assert!(
        !hit_after(&case, &client, "/a", Duration::from_secs(1)).await,
        "{}",
        case.label()
    );
    let last = case.origin.seen().pop().unwrap();
    assert!(
        last.headers.contains_key("if-modified-since"),
        "{}",
        case.label()
    );
}

/// Only heuristically cacheable statuses get heuristic freshness: a `404` does, a `302`
/// marked `public` (stored, since `public` allows it) does not.
async fn s4_2_2_only_heuristically_cacheable_statuses(case: Case) {
    case.origin.reply("/404", modified(&case, 404, 10 * HOUR));
    case.origin.reply(
        "/302",
        modified(&case, 302, 10 * HOUR).header("cache-control", "public"),
    );
    let client = case.client();
    assert!(
        hit_after(&case, &client, "/404", Duration::from_secs(60)).await,
        "{}",
        case.label()
    );
    assert!(
        !hit_after(&case, &client, "/302", Duration::from_secs(60)).await,
        "{}",
        case.label()
    );
    let last = case.origin.seen().pop().unwrap();
    assert!(
        last.headers.contains_key("if-modified-since"),
        "{}: the 302 was stored and revalidated",
        case.label()
    );
}

/// Explicit freshness wins over heuristics, and so does a forced TTL for the resource: a
/// `404` under a forced TTL (which stores only `200`) gets no heuristic freshness.
async fn s4_2_2_explicit_freshness_and_forced_ttls_win(case: Case) {
    case.origin.reply(
        "/explicit",
        modified(&case, 200, 100 * HOUR).header("cache-control", "max-age=60"),
    );
    case.origin
        .reply("/api/things/1", modified(&case, 404, 10 * HOUR));
    case.origin
        .reply("/api/things/2", modified(&case, 200, 10 * HOUR));
    let client = case.client_with(|l: CacheLayer| {
        l.resource_ttl("things", CacheTtl::absolute(Duration::from_secs(120)))
    });
    assert!(
        !hit_after(&case, &client, "/explicit", Duration::from_secs(61)).await,
        "{}",
        case.label()
    );
    assert!(
        !hit_after(&case, &client, "/api/things/1", Duration::from_secs(60)).await,
        "{}",
        case.label()
    );
    // The forced TTL (2 minutes) decides for the 200, not the heuristic hour.
    assert!(
        hit_after(&case, &client, "/api/things/2", Duration::from_secs(100)).await,
        "{}",
        case.label()
    );
    case.advance(Duration::from_secs(30));
    assert_ne!(
        case.get(&client, "/api/things/2").await.cache,
        Some(CacheStatus::Hit),
        "{}",
        case.label()
    );
}

/// The same after a `304`: a revalidated `404` under a forced TTL gets no heuristic
/// freshness either, so the next request revalidates again.
async fn s4_2_2_no_heuristic_after_a_304_under_a_forced_ttl(case: Case) {
    let modified = httpdate::fmt_http_date(case.clock.now() - 10 * HOUR);
    case.origin.script("/api/things/1", move |asked| {
        if asked.headers.contains_key("if-none-match") {
            Reply::status(304).header("etag", "\"t\"")
        } else {
            Reply::status(404)
                .header("etag", "\"t\"")
                .header("last-modified", &modified)
        }
    });
    let client = case.client_with(|l: CacheLayer| {
        l.resource_ttl("things", CacheTtl::absolute(Duration::from_secs(120)))
    });
    case.get(&client, "/api/things/1").await;
    let revalidated = case.get(&client, "/api/things/1").await;
    assert_eq!(
        revalidated.cache,
        Some(CacheStatus::Revalidated),
        "{}",
        case.label()
    );
    case.advance(Duration::from_secs(60));
    let again = case.get(&client, "/api/things/1").await;
    assert_eq!(
        again.cache,
        Some(CacheStatus::Revalidated),
        "{}",
        case.label()
    );
    assert_eq!(case.origin.hits("/api/things/1"), 3);
}

/// A `max-age` (or, in a shared cache, `s-maxage`) without a value is no explicit freshness
/// that the cap could skip: it must not leave the crate to infer an uncapped heuristic
/// lifetime (ten days for a response unchanged for a hundred). Found in review: the cache
/// counted the bare directive as explicit (so no cap) while `http-cache-semantics` ignored it
/// and applied the heuristic.
async fn s4_2_2_a_bare_max_age_gets_no_uncapped_heuristic(case: Case) {
    let old = 100 * 24 * HOUR;
    case.origin.reply(
        "/a",
        modified(&case, 200, old).header("cache-control", "max-age"),
    );
    case.origin.reply(
        "/s",
        modified(&case, 200, old).header("cache-control", "public, S-MAXAGE"),
    );
    let client = case.client();
    assert!(
        !hit_after(&case, &client, "/a", 25 * HOUR).await,
        "{}: /a",
        case.label()
    );
    assert!(
        !hit_after(&case, &client, "/s", 25 * HOUR).await,
        "{}: /s",
        case.label()
    );
}

rfc9111!(
    s4_2_2_default_is_ten_percent_of_the_time_since_last_modified,
    s4_2_2_the_fraction_is_configurable,
    s4_2_2_heuristic_freshness_is_capped,
    s4_2_2_heuristics_can_be_turned_off,
    s4_2_2_only_heuristically_cacheable_statuses,
    s4_2_2_explicit_freshness_and_forced_ttls_win,
    s4_2_2_no_heuristic_after_a_304_under_a_forced_ttl,
    s4_2_2_a_bare_max_age_gets_no_uncapped_heuristic,
);
