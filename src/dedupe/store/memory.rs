//! The in-process backend.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::key::RequestKey;

use super::{
    Completion, DedupeCounters, DedupeStore, KeyState, KeyStatus, Lead, StoreFuture, covers, ms,
    now_ms, since, url_of,
};

const CLEANUP_EVERY_MS: i64 = 1_000;

#[derive(Debug)]
enum Entry {
    Pending {
        owner: String,
        started: i64,
        lease_until: i64,
        /// The key's URL, for [`DedupeStore::invalidate`].
        url: Arc<str>,
    },
    Completed {
        completion: Completion,
        at: i64,
        until: i64,
        url: Arc<str>,
    },
}

impl Entry {
    fn url(&self) -> &str {
        match self {
            Entry::Pending { url, .. } | Entry::Completed { url, .. } => url,
        }
    }

    fn expired(&self, now: i64) -> bool {
        match self {
            Entry::Pending { lease_until, .. } => *lease_until <= now,
            Entry::Completed { until, .. } => *until <= now,
        }
    }
}

#[derive(Default)]
struct Inner {
    map: Mutex<HashMap<[u8; 32], Entry>>,
    counters: DedupeCounters,
    last_cleanup: AtomicI64,
}

/// A [`DedupeStore`] in this process's memory, for one process and for tests.
///
/// Clones share the map. Expired entries are removed at most once a second, on the next call.
///
/// # Example
///
/// ```
/// use courteous::dedupe::{DedupeLayer, MemoryDedupeStore};
///
/// let layer = DedupeLayer::new(MemoryDedupeStore::new());
/// # let _ = layer;
/// ```
#[derive(Clone, Default)]
pub struct MemoryDedupeStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryDedupeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.inner.map.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("MemoryDedupeStore")
            .field("entries", &len)
            .finish()
    }
}

impl MemoryDedupeStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries held (pending leases and kept results, expired ones not yet removed).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.inner.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the map, first removing expired entries if the last sweep is older than a second.
    fn lock_swept(&self, now: i64) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        let mut map = self.lock();
        let last = self.inner.last_cleanup.load(Ordering::Relaxed);
        if now - last >= CLEANUP_EVERY_MS {
            self.inner.last_cleanup.store(now, Ordering::Relaxed);
            let removed = sweep(&mut map, now);
            DedupeCounters::add(&self.inner.counters.cleaned, removed);
        }
        map
    }
}

fn sweep(map: &mut HashMap<[u8; 32], Entry>, now: i64) -> u64 {
    let before = map.len();
    map.retain(|_, entry| !entry.expired(now));
    (before - map.len()) as u64
}

impl DedupeStore for MemoryDedupeStore {
    fn try_lead<'a>(
        &'a self,
        key: &'a RequestKey,
        owner: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Lead> {
        Box::pin(async move {
            let now = now_ms();
            let mut map = self.lock_swept(now);
            let takeover = match map.get(key.as_bytes()) {
                Some(entry) if !entry.expired(now) => {
                    return Ok(match entry {
                        Entry::Pending { owner, started, .. } => Lead::Pending {
                            owner: owner.clone(),
                            age: since(*started, now),
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
                    lease_until: now + ms(lease),
                    url: url_of(key).into(),
                },
            );
            Ok(Lead::Acquired { takeover })
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a RequestKey,
        owner: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let now = now_ms();
            let mut map = self.lock();
            match map.get_mut(key.as_bytes()) {
                Some(Entry::Pending {
                    owner: held,
                    lease_until,
                    ..
                }) if held == owner => {
                    *lease_until = now + ms(lease);
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    fn publish<'a>(
        &'a self,
        key: &'a RequestKey,
        owner: &'a str,
        completion: Completion,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let now = now_ms();
            let mut map = self.lock();
            if let Some(entry) = map.get_mut(key.as_bytes())
                && let Entry::Pending {
                    owner: held, url, ..
                } = entry
                && held == owner
            {
                *entry = Entry::Completed {
                    completion,
                    at: now,
                    until: now + ms(ttl),
                    url: url.clone(),
                };
            }
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a RequestKey, owner: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut map = self.lock();
            if matches!(map.get(key.as_bytes()), Some(Entry::Pending { owner: held, .. }) if held == owner)
            {
                map.remove(key.as_bytes());
            }
            Ok(())
        })
    }

    fn poll<'a>(&'a self, key: &'a RequestKey) -> StoreFuture<'a, KeyState> {
        Box::pin(async move {
            let now = now_ms();
            let map = self.lock();
            Ok(match map.get(key.as_bytes()) {
                None => KeyState::Vacant,
                Some(Entry::Pending { lease_until, .. }) if *lease_until <= now => {
                    KeyState::Expired
                }
                Some(Entry::Pending { .. }) => KeyState::Pending,
                Some(Entry::Completed { until, .. }) if *until <= now => KeyState::Vacant,
                Some(Entry::Completed { completion, .. }) => {
                    KeyState::Completed(completion.clone())
                }
            })
        })
    }

    fn status<'a>(&'a self, key: &'a RequestKey) -> StoreFuture<'a, KeyStatus> {
        Box::pin(async move {
            let now = now_ms();
            let map = self.lock();
            Ok(match map.get(key.as_bytes()) {
                None => KeyStatus::Empty,
                Some(Entry::Completed { until, .. }) if *until <= now => KeyStatus::Empty,
                Some(Entry::Pending {
                    owner,
                    started,
                    lease_until,
                    ..
                }) => KeyStatus::Pending {
                    owner: owner.clone(),
                    age: since(*started, now),
                    lease_expired: *lease_until <= now,
                },
                Some(Entry::Completed {
                    completion,
                    at,
                    until,
                    ..
                }) => KeyStatus::Completed {
                    age: since(*at, now),
                    expires_in: since(now, *until),
                    status: match completion {
                        Completion::Response(r) => Some(r.status.as_u16()),
                        _ => None,
                    },
                },
            })
        })
    }

    fn invalidate<'a>(&'a self, path: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut map = self.lock();
            let before = map.len();
            map.retain(|_, entry| !covers(path, entry.url()));
            Ok((before - map.len()) as u64)
        })
    }

    fn cleanup(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let now = now_ms();
            let removed = sweep(&mut self.lock(), now);
            self.inner.last_cleanup.store(now, Ordering::Relaxed);
            DedupeCounters::add(&self.inner.counters.cleaned, removed);
            Ok(removed)
        })
    }

    fn counters(&self) -> &DedupeCounters {
        &self.inner.counters
    }
}
