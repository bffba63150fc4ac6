//! Arithmetic on server-supplied numbers that cannot overflow.
//!
//! Every number a response carries (`max-age`, `s-maxage`, `stale-if-error`,
//! `stale-while-revalidate`, `Age`, the dates) and every configured duration ends up added to a
//! [`SystemTime`](std::time::SystemTime); `SystemTime + Duration` panics on overflow ("overflow
//! when adding duration to instant"), and `Duration + Duration` does too. So:
//!
//! * a delta-seconds value too large to represent counts as 2^31 seconds, as RFC 9111 section
//!   1.2.2 says ([`delta_seconds`]); larger values are clamped to it as well, which bounds
//!   everything computed from them;
//! * times are added with [`add`](crate::time::add), which stops at
//!   [`end_of_time`](crate::time::end_of_time) (the end of the year 9999, the last instant an
//!   HTTP date can name) instead of panicking, so that a stored time also stays within what
//!   every store can hold (SQLite and codec milliseconds, Redis `PX`);
//! * the headers `http-cache-semantics` computes freshness from are first normalised by
//!   [`for_policy`]: that crate parses `max-age`, `s-maxage` and `Age` as `u64` (so a value
//!   above `u64::MAX` means 0, "stale at once", and `Age: 18446744073709551615` comes back as an
//!   age of `u64::MAX` seconds, which overflowed our own additions), and it looks directive
//!   names up case-sensitively (`MAX-AGE=60` was no `max-age` at all). It also reads an `Age`
//!   list (`7200, 0`) as no age at all, and dates as RFC 2822 (see [`for_policy`]).

use std::borrow::Cow;

use http::HeaderMap;
use http::header::{self, HeaderValue};

/// The largest delta-seconds value the cache computes with: 2^31 s, about 68 years.
pub(crate) const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// A delta-seconds value (`1*DIGIT`, optionally quoted), clamped to [`DELTA_SECONDS_MAX`];
/// `None` when it is not one (signs, spaces inside, fractions, garbage).
pub(crate) fn delta_seconds(value: &str) -> Option<u64> {
    let digits = value.trim().trim_matches('"');
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // A value with more digits than u64 holds fails to parse: it is too large to represent.
    Some(
        digits
            .parse::<u64>()
            .map_or(DELTA_SECONDS_MAX, |n| n.min(DELTA_SECONDS_MAX)),
    )
}

/// `headers` as `http-cache-semantics` must see them (see the module docs): `Cache-Control`
/// directive names in lower case and delta-seconds values clamped; `Age` reduced to its first
/// member (RFC 9111 section 5.1: a list or repeated field uses the first value; an invalid one
/// is ignored) and clamped; `Date`, `Expires` and `Last-Modified` parsed strictly as HTTP-dates
/// in the three RFC 9110 section 5.6.7 formats and handed on as IMF-fixdate (the crate reads
/// RFC 2822 dates only: it refused valid RFC 850 and asctime dates and accepted invalid ones);
/// an invalid `Expires` becomes a date in the past (RFC 9111 section 5.3: "already expired"), an
/// invalid `Date` or `Last-Modified` is dropped. Borrowed when nothing needs changing. The stored
/// and served headers stay as the server sent them.
pub(crate) fn for_policy(headers: &HeaderMap) -> Cow<'_, HeaderMap> {
    let cache_control: Vec<Option<HeaderValue>> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .map(normalise_cache_control)
        .collect();
    let mut fixes: Vec<(header::HeaderName, Option<HeaderValue>)> = Vec::new();
    let ages = headers.get_all(header::AGE).iter().count();
    if let Some(value) = headers.get(header::AGE) {
        let first = value
            .to_str()
            .ok()
            .and_then(|v| v.split(',').next())
            .and_then(delta_seconds);
        match first {
            Some(age) if ages == 1 && age.to_string().as_bytes() == value.as_bytes() => {}
            Some(age) => fixes.push((header::AGE, Some(HeaderValue::from(age)))),
            None => fixes.push((header::AGE, None)),
        }
    }
    for name in [header::DATE, header::EXPIRES, header::LAST_MODIFIED] {
        let Some(value) = headers.get(&name) else {
            continue;
        };
        let repeated = headers.get_all(&name).iter().count() > 1;
        match imf_fixdate(value) {
            Some(canonical) => {
                if repeated || canonical.as_bytes() != value.as_bytes() {
                    fixes.push((name, HeaderValue::from_str(&canonical).ok()));
                }
            }
            None if name == header::EXPIRES => {
                fixes.push((name, Some(HeaderValue::from_static(ALREADY_EXPIRED))));
            }
            None => fixes.push((name, None)),
        }
    }
    if fixes.is_empty() && cache_control.iter().all(Option::is_none) {
        return Cow::Borrowed(headers);
    }
    let mut normalised = headers.clone();
    if cache_control.iter().any(Option::is_some) {
        let originals: Vec<HeaderValue> = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .cloned()
            .collect();
        normalised.remove(header::CACHE_CONTROL);
        for (original, new) in originals.into_iter().zip(cache_control) {
            normalised.append(header::CACHE_CONTROL, new.unwrap_or(original));
        }
    }
    for (name, value) in fixes {
        match value {
            Some(value) => {
                normalised.insert(name, value);
            }
            None => {
                normalised.remove(name);
            }
        }
    }
    Cow::Owned(normalised)
}

/// An `Expires` value in the past, for an invalid one.
const ALREADY_EXPIRED: &str = "Thu, 01 Jan 1970 00:00:00 GMT";

/// An HTTP-date in one of the three formats of RFC 9110 section 5.6.7 (IMF-fixdate, RFC 850,
/// asctime), exactly: no extra spaces, a weekday that matches the date, a time that exists;
/// returned in IMF-fixdate form. `None` for anything else (`0`, `-1`, garbage, non-ASCII,
/// numeric zones).
pub(crate) fn imf_fixdate(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    // `httpdate` trims surrounding whitespace; a header value has none left (`http` trims it).
    if text.trim() != text {
        return None;
    }
    if let Ok(date) = httpdate::parse_http_date(text) {
        return Some(httpdate::fmt_http_date(date));
    }
    before_1970(text)
}

/// A valid IMF-fixdate or asctime date before 1970, which `httpdate` refuses (it works in
/// `SystemTime` after the epoch): checked by moving it forward whole 400-year cycles (the
/// Gregorian calendar, weekdays included, repeats after 146,097 days), and
/// written back with its own year. (An RFC 850 date's two-digit year is never before 1970.)
fn before_1970(text: &str) -> Option<String> {
    let years = match text.len() {
        29 => 12..16,
        24 => 20..24,
        _ => return None,
    };
    let digits = text.get(years.clone())?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: u64 = digits.parse().ok()?;
    if year >= 1970 {
        return None;
    }
    let cycles = (1970 - year).div_ceil(400);
    let moved = format!(
        "{}{:04}{}",
        &text[..years.start],
        year + 400 * cycles,
        &text[years.end..]
    );
    let date = httpdate::parse_http_date(&moved).ok()?;
    let imf = httpdate::fmt_http_date(date);
    Some(format!("{}{digits}{}", &imf[..12], &imf[16..]))
}

/// One `Cache-Control` value with lower-case directive names, clamped delta-seconds and a
/// value-less `max-age` / `s-maxage` read as `0`, or
/// `None` when it needs no change.
fn normalise_cache_control(value: &HeaderValue) -> Option<HeaderValue> {
    // The crate skips a line that is not visible ASCII, and with it any `no-store` or
    // `private` it holds: such bytes (obs-text) become `?`, the directives stay.
    let ascii: String;
    let text = match value.to_str() {
        Ok(text) => text,
        Err(_) => {
            ascii = value
                .as_bytes()
                .iter()
                .map(|&b| match b {
                    b'\t' | 0x20..=0x7e => char::from(b),
                    _ => '?',
                })
                .collect();
            &ascii
        }
    };
    let mut out = String::with_capacity(text.len());
    for part in text.split(',') {
        if !out.is_empty() {
            out.push(',');
        }
        let mut kv = part.splitn(2, '=');
        let name = kv.next().unwrap_or_default();
        let name = name.to_ascii_lowercase();
        out.push_str(&name);
        // A `max-age` or `s-maxage` without a value: the crate skips it and infers a
        // heuristic lifetime, while the cache counts it as explicit freshness (so uncapped).
        // It is invalid freshness information, read as stale (RFC 9111 section 4.2.1).
        let bare = matches!(name.trim(), "max-age" | "s-maxage");
        if let Some(v) = kv.next() {
            out.push('=');
            match delta_seconds(v) {
                Some(n) if v.trim().trim_matches('"') != n.to_string() => {
                    out.push_str(&n.to_string());
                }
                _ => out.push_str(v),
            }
        } else if bare {
            out.push_str("=0");
        }
    }
    if out.as_bytes() == value.as_bytes() {
        return None;
    }
    HeaderValue::from_str(&out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_seconds_clamp_and_refuse_garbage() {
        assert_eq!(delta_seconds("60"), Some(60));
        assert_eq!(delta_seconds(" \"60\" "), Some(60));
        assert_eq!(delta_seconds("2147483648"), Some(DELTA_SECONDS_MAX));
        assert_eq!(
            delta_seconds("9223372036854775808"),
            Some(DELTA_SECONDS_MAX)
        );
        assert_eq!(
            delta_seconds("18446744073709551615"),
            Some(DELTA_SECONDS_MAX)
        );
        assert_eq!(
            delta_seconds("999999999999999999999999999999"),
            Some(DELTA_SECONDS_MAX)
        );
        for garbage in ["", "-1", "+5", "1.5", "1 2", "inf", "NaN", "0x10", "\"\""] {
            assert_eq!(delta_seconds(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn the_policy_sees_clamped_lower_case_directives() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("MAX-AGE=18446744073709551616, Private"),
        );
        headers.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-transform"),
        );
        headers.insert(
            header::AGE,
            HeaderValue::from_static("18446744073709551615"),
        );
        let seen = for_policy(&headers);
        let values: Vec<_> = seen.get_all(header::CACHE_CONTROL).iter().collect();
        assert_eq!(values, ["max-age=2147483648, private", "no-transform"]);
        assert_eq!(seen.get(header::AGE).unwrap(), "2147483648");

        // Age: the first member of a list or of repeated fields; invalid: ignored.
        let age = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::AGE, HeaderValue::from_static(v));
            }
            for_policy(&headers).get(header::AGE).cloned()
        };
        assert_eq!(age(&["7200, 0"]).unwrap(), "7200");
        assert_eq!(age(&["7200", "0"]).unwrap(), "7200");
        assert_eq!(age(&[" 5 "]).unwrap(), "5");
        assert_eq!(age(&["-1"]), None);
        assert_eq!(age(&["soon, 10"]), None);

        // Dates: strictly the three formats, handed on as IMF-fixdate.
        let date = |name: header::HeaderName, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), HeaderValue::from_static(value));
            for_policy(&headers)
                .get(&name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let imf = "Sun, 06 Nov 1994 08:49:37 GMT";
        for same in [
            imf,
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(date(header::EXPIRES, same).as_deref(), Some(imf), "{same}");
            assert_eq!(date(header::DATE, same).as_deref(), Some(imf), "{same}");
            assert_eq!(date(header::LAST_MODIFIED, same).as_deref(), Some(imf));
        }
        // Before 1970 (httpdate refuses those), in IMF-fixdate and asctime form.
        let old = "Mon, 01 Jan 1900 00:00:00 GMT";
        for same in [old, "Mon Jan  1 00:00:00 1900"] {
            assert_eq!(
                date(header::LAST_MODIFIED, same).as_deref(),
                Some(old),
                "{same}"
            );
        }
        assert_eq!(
            date(header::DATE, "Thu, 01 Jan 0000 00:00:00 GMT").as_deref(),
            None,
            "year 0 was a Saturday"
        );
        assert_eq!(
            date(header::DATE, "Sat, 01 Jan 0000 00:00:00 GMT").as_deref(),
            Some("Sat, 01 Jan 0000 00:00:00 GMT")
        );
        assert_eq!(date(header::DATE, "Tue, 01 Jan 1900 00:00:00 GMT"), None);
        for invalid in [
            "0",
            "-1",
            "Sun,  06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994  08:49:37 GMT",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 +0000",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "6 Nov 1994 08:49:37 GMT",
            "tomorrow",
        ] {
            assert_eq!(
                date(header::EXPIRES, invalid).as_deref(),
                Some(ALREADY_EXPIRED),
                "{invalid}"
            );
            assert_eq!(date(header::DATE, invalid), None, "{invalid}");
            assert_eq!(date(header::LAST_MODIFIED, invalid), None, "{invalid}");
        }

        let mut plain = HeaderMap::new();
        plain.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        plain.insert(header::AGE, HeaderValue::from_static("3"));
        assert!(matches!(for_policy(&plain), Cow::Borrowed(_)));
        // Not text: its obs-text bytes become `?`, so the policy still reads the directives
        // (it would skip the whole line), and `max-age=?` is no valid delta-seconds.
        let mut bytes = HeaderMap::new();
        bytes.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"No-Store, max-age=\xff").unwrap(),
        );
        assert_eq!(
            for_policy(&bytes).get(header::CACHE_CONTROL).unwrap(),
            "no-store, max-age=?"
        );
    }
}
