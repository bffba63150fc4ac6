//! Reading a server's rate-limit headers.
//!
//! * `429 Too Many Requests` or `503 Service Unavailable` with `Retry-After` (delay in seconds or
//!   an HTTP date) blocks the resource until then.
//! * `RateLimit-Remaining` with `RateLimit-Reset`, or `X-RateLimit-Remaining` with
//!   `X-RateLimit-Reset`, caps the requests sent until the reset. A reset value of 1,000,000,000
//!   or more is read as Unix seconds (GitHub's form), a smaller one as seconds from now (the IETF
//!   draft's form).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use super::clock::Timestamp;
use super::store::ServerFeedback;

/// The server's `Retry-After`, as an absolute time.
pub(crate) fn retry_after(headers: &HeaderMap, now: Timestamp) -> Option<Timestamp> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(now + Duration::from_secs(seconds));
    }
    let date: SystemTime = httpdate::parse_http_date(value).ok()?;
    Some(Timestamp::from_system_time(date))
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    // Structured-field forms like `10;w=60` keep their leading number.
    let value = value.split([';', ',']).next()?.trim();
    value
        .parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0)
        .map(|v| v as u64)
}

/// Everything a response says about the server's limits.
pub(crate) fn parse(
    status: StatusCode,
    headers: &HeaderMap,
    now: Timestamp,
) -> Vec<ServerFeedback> {
    let mut out = Vec::new();
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && let Some(until) = retry_after(headers, now)
        && until > now
    {
        out.push(ServerFeedback::Block { until });
    }
    for (remaining, reset) in [
        ("ratelimit-remaining", "ratelimit-reset"),
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
    ] {
        let (Some(left), Some(reset)) = (number(headers, remaining), number(headers, reset)) else {
            continue;
        };
        let reset = if reset >= 1_000_000_000 {
            Timestamp::from_millis(reset.saturating_mul(1000))
        } else {
            now + Duration::from_secs(reset)
        };
        if reset > now {
            out.push(ServerFeedback::Remaining {
                remaining: u32::try_from(left).unwrap_or(u32::MAX),
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

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = Timestamp::from_millis(1_700_000_000_000);
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(
            parse(StatusCode::TOO_MANY_REQUESTS, &h, now),
            vec![ServerFeedback::Block {
                until: Timestamp::from_millis(1_700_000_007_000)
            }]
        );
        let date =
            httpdate::fmt_http_date(Timestamp::from_millis(1_700_000_030_000).to_system_time());
        let h = headers(&[("retry-after", &date)]);
        assert_eq!(
            parse(StatusCode::SERVICE_UNAVAILABLE, &h, now),
            vec![ServerFeedback::Block {
                until: Timestamp::from_millis(1_700_000_030_000)
            }]
        );
        // Not on a success, and not for a date in the past.
        assert!(parse(StatusCode::OK, &headers(&[("retry-after", "7")]), now).is_empty());
        let past =
            httpdate::fmt_http_date(Timestamp::from_millis(1_600_000_000_000).to_system_time());
        assert!(
            parse(
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
            parse(StatusCode::OK, &h, now),
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
            parse(StatusCode::OK, &h, now),
            vec![ServerFeedback::Remaining {
                remaining: 0,
                reset: Timestamp::from_millis(1_700_000_060_000)
            }]
        );
        assert!(
            parse(
                StatusCode::OK,
                &headers(&[("x-ratelimit-remaining", "4")]),
                now
            )
            .is_empty()
        );
    }
}
