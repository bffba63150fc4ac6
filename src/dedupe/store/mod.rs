//! Where leaders are registered and results published, so that processes can coalesce too.
//!
//! A [`DedupeStore`] is consulted only by the one request per key and process that leads locally;
//! followers in the same process wait on an in-process channel and never touch the store.
//!
//! | backend | coalesces | wakes followers |
//! |---|---|---|
//! | [`MemoryDedupeStore`] | the layers that share it, in one process | by polling with backoff |
//! | [`SqliteDedupeStore`] | every process that opens the file | by polling with backoff (1 ms to 8 ms) |
//! | `RedisDedupeStore` (feature `redis`) | every process on every machine using the Redis server and prefix | by pub/sub, with polling as a fallback |
//!
//! # Contract
//!
//! * [`try_lead`](DedupeStore::try_lead) is one atomic step: it registers the caller as the leader
//!   of a vacant key, or of a key whose lease expired (a takeover), or reports the current leader
//!   or result. Two callers can never both lead one key.
//! * A leader keeps its lease with [`renew`](DedupeStore::renew) and ends it with
//!   [`publish`](DedupeStore::publish) (the result stays readable for `result_ttl`, for late
//!   followers, then is gone) or [`release`](DedupeStore::release) (nothing to share).
//! * Followers in other processes read the key with [`poll`](DedupeStore::poll), or
//!   [`wait`](DedupeStore::wait) (polls with a short backoff unless the backend can do better).
//! * An unsafe request (`POST`, `PUT`, `DELETE`...) that succeeded changed the resource:
//!   [`invalidate`](DedupeStore::invalidate) drops every lease and result of its URL, so no
//!   result from before the change is served after it, in any process.
//! * Expired rows are removed by [`cleanup`](DedupeStore::cleanup); backends also run it on their
//!   own, coalesced, at most once per cleanup interval.
//! * [`stats`](DedupeStore::stats) says what the store holds for every process sharing it
//!   ([`DedupeStoreStats`]); what a layer did is counted by the layer
//!   ([`DedupeLayer::stats`](super::DedupeLayer::stats)), not by the store.
//!
//! # Time
//!
//! Leases and results expire by a [`Clock`](crate::time::Clock) the store is given:
//! [`SystemClock`](crate::time::SystemClock) by default for the memory and SQLite stores
//! (`MemoryDedupeStore::with_clock`, `SqliteDedupeStore::clock`); the Redis store reads the
//! server's clock unless one is given (`RedisDedupeStore::clock`), so that machines with skewed
//! clocks agree.

mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::key::RequestKey;
use crate::store::StoreError;

use super::SharedResponse;

pub use memory::MemoryDedupeStore;
#[cfg(feature = "redis")]
pub use redis::RedisDedupeStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteDedupeStore;

/// What a leader left for its followers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Completion {
    /// The response, buffered.
    Response(Arc<SharedResponse>),
    /// The leader failed; followers get this message in a
    /// [`DedupeError::RemoteUpstream`](super::DedupeError::RemoteUpstream).
    Failed(Arc<str>),
    /// The body was larger than the dedupe limit: followers make their own request.
    TooLarge,
}

/// The answer of [`DedupeStore::try_lead`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Lead {
    /// The caller leads the key now; `takeover` when it replaced a leader whose lease expired.
    Acquired {
        /// Whether an expired lease was taken over.
        takeover: bool,
    },
    /// Someone else leads the key and its lease is valid.
    Pending {
        /// The leader's owner id.
        owner: String,
        /// How long it has led.
        age: Duration,
    },
    /// A leader finished less than `result_ttl` ago.
    Completed(Completion),
}

/// What a store holds for one key: what [`DedupeStore::poll`] and [`DedupeStore::wait`] return,
/// to the layer deciding what to do and to monitoring.
///
/// # Example
///
/// ```
/// use courteous::dedupe::{DedupeStore, KeyState, MemoryDedupeStore};
/// use courteous::RequestKey;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::StoreError> {
/// let store = MemoryDedupeStore::new();
/// let key = RequestKey::from_parts([7; 32], "GET http://h/x");
/// assert!(matches!(store.poll(&key).await?, KeyState::Vacant));
/// store.try_lead(&key, "me", Duration::from_secs(30)).await?;
/// assert!(matches!(store.poll(&key).await?, KeyState::Pending { owner, .. } if owner == "me"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum KeyState {
    /// Nobody leads the key and no result is kept: try to lead it.
    Vacant,
    /// A leader with a valid lease is working on it.
    Pending {
        /// The leader's owner id (`<pid>-<random>-<n>` for the layer's leaders: the random part
        /// is drawn once per process).
        owner: String,
        /// How long it has led.
        age: Duration,
    },
    /// The leader's lease ran out: try to take it over.
    Expired {
        /// The owner id of the leader whose lease ran out.
        owner: String,
        /// How long ago it took the lead.
        age: Duration,
    },
    /// The result, still within `result_ttl`.
    Completed {
        /// What the leader left.
        completion: Completion,
        /// How long ago it was published.
        age: Duration,
        /// How long it is kept still.
        expires_in: Duration,
    },
}

impl KeyState {
    /// The status code of a completed response, if the key holds one (a leader that succeeded
    /// with a body within the limit).
    ///
    /// ```
    /// use courteous::dedupe::KeyState;
    ///
    /// assert_eq!(KeyState::Vacant.status(), None);
    /// ```
    pub fn status(&self) -> Option<u16> {
        match self {
            KeyState::Completed {
                completion: Completion::Response(response),
                ..
            } => Some(response.status.as_u16()),
            _ => None,
        }
    }
}

/// What a store holds now, for every process sharing it, and what its cleanup removed in this
/// process: the `store` part of [`DedupeStats`](super::DedupeStats), from
/// [`DedupeStore::stats`].
///
/// What each backend can count: see [`DedupeStore::stats`].
///
/// # Example
///
/// ```
/// use courteous::dedupe::{DedupeStore, MemoryDedupeStore};
/// use courteous::RequestKey;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::StoreError> {
/// let store = MemoryDedupeStore::new();
/// let key = RequestKey::from_parts([7; 32], "GET http://h/x");
/// store.try_lead(&key, "me", Duration::from_secs(30)).await?;
/// let stats = store.stats().await?;
/// assert_eq!((stats.pending, stats.completed), (1, 0));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DedupeStoreStats {
    /// Leases held now by a leader whose lease has not run out (in every process).
    pub pending: u64,
    /// Results kept now for late followers, not expired (in every process).
    pub completed: u64,
    /// Leases and results past their expiry that cleanup has not removed yet (for Redis, which
    /// expires leases and results itself: the records of leases that ran out).
    pub expired: u64,
    /// Expired leases and results removed by cleanup, in this process, since the store was
    /// made (clones share the count).
    pub cleaned: u64,
}

/// Registry of in-flight leaders and short-lived results, shared by the processes (or layers)
/// that should coalesce identical requests. See the [module documentation](self) for the
/// contract.
///
/// An `#[async_trait]`, like [`CacheStore`](crate::cache::CacheStore) and
/// [`RateLimitStore`](crate::rate_limit::store::RateLimitStore), so that it can be used as
/// `Arc<dyn DedupeStore>`: a backend writes `#[async_trait::async_trait]` over its `impl` and
/// `async fn` methods.
///
/// # Cancellation
///
/// The layer may drop a call in flight (its caller was cancelled). A [`try_lead`] dropped before
/// it answered is not abandoned by the layer: it finishes the call in a spawned task and
/// releases the lease if it was acquired. Backends need only make each method one atomic step
/// (a transaction, a Lua script, one lock), so that a dropped call either happened or did not.
///
/// [`try_lead`]: DedupeStore::try_lead
///
/// # Example
///
/// ```
/// use courteous::dedupe::{DedupeStore, KeyState, Lead, MemoryDedupeStore};
/// use courteous::RequestKey;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::StoreError> {
/// let store = MemoryDedupeStore::new();
/// let key = RequestKey::from_parts([7; 32], "GET http://h/x");
/// let lease = Duration::from_secs(30);
/// assert!(matches!(store.try_lead(&key, "me", lease).await?, Lead::Acquired { takeover: false }));
/// assert!(matches!(store.try_lead(&key, "you", lease).await?, Lead::Pending { .. }));
/// assert!(matches!(store.poll(&key).await?, KeyState::Pending { .. }));
/// store.release(&key, "me").await?;
/// assert!(matches!(store.poll(&key).await?, KeyState::Vacant));
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait DedupeStore: fmt::Debug + Send + Sync + 'static {
    /// In one atomic step: lead `key` as `owner` for `lease` if it is vacant or its lease
    /// expired; otherwise say who leads it or what it completed with.
    async fn try_lead(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Lead, StoreError>;

    /// Extends `owner`'s lease on `key` to `lease` from now; `false` when it is no longer the
    /// leader (its lease expired and was taken over).
    async fn renew(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError>;

    /// Ends `owner`'s leadership of `key` with `completion`, kept for `ttl`. Does nothing when
    /// `owner` no longer leads the key.
    async fn publish(
        &self,
        key: &RequestKey,
        owner: &str,
        completion: Completion,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Ends `owner`'s leadership of `key` leaving nothing (a cancelled leader).
    async fn release(&self, key: &RequestKey, owner: &str) -> Result<(), StoreError>;

    /// The state of `key` now: for the layer, and for monitoring.
    async fn poll(&self, key: &RequestKey) -> Result<KeyState, StoreError>;

    /// Waits until `key` is no longer led by a live leader, or until `deadline`; returns the last
    /// state seen. The default polls with a backoff from 1 ms to 8 ms.
    async fn wait(&self, key: &RequestKey, deadline: Instant) -> Result<KeyState, StoreError> {
        let mut pause = Duration::from_millis(1);
        loop {
            let state = self.poll(key).await?;
            let now = Instant::now();
            if !matches!(state, KeyState::Pending { .. }) || now >= deadline {
                return Ok(state);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(8));
        }
    }

    /// Drops the leases and results of every key whose URL is `path` (scheme, host and path,
    /// as in [`RequestKey::display`] after the method) with any query string or none; returns how
    /// many went. Called when an unsafe request to that URL succeeded: results from before the
    /// change must not reach requests made after it. A leader whose lease went this way finds
    /// its [`renew`](DedupeStore::renew) refused and its [`publish`](DedupeStore::publish)
    /// ignored; its followers in other processes find the key vacant and lead again.
    async fn invalidate(&self, path: &str) -> Result<u64, StoreError>;

    /// Removes expired leases and results now; returns how many rows went.
    async fn cleanup(&self) -> Result<u64, StoreError>;

    /// What the store holds now, for every process sharing it ([`DedupeStoreStats`]).
    ///
    /// The memory store counts its map; SQLite runs `COUNT` queries on the engine's threads;
    /// Redis walks the store's keys with `SCAN` (O(keys under the prefix): for monitoring, not
    /// for every request). What the *layers* did is [`DedupeLayer::stats`](super::DedupeLayer::stats).
    async fn stats(&self) -> Result<DedupeStoreStats, StoreError>;
}

#[async_trait::async_trait]
impl<T: DedupeStore + ?Sized> DedupeStore for Arc<T> {
    async fn try_lead(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Lead, StoreError> {
        (**self).try_lead(key, owner, lease).await
    }
    async fn renew(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        (**self).renew(key, owner, lease).await
    }
    async fn publish(
        &self,
        key: &RequestKey,
        owner: &str,
        completion: Completion,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        (**self).publish(key, owner, completion, ttl).await
    }
    async fn release(&self, key: &RequestKey, owner: &str) -> Result<(), StoreError> {
        (**self).release(key, owner).await
    }
    async fn poll(&self, key: &RequestKey) -> Result<KeyState, StoreError> {
        (**self).poll(key).await
    }
    async fn wait(&self, key: &RequestKey, deadline: Instant) -> Result<KeyState, StoreError> {
        (**self).wait(key, deadline).await
    }
    async fn invalidate(&self, path: &str) -> Result<u64, StoreError> {
        (**self).invalidate(path).await
    }
    async fn cleanup(&self) -> Result<u64, StoreError> {
        (**self).cleanup().await
    }
    async fn stats(&self) -> Result<DedupeStoreStats, StoreError> {
        (**self).stats().await
    }
}

/// The URL of a key: its display form without the method (secret parameters are masked there),
/// as the cache layer stores and invalidates entries.
pub(crate) fn url_of(key: &RequestKey) -> &str {
    let display = key.display();
    display.split_once(' ').map_or(display, |(_, url)| url)
}

/// Whether `url` is `path` with any query string or none.
pub(crate) fn covers(path: &str, url: &str) -> bool {
    url.strip_prefix(path)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))
}

#[cfg(any(feature = "sqlite", feature = "redis"))]
pub(crate) use crate::store::codec::{decode_headers, encode_headers};
