//! RFC 9111 sections 5.1-5.3 and RFC 9110 section 5.6: directive names in any case, `Age`
//! lists, invalid `Expires`, the three HTTP-date formats.

use std::time::{Duration, SystemTime};

use courteous::cache::CacheStatus;

use super::{Case, Reply};

/// `t` in IMF-fixdate, RFC 850 and asctime form.
fn formats(t: SystemTime) -> [String; 3] {
    let imf = httpdate::fmt_http_date(t); // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (day, month, year, time) = (&imf[5..7], &imf[8..11], &imf[12..16], &imf[17..25]);
    let weekday = match &imf[..3] {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let rfc850 = format!("{weekday}, {day}-{month}-{} {time} GMT", &year[2..]);
    let asctime = format!(
        "{} {month} {:>2} {time} {year}",
        &imf[..3],
        day.trim_start_matches('0')
    );
    [imf, rfc850, asctime]
}

/// Directive names are case-insensitive (RFC 9111 section 5.2): `MAX-AGE` is `max-age`,
/// `No-Store` is `no-store`, `No-CaChE` is `no-cache`.
async fn s5_2_directive_names_are_case_insensitive(case: Case) {
    case.origin
        .reply("/max", Reply::ok().header("cache-control", "MAX-AGE=600"));
    case.origin.reply(
        "/store",
        Reply::ok().header("cache-control", "max-age=600, No-Store"),
    );
    case.origin.reply(
        "/cache",
        Reply::ok()
            .header("cache-control", "No-CaChE, Max-Age=600")
            .header("etag", "\"v\""),
    );
    let client = case.client();
    for path in ["/max", "/store", "/cache"] {
        case.get(&client, path).await;
        case.get(&client, path).await;
    }
    assert_eq!(case.origin.hits("/max"), 1, "{} MAX-AGE", case.label());
    assert_eq!(case.origin.hits("/store"), 2, "{} No-Store", case.label());
    assert_eq!(case.origin.hits("/cache"), 2, "{} No-CaChE", case.label());
    let revalidation = case.origin.seen().pop().unwrap();
    assert_eq!(
        revalidation.headers.get("if-none-match").unwrap(),
        "\"v\"",
        "{}: a no-cache entry is stored and revalidated",
        case.label()
    );
}

/// An `Age` that is a list, or repeated, uses its first value (RFC 9111 section 5.1): with
/// `max-age=600` and `Age: 590, 0` the response has 10 s left, not 600.
async fn s5_1_age_list_or_repeated_uses_the_first_value(case: Case) {
    case.origin.reply(
        "/list",
        Reply::ok()
            .header("cache-control", "max-age=600")
            .header("age", "590, 0"),
    );
    case.origin.reply(
        "/repeated",
        Reply::ok()
            .header("cache-control", "max-age=600")
            .header("age", "590")
            .header("age", "0"),
    );
    case.origin.reply(
        "/invalid",
        Reply::ok()
            .header("cache-control", "max-age=600")
            .header("age", "soon, 590"),
    );
    let client = case.client();
    for path in ["/list", "/repeated", "/invalid"] {
        case.get(&client, path).await;
    }
    case.advance(Duration::from_secs(5));
    let hit = case.get(&client, "/list").await;
    assert_eq!(hit.cache, Some(CacheStatus::Hit), "{}", case.label());
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((595..=597).contains(&age), "{}: Age {age}", case.label());
    case.advance(Duration::from_secs(10));
    for path in ["/list", "/repeated"] {
        let got = case.get(&client, path).await;
        assert_eq!(
            got.cache,
            Some(CacheStatus::Miss),
            "{} {path}",
            case.label()
        );
        assert_eq!(case.origin.hits(path), 2, "{} {path}", case.label());
    }
    // An invalid Age is ignored: 600 s of freshness.
    let got = case.get(&client, "/invalid").await;
    assert_eq!(
        got.cache,
        Some(CacheStatus::Hit),
        "{} invalid Age",
        case.label()
    );
}

/// An invalid `Expires` (a date with extra spaces, a numeric zone, a wrong weekday, `0`,
/// garbage) means "already expired" (RFC 9111 section 5.3), even when it names a future time.
async fn s5_3_an_invalid_expires_is_already_expired(case: Case) {
    let future = case.clock.now() + Duration::from_secs(3600);
    let imf = httpdate::fmt_http_date(future);
    let invalid = [
        imf.replacen(", ", ",  ", 1),
        imf.replacen(' ', "  ", 2),
        imf.replace(" GMT", " +0000"),
        imf.replace(" GMT", " UT"),
        format!(
            "{}{}",
            if imf.starts_with("Mon") { "Tue" } else { "Mon" },
            &imf[3..]
        ),
        "0".to_owned(),
        "-1".to_owned(),
        "in an hour".to_owned(),
    ];
    let client = case.client();
    for (i, expires) in invalid.iter().enumerate() {
        let path = format!("/e{i}");
        case.origin
            .reply(&path, Reply::ok().header("expires", expires));
        case.get(&client, &path).await;
        let again = case.get(&client, &path).await;
        assert_ne!(
            again.cache,
            Some(CacheStatus::Hit),
            "{}: Expires {expires:?} was taken as valid",
            case.label()
        );
        assert_eq!(case.origin.hits(&path), 2, "{} {expires:?}", case.label());
    }
    // The same date, valid, is an hour of freshness.
    case.origin
        .reply("/valid", Reply::ok().header("expires", &imf));
    case.get(&client, "/valid").await;
    assert_eq!(
        case.get(&client, "/valid").await.cache,
        Some(CacheStatus::Hit)
    );
}

/// HTTP-dates are read in all three RFC 9110 section 5.6.7 formats: an `Expires` an hour
/// ahead in RFC 850 or asctime form is an hour of freshness, as in IMF-fixdate form.
async fn rfc9110_5_6_7_every_http_date_format_is_read(case: Case) {
    let future = case.clock.now() + Duration::from_secs(3600);
    let client = case.client();
    for (i, expires) in formats(future).iter().enumerate() {
        let path = format!("/f{i}");
        case.origin
            .reply(&path, Reply::ok().header("expires", expires));
        case.get(&client, &path).await;
        case.advance(Duration::from_secs(60));
        let again = case.get(&client, &path).await;
        assert_eq!(
            again.cache,
            Some(CacheStatus::Hit),
            "{}: Expires {expires:?}",
            case.label()
        );
    }
    // A `Date` in another format counts too: the lifetime is Expires - Date, 600 s here
    // (the server's clock is ahead; without its Date the lifetime would be 3600 s).
    let now = case.clock.now();
    let [_, date850, _] = formats(now + Duration::from_secs(3000));
    let expires = httpdate::fmt_http_date(now + Duration::from_secs(3600));
    case.origin.reply(
        "/dated",
        Reply::ok()
            .header("date", &date850)
            .header("expires", &expires),
    );
    case.get(&client, "/dated").await;
    case.advance(Duration::from_secs(500));
    let fresh = case.get(&client, "/dated").await;
    assert_eq!(
        fresh.cache,
        Some(CacheStatus::Hit),
        "{} RFC 850 Date",
        case.label()
    );
    case.advance(Duration::from_secs(200));
    let stale = case.get(&client, "/dated").await;
    assert_eq!(
        stale.cache,
        Some(CacheStatus::Miss),
        "{} RFC 850 Date",
        case.label()
    );
}

/// A `Cache-Control` field line that carries a non-ASCII byte (obs-text, RFC 9110 section
/// 5.5, here in a quoted extension value) still says `no-store` and, to a shared cache,
/// `private`: neither is lost because the line is not UTF-8, forced TTL or heuristic
/// freshness notwithstanding, and its `max-age` is the freshness. Found in review: the whole
/// line was skipped, so a response marked `no-store` was stored (and `private` shared).
async fn s5_2_a_non_ascii_cache_control_line_still_forbids_storing(case: Case) {
    let modified = httpdate::fmt_http_date(case.clock.now() - Duration::from_secs(36_000));
    let line = |directive: &str| {
        let mut bytes = format!("{directive}, ext=\"").into_bytes();
        bytes.extend_from_slice(&[0xe9, b'"']);
        bytes
    };
    case.origin.reply(
        "/api/things/1",
        Reply::ok().header("cache-control", line("no-store")),
    );
    case.origin.reply(
        "/heuristic",
        Reply::ok()
            .header("cache-control", line("No-Store"))
            .header("last-modified", &modified),
    );
    case.origin.reply(
        "/private",
        Reply::ok()
            .header("cache-control", line("private"))
            .header("last-modified", &modified),
    );
    let client = case.client_with(|l| {
        l.resource_ttl(
            "things",
            courteous::cache::CacheTtl::absolute(Duration::from_secs(60)),
        )
    });
    // And its `max-age` is the freshness, not a heuristic from `Last-Modified`.
    case.origin.reply(
        "/max-age",
        Reply::ok()
            .header("cache-control", line("max-age=60"))
            .header("last-modified", &modified),
    );
    case.get(&client, "/max-age").await;
    case.advance(Duration::from_secs(30));
    let fresh = case.get(&client, "/max-age").await;
    assert_eq!(
        fresh.cache,
        Some(CacheStatus::Hit),
        "{} max-age",
        case.label()
    );
    case.advance(Duration::from_secs(40));
    let stale = case.get(&client, "/max-age").await;
    assert_ne!(
        stale.cache,
        Some(CacheStatus::Hit),
        "{} max-age",
        case.label()
    );
    for path in ["/api/things/1", "/heuristic", "/private"] {
        if path == "/private" && !case.shared {
            continue; // a private cache may store it
        }
        case.get(&client, path).await;
        let second = case.get(&client, path).await;
        assert_ne!(
            second.cache,
            Some(CacheStatus::Hit),
            "{} {path}",
            case.label()
        );
        assert_eq!(case.origin.hits(path), 2, "{} {path}", case.label());
    }
}

rfc9111!(
    s5_2_directive_names_are_case_insensitive,
    s5_1_age_list_or_repeated_uses_the_first_value,
    s5_3_an_invalid_expires_is_already_expired,
    rfc9110_5_6_7_every_http_date_format_is_read,
    s5_2_a_non_ascii_cache_control_line_still_forbids_storing,
);
