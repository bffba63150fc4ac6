//! The cache store on a Redis server, shared by every process on every machine.
//!
//! * `mod.rs`: [`RedisCacheStore`], its keys and the [`CacheStore`] implementation.
//! * `scripts.rs` and the `.lua` files: the Lua scripts every write runs (`prelude.lua` holds
//!   the index helpers they share).
//! * `events.rs`: the change events published on the store's channel, instance ids, and the lex
//!   ranges of the URL index.
//!
//! An entry's value is one byte string in the form of `crate::store::codec`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;
use redis::Script;
use tokio::sync::{broadcast, oneshot};

use crate::cache::CacheEntry;
use crate::key::RequestKey;
use crate::store::StoreError;
use crate::store::redis::{RedisError, RedisStore, Subscription};

mod events;
mod scripts;

use events::{Heard, event, instance_id, lex_range, parse_event};
use scripts::{DELETE, INVALIDATE, PURGE, PUT, STATS, TOUCH};

use super::counters::Counters;
use super::{CacheChange, CacheStore, CacheStoreStats, ChangeFeed, Invalidation};
use crate::store::codec;
use crate::time::{Clock, SystemClock, duration_ms, epoch_ms as millis};

/// Expired index members each write cleans up, so the indexes stay bounded without a janitor.
const CLEAN_PER_WRITE: u32 = 4;

/// Index members one invalidation or purge step handles (each step is one short script).
const BATCH: u32 = 256;

/// The Redis keys and channel of one store.
#[derive(Debug)]
struct Names {
    /// `p:cache:e:` (then the key's hex).
    entry: String,
    urls: String,
    expiry: String,
    sizes: String,
    bytes: String,
    channel: String,
}

struct Shared {
    names: Names,
    counters: Counters,
    /// Where the next purge goes on checking the expiry index for evicted entries (a `ZSCAN`
    /// cursor; 0 starts a new pass).
    scan: AtomicU64,
    /// Every change the listener hears, with the instance that made it (`None` for the
    /// subscription's own `Connected` and `Lost`); each change feed drops its own handle's.
    changes: broadcast::Sender<Heard>,
    /// Whether the listener is subscribed now.
    subscribed: Arc<AtomicBool>,
    /// The listener's stop signal, until the listener is started.
    listener: Mutex<Option<oneshot::Receiver<()>>>,
    /// Dropped with the last clone of the store: the listener stops.
    _stop: oneshot::Sender<()>,
}

/// Cache entries on a Redis server, shared by every process on every machine that uses the
/// server and prefix. Made by [`RedisStore::cache`].
///
/// # Keys
///
/// Under the store's prefix `p`, for a request key with hex hash `h`:
///
/// | key | holds |
/// |---|---|
/// | `p:cache:e:h` | hash `u` (URL), `e` (the whole entry, one compact binary value), `f`/`x` (fresh until / expires at, ms, in the store's [clock](Self::clock)); expires by itself when its TTL (`x` minus the store's now when written, `PEXPIRE`) runs out |
/// | `p:cache:urls` | sorted set (all scores 0) of `url\0h`: ordered by URL, so `ZRANGEBYLEX` finds a prefix's entries without scanning the database |
/// | `p:cache:expiry` | sorted set of the same members, scored by when the entry expires in Redis's clock (Redis's `TIME` when written plus the TTL): the time base that purges and `expired` compare against, whatever the clients' clocks |
/// | `p:cache:sizes`, `p:cache:bytes` | each member's size, and their sum |
///
/// The store uses one Redis server (or primary), not Redis Cluster: the indexes are single keys
/// that scripts update together with entries.
///
/// A hit is one `HMGET` (one round trip). Every write is one Lua script, so an entry, its
/// metadata and the indexes change together: a reader sees the old entry or the new one, never a
/// body with another entry's headers. `Vary` variants are separate entries under their own keys,
/// as in every store. Each put also removes a few index members whose entries have expired
/// (Redis drops the entries themselves), so the indexes stay bounded without a cleanup job;
/// [`purge_expired`](CacheStore::purge_expired) removes all of them.
///
/// # Size
///
/// An entry larger than [`max_entry_size`](Self::max_entry_size) (default 5 MiB, the cache
/// layer's default, so with default settings the layer decides) is not stored, and the entry it
/// would have replaced is deleted. The total is bounded by Redis's `maxmemory`: use a `volatile-*`
/// eviction policy (entries carry TTLs, the indexes do not, so only entries are evicted). An
/// entry evicted early leaves its index member (and its bytes in the total) until a
/// [`purge_expired`](CacheStore::purge_expired) checks it: each purge checks one batch of
/// members (about 256) for entries that are gone, continuing where the previous purge of this
/// store stopped, so the cache layer's periodic purges go through the whole index in turn.
///
/// # Statistics
///
/// `entries` and `expired` count the index (every machine's entries, as Redis knows them, in
/// O(log n)); `bytes` is a counter kept by the scripts; `hits`, `misses`, `errors` and `purged`
/// are this process's.
///
/// # Note on the memory tier
///
/// Every put, delete, invalidation and clear publishes an event on the channel `p:cache:events`,
/// in the same script as the write, tagged with the store's instance id. [`changes`](CacheStore::changes)
/// subscribes to it (one pub/sub connection per store, re-made after failures) and reports the
/// *other* instances' events, so a [`TieredCacheStore`](super::tiered::TieredCacheStore) over this
/// store drops what other processes replace or delete. Each clone of a store is an instance of
/// its own (sharing the connection and the subscription): two tiered stores over clones of one
/// store in one process see each other's writes, and a tiered store sees the writes made through
/// another clone of its back store. The
/// guarantee is eventual: another process's memory tier may serve a replaced entry until the
/// event reaches it (pub/sub delivery, usually well under a millisecond on a LAN). Pub/sub does
/// not queue messages for a disconnected subscriber, so while the subscription is down the memory
/// tier is emptied and not filled (reads go to Redis), and it starts filling again once the
/// subscription is back. The subscription is checked with a `PING` every second, answered within
/// the operation timeout, so a connection that dies silently (a stalled server, a half-open TCP
/// connection) counts as lost within about a second and the operation timeout.
///
/// # Failures
///
/// Every operation is bounded by the store's
/// [operation timeout](crate::store::redis::RedisStoreBuilder::operation_timeout) and fails with a
/// [`StoreError`] (counted in `errors`), which the cache layer treats as a miss or a skipped write:
/// requests pass through. The connection is re-made when Redis is back.
///
/// # Example
///
/// ```no_run
/// use courteous::cache::{CacheLayer, MemoryCacheStore, TieredCacheStore};
/// use courteous::store::redis::RedisStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::redis::RedisError> {
/// let redis = RedisStore::builder("redis://127.0.0.1:6379/").prefix("myapp").connect()?;
/// // Redis alone...
/// let layer = CacheLayer::new(redis.cache().max_entry_size(1024 * 1024));
/// // ...or with a memory tier in front, kept consistent through pub/sub.
/// let tiered = CacheLayer::new(TieredCacheStore::new(MemoryCacheStore::new(), redis.cache()));
/// # let _ = (layer, tiered);
/// # Ok(())
/// # }
/// ```
pub struct RedisCacheStore {
    redis: RedisStore,
    shared: Arc<Shared>,
    /// Who publishes this handle's events (so that its own change feeds skip them).
    instance: Arc<str>,
    max_entry_size: usize,
    clock: Arc<dyn Clock>,
}

impl Clone for RedisCacheStore {
    /// Another handle on the same store (same connection, subscription and counters) with an
    /// instance id of its own, so that the change feeds of each handle report the writes made
    /// through the other.
    fn clone(&self) -> Self {
        RedisCacheStore {
            redis: self.redis.clone(),
            shared: self.shared.clone(),
            instance: instance_id().into(),
            max_entry_size: self.max_entry_size,
            clock: self.clock.clone(),
        }
    }
}

impl fmt::Debug for RedisCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheStore")
            .field("redis", &self.redis)
            .field("instance", &self.instance)
            .field("max_entry_size", &self.max_entry_size)
            .field("subscribed", &self.is_subscribed())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The cache store on this Redis server, shared with every process (on any machine) that
    /// uses the same server and prefix.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use courteous::cache::{CacheLayer, CacheStore};
    /// use courteous::store::redis::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courteous::store::StoreError> {
    /// let redis = RedisStore::connect("redis://127.0.0.1:6379/")?;
    /// let store = redis.cache();
    /// println!("{} entries", store.stats().await?.entries);
    /// let layer = CacheLayer::new(store);
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn cache(&self) -> RedisCacheStore {
        let (stop, stopped) = oneshot::channel();
        let (changes, _) = broadcast::channel(1024);
        RedisCacheStore {
            redis: self.clone(),
            shared: Arc::new(Shared {
                names: Names {
                    entry: self.key("cache:e:"),
                    urls: self.key("cache:urls"),
                    expiry: self.key("cache:expiry"),
                    sizes: self.key("cache:sizes"),
                    bytes: self.key("cache:bytes"),
                    channel: self.key("cache:events"),
                },
                counters: Counters::default(),
                scan: AtomicU64::new(0),
                changes,
                subscribed: Arc::new(AtomicBool::new(false)),
                listener: Mutex::new(Some(stopped)),
                _stop: stop,
            }),
            instance: instance_id().into(),
            max_entry_size: 5 * 1024 * 1024,
            clock: Arc::new(SystemClock),
        }
    }
}

impl RedisCacheStore {
    /// Entries larger than this ([`CacheEntry::size`]) are not stored (default 5 MiB); a put of
    /// one deletes the entry it would have replaced.
    #[must_use]
    pub fn max_entry_size(mut self, bytes: usize) -> Self {
        self.max_entry_size = bytes;
        self
    }

    /// The clock the entries' times (`fresh_until`, `expires_at`) are in: the cache layer's
    /// ([`CacheLayer::clock`](crate::cache::CacheLayer::clock)); the system clock by default.
    ///
    /// Entries expire in Redis after `expires_at` minus this clock's now (a relative TTL), so
    /// they live as long as they should whatever the difference between this machine's clock
    /// and Redis's.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use courteous::cache::CacheLayer;
    /// use courteous::store::redis::RedisStore;
    /// use courteous::time::TokioClock;
    ///
    /// # fn main() -> Result<(), courteous::store::redis::RedisError> {
    /// let clock = TokioClock::new();
    /// let redis = RedisStore::connect("redis://127.0.0.1:6379/")?;
    /// // Give the cache layer the same clock (`CacheLayer::clock`).
    /// let layer = CacheLayer::new(redis.cache().clock(clock));
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn now(&self) -> SystemTime {
        self.clock.system_time()
    }

    /// How long until `expires_at` by the store's clock, in ms (at least 1).
    fn ttl_ms(&self, expires_at: SystemTime) -> u64 {
        expires_at
            .duration_since(self.now())
            .map_or(1, |d| duration_ms(d).max(1))
    }

    /// Whether the pub/sub subscription that reports other processes' changes is up now.
    pub fn is_subscribed(&self) -> bool {
        self.shared.subscribed.load(Ordering::Relaxed)
    }

    /// The shared store this cache lives in.
    pub fn redis(&self) -> &RedisStore {
        &self.redis
    }

    fn failed(&self, error: RedisError) -> StoreError {
        self.shared.counters.error();
        error.into()
    }

    fn entry_key(&self, hex: &str) -> String {
        format!("{}{hex}", self.shared.names.entry)
    }

    fn invocation<'a>(&'a self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let names = &self.shared.names;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&names.urls)
            .key(&names.expiry)
            .key(&names.sizes)
            .key(&names.bytes);
        invocation
    }

    fn event(&self, kind: char, data: &str) -> String {
        event(&self.instance, kind, data)
    }

    /// Deletes the entries in the lex range whose URL matches, batch by batch.
    async fn invalidate_range(
        &self,
        (min, max): (Vec<u8>, Vec<u8>),
        mode: &str,
        target: &str,
        event: &str,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0;
        let mut offset = 0u64;
        loop {
            let mut invocation = self.invocation(&INVALIDATE);
            invocation
                .arg(&self.shared.names.entry)
                .arg(&min)
                .arg(&max)
                .arg(offset)
                .arg(BATCH)
                .arg(mode)
                .arg(target)
                .arg(&self.shared.names.channel)
                .arg(event);
            let (n, read, skipped): (u64, u64, u64) = self
                .redis
                .script("cache invalidate", invocation)
                .await
                .map_err(|e| self.failed(e))?;
            deleted += n;
            offset += skipped;
            if read < u64::from(BATCH) {
                return Ok(deleted);
            }
        }
    }

    fn listen(&self) {
        let stopped = self.shared.listener.lock().take();
        if let Some(stopped) = stopped {
            let changes = self.shared.changes.clone();
            let channel = self.shared.names.channel.clone();
            // No receiver is fine: no memory tier listens.
            let report = move |event: Subscription<'_>| match event {
                Subscription::Up => {
                    let _ = changes.send(CacheChange::Connected.into());
                }
                Subscription::Message(payload) => {
                    if let Some((from, change)) = parse_event(payload) {
                        let _ = changes.send(Heard {
                            from: Some(from.into()),
                            change,
                        });
                    }
                }
                Subscription::Lost => {
                    let _ = changes.send(CacheChange::Lost.into());
                    tracing::warn!(%channel, "cache change subscription lost; memory tiers are emptied and bypassed until it is back");
                }
            };
            tokio::spawn(self.redis.clone().follow(
                "cache change",
                self.shared.names.channel.clone(),
                self.shared.subscribed.clone(),
                stopped,
                report,
            ));
        }
    }
}

#[async_trait::async_trait]
impl CacheStore for RedisCacheStore {
    async fn get(&self, key: &RequestKey) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.entry_key(&key.to_hex()))
            .arg("e")
            .arg("f")
            .arg("x");
        let (value, fresh_until, expires_at): (Option<Vec<u8>>, Option<i64>, Option<i64>) = self
            .redis
            .query("cache get", cmd)
            .await
            .map_err(|e| self.failed(e))?;
        let found = match (value, fresh_until, expires_at) {
            (Some(value), Some(fresh_until), Some(expires_at)) => {
                match codec::decode_entry(Bytes::from(value)) {
                    Some(mut entry) => {
                        entry.fresh_until = crate::time::from_epoch_ms(fresh_until);
                        entry.expires_at = crate::time::from_epoch_ms(expires_at);
                        Some(entry).filter(|e| !e.is_expired(self.now()))
                    }
                    None => {
                        // Treated as absent, and replaced by the next write.
                        tracing::warn!(key = %key, "undecodable cache entry in redis; ignoring it");
                        None
                    }
                }
            }
            _ => None,
        };
        self.shared.counters.lookup(found.is_some());
        Ok(found.map(Arc::new))
    }

    async fn put(&self, key: &RequestKey, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        let size = entry.size();
        if size > self.max_entry_size || entry.is_expired(self.now()) {
            tracing::debug!(key = %key, size, "cache entry too large or already expired; not stored in redis");
            return self.delete(key).await;
        }
        let hex = key.to_hex();
        let mut invocation = self.invocation(&PUT);
        invocation
            .key(self.entry_key(&hex))
            .arg(&self.shared.names.entry)
            .arg(&hex)
            .arg(&entry.url)
            .arg(codec::encode_entry(&entry))
            .arg(millis(entry.fresh_until))
            .arg(millis(entry.expires_at))
            .arg(size)
            .arg(&self.shared.names.channel)
            .arg(self.event('k', &hex))
            .arg(CLEAN_PER_WRITE)
            .arg(self.ttl_ms(entry.expires_at));
        let cleaned: u64 = self
            .redis
            .script("cache put", invocation)
            .await
            .map_err(|e| self.failed(e))?;
        self.shared.counters.purged(cleaned);
        Ok(())
    }

    async fn touch(
        &self,
        key: &RequestKey,
        fresh_until: SystemTime,
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        let hex = key.to_hex();
        let mut invocation = self.invocation(&TOUCH);
        invocation
            .key(self.entry_key(&hex))
            .arg(&hex)
            .arg(millis(fresh_until))
            .arg(millis(expires_at))
            .arg(self.ttl_ms(expires_at));
        let _touched: i64 = self
            .redis
            .script("cache touch", invocation)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn delete(&self, key: &RequestKey) -> Result<(), StoreError> {
        let hex = key.to_hex();
        let mut invocation = self.invocation(&DELETE);
        invocation
            .key(self.entry_key(&hex))
            .arg(&hex)
            .arg(&self.shared.names.channel)
            .arg(self.event('k', &hex));
        let _deleted: i64 = self
            .redis
            .script("cache delete", invocation)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn clear(&self) -> Result<(), StoreError> {
        let all = (b"-".to_vec(), b"+".to_vec());
        self.invalidate_range(all, "a", "", &self.event('c', ""))
            .await
            .map(drop)
    }

    async fn invalidate(&self, target: &Invalidation) -> Result<u64, StoreError> {
        match target {
            Invalidation::Prefix(prefix) => {
                let event = self.event('p', prefix);
                self.invalidate_range(lex_range(prefix.as_bytes()), "p", prefix, &event)
                    .await
            }
            Invalidation::Path(path) => {
                let event = self.event('u', path);
                let exact = lex_range(format!("{path}\0").as_bytes());
                let queries = lex_range(format!("{path}?").as_bytes());
                Ok(self.invalidate_range(exact, "u", path, &event).await?
                    + self.invalidate_range(queries, "u", path, &event).await?)
            }
        }
    }

    /// Removes the index members of expired entries, and checks one batch of the others
    /// (continuing where the last purge stopped) for entries Redis evicted before their expiry.
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let mut purged = 0;
        let mut scan = BATCH;
        loop {
            let mut invocation = self.invocation(&PURGE);
            invocation
                .arg(&self.shared.names.entry)
                .arg(BATCH)
                .arg(self.shared.scan.load(Ordering::Relaxed))
                .arg(scan);
            let (n, more, cursor, stale): (u64, u64, u64, u64) = self
                .redis
                .script("cache purge", invocation)
                .await
                .map_err(|e| self.failed(e))?;
            if scan > 0 {
                self.shared.scan.store(cursor, Ordering::Relaxed);
                scan = 0;
            }
            purged += n + stale;
            self.shared.counters.purged(n + stale);
            if more == 0 || n == 0 {
                return Ok(purged);
            }
        }
    }

    async fn stats(&self) -> Result<CacheStoreStats, StoreError> {
        let (entries, expired, bytes): (u64, u64, i64) = self
            .redis
            .script("cache stats", self.invocation(&STATS))
            .await
            .map_err(|e| self.failed(e))?;
        Ok(self.shared.counters.fill(CacheStoreStats {
            entries,
            bytes: bytes.max(0) as u64,
            expired,
            ..CacheStoreStats::default()
        }))
    }

    /// Nothing is pending (every write is committed before it returns); the connection is
    /// shared with the other stores of the [`RedisStore`] and closes with its last clone.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The changes made through every other handle (other processes, and other clones of this
    /// store in this process), not this handle's own.
    fn changes(&self) -> Option<ChangeFeed> {
        use tokio::sync::broadcast::error::RecvError;
        let mut heard = self.shared.changes.subscribe();
        let connected = self.shared.subscribed.load(Ordering::SeqCst);
        self.listen();
        let (feed, receiver) = broadcast::channel(1024);
        let own = self.instance.clone();
        // Until the store is gone (the listener stops) or the feed is dropped (the next send
        // fails).
        tokio::spawn(async move {
            loop {
                let change = match heard.recv().await {
                    Ok(Heard {
                        from: Some(from), ..
                    }) if from == own => continue,
                    Ok(Heard { change, .. }) => change,
                    Err(RecvError::Lagged(_)) => CacheChange::Missed,
                    Err(RecvError::Closed) => return,
                };
                if feed.send(change).is_err() {
                    return;
                }
            }
        });
        Some(ChangeFeed::new(receiver, connected))
    }
}
