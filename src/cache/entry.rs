//! What a cache store holds.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode, Version};

use crate::time;

/// A stored response (or, when [`vary`](Self::vary) is set on the entry under a request's own
/// key, the index that says which request headers select the variant).
///
/// Stores keep entries as they are given and hand them back as `Arc<CacheEntry>`, so a memory hit
/// shares the body [`Bytes`] with the caller. A store may drop an entry after
/// [`expires_at`](Self::expires_at); the cache layer decides freshness from the other times.
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use courteous::cache::CacheEntry;
///
/// let now = SystemTime::now();
/// let entry = CacheEntry::new("http://h/a", http::StatusCode::OK, bytes::Bytes::from("hi"), now)
///     .fresh_for(Duration::from_secs(60), Duration::from_secs(3600));
/// assert!(entry.is_fresh(now));
/// assert_eq!(entry.body.len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// The request URL, with secret query parameters redacted (what invalidation matches).
    pub url: String,
    /// The response status.
    pub status: StatusCode,
    /// The response HTTP version.
    pub version: Version,
    /// The response headers.
    pub headers: HeaderMap,
    /// The response body.
    pub body: Bytes,
    /// The response's `Vary` header names (lower case); empty when it has none.
    pub vary: Vec<HeaderName>,
    /// When the response was received.
    pub stored_at: SystemTime,
    /// The response's age when it was received (from its `Age` and `Date` headers).
    pub age_at_store: Duration,
    /// Until when the entry is fresh.
    pub fresh_until: SystemTime,
    /// When a store may drop the entry (fresh lifetime plus the time it stays useful stale).
    pub expires_at: SystemTime,
    /// For a sliding TTL, how far each hit moves `fresh_until`.
    pub sliding: Option<Duration>,
}

impl CacheEntry {
    /// An entry for a response received at `now`, stale at once and expiring at once; set its
    /// lifetime with [`fresh_for`](Self::fresh_for).
    pub fn new(url: impl Into<String>, status: StatusCode, body: Bytes, now: SystemTime) -> Self {
        CacheEntry {
            url: url.into(),
            status,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body,
            vary: Vec::new(),
            stored_at: now,
            age_at_store: Duration::ZERO,
            fresh_until: now,
            expires_at: now,
            sliding: None,
        }
    }

    /// Fresh for `fresh` after `stored_at`, kept `keep_stale` longer. Both times stop at the
    /// end of the year 9999 (so `Duration::MAX` means "as long as can be stored").
    #[must_use]
    pub fn fresh_for(mut self, fresh: Duration, keep_stale: Duration) -> Self {
        self.fresh_until = time::add(self.stored_at, fresh);
        self.expires_at = time::add(self.fresh_until, keep_stale);
        self
    }

    /// Whether the entry is fresh at `now`.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.fresh_until
    }

    /// Whether a store may drop it at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }

    /// The entry's age at `now`, as the `Age` header says it (saturating, never panicking).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.age_at_store
            .saturating_add(now.duration_since(self.stored_at).unwrap_or_default())
    }

    /// How long it stays fresh after `now` (zero when stale).
    pub fn time_to_live(&self, now: SystemTime) -> Duration {
        self.fresh_until.duration_since(now).unwrap_or_default()
    }

    /// How long it has been stale at `now` (zero when fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        now.duration_since(self.fresh_until).unwrap_or_default()
    }

    /// Approximate bytes held: body, headers and URL.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 8)
            .sum();
        self.body.len() + headers + self.url.len() + 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_and_ages_saturate() {
        let now = SystemTime::now();
        let mut entry = CacheEntry::new("u", StatusCode::OK, Bytes::new(), now)
            .fresh_for(Duration::MAX, Duration::MAX);
        assert!(entry.is_fresh(now + Duration::from_secs(100 * 365 * 86_400)));
        assert!(entry.expires_at >= entry.fresh_until);
        // An `Age` of u64::MAX seconds, a few seconds later: no "overflow when adding durations".
        entry.age_at_store = Duration::from_secs(u64::MAX);
        assert_eq!(entry.age(now + Duration::from_secs(3)), Duration::MAX);
    }
}
