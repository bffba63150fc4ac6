//! One byte form for headers and cache entries, shared by every backend that stores bytes: the
//! SQLite cache store (its `headers` column), the Redis cache store (one value per entry) and the
//! SQLite and Redis dedupe stores (the headers of a shared response).
//!
//! Integers are big-endian. Decoding never panics: damaged, truncated or foreign bytes decode
//! to `None` (the stores then treat the row as absent), including a header count past what a
//! [`HeaderMap`] holds.
//!
//! # Headers
//!
//! One record per field value, in the map's order (a name with several values appears once per
//! value), nothing before or after; an empty map is zero bytes:
//!
//! ```text
//! name len u32 | name (lowercase, as HeaderName::as_str) | value len u32 | value bytes
//! ```
//!
//! # Cache entry
//!
//! ```text
//! format u8 = 1 | status u16 | http version u8 (9, 10, 11, 20, 30)
//! stored_at i64 | age_at_store i64 | fresh_until i64 | expires_at i64 | sliding i64 (-1: none)
//! url len u32 | url | vary len u32 | vary (names joined by ',') | headers len u32 | headers
//! body (the rest)
//! ```
//!
//! Times are milliseconds since the Unix epoch (negative before it) and durations milliseconds,
//! both saturating ([`crate::time`]). The body comes last, so decoding shares the value's buffer
//! instead of copying the body. A new layout gets a new format byte; values with another one
//! decode to `None`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

use crate::cache::CacheEntry;
use crate::time::{duration_ms_i64, epoch_ms, from_epoch_ms};

/// The format byte of an encoded [`CacheEntry`].
const ENTRY_FORMAT: u8 = 1;

/// The one-byte code of an HTTP version (`11` for versions this build does not know).
pub(crate) fn version_code(v: Version) -> u8 {
    match v {
        Version::HTTP_09 => 9,
        Version::HTTP_10 => 10,
        Version::HTTP_2 => 20,
        Version::HTTP_3 => 30,
        _ => 11,
    }
}

/// The inverse of [`version_code`]; HTTP/1.1 for an unknown code.
pub(crate) fn version_of(code: u8) -> Version {
    match code {
        9 => Version::HTTP_09,
        10 => Version::HTTP_10,
        20 => Version::HTTP_2,
        30 => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

/// Appends `part` with its length (`u32`; a part can never reach 4 GiB: headers and URLs are
/// bounded far below that, and a longer one is cut at the length written, so that it decodes
/// as damaged rather than misaligned).
fn put_part(out: &mut Vec<u8>, part: &[u8]) {
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&part[..len as usize]);
}

/// Appends the headers' byte form (see the [module documentation](self)) to `out`.
fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        put_part(out, name.as_str().as_bytes());
        put_part(out, value.as_bytes());
    }
}

/// The headers' byte form (see the [module documentation](self)).
pub(crate) fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let size = headers
        .iter()
        .map(|(name, value)| 8 + name.as_str().len() + value.len())
        .sum();
    let mut out = Vec::with_capacity(size);
    put_headers(&mut out, headers);
    out
}

/// The headers [`encode_headers`] wrote, or `None` for damaged bytes.
///
/// `encoded` is copied once; every value is a slice of that copy rather than an allocation of
/// its own (which cloning the map for a response then shares too).
pub(crate) fn decode_headers(encoded: &[u8]) -> Option<HeaderMap> {
    decode_shared_headers(Bytes::copy_from_slice(encoded))
}

/// [`decode_headers`] of bytes already in a [`Bytes`]: the values are slices of `encoded`.
pub(crate) fn decode_shared_headers(encoded: Bytes) -> Option<HeaderMap> {
    let mut reader = Reader::new(encoded);
    let mut headers = HeaderMap::new();
    while !reader.is_empty() {
        let name = HeaderName::from_bytes(&reader.part()?).ok()?;
        let value = HeaderValue::from_maybe_shared(reader.part()?).ok()?;
        // More fields than a map holds: damaged, not a reason to panic.
        headers.try_append(name, value).ok()?;
    }
    Some(headers)
}

/// The `Vary` names of an entry as one string: the names joined by `,` (empty for none).
pub(crate) fn encode_vary(vary: &[HeaderName]) -> String {
    vary.iter()
        .map(HeaderName::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// The names [`encode_vary`] joined, or `None` when one of them is not a header name (damaged).
pub(crate) fn decode_vary(joined: &str) -> Option<Vec<HeaderName>> {
    joined
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .collect()
}

/// `entry` as one byte string (see the [module documentation](self)).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn encode_entry(entry: &CacheEntry) -> Vec<u8> {
    let vary = encode_vary(&entry.vary);
    let headers = encode_headers(&entry.headers);
    let mut out = Vec::with_capacity(
        44 + 12 + entry.url.len() + vary.len() + headers.len() + entry.body.len(),
    );
    out.push(ENTRY_FORMAT);
    out.extend_from_slice(&entry.status.as_u16().to_be_bytes());
    out.push(version_code(entry.version));
    for int in [
        epoch_ms(entry.stored_at),
        duration_ms_i64(entry.age_at_store),
        epoch_ms(entry.fresh_until),
        epoch_ms(entry.expires_at),
        entry.sliding.map_or(-1, duration_ms_i64),
    ] {
        out.extend_from_slice(&int.to_be_bytes());
    }
    for part in [entry.url.as_bytes(), vary.as_bytes(), &headers] {
        put_part(&mut out, part);
    }
    out.extend_from_slice(&entry.body);
    out
}

/// The entry [`encode_entry`] wrote, or `None` for damaged bytes or another format. The body
/// shares `bytes`; the headers are copied once (so that a kept header does not keep the body).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn decode_entry(bytes: Bytes) -> Option<CacheEntry> {
    let mut reader = Reader::new(bytes);
    if reader.array::<1>()? != [ENTRY_FORMAT] {
        return None;
    }
    let status = StatusCode::from_u16(u16::from_be_bytes(reader.array()?)).ok()?;
    let [version] = reader.array()?;
    let mut int = || Some(i64::from_be_bytes(reader.array()?));
    let (stored_at, age, fresh_until, expires_at, sliding) =
        (int()?, int()?, int()?, int()?, int()?);
    let url = String::from_utf8(reader.part()?.to_vec()).ok()?;
    let vary = decode_vary(std::str::from_utf8(&reader.part()?).ok()?)?;
    let headers = decode_headers(&reader.part()?)?;
    Some(CacheEntry {
        url,
        status,
        version: version_of(version),
        headers,
        body: reader.rest(),
        vary,
        stored_at: from_epoch_ms(stored_at),
        age_at_store: Duration::from_millis(age.max(0).unsigned_abs()),
        fresh_until: from_epoch_ms(fresh_until),
        expires_at: from_epoch_ms(expires_at),
        sliding: (sliding >= 0).then(|| Duration::from_millis(sliding.unsigned_abs())),
    })
}

/// Reads a byte string front to back; every read is `None` past its end.
struct Reader {
    bytes: Bytes,
    at: usize,
}

impl Reader {
    fn new(bytes: Bytes) -> Self {
        Reader { bytes, at: 0 }
    }

    fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// The next `n` bytes, sharing the buffer.
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())?;
        let part = self.bytes.slice(self.at..end);
        self.at = end;
        Some(part)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.as_ref().try_into().ok()
    }

    /// A part [`put_part`] wrote.
    fn part(&mut self) -> Option<Bytes> {
        let len = u32::from_be_bytes(self.array()?);
        self.take(usize::try_from(len).ok()?)
    }

    /// Everything not read yet.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn rest(self) -> Bytes {
        self.bytes.slice(self.at.min(self.bytes.len())..)
    }
}

#[cfg(test)]
mod tests;
