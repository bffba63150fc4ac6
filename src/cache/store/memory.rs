//! The in-memory cache store, bounded by entries and bytes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::sync::Cache as Moka;

use crate::cache::CacheEntry;
use crate::key::RequestKey;
use crate::store::StoreError;
use crate::time::{Clock, SystemClock};

use super::counters::Counters;
use super::{CacheStore, CacheStoreStats, Invalidation};

/// Entries in this process's memory, bounded by a number of entries and a number of bytes, with
/// LRU-like eviction ([`moka`]'s TinyLFU). Clones share the entries.
///
/// A hit hands back the stored `Arc<CacheEntry>`: the body is never copied. Expired entries are
/// never returned and are removed by moka's housekeeping. Whether an entry has expired is read
/// from the store's clock ([`MemoryCacheStoreBuilder::clock`], default [`SystemClock`]).
///
/// # Note on the two bounds
///
/// moka bounds one weight. Each entry weighs its size in bytes, but at least
/// `max_bytes / max_entries`, so that neither bound can be passed: many small entries are limited
/// by `max_entries`, few large ones by `max_bytes`.
///
/// # Example
///
/// ```
/// use courteous::cache::MemoryCacheStore;
///
/// let store = MemoryCacheStore::builder()
///     .max_entries(1_000)
///     .max_bytes(64 * 1024 * 1024)
///     .build();
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct MemoryCacheStore {
    cache: Moka<RequestKey, Arc<CacheEntry>>,
    counters: Arc<Counters>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryCacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCacheStore")
            .field("entries", &self.cache.entry_count())
            .field("weighted_size", &self.cache.weighted_size())
            .finish_non_exhaustive()
    }
}

/// Bounds and clock of a [`MemoryCacheStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryCacheStoreBuilder {
    max_entries: u64,
    max_bytes: u64,
    clock: Arc<dyn Clock>,
}

impl MemoryCacheStoreBuilder {
    /// At most this many entries (default 10,000; at least 1).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// At most about this many bytes of bodies and headers (default 256 MiB).
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n.max(1);
        self
    }

    /// Where the store reads the time it compares entries' `expires_at` with (default
    /// [`SystemClock`]), for tests that move time by hand. The cache layer decides freshness on
    /// its own clock ([`CacheLayer::clock`](crate::cache::CacheLayer::clock)); give both the same
    /// one.
    ///
    /// moka's housekeeping removes an entry once the time it had left when it was written has
    /// passed on moka's own clock; an entry the store's clock calls expired is never returned
    /// before that.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::cache::MemoryCacheStore;
    /// use courteous::time::TokioClock;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = MemoryCacheStore::builder().clock(TokioClock::new()).build();
    /// # let _ = store;
    /// # }
    /// ```
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The store.
    pub fn build(self) -> MemoryCacheStore {
        let floor = self.max_bytes.div_ceil(self.max_entries).max(1);
        let floor = u32::try_from(floor).unwrap_or(u32::MAX);
        let cache = Moka::builder()
            .max_capacity(self.max_bytes)
            .weigher(move |_key: &RequestKey, entry: &Arc<CacheEntry>| {
                u32::try_from(entry.size()).unwrap_or(u32::MAX).max(floor)
            })
            .expire_after(ExpireAt {
                clock: self.clock.clone(),
            })
            .build();
        MemoryCacheStore {
            cache,
            counters: Arc::default(),
            clock: self.clock,
        }
    }
}

/// moka's expiry: the time an entry has left until its `expires_at`, on the store's clock.
struct ExpireAt {
    clock: Arc<dyn Clock>,
}

impl ExpireAt {
    fn left(&self, entry: &CacheEntry) -> Option<Duration> {
        Some(
            entry
                .expires_at
                .duration_since(self.clock.system_time())
                .unwrap_or_default(),
        )
    }
}

impl moka::Expiry<RequestKey, Arc<CacheEntry>> for ExpireAt {
    fn expire_after_create(
        &self,
        _key: &RequestKey,
        entry: &Arc<CacheEntry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        self.left(entry)
    }

    fn expire_after_update(
        &self,
        _key: &RequestKey,
        entry: &Arc<CacheEntry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.left(entry)
    }
}

impl MemoryCacheStore {
    /// A store with the default bounds (10,000 entries, 256 MiB).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Options.
    pub fn builder() -> MemoryCacheStoreBuilder {
        MemoryCacheStoreBuilder {
            max_entries: 10_000,
            max_bytes: 256 * 1024 * 1024,
            clock: Arc::new(SystemClock),
        }
    }

    /// The entry under `key`, without touching the statistics (synchronous; the tiered store
    /// uses it).
    pub(crate) fn peek(&self, key: &RequestKey) -> Option<Arc<CacheEntry>> {
        let entry = self.cache.get(key)?;
        if entry.is_expired(self.clock.system_time()) {
            self.cache.invalidate(key);
            return None;
        }
        Some(entry)
    }

    fn lookup(&self, key: &RequestKey) -> Option<Arc<CacheEntry>> {
        let found = self.peek(key);
        self.counters.lookup(found.is_some());
        found
    }

    pub(crate) fn insert(&self, key: &RequestKey, entry: Arc<CacheEntry>) {
        if entry.is_expired(self.clock.system_time()) {
            self.cache.invalidate(key);
        } else {
            self.cache.insert(key.clone(), entry);
        }
    }

    pub(crate) fn remove(&self, key: &RequestKey) {
        self.cache.invalidate(key);
    }

    pub(crate) fn remove_all(&self) {
        self.cache.invalidate_all();
    }

    pub(crate) fn remove_matching(&self, target: &Invalidation) -> u64 {
        let mut n = 0;
        for (key, entry) in self.cache.iter() {
            if target.matches(&entry.url) {
                self.cache.invalidate(&*key);
                n += 1;
            }
        }
        n
    }

    pub(crate) fn set_times(
        &self,
        key: &RequestKey,
        fresh_until: SystemTime,
        expires_at: SystemTime,
    ) {
        if let Some(entry) = self.cache.get(key) {
            let mut entry = CacheEntry::clone(&entry);
            entry.fresh_until = fresh_until;
            entry.expires_at = expires_at;
            self.insert(key, Arc::new(entry));
        }
    }
}

impl Default for MemoryCacheStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl CacheStore for MemoryCacheStore {
    async fn get(&self, key: &RequestKey) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        Ok(self.lookup(key))
    }

    fn get_now(&self, key: &RequestKey) -> Option<Result<Option<Arc<CacheEntry>>, StoreError>> {
        Some(Ok(self.lookup(key)))
    }

    async fn put(&self, key: &RequestKey, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        self.insert(key, entry);
        Ok(())
    }

    async fn touch(
        &self,
        key: &RequestKey,
        fresh_until: SystemTime,
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        self.set_times(key, fresh_until, expires_at);
        Ok(())
    }

    async fn delete(&self, key: &RequestKey) -> Result<(), StoreError> {
        self.remove(key);
        Ok(())
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
        Ok(())
    }

    async fn invalidate(&self, target: &Invalidation) -> Result<u64, StoreError> {
        Ok(self.remove_matching(target))
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let now = self.clock.system_time();
        let mut n = 0;
        for (key, entry) in self.cache.iter() {
            if entry.is_expired(now) {
                self.cache.invalidate(&*key);
                n += 1;
            }
        }
        self.cache.run_pending_tasks();
        self.counters.purged(n);
        Ok(n)
    }

    async fn stats(&self) -> Result<CacheStoreStats, StoreError> {
        self.cache.run_pending_tasks();
        let now = self.clock.system_time();
        let mut stats = self.counters.fill(CacheStoreStats::default());
        for (_, entry) in self.cache.iter() {
            stats.entries += 1;
            stats.bytes += entry.size() as u64;
            if entry.is_expired(now) {
                stats.expired += 1;
            }
        }
        Ok(stats)
    }

    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
