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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::key::RequestKey;
use crate::store::StoreError;

use super::SharedResponse;

pub use memory::MemoryDedupeStore;
#[cfg(feature = "redis")]
pub use redis::RedisDedupeStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteDedupeStore;

/// The future returned by every [`DedupeStore`] method.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

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

/// What the dedupe layers using a store did, in this process, since the store was made.
///
/// # Example
///
/// ```
/// use courteous::dedupe::{DedupeStore, MemoryDedupeStore};
///
/// let store = MemoryDedupeStore::new();
/// assert_eq!(store.stats().leaders, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DedupeStats {
    /// Requests that went upstream for their key as leader (takeovers included).
    pub leaders: u64,
    /// Requests that received a leader's result in this process.
    pub followers: u64,
    /// Leaderships taken over from a cancelled, panicked or dead leader.
    pub takeovers: u64,
    /// Followers that gave up waiting.
    pub timeouts: u64,
    /// Results received from a leader in another process (or another layer sharing the store).
    pub cross_process_joins: u64,
    /// Requests that made their own call instead (body over the limit, timeout, store failure).
    pub bypassed: u64,
    /// Store operations that failed (the request went on without the store).
    pub store_errors: u64,
    /// Expired rows removed by cleanup.
    pub cleaned: u64,
    /// Leaders that failed before sending (refused by the rate limiter, say): their error was
    /// not shared, and their followers started again.
    pub not_sent: u64,
    /// Unsafe requests that succeeded and discarded the dedupe results for their URL.
    pub invalidations: u64,
}

/// The counters behind [`DedupeStats`]; a store owns one and the layer counts into it.
#[derive(Debug, Default)]
pub struct DedupeCounters {
    pub(crate) leaders: AtomicU64,
    pub(crate) followers: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) cross_process_joins: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) cleaned: AtomicU64,
    pub(crate) not_sent: AtomicU64,
    pub(crate) invalidations: AtomicU64,
}

impl DedupeCounters {
    /// A snapshot.
    pub fn snapshot(&self) -> DedupeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DedupeStats {
            leaders: get(&self.leaders),
            followers: get(&self.followers),
            takeovers: get(&self.takeovers),
            timeouts: get(&self.timeouts),
            cross_process_joins: get(&self.cross_process_joins),
            bypassed: get(&self.bypassed),
            store_errors: get(&self.store_errors),
            cleaned: get(&self.cleaned),
            not_sent: get(&self.not_sent),
            invalidations: get(&self.invalidations),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Registry of in-flight leaders and short-lived results, shared by the processes (or layers)
/// that should coalesce identical requests. See the [module documentation](self) for the
/// contract.
///
/// Methods return boxed futures so that the trait can be used as `Arc<dyn DedupeStore>`; a
/// backend writes `Box::pin(async move { .. })`.
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
pub trait DedupeStore: fmt::Debug + Send + Sync + 'static {
    /// In one atomic step: lead `key` as `owner` for `lease` if it is vacant or its lease
    /// expired; otherwise say who leads it or what it completed with.
    fn try_lead<'a>(
        &'a self,
        key: &'a RequestKey,
        owner: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Lead>;

    /// Extends `owner`'s lease on `key` to `lease` from now; `false` when it is no longer the
    /// leader (its lease expired and was taken over).
    fn renew<'a>(
        &'a self,
        key: &'a RequestKey,
        owner: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Ends `owner`'s leadership of `key` with `completion`, kept for `ttl`. Does nothing when
    /// `owner` no longer leads the key.
    fn publish<'a>(
        &'a self,
        key: &'a RequestKey,
        owner: &'a str,
        completion: Completion,
        ttl: Duration,
    ) -> StoreFuture<'a, ()>;

    /// Ends `owner`'s leadership of `key` leaving nothing (a cancelled leader).
    fn release<'a>(&'a self, key: &'a RequestKey, owner: &'a str) -> StoreFuture<'a, ()>;

    /// The state of `key` now: for the layer, and for monitoring.
    fn poll<'a>(&'a self, key: &'a RequestKey) -> StoreFuture<'a, KeyState>;

    /// Waits until `key` is no longer led by a live leader, or until `deadline`; returns the last
    /// state seen. The default polls with a backoff from 1 ms to 8 ms.
    fn wait<'a>(&'a self, key: &'a RequestKey, deadline: Instant) -> StoreFuture<'a, KeyState> {
        Box::pin(async move {
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
        })
    }

    /// Drops the leases and results of every key whose URL is `path` (scheme, host and path,
    /// as in [`RequestKey::display`] after the method) with any query string or none; returns how
    /// many went. Called when an unsafe request to that URL succeeded: results from before the
    /// change must not reach requests made after it. A leader whose lease went this way finds
    /// its [`renew`](DedupeStore::renew) refused and its [`publish`](DedupeStore::publish)
    /// ignored; its followers in other processes find the key vacant and lead again.
    fn invalidate<'a>(&'a self, path: &'a str) -> StoreFuture<'a, u64>;

    /// Removes expired leases and results now; returns how many rows went.
    fn cleanup(&self) -> StoreFuture<'_, u64>;

    /// The counters the layers using this store count into.
    fn counters(&self) -> &DedupeCounters;

    /// What the layers using this store did, in this process.
    fn stats(&self) -> DedupeStats {
        self.counters().snapshot()
    }
}

impl<T: DedupeStore + ?Sized> DedupeStore for Arc<T> {
    fn try_lead<'a>(
        &'a self,
        key: &'a RequestKey,
        owner: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Lead> {
        (**self).try_lead(key, owner, lease)
    }
    fn renew<'a>(
        &'a self,
        key: &'a RequestKey,
        owner: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).renew(key, owner, lease)
    }
    fn publish<'a>(
        &'a self,
        key: &'a RequestKey,
        owner: &'a str,
        completion: Completion,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        (**self).publish(key, owner, completion, ttl)
    }
    fn release<'a>(&'a self, key: &'a RequestKey, owner: &'a str) -> StoreFuture<'a, ()> {
        (**self).release(key, owner)
    }
    fn poll<'a>(&'a self, key: &'a RequestKey) -> StoreFuture<'a, KeyState> {
        (**self).poll(key)
    }
    fn wait<'a>(&'a self, key: &'a RequestKey, deadline: Instant) -> StoreFuture<'a, KeyState> {
        (**self).wait(key, deadline)
    }
    fn invalidate<'a>(&'a self, path: &'a str) -> StoreFuture<'a, u64> {
        (**self).invalidate(path)
    }
    fn cleanup(&self) -> StoreFuture<'_, u64> {
        (**self).cleanup()
    }
    fn counters(&self) -> &DedupeCounters {
        (**self).counters()
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
