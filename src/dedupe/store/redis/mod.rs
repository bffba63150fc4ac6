//! The Redis backend: every process on every machine that uses the server (and prefix) coalesces.
//!
//! `mod.rs` holds the store and its [`DedupeStore`] implementation, `scripts.rs` loads the Lua
//! scripts (one `.lua` file each, sharing `prelude.lua`), `reply.rs` decodes what they return.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{Script, Value};
use tokio::sync::{broadcast, oneshot};

use crate::key::RequestKey;
use crate::store::StoreError;
use crate::store::redis::{RedisError, RedisStore, Subscription, glob_escape};
use crate::time::{Clock, duration_ms};

use super::{Completion, DedupeStore, DedupeStoreStats, KeyState, Lead, encode_headers, url_of};

mod reply;
mod scripts;

use reply::{FAILED, Found, RESPONSE, TOO_LARGE, decode, unexpected};
use scripts::{CLEAN, INVALIDATE, POLL, PUBLISH, RELEASE, RENEW, TRY_LEAD};

/// How long a leader's `meta` hash outlives its lease, so that the next leader knows it took over.
const META_GRACE_MS: u64 = 30_000;

/// The largest time or duration (ms) given to a script: sums of two or three stay within the
/// 64 bits Redis and the scripts' `string.format('%d')` hold.
const MAX_MS: u64 = i64::MAX as u64 / 4;

impl RedisStore {
    /// A [`DedupeStore`] on this Redis server, shared with every process (on any machine) that
    /// uses the same server and prefix.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use courteous::dedupe::DedupeLayer;
    /// use courteous::store::redis::RedisStore;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courteous::store::redis::RedisError> {
    /// let redis = RedisStore::builder("redis://127.0.0.1:6379/").prefix("myapp").connect()?;
    /// let layer = DedupeLayer::new(redis.dedupe()).lease_timeout(Duration::from_secs(10));
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn dedupe(&self) -> RedisDedupeStore {
        let (stop, stopped) = oneshot::channel();
        let (wakeups, _) = broadcast::channel(1024);
        RedisDedupeStore {
            redis: self.clone(),
            shared: Arc::new(Shared {
                cleaned: AtomicU64::new(0),
                channel: self.key("dedupe:done"),
                wakeups,
                subscribed: Arc::new(AtomicBool::new(false)),
                listener: Mutex::new(Some(stopped)),
                _stop: stop,
            }),
            fallback_poll: Duration::from_millis(50),
            clock: None,
        }
    }
}

struct Shared {
    /// Keys removed by cleanup in this process, for [`DedupeStoreStats::cleaned`].
    cleaned: AtomicU64,
    channel: String,
    /// Keys (hex) announced on the channel, for the waiters in this process.
    wakeups: broadcast::Sender<Arc<str>>,
    /// Whether the listener is subscribed now.
    subscribed: Arc<AtomicBool>,
    /// The listener's stop signal, until the listener is started.
    listener: Mutex<Option<oneshot::Receiver<()>>>,
    /// Dropped with the last clone of the store: the listener stops.
    _stop: oneshot::Sender<()>,
}

/// A [`DedupeStore`] on a Redis server: leaders and results are Redis keys that every process on
/// every machine sharing the server and prefix sees. Made by [`RedisStore::dedupe`].
///
/// Leadership is a `SET PX` lease, renewed while the request runs; only its owner may renew,
/// publish or release it (Lua compare-and-set / compare-and-delete). A result is written in one
/// atomic step and kept `result_ttl`; followers are woken through pub/sub, with polling as a
/// fallback. When Redis is unreachable or slow every operation fails within the
/// [operation timeout](crate::store::redis::RedisStoreBuilder::operation_timeout) with a
/// [`StoreError`], and the dedupe layer passes the request through.
///
/// Clones share the cleanup count and the pub/sub connection.
///
/// # Keys
///
/// For a request key with hex hash `h`, under the store's prefix `p` (`{h}` is a hash tag, so one
/// key's three Redis keys live in one cluster slot):
///
/// | key | holds | lives |
/// |---|---|---|
/// | `p:dedupe:{h}:lease` | the leader's owner id, set with `SET PX lease` | the lease (renewed by the leader) |
/// | `p:dedupe:{h}:meta` | hash `owner`, `started`, `until` (end of the lease) of the current or last leader | lease + 30 s, so a takeover is recognised |
/// | `p:dedupe:{h}:result` | hash `kind`, `at`, `until`, `status`, `headers`, `body`, `error` | `result_ttl` |
/// | `p:dedupe:url:<sha256 of the URL>` | set of the `h` led or completed for one URL (scheme, host, path) | its longest lease + 30 s or result |
///
/// [`invalidate`](DedupeStore::invalidate) reads a URL's set and deletes its members' three keys
/// in one script. The script names keys it was not given, so it needs one Redis server (or
/// the keys of one URL in one slot), not a cluster spreading them.
///
/// Each operation is one Lua script (atomic on the server): taking the lead reads the result and
/// lease and sets the lease (when vacant or expired) in one step; renew, publish and release check that the caller
/// still owns the lease (compare-and-set, compare-and-delete). Publishing deletes the lease and
/// writes the whole result (status, headers and body, or a failure or too-large marker) in one
/// step, then announces the key on the channel `p:dedupe:done`. Times use the server's clock
/// (`TIME`), so machines with skewed clocks agree, unless the store is given a
/// [`clock`](RedisDedupeStore::clock).
///
/// # Waking followers
///
/// Each `RedisDedupeStore` (each call of [`RedisStore::dedupe`]) keeps one pub/sub connection,
/// opened on the first wait and re-opened after failures, subscribed to `p:dedupe:done`. A
/// follower re-reads the key when its key is announced, and also polls with a backoff (1 ms
/// doubling to [`fallback_poll`](RedisDedupeStore::fallback_poll), 8 ms while the subscription is
/// down), so a missed message costs latency, never a hang.
///
/// # Expiry
///
/// Everything expires by Redis TTLs: no cleanup job is needed. A lease or result also ends at
/// its `until`, by the clock that wrote it (the server's, or the store's
/// [`clock`](RedisDedupeStore::clock)). [`cleanup`](DedupeStore::cleanup) removes the `meta`
/// hashes of leases Redis expired (after which the next leader is not counted as a takeover),
/// as the SQLite sweep removes expired pending rows.
///
/// # Example
///
/// ```no_run
/// use courteous::dedupe::{DedupeStore, KeyState};
/// use courteous::store::redis::RedisStore;
/// use courteous::RequestKey;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::StoreError> {
/// let redis = RedisStore::connect("redis://127.0.0.1:6379/")?;
/// let dedupe = redis.dedupe().fallback_poll(Duration::from_millis(100));
/// let key = RequestKey::from_parts([1; 32], "GET http://h/x");
/// dedupe.try_lead(&key, "me", Duration::from_secs(30)).await?;
/// assert!(matches!(dedupe.poll(&key).await?, KeyState::Pending { .. }));
/// dedupe.release(&key, "me").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisDedupeStore {
    redis: RedisStore,
    shared: Arc<Shared>,
    fallback_poll: Duration,
    /// `None`: the server's clock.
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for RedisDedupeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDedupeStore")
            .field("redis", &self.redis)
            .field("fallback_poll", &self.fallback_poll)
            .field("clock", &self.clock)
            .field(
                "subscribed",
                &self.shared.subscribed.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

/// The Redis keys of one request key.
struct Keys {
    lease: String,
    meta: String,
    result: String,
    index: String,
    hex: String,
}

impl RedisDedupeStore {
    /// The longest pause between two polls of a waiting follower while the pub/sub subscription
    /// is up (default 50 ms): the latency a missed wake-up message costs at most.
    #[must_use]
    pub fn fallback_poll(mut self, interval: Duration) -> Self {
        self.fallback_poll = interval.max(Duration::from_millis(1));
        self
    }

    /// Whether the pub/sub subscription that wakes followers is up now.
    pub fn is_subscribed(&self) -> bool {
        self.shared.subscribed.load(Ordering::Relaxed)
    }

    /// Stamps leases and results with `clock` instead of the Redis server's (`TIME`): for tests
    /// with injected or paused time, or machines whose clocks are synchronised. Machines whose
    /// clocks disagree then disagree on when a lease ran out, and Redis still expires the keys
    /// by its own clock: a lease or result never outlives its length in the server's time.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use courteous::store::redis::RedisStore;
    /// use courteous::time::TokioClock;
    ///
    /// # fn main() -> Result<(), courteous::store::redis::RedisError> {
    /// let redis = RedisStore::connect("redis://127.0.0.1:6379/")?;
    /// let dedupe = redis.dedupe().clock(TokioClock::new());
    /// # let _ = dedupe;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The scripts' `ARGV[1]`: the caller's clock, or empty for the server's.
    fn now_arg(&self) -> Vec<u8> {
        self.clock
            .as_ref()
            .map(|clock| clock.now().as_millis().min(MAX_MS).to_string().into_bytes())
            .unwrap_or_default()
    }

    fn keys(&self, key: &RequestKey) -> Keys {
        let hex = key.to_hex();
        Keys {
            lease: self.redis.key(format_args!("dedupe:{{{hex}}}:lease")),
            meta: self.redis.key(format_args!("dedupe:{{{hex}}}:meta")),
            result: self.redis.key(format_args!("dedupe:{{{hex}}}:result")),
            index: {
                let url = url_of(key);
                self.index(url.split_once('?').map_or(url, |(path, _)| path))
            },
            hex,
        }
    }

    /// The set of the keys led or completed for the URL `path`.
    fn index(&self, path: &str) -> String {
        use sha2::{Digest, Sha256};
        use std::fmt::Write;
        let hash = Sha256::digest(path.as_bytes());
        let hex = hash.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        self.redis.key(format_args!("dedupe:url:{hex}"))
    }

    /// Runs `script` on `key`'s keys with the time ([`now_arg`](Self::now_arg)) and `args`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        keys: &Keys,
        args: &[&[u8]],
    ) -> Result<T, RedisError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&keys.lease)
            .key(&keys.meta)
            .key(&keys.result)
            .key(&keys.index)
            .arg(self.now_arg());
        for arg in args {
            invocation.arg(*arg);
        }
        self.redis.script(operation, invocation).await
    }

    async fn read(
        &self,
        operation: &'static str,
        script: &Script,
        keys: &Keys,
        args: &[&[u8]],
    ) -> Result<Found, StoreError> {
        let reply: Vec<Value> = self.run(operation, script, keys, args).await?;
        decode(operation, reply).map_err(StoreError::from)
    }

    /// Starts the pub/sub listener if it is not running, and subscribes to its wake-ups.
    fn wakeups(&self) -> broadcast::Receiver<Arc<str>> {
        let receiver = self.shared.wakeups.subscribe();
        let stopped = self.shared.listener.lock().take();
        if let Some(stopped) = stopped {
            let wakeups = self.shared.wakeups.clone();
            // The keys (hex) announced, for this process's waiters; no receiver is fine (nobody
            // waits). While the subscription is down, followers poll.
            let report = move |event: Subscription<'_>| {
                if let Subscription::Message(payload) = event
                    && let Ok(hex) = std::str::from_utf8(payload)
                {
                    let _ = wakeups.send(hex.into());
                }
            };
            tokio::spawn(self.redis.clone().follow(
                "dedupe wake-up",
                self.shared.channel.clone(),
                self.shared.subscribed.clone(),
                stopped,
                report,
            ));
        }
        receiver
    }
}

/// Whole milliseconds for a script, at most [`MAX_MS`].
fn capped_ms(d: Duration) -> u64 {
    duration_ms(d).min(MAX_MS)
}

/// Milliseconds for `PX`, which refuses 0.
fn px(d: Duration) -> Vec<u8> {
    capped_ms(d).max(1).to_string().into_bytes()
}

/// Whether `received` says `hex` was announced (or that announcements were lost).
async fn announced(receiver: &mut broadcast::Receiver<Arc<str>>, hex: &str) {
    loop {
        match receiver.recv().await {
            Ok(key) if &*key == hex => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

#[async_trait::async_trait]
impl DedupeStore for RedisDedupeStore {
    async fn try_lead(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Lead, StoreError> {
        let keys = self.keys(key);
        let grace = META_GRACE_MS.to_string();
        let args: [&[u8]; 4] = [
            owner.as_bytes(),
            &px(lease),
            grace.as_bytes(),
            keys.hex.as_bytes(),
        ];
        Ok(
            match self.read("dedupe lead", &TRY_LEAD, &keys, &args).await? {
                Found::Acquired { takeover } => Lead::Acquired { takeover },
                Found::State(KeyState::Pending { owner, age }) => Lead::Pending { owner, age },
                Found::State(KeyState::Completed { completion, .. }) => Lead::Completed(completion),
                Found::State(KeyState::Vacant | KeyState::Expired { .. }) => {
                    return Err(unexpected(
                        "dedupe lead",
                        "the lead step neither led nor found a leader".to_owned(),
                    )
                    .into());
                }
            },
        )
    }

    async fn renew(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let keys = self.keys(key);
        let grace = META_GRACE_MS.to_string();
        let args: [&[u8]; 4] = [
            owner.as_bytes(),
            &px(lease),
            grace.as_bytes(),
            keys.hex.as_bytes(),
        ];
        let renewed: i64 = self.run("dedupe renew", &RENEW, &keys, &args).await?;
        Ok(renewed == 1)
    }

    async fn publish(
        &self,
        key: &RequestKey,
        owner: &str,
        completion: Completion,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let keys = self.keys(key);
        let ttl = capped_ms(ttl).to_string();
        let (kind, status, headers, body, error) = match &completion {
            Completion::Response(r) => (
                RESPONSE,
                r.status.as_u16().to_string(),
                encode_headers(&r.headers),
                &r.body[..],
                &b""[..],
            ),
            Completion::Failed(message) => (
                FAILED,
                String::new(),
                Vec::new(),
                &b""[..],
                message.as_bytes(),
            ),
            Completion::TooLarge => (TOO_LARGE, String::new(), Vec::new(), &b""[..], &b""[..]),
        };
        let args: [&[u8]; 9] = [
            owner.as_bytes(),
            ttl.as_bytes(),
            kind.as_bytes(),
            status.as_bytes(),
            &headers,
            body,
            error,
            self.shared.channel.as_bytes(),
            keys.hex.as_bytes(),
        ];
        let _published: i64 = self.run("dedupe publish", &PUBLISH, &keys, &args).await?;
        Ok(())
    }

    async fn release(&self, key: &RequestKey, owner: &str) -> Result<(), StoreError> {
        let keys = self.keys(key);
        let args: [&[u8]; 3] = [
            owner.as_bytes(),
            self.shared.channel.as_bytes(),
            keys.hex.as_bytes(),
        ];
        let _released: i64 = self.run("dedupe release", &RELEASE, &keys, &args).await?;
        Ok(())
    }

    async fn invalidate(&self, path: &str) -> Result<u64, StoreError> {
        let mut invocation = INVALIDATE.prepare_invoke();
        invocation
            .key(self.index(path))
            .arg(self.redis.key("dedupe:"))
            .arg(&self.shared.channel);
        let removed: i64 = self.redis.script("dedupe invalidate", invocation).await?;
        Ok(removed.max(0) as u64)
    }

    async fn poll(&self, key: &RequestKey) -> Result<KeyState, StoreError> {
        let keys = self.keys(key);
        Ok(match self.read("dedupe poll", &POLL, &keys, &[]).await? {
            Found::State(state) => state,
            Found::Acquired { .. } => KeyState::Vacant,
        })
    }

    /// Waits for the key's announcement on the pub/sub channel, re-reading the key on each
    /// announcement and on a polling backoff (1 ms up to the fallback interval; 8 ms while the
    /// subscription is down).
    async fn wait(&self, key: &RequestKey, deadline: Instant) -> Result<KeyState, StoreError> {
        let mut wakeups = self.wakeups();
        let hex = key.to_hex();
        let mut pause = Duration::from_millis(1);
        loop {
            let state = self.poll(key).await?;
            let now = Instant::now();
            if !matches!(state, KeyState::Pending { .. }) || now >= deadline {
                return Ok(state);
            }
            let cap = if self.is_subscribed() {
                self.fallback_poll
            } else {
                self.fallback_poll.min(Duration::from_millis(8))
            };
            tokio::select! {
                () = tokio::time::sleep(pause.min(deadline - now)) => {
                    pause = (pause * 2).min(cap);
                }
                () = announced(&mut wakeups, &hex) => {}
            }
        }
    }

    /// Results and leases expire by Redis TTLs; this removes the `meta` hashes of leases that
    /// ran out (found with `SCAN`), and returns how many went.
    async fn cleanup(&self) -> Result<u64, StoreError> {
        let pattern = format!("{}:*:meta", glob_escape(&self.redis.key("dedupe")));
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, metas) = self
                .redis
                .scan("dedupe cleanup scan", &pattern, cursor)
                .await?;
            if !metas.is_empty() {
                let mut invocation = CLEAN.prepare_invoke();
                for meta in &metas {
                    let lease = format!("{}:lease", meta.trim_end_matches(":meta"));
                    invocation.key(meta).key(lease);
                }
                let n: u64 = self.redis.script("dedupe cleanup", invocation).await?;
                removed += n;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        self.shared.cleaned.fetch_add(removed, Ordering::Relaxed);
        Ok(removed)
    }

    /// Walks the store's keys (`p:dedupe:{h}:*`) with `SCAN`: O(keys under the prefix) round
    /// trips of 500 keys and memory for the key names, so call it for monitoring, not per
    /// request. `pending` counts leases (Redis expires them), `completed` results, `expired` the
    /// `meta` hashes of leases that ran out, which [`cleanup`](DedupeStore::cleanup) removes.
    /// Keys written or expiring during the walk may be counted or not.
    async fn stats(&self) -> Result<DedupeStoreStats, StoreError> {
        use std::collections::HashSet;
        let head = format!("{}:{{", self.redis.key("dedupe"));
        let pattern = format!("{}*", glob_escape(&head));
        let (mut leases, mut results, mut metas) = (HashSet::new(), HashSet::new(), HashSet::new());
        let mut cursor: u64 = 0;
        loop {
            let (next, keys) = self
                .redis
                .scan("dedupe stats scan", &pattern, cursor)
                .await?;
            for key in keys {
                let Some((hex, kind)) = key
                    .strip_prefix(&head)
                    .and_then(|rest| rest.split_once("}:"))
                else {
                    continue;
                };
                let set = match kind {
                    "lease" => &mut leases,
                    "result" => &mut results,
                    "meta" => &mut metas,
                    _ => continue,
                };
                set.insert(hex.to_owned());
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(DedupeStoreStats {
            pending: leases.len() as u64,
            completed: results.len() as u64,
            expired: metas.difference(&leases).count() as u64,
            cleaned: self.shared.cleaned.load(Ordering::Relaxed),
        })
    }
}
