//! The canonical form of a request that its key hashes.

use http::HeaderName;
use sha2::{Digest, Sha256};

/// Feeds length-prefixed fields to the hash, so that no two different field lists hash alike.
pub(super) struct Canonical(pub(super) Sha256);

impl Canonical {
    pub(super) fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// Each of `names` (in the given order) with all its values in `headers`.
    pub(super) fn headers(&mut self, names: &[HeaderName], headers: &http::HeaderMap) {
        for name in names {
            self.field(name.as_str().as_bytes());
            let values = headers.get_all(name);
            self.field(&(values.iter().count() as u64).to_le_bytes());
            for value in values {
                self.field(value.as_bytes());
            }
        }
    }
}

/// `s` in lower case, allocating only when it has upper-case letters.
pub(super) fn lower(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The `application/x-www-form-urlencoded` decoding of `input` as raw bytes: `+` is a space,
/// `%XY` the byte `0xXY`; a `%` not followed by two hexadecimal digits stays as it is. Unlike a
/// decoding to `str`, bytes that are not UTF-8 are kept, so `%FF` and `%FE` stay different.
pub(super) fn decode(input: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let pair = input
                    .get(i + 1)
                    .copied()
                    .and_then(hex)
                    .zip(input.get(i + 2).copied().and_then(hex));
                if let Some((high, low)) = pair {
                    out.push(high << 4 | low);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The query's `name=value` pairs, decoded to raw bytes (empty pairs skipped, as
/// `form_urlencoded` does).
pub(super) fn query_pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .as_bytes()
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            (decode(name), decode(value))
        })
        .collect()
}
