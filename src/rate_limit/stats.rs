//! What a [`RateLimitLayer`](super::RateLimitLayer) counted ([`RateLimitStats`], per resource
//! [`ResourceStats`]) and what its store holds ([`RateLimitStoreStats`]).
//!
//! The layer counts what it decided and what it was told, in this process, whatever the
//! store; the store answers what it holds for every process that shares it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::resource::Resource;

/// What a [`RateLimitLayer`](super::RateLimitLayer) did for one resource, in this process,
/// since the layer was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ResourceStats {
    /// User requests admitted.
    pub admitted_user: u64,
    /// Background requests admitted.
    pub admitted_background: u64,
    /// Decisions that refused a request (a waiting request may be refused several times).
    pub refused: u64,
    /// `Retry-After` blocks the server sent that the layer recorded in the store.
    pub server_blocks: u64,
    /// Decisions the store failed to make.
    pub store_errors: u64,
    /// Requests sent without a decision because the store failed and the layer fails open
    /// ([`OnStoreError::FailOpen`](super::OnStoreError::FailOpen)).
    pub admitted_unchecked: u64,
}

impl ResourceStats {
    /// Every count added up (how busy the resource was, for eviction).
    fn activity(&self) -> u64 {
        [
            self.admitted_user,
            self.admitted_background,
            self.refused,
            self.server_blocks,
            self.store_errors,
            self.admitted_unchecked,
        ]
        .iter()
        .fold(0u64, |sum, n| sum.saturating_add(*n))
    }
}

/// What a store holds, for every process that shares it (see
/// [`RateLimitStore::stats`](super::RateLimitStore::stats) for what each backend costs to ask).
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use courteous::rate_limit::{AdaptiveConfig, AdmissionRequest, Limit,
///     MemoryRateLimitStore, RateLimitStore, Timestamp};
/// use courteous::{Priority, Resource};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// // The store reads "now" from its clock, to tell what is in flight or blocked.
/// let store = MemoryRateLimitStore::new().clock(Timestamp::from_millis(1_000));
/// let request = AdmissionRequest::new(
///     Resource::new("items").unwrap(),
///     Priority::User,
///     vec![Limit::per_second(5)].into(),
///     Arc::new(AdaptiveConfig::default()),
///     Timestamp::from_millis(1_000),
/// )
/// .in_flight(Some(Duration::from_secs(60)));
/// store.acquire(request).await.unwrap();
/// let stats = store.stats().await.unwrap();
/// assert_eq!((stats.resources, stats.admissions, stats.in_flight, stats.blocked), (1, 1, 1, 0));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RateLimitStoreStats {
    /// Resources the store keeps state for (admissions, the server's feedback, user activity;
    /// Redis drops a resource's state once it holds nothing, e.g. a block lifted with no
    /// admission kept).
    pub resources: u64,
    /// Admissions recorded and still kept for the windows (a backend may keep some a little
    /// past their windows until it prunes them), in flight or settled.
    pub admissions: u64,
    /// Of those, admissions in flight: admitted, their response not arrived yet (stamped with
    /// an expiry still ahead of the store's now; see [`InFlight`](super::InFlight)).
    pub in_flight: u64,
    /// Resources a server's `Retry-After` blocks now.
    pub blocked: u64,
}

/// What a [`RateLimitLayer`](super::RateLimitLayer) counted, and what its store holds.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use courteous::rate_limit::{Limit, Limits, MemoryRateLimitStore, RateLimitLayer};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let limits = Limits::new().default_limit(Limit::per_minute(10));
/// let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), limits).unwrap();
/// let service = ServiceBuilder::new().layer(layer.clone()).service(service_fn(
///     |_req: http::Request<String>| async {
///         Ok::<_, courteous::BoxError>(http::Response::new(String::new()))
///     },
/// ));
/// let request = http::Request::get("http://h/issues/").body(String::new()).unwrap();
/// service.oneshot(request).await.unwrap();
///
/// let stats = layer.stats().await;
/// assert_eq!(stats.resources["issues"].admitted_user, 1);
/// assert_eq!(stats.store.admissions, 1);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// The layer's counts per resource, by resource name (at most 4,096 resources: past that,
    /// the least busy one is forgotten for a new one).
    pub resources: BTreeMap<String, ResourceStats>,
    /// Store calls the layer made on its own that failed: decisions (also counted per resource
    /// in [`ResourceStats::store_errors`]), re-stamps of in-flight admissions, feedback writes
    /// and reads of the store's statistics. Calls whose error the layer hands back
    /// ([`status`](super::RateLimitLayer::status), [`unblock`](super::RateLimitLayer::unblock))
    /// are not counted.
    pub store_errors: u64,
    /// What the store holds, for every process sharing it; zeroes when it could not answer
    /// (the failure counted in `store_errors`, with a warning).
    pub store: RateLimitStoreStats,
}

/// The most resources a layer keeps counts for.
const MAX_RESOURCES: usize = 4096;

/// The layer's counters, shared by its clones and services.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    resources: Mutex<HashMap<Resource, ResourceStats>>,
    store_errors: AtomicU64,
}

impl Counters {
    /// Counts with `f` for `resource`; a new resource past [`MAX_RESOURCES`] replaces the least
    /// busy one, so the map stays bounded whatever the resource names.
    pub(crate) fn count(&self, resource: &Resource, f: impl FnOnce(&mut ResourceStats)) {
        let mut map = self.resources.lock();
        if let Some(entry) = map.get_mut(resource) {
            return f(entry);
        }
        if map.len() >= MAX_RESOURCES
            && let Some(idle) = map
                .iter()
                .min_by_key(|(_, stats)| stats.activity())
                .map(|(r, _)| r.clone())
        {
            map.remove(&idle);
        }
        f(map.entry(resource.clone()).or_default());
    }

    /// Counts a store call that failed.
    pub(crate) fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts, with `store`'s.
    pub(crate) fn snapshot(&self, store: RateLimitStoreStats) -> RateLimitStats {
        let resources = self
            .resources
            .lock()
            .iter()
            .map(|(r, s)| (r.as_str().to_owned(), *s))
            .collect();
        RateLimitStats {
            resources,
            store_errors: self.store_errors.load(Ordering::Relaxed),
            store,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_stay_bounded_and_keep_the_busy_resources() {
        let counters = Counters::default();
        let busy = Resource::new("busy").unwrap();
        for _ in 0..3 {
            counters.count(&busy, |s| s.admitted_user += 1);
        }
        for i in 0..MAX_RESOURCES + 10 {
            let r = Resource::new(format!("r{i}")).unwrap();
            counters.count(&r, |s| s.refused += 1);
        }
        let stats = counters.snapshot(RateLimitStoreStats::default());
        assert_eq!(stats.resources.len(), MAX_RESOURCES);
        assert_eq!(stats.resources["busy"].admitted_user, 3);
        assert!(
            stats
                .resources
                .contains_key(&format!("r{}", MAX_RESOURCES + 9))
        );
    }
}
