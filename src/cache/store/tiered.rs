//! A memory tier in front of another cache store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::SystemTime;

use crate::cache::CacheEntry;
use crate::key::RequestKey;
use crate::store::StoreError;

use super::memory::MemoryCacheStore;
use super::{CacheChange, CacheStore, CacheStoreStats, ChangeFeed, Invalidation};

/// Change counters striped by key, so that a read from the back store can tell whether the
/// entry changed while it was in flight.
const STRIPES: usize = 64;

/// Two tiers: a [`MemoryCacheStore`] in front of a persistent store (usually
/// [`SqliteCacheStore`](super::sqlite::SqliteCacheStore)).
///
/// Reads try memory first and copy what they find in the back store into memory. Writes, deletes,
/// invalidations, touches and clears go to both tiers, memory first, so this process never
/// serves an entry it replaced, deleted or invalidated: while such a write is on its way to the
/// back store, reads of the keys it changes do not fill memory (they may have read the back
/// store before the write reached it). Entries expire in both tiers at their own
/// `expires_at`, the memory tier reading its own clock
/// ([`MemoryCacheStoreBuilder::clock`](super::memory::MemoryCacheStoreBuilder::clock)).
///
/// # Note on other processes
///
/// The memory tier is per process. When the back store reports the changes other processes make
/// ([`CacheStore::changes`]: the Redis store, `RedisCacheStore`, does, through
/// pub/sub), the tiered store subscribes on first use and drops from memory what other processes
/// replace, delete, invalidate or clear. The guarantee is eventual: a replaced entry may be served
/// from memory until the report arrives. While the feed is down (Redis unreachable) the memory
/// tier is emptied and not filled, so it never serves what it might have missed; a read that was
/// in flight when a change to its key arrived does not fill the memory tier either.
///
/// Without such a feed (the SQLite store, shared by the processes of one machine), an entry that
/// *another* process replaces or deletes in the shared back store stays in this process's memory
/// tier until it expires or is evicted; use the back store alone (or short TTLs) where that
/// matters.
///
/// # Example
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// use courteous::cache::{MemoryCacheStore, TieredCacheStore};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::sqlite::SqliteError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let sqlite = courteous::store::sqlite::SqliteStore::open(dir.path().join("c.db")).await?;
/// let store = TieredCacheStore::new(MemoryCacheStore::new(), sqlite.cache());
/// # let _ = store;
/// # Ok(())
/// # }
/// # main().unwrap();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TieredCacheStore {
    memory: MemoryCacheStore,
    back: Arc<dyn CacheStore>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
    sync: Arc<TierSync>,
}

/// What keeps the memory tier consistent with changes made elsewhere.
#[derive(Debug)]
struct TierSync {
    /// Subscribes to the back store's changes on first use.
    started: Once,
    /// Whether the memory tier may be filled: always without a change feed; with one, while the
    /// feed is connected.
    live: AtomicBool,
    /// Bumped by changes to many keys (invalidations, clears, losing the feed).
    all: AtomicU64,
    /// Bumped by changes to one key, by stripe.
    keys: [AtomicU64; STRIPES],
    /// This process's writes to many keys (invalidations, clears) in flight to the back store.
    writing_all: AtomicU64,
    /// This process's writes to one key in flight to the back store, by stripe.
    writing: [AtomicU64; STRIPES],
}

/// One of this process's writes in flight to the back store (see [`TierSync::write`]).
struct Writing<'a> {
    sync: &'a TierSync,
    /// The key written, or `None` for a write to many keys.
    key: Option<&'a RequestKey>,
}

impl Drop for Writing<'_> {
    /// The write is done (or abandoned, and may still land): reads that started while it was in
    /// flight may have read what it replaced, so they must not fill memory.
    fn drop(&mut self) {
        match self.key {
            Some(key) => {
                self.sync.changed(key);
                self.sync.writing_stripe(key).fetch_sub(1, Ordering::SeqCst);
            }
            None => {
                self.sync.changed_all();
                self.sync.writing_all.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl TierSync {
    fn stripe(&self, key: &RequestKey) -> &AtomicU64 {
        &self.keys[key.as_bytes()[0] as usize % STRIPES]
    }

    /// A number that changes whenever `key` may have changed.
    fn version(&self, key: &RequestKey) -> u64 {
        self.all
            .load(Ordering::SeqCst)
            .wrapping_add(self.stripe(key).load(Ordering::SeqCst))
    }

    fn writing_stripe(&self, key: &RequestKey) -> &AtomicU64 {
        &self.writing[key.as_bytes()[0] as usize % STRIPES]
    }

    /// Marks a write of this process to `key` (or, with `None`, to many keys) as in flight to
    /// the back store until the guard is dropped. Until then no read fills memory with what it
    /// found under the key: it may have read the back store before the write reached it, and the
    /// back store's change feed does not report this process's own writes. The version changes
    /// both when the write starts and when it ends, so a read that started while it was in flight
    /// does not fill memory after it either.
    fn write<'a>(&'a self, key: Option<&'a RequestKey>) -> Writing<'a> {
        match key {
            Some(key) => {
                self.writing_stripe(key).fetch_add(1, Ordering::SeqCst);
                self.changed(key);
            }
            None => {
                self.writing_all.fetch_add(1, Ordering::SeqCst);
                self.changed_all();
            }
        }
        Writing { sync: self, key }
    }

    /// Whether a read of `key` that started at `version` may fill memory now.
    fn may_fill(&self, key: &RequestKey, version: u64) -> bool {
        self.live()
            && self.writing_all.load(Ordering::SeqCst) == 0
            && self.writing_stripe(key).load(Ordering::SeqCst) == 0
            && self.version(key) == version
    }

    fn changed(&self, key: &RequestKey) {
        self.stripe(key).fetch_add(1, Ordering::SeqCst);
    }

    fn changed_all(&self) {
        self.all.fetch_add(1, Ordering::SeqCst);
    }

    fn live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }
}

/// Applies the back store's changes to the memory tier until the back store is gone.
async fn follow(mut feed: ChangeFeed, memory: MemoryCacheStore, sync: Arc<TierSync>) {
    while let Some(change) = feed.next().await {
        match change {
            CacheChange::Key(key) => {
                sync.changed(&key);
                memory.remove(&key);
            }
            CacheChange::Invalidated(target) => {
                sync.changed_all();
                memory.remove_matching(&target);
            }
            CacheChange::Cleared | CacheChange::Missed => {
                sync.changed_all();
                memory.remove_all();
            }
            CacheChange::Lost => {
                sync.live.store(false, Ordering::SeqCst);
                sync.changed_all();
                memory.remove_all();
            }
            CacheChange::Connected => {
                // What was missed while disconnected is gone from memory already (nothing was
                // added since): empty it once more in case, then fill again.
                sync.changed_all();
                memory.remove_all();
                sync.live.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl TieredCacheStore {
    /// `memory` in front of `back`.
    pub fn new(memory: MemoryCacheStore, back: impl CacheStore) -> Self {
        TieredCacheStore {
            memory,
            back: Arc::new(back),
            hits: Arc::default(),
            misses: Arc::default(),
            sync: Arc::new(TierSync {
                started: Once::new(),
                live: AtomicBool::new(true),
                all: AtomicU64::new(0),
                keys: std::array::from_fn(|_| AtomicU64::new(0)),
                writing_all: AtomicU64::new(0),
                writing: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        }
    }

    /// Whether the memory tier is in use now: always over a back store without a change feed;
    /// over one with a feed (Redis), once the tiered store has been used and while the feed is
    /// connected.
    pub fn is_memory_live(&self) -> bool {
        self.sync.started.is_completed() && self.sync.live()
    }

    /// Subscribes to the back store's changes, once.
    fn follow_changes(&self) {
        self.sync.started.call_once(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                // Changes cannot be followed outside a Tokio runtime: keep the memory tier off.
                tracing::warn!(
                    "tiered cache store used outside a Tokio runtime; its memory tier stays off"
                );
                self.sync.live.store(false, Ordering::SeqCst);
                return;
            };
            let _entered = runtime.enter();
            if let Some(feed) = self.back.changes() {
                self.sync
                    .live
                    .store(feed.connected_at_start(), Ordering::SeqCst);
                runtime.spawn(follow(feed, self.memory.clone(), self.sync.clone()));
            }
        });
    }

    /// Puts `entry` in memory if nothing changed `key` since `version` was read and no write of
    /// this process to it is in flight.
    fn fill(&self, key: &RequestKey, entry: &Arc<CacheEntry>, version: u64) {
        if self.sync.may_fill(key, version) {
            self.memory.insert(key, entry.clone());
            // A change that arrived (or a write that started) during the insert removes it again.
            if !self.sync.may_fill(key, version) {
                self.memory.remove(key);
            }
        }
    }

    /// The memory tier.
    pub fn memory(&self) -> &MemoryCacheStore {
        &self.memory
    }

    /// The back store.
    pub fn back(&self) -> &Arc<dyn CacheStore> {
        &self.back
    }

    fn count(&self, found: bool) {
        let counter = if found { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl CacheStore for TieredCacheStore {
    async fn get(&self, key: &RequestKey) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        self.follow_changes();
        if let Some(entry) = self.memory.peek(key) {
            self.count(true);
            return Ok(Some(entry));
        }
        let version = self.sync.version(key);
        let found = self.back.get(key).await?;
        if let Some(entry) = &found {
            self.fill(key, entry, version);
        }
        self.count(found.is_some());
        Ok(found)
    }

    fn get_now(&self, key: &RequestKey) -> Option<Result<Option<Arc<CacheEntry>>, StoreError>> {
        let entry = self.memory.peek(key)?;
        self.count(true);
        Some(Ok(Some(entry)))
    }

    async fn put(&self, key: &RequestKey, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        self.follow_changes();
        // Reads in flight, or made before the back store has the new entry, must not put an
        // older entry back over this one.
        let _writing = self.sync.write(Some(key));
        if self.sync.live() {
            self.memory.insert(key, entry.clone());
        } else {
            self.memory.remove(key);
        }
        self.back.put(key, entry).await
    }

    async fn touch(
        &self,
        key: &RequestKey,
        fresh_until: SystemTime,
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        self.follow_changes();
        let _writing = self.sync.write(Some(key));
        self.memory.set_times(key, fresh_until, expires_at);
        self.back.touch(key, fresh_until, expires_at).await
    }

    async fn delete(&self, key: &RequestKey) -> Result<(), StoreError> {
        self.follow_changes();
        let _writing = self.sync.write(Some(key));
        self.memory.remove(key);
        self.back.delete(key).await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.follow_changes();
        let _writing = self.sync.write(None);
        self.memory.clear().await?;
        self.back.clear().await
    }

    async fn invalidate(&self, target: &Invalidation) -> Result<u64, StoreError> {
        self.follow_changes();
        let _writing = self.sync.write(None);
        let in_memory = self.memory.remove_matching(target);
        let in_back = self.back.invalidate(target).await?;
        Ok(in_back.max(in_memory))
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let in_memory = self.memory.purge_expired().await?;
        let in_back = self.back.purge_expired().await?;
        Ok(in_back.max(in_memory))
    }

    async fn stats(&self) -> Result<CacheStoreStats, StoreError> {
        let mut stats = self.back.stats().await?;
        stats.hits = self.hits.load(Ordering::Relaxed);
        stats.misses = self.misses.load(Ordering::Relaxed);
        Ok(stats)
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.back.close().await
    }
}
