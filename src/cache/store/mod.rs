//! The storage seam of the cache: a small async trait and its backends.
//!
//! | store | holds | shared by |
//! |---|---|---|
//! | [`MemoryCacheStore`](memory::MemoryCacheStore) | entries in this process, bounded by count and bytes | clones |
//! | `SqliteCacheStore` | entries in the shared SQLite file | every process opening the file |
//! | `RedisCacheStore` | entries on a Redis server | every process on every machine using the server and prefix |
//! | [`TieredCacheStore`](tiered::TieredCacheStore) | a memory tier in front of another store | as the back store |
//!
//! * `mod.rs`: the [`CacheStore`] trait, [`Invalidation`], [`CacheChange`] and the change feed,
//!   [`CacheStoreStats`].
//! * `counters.rs`: the hits, misses, errors and purges every store counts in this process.
//! * `memory.rs`, `tiered.rs`, `sqlite/` (feature `sqlite`), `redis/` (feature `redis`): the
//!   backends; the last two keep entries in the bytes of `crate::store::codec`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, SystemTime};
//! use courteous::cache::{CacheEntry, CacheStore, Invalidation, MemoryCacheStore};
//! use courteous::RequestKey;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courteous::store::StoreError> {
//! let store = MemoryCacheStore::new();
//! let key = RequestKey::from_parts([7; 32], "GET http://h/a");
//! let entry = CacheEntry::new("http://h/a", http::StatusCode::OK, "hi".into(), SystemTime::now())
//!     .fresh_for(Duration::from_secs(60), Duration::ZERO);
//! store.put(&key, Arc::new(entry)).await?;
//! assert!(store.get(&key).await?.is_some());
//! assert_eq!(store.invalidate(&Invalidation::Prefix("http://h/".into())).await?, 1);
//! assert!(store.get(&key).await?.is_none());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::key::RequestKey;
use crate::store::StoreError;

use super::CacheEntry;

mod counters;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod tiered;

/// Which stored entries to drop, by URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// Entries whose URL starts with this string (`"https://api.example/issues/"`).
    Prefix(String),
    /// Entries for this URL (scheme, host and path) with any query string or none.
    Path(String),
}

impl Invalidation {
    /// Whether an entry's `url` is covered.
    pub fn matches(&self, url: &str) -> bool {
        match self {
            Invalidation::Prefix(prefix) => url.starts_with(prefix.as_str()),
            Invalidation::Path(path) => url
                .strip_prefix(path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('?')),
        }
    }
}

/// A change that another process made to a shared store, as its [`ChangeFeed`] reports it to a
/// memory tier in front of the store ([`TieredCacheStore`](tiered::TieredCacheStore)).
///
/// # Example
///
/// ```
/// use courteous::cache::{CacheChange, Invalidation};
///
/// let change = CacheChange::Invalidated(Invalidation::Prefix("http://h/".into()));
/// assert!(matches!(change, CacheChange::Invalidated(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheChange {
    /// The entry under this key was replaced or deleted.
    Key(RequestKey),
    /// The entries matching this were invalidated.
    Invalidated(Invalidation),
    /// Every entry was dropped.
    Cleared,
    /// The feed is connected (again): changes are reported from now on. Changes made while it
    /// was not connected were not reported.
    Connected,
    /// The feed lost its connection: changes are not reported until [`Connected`](Self::Connected).
    Lost,
    /// The feed is connected but fell behind and dropped changes: forget what you hold.
    Missed,
}

/// The changes other processes make to a shared store, from [`CacheStore::changes`].
///
/// # Example
///
/// ```
/// use courteous::cache::{CacheChange, ChangeFeed};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (sender, receiver) = tokio::sync::broadcast::channel(16);
/// let mut feed = ChangeFeed::new(receiver, true);
/// assert!(feed.connected_at_start());
/// sender.send(CacheChange::Cleared).unwrap();
/// assert_eq!(feed.next().await, Some(CacheChange::Cleared));
/// drop(sender);
/// assert_eq!(feed.next().await, None);
/// # }
/// ```
#[derive(Debug)]
pub struct ChangeFeed {
    receiver: tokio::sync::broadcast::Receiver<CacheChange>,
    connected: bool,
}

impl ChangeFeed {
    /// A feed of what `receiver` receives. `connected` says whether the feed was connected when
    /// `receiver` was subscribed (read *after* subscribing, so that a later loss is received).
    pub fn new(receiver: tokio::sync::broadcast::Receiver<CacheChange>, connected: bool) -> Self {
        ChangeFeed {
            receiver,
            connected,
        }
    }

    /// Whether the feed was connected when it was made; if not, a
    /// [`CacheChange::Connected`] follows when it is.
    pub fn connected_at_start(&self) -> bool {
        self.connected
    }

    /// The next change, or `None` once the store is gone. A receiver that fell behind gets
    /// [`CacheChange::Missed`].
    pub async fn next(&mut self) -> Option<CacheChange> {
        use tokio::sync::broadcast::error::RecvError;
        match self.receiver.recv().await {
            Ok(change) => Some(change),
            Err(RecvError::Lagged(_)) => Some(CacheChange::Missed),
            Err(RecvError::Closed) => None,
        }
    }
}

/// What a store holds and what it saw.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct CacheStoreStats {
    /// Entries stored (for SQLite: in the file, all processes).
    pub entries: u64,
    /// Bytes they hold (approximate).
    pub bytes: u64,
    /// Of those, entries past their expiry that cleanup has not removed yet.
    pub expired: u64,
    /// Expired entries removed since the store was opened in this process.
    pub purged: u64,
    /// Lookups that found an entry, in this process.
    pub hits: u64,
    /// Lookups that found none (or an expired one), in this process.
    pub misses: u64,
    /// Operations that failed, in this process.
    pub errors: u64,
}

impl CacheStoreStats {
    /// `hits / (hits + misses)`, or 0 before any lookup.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// Where the cache keeps its entries: a small, backend-neutral async contract.
///
/// Keys are [`RequestKey`]s (hashes). Stores never decide freshness; they may drop an entry once
/// it is past [`CacheEntry::expires_at`], and `get` must not return such an entry.
#[async_trait::async_trait]
pub trait CacheStore: fmt::Debug + Send + Sync + 'static {
    /// The entry under `key`, if stored and not expired.
    async fn get(&self, key: &RequestKey) -> Result<Option<Arc<CacheEntry>>, StoreError>;

    /// What [`get`](Self::get) would answer, when the store can answer at once without waiting
    /// (an in-memory store, or its memory tier); `None` means "ask `get`". The default is `None`.
    /// The cache layer tries this first, so a memory hit costs no boxed future.
    fn get_now(&self, _key: &RequestKey) -> Option<Result<Option<Arc<CacheEntry>>, StoreError>> {
        None
    }

    /// Stores (or replaces) the entry under `key`. A backend may commit it later (write-behind)
    /// but must return it from `get` in this process at once.
    async fn put(&self, key: &RequestKey, entry: Arc<CacheEntry>) -> Result<(), StoreError>;

    /// Moves the entry's freshness and expiry (sliding TTLs), if it is stored.
    async fn touch(
        &self,
        key: &RequestKey,
        fresh_until: SystemTime,
        expires_at: SystemTime,
    ) -> Result<(), StoreError>;

    /// Drops the entry under `key`, if any.
    async fn delete(&self, key: &RequestKey) -> Result<(), StoreError>;

    /// Drops every entry.
    async fn clear(&self) -> Result<(), StoreError>;

    /// Drops the entries whose URL matches; returns how many (as far as the backend knows).
    async fn invalidate(&self, target: &Invalidation) -> Result<u64, StoreError>;

    /// Drops expired entries now; returns how many.
    async fn purge_expired(&self) -> Result<u64, StoreError>;

    /// Counts of entries and operations.
    async fn stats(&self) -> Result<CacheStoreStats, StoreError>;

    /// Commits pending writes and releases the backend.
    async fn close(&self) -> Result<(), StoreError>;

    /// The changes that *other* processes make to this store, for a memory tier in front of it
    /// (the [`TieredCacheStore`](tiered::TieredCacheStore) subscribes on first use); `None` (the
    /// default) for a store that cannot report them. Called within a Tokio runtime.
    fn changes(&self) -> Option<ChangeFeed> {
        None
    }
}

#[async_trait::async_trait]
impl<T: CacheStore + ?Sized> CacheStore for Arc<T> {
    async fn get(&self, key: &RequestKey) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        (**self).get(key).await
    }
    fn get_now(&self, key: &RequestKey) -> Option<Result<Option<Arc<CacheEntry>>, StoreError>> {
        (**self).get_now(key)
    }
    async fn put(&self, key: &RequestKey, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        (**self).put(key, entry).await
    }
    async fn touch(
        &self,
        key: &RequestKey,
        fresh_until: SystemTime,
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        (**self).touch(key, fresh_until, expires_at).await
    }
    async fn delete(&self, key: &RequestKey) -> Result<(), StoreError> {
        (**self).delete(key).await
    }
    async fn clear(&self) -> Result<(), StoreError> {
        (**self).clear().await
    }
    async fn invalidate(&self, target: &Invalidation) -> Result<u64, StoreError> {
        (**self).invalidate(target).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        (**self).purge_expired().await
    }
    async fn stats(&self) -> Result<CacheStoreStats, StoreError> {
        (**self).stats().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        (**self).close().await
    }
    fn changes(&self) -> Option<ChangeFeed> {
        (**self).changes()
    }
}
