//! Cache modes, forced TTLs and sliding windows, and an entry's lifetime, whatever decided it.

use std::time::{Duration, SystemTime};

use http::{HeaderName, Request};

use crate::cache::layer::Config;
use crate::cache::{CacheEntry, CacheMode, CacheTtl};
use crate::key::RequestKey;
use crate::resource::Resource;
use crate::time;

use super::job::Job;
use super::policy::{directive_secs, has_validator, may_serve_stale};

/// The request's [`CacheMode`] extension ([`CacheMode::Default`] without one).
pub(super) fn mode_of<B>(request: &Request<B>) -> CacheMode {
    request
        .extensions()
        .get::<CacheMode>()
        .copied()
        .unwrap_or_default()
}

impl Job {
    /// The forced TTL of a request, if any: its own [`CacheTtl`] extension, else its resource's
    /// ([`CacheLayer::resource_ttl`](crate::cache::CacheLayer::resource_ttl)), else the layer's
    /// [`default_ttl`](crate::cache::CacheLayer::default_ttl).
    pub(super) fn forced_ttl<B>(
        &self,
        request: &Request<B>,
        resource: &Resource,
    ) -> Option<CacheTtl> {
        request
            .extensions()
            .get::<CacheTtl>()
            .copied()
            .or_else(|| {
                if self.config.resource_ttls.is_empty() {
                    return None;
                }
                self.config.resource_ttls.get(resource).copied()
            })
            .or(self.config.default_ttl)
    }

    pub(super) async fn slide(
        &self,
        key: &RequestKey,
        entry: &CacheEntry,
        now: SystemTime,
        window: Duration,
    ) {
        let fresh_until = time::add(now, window);
        // Touch at most once a second of movement, so that hot entries do not write per hit.
        if fresh_until
            .duration_since(entry.fresh_until)
            .is_ok_and(|moved| moved >= Duration::from_secs(1))
        {
            let expires_at = time::add(
                entry.expires_at,
                fresh_until
                    .duration_since(entry.fresh_until)
                    .unwrap_or_default(),
            );
            if let Err(error) = self.state.store.touch(key, fresh_until, expires_at).await {
                self.store_failed("touch", &error);
            }
        }
    }
}

pub(super) struct Lifetime {
    pub(super) fresh: Duration,
    pub(super) age: Duration,
    pub(super) sliding: Option<Duration>,
    pub(super) vary: Vec<HeaderName>,
}

impl Lifetime {
    pub(super) fn apply(self, entry: &mut CacheEntry, config: &Config) {
        entry.age_at_store = self.age;
        entry.fresh_until = time::add(entry.stored_at, self.fresh);
        entry.sliding = self.sliding;
        entry.vary = self.vary;
        let h = &entry.headers;
        // A response that may never be served stale is kept past its freshness only to be
        // revalidated.
        let mut keep = [
            directive_secs(h, "stale-if-error"),
            directive_secs(h, "stale-while-revalidate"),
            config.stale_if_error.map(|d| d.as_secs()),
        ]
        .into_iter()
        .flatten()
        .max()
        .filter(|_| may_serve_stale(h, config.shared))
        .map_or(Duration::ZERO, Duration::from_secs);
        if has_validator(h) {
            keep = keep.max(config.keep_stale);
        }
        entry.expires_at = time::add(entry.fresh_until, keep);
    }
}
