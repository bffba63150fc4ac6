//! The in-process backend.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::key::RequestKey;
use crate::time::{Clock, SystemClock, Timestamp};

use crate::store::StoreError;

use super::{Completion, DedupeStore, DedupeStoreStats, KeyState, Lead, covers, url_of};

const CLEANUP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Entry {
    Pending {
        owner: String,
        started: Timestamp,
        lease_until: Timestamp,
        /// The key's URL, for [`DedupeStore::invalidate`].
        url: Arc<str>,
    },
    Completed {
        completion: Completion,
        at: Timestamp,
        until: Timestamp,
        url: Arc<str>,
    },
}

impl Entry {
    fn url(&self) -> &str {
        match self {
            Entry::Pending { url, .. } | Entry::Completed { url, .. } => url,
        }
    }

    fn expired(&self, now: Timestamp) -> bool {
        match self {
            Entry::Pending { lease_until, .. } => *lease_until <= now,
            Entry::Completed { until, .. } => *until <= now,
        }
    }

    /// What the entry means at `now`.
    fn state(&self, now: Timestamp) -> KeyState {
        match self {
            Entry::Pending {
                owner,
                started,
                lease_until,
                ..
            } => {
                let (owner, age) = (owner.clone(), now.saturating_since(*started));
                if *lease_until <= now {
                    KeyState::Expired { owner, age }
                } else {
                    KeyState::Pending { owner, age }
                }
            }
            Entry::Completed { until, .. } if *until <= now => KeyState::Vacant,
            Entry::Completed {
                completion,
                at,
                until,
                ..
            } => KeyState::Completed {
                completion: completion.clone(),
                age: now.saturating_since(*at),
                expires_in: until.saturating_since(now),
            },
        }
    }
}

struct Inner {
    map: Mutex<HashMap<[u8; 32], Entry>>,
    /// Expired entries removed, for [`DedupeStoreStats::cleaned`].
    cleaned: AtomicU64,
    /// When expired entries were last swept (ms since the epoch).
    last_cleanup: AtomicU64,
    clock: Arc<dyn Clock>,
}

/// A [`DedupeStore`] in this process's memory, for one process and for tests.
///
/// Clones share the map. Expired entries are removed at most once a second, on the next call.
/// Leases and results expire by the store's [`Clock`] ([`SystemClock`] unless made
/// [`with_clock`](Self::with_clock)).
///
/// # Example
///
/// ```
/// use courteous::dedupe::{DedupeLayer, MemoryDedupeStore};
///
/// let layer = DedupeLayer::new(MemoryDedupeStore::new());
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct MemoryDedupeStore {
    inner: Arc<Inner>,
}

impl Default for MemoryDedupeStore {
    fn default() -> Self {
        Self::with_clock(SystemClock)
    }
}

impl fmt::Debug for MemoryDedupeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDedupeStore")
            .field("entries", &self.len())
            .field("clock", &self.inner.clock)
            .finish()
    }
}

impl MemoryDedupeStore {
    /// An empty store on the wall clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose leases and results expire by `clock`: a
    /// [`TokioClock`](crate::time::TokioClock) follows `tokio::time::pause()` in tests.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::dedupe::{DedupeStore, KeyState, MemoryDedupeStore};
    /// use courteous::time::TokioClock;
    /// use courteous::RequestKey;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courteous::store::StoreError> {
    /// tokio::time::pause();
    /// let store = MemoryDedupeStore::with_clock(TokioClock::new());
    /// let key = RequestKey::from_parts([7; 32], "GET http://h/x");
    /// store.try_lead(&key, "me", Duration::from_secs(30)).await?;
    /// tokio::time::advance(Duration::from_secs(31)).await;
    /// assert!(matches!(store.poll(&key).await?, KeyState::Expired { .. }));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_clock(clock: impl Clock) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        MemoryDedupeStore {
            inner: Arc::new(Inner {
                map: Mutex::new(HashMap::new()),
                cleaned: AtomicU64::new(0),
                last_cleanup: AtomicU64::new(clock.now().as_millis()),
                clock,
            }),
        }
    }

    /// Entries held (pending leases and kept results, expired ones not yet removed).
    pub fn len(&self) -> usize {
        self.inner.map.lock().len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Locks the map, first removing expired entries if the last sweep is older than a second.
    fn lock_swept(&self, now: Timestamp) -> MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        let mut map = self.inner.map.lock();
        let last = Timestamp::from_millis(self.inner.last_cleanup.load(Ordering::Relaxed));
        if now.saturating_since(last) >= CLEANUP_EVERY {
            self.inner
                .last_cleanup
                .store(now.as_millis(), Ordering::Relaxed);
            let removed = sweep(&mut map, now);
            self.inner.cleaned.fetch_add(removed, Ordering::Relaxed);
        }
        map
    }
}

fn sweep(map: &mut HashMap<[u8; 32], Entry>, now: Timestamp) -> u64 {
    let before = map.len();
    map.retain(|_, entry| !entry.expired(now));
    (before - map.len()) as u64
}

#[async_trait::async_trait]
impl DedupeStore for MemoryDedupeStore {
    async fn try_lead(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Lead, StoreError> {
        let now = self.now();
        let mut map = self.lock_swept(now);
        let takeover = match map.get(key.as_bytes()) {
            Some(entry) if !entry.expired(now) => {
                return Ok(match entry {
                    Entry::Pending { owner, started, .. } => Lead::Pending {
                        owner: owner.clone(),
                        age: now.saturating_since(*started),
                    },
                    Entry::Completed { completion, .. } => Lead::Completed(completion.clone()),
                });
            }
            Some(Entry::Pending { .. }) => true,
            _ => false,
        };
        map.insert(
            *key.as_bytes(),
            Entry::Pending {
                owner: owner.to_owned(),
                started: now,
                lease_until: now + lease,
                url: url_of(key).into(),
            },
        );
        Ok(Lead::Acquired { takeover })
    }

    async fn renew(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let mut map = self.inner.map.lock();
        match map.get_mut(key.as_bytes()) {
            Some(Entry::Pending {
                owner: held,
                lease_until,
                ..
            }) if held == owner => {
                *lease_until = now + lease;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn publish(
        &self,
        key: &RequestKey,
        owner: &str,
        completion: Completion,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let mut map = self.inner.map.lock();
        if let Some(entry) = map.get_mut(key.as_bytes())
            && let Entry::Pending {
                owner: held, url, ..
            } = entry
            && held == owner
        {
            *entry = Entry::Completed {
                completion,
                at: now,
                until: now + ttl,
                url: url.clone(),
            };
        }
        Ok(())
    }

    async fn release(&self, key: &RequestKey, owner: &str) -> Result<(), StoreError> {
        let mut map = self.inner.map.lock();
        if matches!(map.get(key.as_bytes()), Some(Entry::Pending { owner: held, .. }) if held == owner)
        {
            map.remove(key.as_bytes());
        }
        Ok(())
    }

    async fn poll(&self, key: &RequestKey) -> Result<KeyState, StoreError> {
        let now = self.now();
        let map = self.inner.map.lock();
        Ok(map
            .get(key.as_bytes())
            .map_or(KeyState::Vacant, |entry| entry.state(now)))
    }

    async fn invalidate(&self, path: &str) -> Result<u64, StoreError> {
        let mut map = self.inner.map.lock();
        let before = map.len();
        map.retain(|_, entry| !covers(path, entry.url()));
        Ok((before - map.len()) as u64)
    }

    async fn cleanup(&self) -> Result<u64, StoreError> {
        let now = self.now();
        let removed = sweep(&mut self.inner.map.lock(), now);
        self.inner
            .last_cleanup
            .store(now.as_millis(), Ordering::Relaxed);
        self.inner.cleaned.fetch_add(removed, Ordering::Relaxed);
        Ok(removed)
    }

    async fn stats(&self) -> Result<DedupeStoreStats, StoreError> {
        let now = self.now();
        let mut stats = DedupeStoreStats {
            cleaned: self.inner.cleaned.load(Ordering::Relaxed),
            ..DedupeStoreStats::default()
        };
        for entry in self.inner.map.lock().values() {
            if entry.expired(now) {
                stats.expired += 1;
            } else if matches!(entry, Entry::Pending { .. }) {
                stats.pending += 1;
            } else {
                stats.completed += 1;
            }
        }
        Ok(stats)
    }
}
