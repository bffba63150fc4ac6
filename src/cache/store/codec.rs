//! One [`CacheEntry`] as one byte string, for backends that store values as bytes (Redis).
//!
//! The headers use the byte form the dedupe stores already share
//! ([`encode_headers`](crate::dedupe::store::encode_headers)); the body comes last, so decoding
//! shares the value's buffer instead of copying the body.
//!
//! Layout (integers big-endian): `version u8 = 1`, `status u16`, `http version u8`,
//! `stored_at i64 ms`, `age_at_store u64 ms`, `fresh_until i64 ms`, `expires_at i64 ms`,
//! `sliding i64 ms (-1: none)`, then `url`, `vary` (comma-joined) and `headers`, each as
//! `len u32` + bytes, then the body.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, StatusCode, Version};

use crate::cache::CacheEntry;
use crate::dedupe::store::{decode_headers, encode_headers};

const FORMAT: u8 = 1;

use crate::time::{duration_ms_i64 as duration_ms, epoch_ms as millis, from_epoch_ms as time};

fn version_code(v: Version) -> u8 {
    match v {
        Version::HTTP_09 => 9,
        Version::HTTP_10 => 10,
        Version::HTTP_2 => 20,
        Version::HTTP_3 => 30,
        _ => 11,
    }
}

fn version_of(code: u8) -> Version {
    match code {
        9 => Version::HTTP_09,
        10 => Version::HTTP_10,
        20 => Version::HTTP_2,
        30 => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

/// `entry` as bytes.
pub(crate) fn encode(entry: &CacheEntry) -> Vec<u8> {
    let vary = entry
        .vary
        .iter()
        .map(HeaderName::as_str)
        .collect::<Vec<_>>()
        .join(",");
    let headers = encode_headers(&entry.headers);
    let mut out = Vec::with_capacity(
        44 + 12 + entry.url.len() + vary.len() + headers.len() + entry.body.len(),
    );
    out.push(FORMAT);
    out.extend_from_slice(&entry.status.as_u16().to_be_bytes());
    out.push(version_code(entry.version));
    out.extend_from_slice(&millis(entry.stored_at).to_be_bytes());
    out.extend_from_slice(&duration_ms(entry.age_at_store).to_be_bytes());
    out.extend_from_slice(&millis(entry.fresh_until).to_be_bytes());
    out.extend_from_slice(&millis(entry.expires_at).to_be_bytes());
    out.extend_from_slice(&entry.sliding.map_or(-1, duration_ms).to_be_bytes());
    for part in [entry.url.as_bytes(), vary.as_bytes(), &headers] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&entry.body);
    out
}

/// The entry [`encode`] wrote, or `None` for damaged bytes or an unknown format. The body shares
/// `bytes`.
pub(crate) fn decode(bytes: Bytes) -> Option<CacheEntry> {
    let mut at: usize = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let part = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(part)
    };
    if take(1)? != [FORMAT] {
        return None;
    }
    let status = StatusCode::from_u16(u16::from_be_bytes(take(2)?.try_into().ok()?)).ok()?;
    let version = version_of(take(1)?[0]);
    let mut int = || Some(i64::from_be_bytes(take(8)?.try_into().ok()?));
    let (stored_at, age, fresh_until, expires_at, sliding) =
        (int()?, int()?, int()?, int()?, int()?);
    let mut part = || {
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        take(n).map(<[u8]>::to_vec)
    };
    let url = String::from_utf8(part()?).ok()?;
    let vary = String::from_utf8(part()?).ok()?;
    let headers = decode_headers(&part()?)?;
    let vary = vary
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(CacheEntry {
        url,
        status,
        version,
        headers,
        body: bytes.slice(at..),
        vary,
        stored_at: time(stored_at),
        age_at_store: Duration::from_millis(age.max(0).unsigned_abs()),
        fresh_until: time(fresh_until),
        expires_at: time(expires_at),
        sliding: (sliding >= 0).then(|| Duration::from_millis(sliding.unsigned_abs())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn sample() -> CacheEntry {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut entry = CacheEntry::new(
            "http://h/a?b=c",
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"body \0 bytes"),
            now,
        )
        .fresh_for(Duration::from_secs(60), Duration::from_secs(5));
        entry.version = Version::HTTP_2;
        entry.headers.insert("etag", "\"x\"".parse().unwrap());
        entry.headers.append("set-thing", "1".parse().unwrap());
        entry.headers.append("set-thing", "2".parse().unwrap());
        entry.vary = vec![http::header::ACCEPT, http::header::AUTHORIZATION];
        entry.age_at_store = Duration::from_millis(1500);
        entry.sliding = Some(Duration::from_secs(30));
        entry
    }

    #[test]
    fn an_entry_survives_the_round_trip() {
        let entry = sample();
        let bytes = Bytes::from(encode(&entry));
        let back = decode(bytes.clone()).unwrap();
        assert_eq!(back.url, entry.url);
        assert_eq!(back.status, entry.status);
        assert_eq!(back.version, entry.version);
        assert_eq!(back.headers, entry.headers);
        assert_eq!(back.body, entry.body);
        assert_eq!(back.vary, entry.vary);
        assert_eq!(back.stored_at, entry.stored_at);
        assert_eq!(back.age_at_store, entry.age_at_store);
        assert_eq!(back.fresh_until, entry.fresh_until);
        assert_eq!(back.expires_at, entry.expires_at);
        assert_eq!(back.sliding, entry.sliding);
        // The body is a view of the value, not a copy.
        assert_eq!(
            back.body.as_ptr(),
            bytes[bytes.len() - entry.body.len()..].as_ptr()
        );
        let mut plain = CacheEntry::new("u", StatusCode::OK, Bytes::new(), UNIX_EPOCH);
        plain.sliding = None;
        let back = decode(Bytes::from(encode(&plain))).unwrap();
        assert_eq!((back.sliding, back.vary.len()), (None, 0));
    }

    #[test]
    fn times_at_the_ends_of_the_range_decode_without_panicking() {
        let mut bytes = encode(&sample());
        // stored_at, age_at_store, fresh_until, expires_at, sliding: bytes 4..44.
        for (at, value) in [
            (4, i64::MIN),
            (12, i64::MAX),
            (20, i64::MAX),
            (28, i64::MAX),
        ] {
            bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
        }
        let back = decode(Bytes::from(bytes)).unwrap();
        let end = crate::time::end_of_time();
        assert_eq!((back.fresh_until, back.expires_at), (end, end));
        assert!(back.stored_at < UNIX_EPOCH);
        assert_eq!(back.age_at_store, Duration::from_millis(i64::MAX as u64));
    }

    #[test]
    fn damaged_bytes_decode_to_none() {
        let bytes = encode(&sample());
        for cut in [0, 1, 20, 44, 50] {
            assert!(
                decode(Bytes::copy_from_slice(&bytes[..cut])).is_none(),
                "{cut}"
            );
        }
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(decode(Bytes::from(other)).is_none());
        let mut bad_status = bytes;
        bad_status[1..3].copy_from_slice(&1000u16.to_be_bytes());
        assert!(decode(Bytes::from(bad_status)).is_none());
    }
}
