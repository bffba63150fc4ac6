//! Reading a server's rate-limit headers.
//!
//! * `429 Too Many Requests` or `503 Service Unavailable` with `Retry-After` (delay in seconds or
//!   an HTTP date) blocks the resource until then.
//! * `RateLimit-Remaining` with `RateLimit-Reset`, or `X-RateLimit-Remaining` with
//!   `X-RateLimit-Reset`, caps the requests sent until the reset. The reset is read by its
//!   magnitude: 1,000,000,000,000 or more (13 digits) as Unix milliseconds, 1,000,000,000 or more
//!   as Unix seconds (GitHub's form), a smaller one as seconds from now (the IETF draft's form).
//!
//! # Hostile values
//!
//! The server's numbers are input like any other: a non-finite (`inf`, `NaN`), negative or
//! unparsable value is ignored with a `warn`, and no block or budget lasts longer than the
//! layer's [`max_server_block`](super::RateLimitLayer::max_server_block) from now (default one
//! hour): a longer one is cut to it and logged once with the value received. Without the cap a
//! `X-RateLimit-Reset: 1900000000000` (milliseconds read as seconds), `Retry-After: 1e300` or an
//! HTTP date in the year 9999 would refuse the resource for centuries, in every process and (in
//! a SQLite file) across restarts. [`RateLimitLayer::unblock`](super::RateLimitLayer::unblock)
//! lifts a block that should not be there.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

use super::store::ServerFeedback;
use crate::time::Timestamp;

/// The default [`max_server_block`](super::RateLimitLayer::max_server_block): one hour.
pub(crate) const DEFAULT_MAX_SERVER_BLOCK: Duration = Duration::from_secs(3600);

/// A reset at or past this is in Unix milliseconds (13 digits: from 2001-09-09 on).
const EPOCH_MILLIS_FROM: f64 = 1e12;
/// A reset at or past this (and below [`EPOCH_MILLIS_FROM`]) is in Unix seconds.
const EPOCH_SECONDS_FROM: f64 = 1e9;

/// A header's value as text, trimmed; a non-UTF-8 value is ignored with a warning.
fn text<'a>(name: &str, value: &'a HeaderValue) -> Option<&'a str> {
    match value.to_str() {
        Ok(text) => Some(text.trim()),
        Err(_) => {
            tracing::warn!(header = name, value = ?value, "ignoring a rate-limit header that is not text");
            None
        }
    }
}

/// A non-negative finite number (integer or decimal), or `None` after a warning.
fn non_negative(name: &str, raw: &str) -> Option<f64> {
    // Structured-field forms like `10;w=60` keep their leading number.
    let first = raw.split([';', ',']).next().unwrap_or("").trim();
    match first.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
        _ => {
            tracing::warn!(
                header = name,
                value = raw,
                "ignoring a rate-limit header value that is not a finite, non-negative number"
            );
            None
        }
    }
}

/// `now` plus `seconds` (finite, non-negative), saturating.
fn after_seconds(now: Timestamp, seconds: f64) -> Timestamp {
    // `as` saturates a float to the integer range.
    Timestamp::from_millis(now.as_millis().saturating_add((seconds * 1000.0) as u64))
}

/// Caps `until` at `now + max`, warning (with the value received) when it had to.
fn capped(header: &str, raw: &str, until: Timestamp, now: Timestamp, max: Duration) -> Timestamp {
    let limit = now + max;
    if until > limit {
        tracing::warn!(
            header,
            value = raw,
            until = %until,
            max_server_block = ?max,
            "the server asked to hold requests back longer than max_server_block; capping it"
        );
        limit
    } else {
        until
    }
}

/// The server's `Retry-After`, as an absolute time (capped at `now + max`).
fn retry_after(headers: &HeaderMap, now: Timestamp, max: Duration) -> Option<Timestamp> {
    let name = http::header::RETRY_AFTER.as_str();
    let raw = text(name, headers.get(http::header::RETRY_AFTER)?)?;
    let until = if raw.parse::<f64>().is_ok() {
        // Delay-seconds (RFC 9110: an integer; decimals and huge values are read too, and
        // `inf`, `NaN` or a negative are ignored).
        after_seconds(now, non_negative(name, raw)?)
    } else {
        match httpdate::parse_http_date(raw) {
            Ok(date) => Timestamp::from_system_time(date),
            Err(_) => {
                tracing::warn!(
                    header = name,
                    value = raw,
                    "ignoring a Retry-After that is neither seconds nor an HTTP date"
                );
                return None;
            }
        }
    };
    Some(capped(name, raw, until, now, max))
}

/// A `*-Reset` value: Unix milliseconds, Unix seconds or seconds from now, by magnitude.
fn reset(name: &str, raw: &str, now: Timestamp, max: Duration) -> Option<Timestamp> {
    let value = non_negative(name, raw)?;
    let at = if value >= EPOCH_MILLIS_FROM {
        Timestamp::from_millis(value as u64)
    } else if value >= EPOCH_SECONDS_FROM {
        Timestamp::from_millis((value * 1000.0) as u64)
    } else {
        after_seconds(now, value)
    };
    Some(capped(name, raw, at, now, max))
}

/// Everything a response says about the server's limits; no block or reset lies more than
/// `max_block` after `now`.
pub(crate) fn parse(
    status: StatusCode,
    headers: &HeaderMap,
    now: Timestamp,
    max_block: Duration,
) -> Vec<ServerFeedback> {
    let mut out = Vec::new();
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && let Some(until) = retry_after(headers, now, max_block)
        && until > now
    {
        out.push(ServerFeedback::Block { until });
    }
    for (remaining, reset_name) in [
        ("ratelimit-remaining", "ratelimit-reset"),
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
    ] {
        let (Some(left), Some(reset_value)) = (headers.get(remaining), headers.get(reset_name))
        else {
            continue;
        };
        let (Some(left), Some(reset_raw)) = (text(remaining, left), text(reset_name, reset_value))
        else {
            continue;
        };
        let (Some(left), Some(reset)) = (
            non_negative(remaining, left),
            reset(reset_name, reset_raw, now, max_block),
        ) else {
            continue;
        };
        if reset > now {
            out.push(ServerFeedback::Remaining {
                // `as` saturates (and floors a fraction).
                remaining: left as u32,
                reset,
            });
            break;
        }
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    fn p(status: StatusCode, headers: &HeaderMap, now: Timestamp) -> Vec<ServerFeedback> {
        parse(status, headers, now, DEFAULT_MAX_SERVER_BLOCK)
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = Timestamp::from_millis(1_700_000_000_000);
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(
            p(StatusCode::TOO_MANY_REQUESTS, &h, now),
            vec![ServerFeedback::Block {
                until: Timestamp::from_millis(1_700_000_007_000)
            }]
        );
        let date =
            httpdate::fmt_http_date(Timestamp::from_millis(1_700_000_030_000).to_system_time());
        let h = headers(&[("retry-after", &date)]);
        assert_eq!(
            p(StatusCode::SERVICE_UNAVAILABLE, &h, now),
            vec![ServerFeedback::Block {
                until: Timestamp::from_millis(1_700_000_030_000)
            }]
        );
        // Not on a success, and not for a date in the past.
        assert!(p(StatusCode::OK, &headers(&[("retry-after", "7")]), now).is_empty());
        let past =
            httpdate::fmt_http_date(Timestamp::from_millis(1_600_000_000_000).to_system_time());
        assert!(
            p(
                StatusCode::TOO_MANY_REQUESTS,
                &headers(&[("retry-after", &past)]),
                now
            )
            .is_empty()
        );
    }

    #[test]
    fn remaining_and_reset_in_both_spellings() {
        let now = Timestamp::from_millis(1_700_000_000_000);
        let h = headers(&[("ratelimit-remaining", "3"), ("ratelimit-reset", "10")]);
        assert_eq!(
            p(StatusCode::OK, &h, now),
            vec![ServerFeedback::Remaining {
                remaining: 3,
                reset: Timestamp::from_millis(1_700_000_010_000)
            }]
        );
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000060"),
        ]);
        assert_eq!(
            p(StatusCode::OK, &h, now),
            vec![ServerFeedback::Remaining {
                remaining: 0,
                reset: Timestamp::from_millis(1_700_000_060_000)
            }]
        );
        assert!(
            p(
                StatusCode::OK,
                &headers(&[("x-ratelimit-remaining", "4")]),
                now
            )
            .is_empty()
        );
    }

    const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);
    const HOUR: u64 = 3_600_000;

    fn block(value: &str) -> Vec<ServerFeedback> {
        p(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", value)]),
            NOW,
        )
    }

    fn budget(remaining: &str, reset: &str) -> Vec<ServerFeedback> {
        p(
            StatusCode::OK,
            &headers(&[
                ("x-ratelimit-remaining", remaining),
                ("x-ratelimit-reset", reset),
            ]),
            NOW,
        )
    }

    #[test]
    fn absurd_retry_after_values_are_capped_or_ignored() {
        let capped = vec![ServerFeedback::Block {
            until: Timestamp::from_millis(NOW.as_millis() + HOUR),
        }];
        for huge in [
            "1e300",
            "18446744073709551615",
            "99999999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(block(huge), capped, "{huge}");
        }
        for ignored in ["inf", "-inf", "NaN", "-1", "soon", "", "1 2", "0x10"] {
            assert!(block(ignored).is_empty(), "{ignored}");
        }
        // A decimal delay is read, and one under the cap is kept as it is.
        assert_eq!(
            block("1.5"),
            vec![ServerFeedback::Block {
                until: Timestamp::from_millis(NOW.as_millis() + 1500)
            }]
        );
        assert_eq!(
            block("3599"),
            vec![ServerFeedback::Block {
                until: Timestamp::from_millis(NOW.as_millis() + 3_599_000)
            }]
        );
    }

    #[test]
    fn resets_are_read_by_magnitude_and_capped() {
        let at = |ms| {
            vec![ServerFeedback::Remaining {
                remaining: 0,
                reset: Timestamp::from_millis(ms),
            }]
        };
        // Delta seconds, Unix seconds, Unix milliseconds (13 digits).
        assert_eq!(budget("0", "30"), at(NOW.as_millis() + 30_000));
        assert_eq!(budget("0", "1700000030"), at(NOW.as_millis() + 30_000));
        assert_eq!(budget("0", "1700000030000"), at(NOW.as_millis() + 30_000));
        assert_eq!(budget("0", "1700000030.5"), at(NOW.as_millis() + 30_500));
        // Far in the future, in any unit: one hour at most.
        for huge in [
            "1900000000000",
            "1900000000",
            "1e300",
            "18446744073709551615",
        ] {
            assert_eq!(budget("0", huge), at(NOW.as_millis() + HOUR), "{huge}");
        }
        // In the past: nothing to apply.
        assert!(budget("0", "1600000000").is_empty());
        assert!(budget("0", "1600000000000").is_empty());
        for ignored in ["inf", "NaN", "-5", "later", ""] {
            assert!(budget("0", ignored).is_empty(), "{ignored}");
        }
        for ignored in ["inf", "NaN", "-1", "many"] {
            assert!(budget(ignored, "30").is_empty(), "{ignored}");
        }
        // A remaining count past u32 saturates; a fraction is floored.
        assert_eq!(
            budget("1e30", "30"),
            vec![ServerFeedback::Remaining {
                remaining: u32::MAX,
                reset: Timestamp::from_millis(NOW.as_millis() + 30_000)
            }]
        );
        assert_eq!(
            budget("2.9", "30"),
            vec![ServerFeedback::Remaining {
                remaining: 2,
                reset: Timestamp::from_millis(NOW.as_millis() + 30_000)
            }]
        );
    }

    #[test]
    fn a_shorter_max_server_block_caps_sooner_and_non_utf8_is_ignored() {
        let h = headers(&[("retry-after", "600")]);
        assert_eq!(
            parse(
                StatusCode::SERVICE_UNAVAILABLE,
                &h,
                NOW,
                Duration::from_secs(60)
            ),
            vec![ServerFeedback::Block {
                until: Timestamp::from_millis(NOW.as_millis() + 60_000)
            }]
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        h.insert(
            "ratelimit-remaining",
            HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        h.insert("ratelimit-reset", HeaderValue::from_static("30"));
        assert!(p(StatusCode::TOO_MANY_REQUESTS, &h, NOW).is_empty());
    }
}
