//! The change events the store publishes (`instance \n kind data`), the ids of the instances
//! that publish them, and the lex ranges of the URL index.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::store::{CacheChange, Invalidation};
use crate::key::RequestKey;
use crate::time::random_u64;

/// Members of the index sorted sets end in `\0` and the 64 hex digits of the key.
const HEX: usize = 64;

/// A change the listener heard.
#[derive(Debug, Clone)]
pub(super) struct Heard {
    pub(super) from: Option<Arc<str>>,
    pub(super) change: CacheChange,
}

impl From<CacheChange> for Heard {
    fn from(change: CacheChange) -> Self {
        Heard { from: None, change }
    }
}

/// `<pid>-<random>-<n>`: unique per store, also across machines and containers (the random
/// part is [`random_u64`]).
pub(super) fn instance_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{:016x}-{}",
        std::process::id(),
        random_u64(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An event on the channel: `instance \n kind data`.
pub(super) fn event(instance: &str, kind: char, data: &str) -> String {
    format!("{instance}\n{kind}{data}")
}

/// Who sent an event and the change it reports, or `None` for a malformed one.
pub(super) fn parse_event(payload: &[u8]) -> Option<(&str, CacheChange)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (from, rest) = text.split_once('\n')?;
    let mut chars = rest.chars();
    let kind = chars.next()?;
    let data = chars.as_str();
    let change = match kind {
        'k' => CacheChange::Key(RequestKey::from_parts(from_hex(data)?, "")),
        'p' => CacheChange::Invalidated(Invalidation::Prefix(data.to_owned())),
        'u' => CacheChange::Invalidated(Invalidation::Path(data.to_owned())),
        'c' => CacheChange::Cleared,
        _ => return None,
    };
    Some((from, change))
}

pub(super) fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != HEX {
        return None;
    }
    let mut out = [0; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// `[prefix` .. `[prefix\xff`: every member that starts with `prefix` (URLs are UTF-8, which
/// never holds the byte 0xff).
pub(super) fn lex_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut min = Vec::with_capacity(prefix.len() + 1);
    min.push(b'[');
    min.extend_from_slice(prefix);
    let mut max = min.clone();
    max.push(0xff);
    (min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let key = RequestKey::from_parts([0xab; 32], "x");
        let hex = key.to_hex();
        let e = event("me", 'k', &hex);
        assert_eq!(
            parse_event(e.as_bytes()),
            Some(("me", CacheChange::Key(key)))
        );
        assert_eq!(
            parse_event(event("me", 'p', "http://h/a\nb").as_bytes()),
            Some((
                "me",
                CacheChange::Invalidated(Invalidation::Prefix("http://h/a\nb".into()))
            ))
        );
        assert_eq!(
            parse_event(event("me", 'u', "http://h/a").as_bytes()),
            Some((
                "me",
                CacheChange::Invalidated(Invalidation::Path("http://h/a".into()))
            ))
        );
        assert_eq!(
            parse_event(event("me", 'c', "").as_bytes()),
            Some(("me", CacheChange::Cleared))
        );
        assert_eq!(parse_event(b"me\nkzz"), None);
        assert_eq!(parse_event(b"no newline"), None);
    }

    #[test]
    fn the_lex_range_covers_exactly_the_prefix() {
        let (min, max) = lex_range(b"http://h/a");
        let inside = b"http://h/a/1\0ff".to_vec();
        let outside = b"http://h/b".to_vec();
        assert!(min[1..] <= inside[..] && inside[..] < max[1..]);
        assert!(!(min[1..] <= outside[..] && outside[..] < max[1..]));
    }
}
