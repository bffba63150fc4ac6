//! A memory tier in front of another cache store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::cache::CacheEntry;
use crate::key::RequestKey;
use crate::store::StoreError;

use super::memory::MemoryCacheStore;
use super::{CacheStore, CacheStoreStats, Invalidation};

/// Two tiers: a [`MemoryCacheStore`] in front of a persistent store (usually
/// [`SqliteCacheStore`](super::sqlite::SqliteCacheStore)).
///
/// Reads try memory first and copy what they find in the back store into memory. Writes, deletes,
/// invalidations, touches and clears go to both tiers, memory first, so this process never
/// serves an entry it replaced, deleted or invalidated. Entries expire in both tiers at their own
/// `expires_at`.
///
/// # Note on other processes
///
/// The memory tier is per process. An entry that *another* process replaces or deletes in the
/// shared back store stays in this process's memory tier until it expires or is evicted; use the
/// back store alone (or short TTLs) where that matters.
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
}

impl TieredCacheStore {
    /// `memory` in front of `back`.
    pub fn new(memory: MemoryCacheStore, back: impl CacheStore) -> Self {
        TieredCacheStore {
            memory,
            back: Arc::new(back),
            hits: Arc::default(),
            misses: Arc::default(),
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
        if let Some(entry) = self.memory.peek(key) {
            self.count(true);
            return Ok(Some(entry));
        }
        let found = self.back.get(key).await?;
        if let Some(entry) = &found {
            self.memory.insert(key, entry.clone());
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
        self.memory.insert(key, entry.clone());
        self.back.put(key, entry).await
    }

    async fn touch(
        &self,
        key: &RequestKey,
        fresh_until: SystemTime,
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        self.memory.set_times(key, fresh_until, expires_at);
        self.back.touch(key, fresh_until, expires_at).await
    }

    async fn delete(&self, key: &RequestKey) -> Result<(), StoreError> {
        self.memory.remove(key);
        self.back.delete(key).await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.memory.clear().await?;
        self.back.clear().await
    }

    async fn invalidate(&self, target: &Invalidation) -> Result<u64, StoreError> {
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
