//! The Redis store: admissions shared by every process on every machine that uses the server.
//!
//! # How a decision is made
//!
//! Each [`acquire`](RateLimitStore::acquire) is one Lua script, which Redis runs atomically: it
//! reads the server's feedback for the resource, counts the admissions in each limit's window,
//! applies the adaptive split, and records the admission, with nothing from another caller in
//! between. The script is a line-by-line mirror of the decision the memory and SQLite stores make
//! (same refusals, same `retry_at`), and the test suite checks it against them on random
//! schedules.
//!
//! # Keys
//!
//! For a resource `r` under the store's prefix `p` (`{r}` is a hash tag, so one resource's keys
//! live in one cluster slot):
//!
//! | key | holds | lives |
//! |---|---|---|
//! | `p:rl:{r}:all` | sorted set of every admission (member `s<id>` stamped, `i<id>` in flight; score its stamp in ms) | the longest window after the last admission, and after the expiry of the last one in flight |
//! | `p:rl:{r}:bg` | the same for background admissions only | the same |
//! | `p:rl:{r}:state` | hash: `first_at`, `last_user_at`, `blocked_until`, `budget_remaining`, `budget_observed`, `budget_reset`, `keep` and `keep_until` (the retention high-water mark), `seq` (the last counter id, used when a proposed id is taken) | 7 days (or twice the sustained inactivity, if longer) after the last admission, at least as long as the sets, and at least until the server's block or reset |
//! | `p:rl:{r}:act` | hash: user admissions per second (`second -> count`) | the monitoring window after the last user admission |
//! | `p:rl:{r}:actidx` | sorted set of the seconds in `act`, to trim it | the same |
//!
//! Window counts are `ZCOUNT`s and the `k`-th oldest admission one `ZRANGEBYSCORE ... LIMIT`, so a
//! decision costs a few `O(log n)` steps whatever the window holds. Users' usage is the total
//! less the background's, so a user admission is written once. Each admission trims what no
//! window needs any more (`ZREMRANGEBYSCORE`), and every key carries a `PEXPIRE`: an idle
//! resource leaves nothing behind. What "no window" means is the longest window any caller
//! asked for within that window's own length (`keep`), not only the caller's: while processes
//! with different limits share the keys (a rolling deploy shortening a limit), the ones with
//! the longer window still count every admission they need. While the server's
//! `RateLimit-Remaining` budget applies, admissions are kept back to when it was observed, so
//! that the budget is counted in full.
//!
//! Delays and durations are clamped to about ten years before they reach a script (a
//! `Retry-After` of centuries, a [`Duration::MAX`](std::time::Duration::MAX) window), and the scripts check their
//! arguments before they write anything (Redis does not roll back a script that fails half-way).
//!
//! # In flight
//!
//! An admission asked for [in flight](AdmissionRequest::in_flight) (the layer's default,
//! upstream-exact accounting) is recorded as every store records it (see [`InFlight`]): with its
//! expiry (decision + bound) as its score, as member `i<id>`. Every window is counted from
//! `now − window` with no upper bound, so every process counts it in every window while it is in
//! flight; a refusal whose freeing slot is held by one says [`Refusal::InFlight`](super::Refusal::InFlight) and asks again
//! one window from now, the earliest that slot can free. [`settle`](RateLimitStore::settle) is
//! one script that re-stamps it atomically: `i<id>` becomes `s<id>` with the settlement's time as
//! its score, in `all` and (for background work) `bg`, visible to every process at once; a
//! second settlement (a retried write) finds no `i<id>` and does nothing. An admission whose
//! process died is never settled: it counts as if sent at its expiry until that leaves the
//! windows, and is trimmed like any other, so a crash holds a slot for its bound and one
//! window, not forever. The sets are kept (`PEXPIRE`, only ever extended) until the latest
//! expiry has left the longest window. The id is proposed by the caller (random, below 2^53),
//! so that an admission whose reply was lost (a timeout, a dropped future) is settled at its
//! decision in the background rather than holding its slot for its bound; should it be taken,
//! the id comes from `HINCRBY` on the state hash, which outlives the sets, and an id found taken
//! there too (the hash evicted under memory pressure) is skipped.
//!
//! Settlements are written one script each, not batched: the store's connection pipelines
//! concurrent commands, so a burst of settlements costs one round trip each in parallel, and a
//! settlement is visible as soon as it is written. What upstream-exact accounting costs on
//! Redis is that second script per request.
//!
//! # Clocks
//!
//! Admissions are stamped with the Redis server's clock (`TIME`, read inside the script, at the
//! moment Redis decides: however long the request waited before, in the layer, in the
//! connection's queue, or for a stalled server), so machines whose clocks disagree still count on
//! one time line.
//!
//! The times of a decision are mapped back to the caller's clock, the caller's now read as the
//! reply arrives standing for Redis's time of the decision: a decision's
//! [`at`](Decision::Admitted::at) is that now, its [`InFlight`] expiry as far after it as on
//! Redis, and the `retry_at` of a refusal `caller now + (retry_at − server now)`, so the layer
//! waits the right time whatever its own clock says. Settlements are stamped with `TIME` as they
//! are written, never before the decision (the script finds the decision's time on Redis's clock
//! as the admission's expiry less its bound, the same on either time line). Feedback
//! (`Retry-After`, a budget's reset) is mapped the other way, as a delay from the caller's
//! `now`.
//!
//! [`RedisClock::Caller`] stamps with the caller's clock instead ([`AdmissionRequest::clock`],
//! read after the activity read, right before the script is sent; a settlement's own time): for
//! tests with injected or paused time. It cannot see the time a command then waits in the
//! connection or in a stalled server, which `TIME` does; that is why the server's clock is the
//! default. Scripts that read `TIME` and then write need Redis 5 or later (effects
//! replication).
//!
//! # User activity
//!
//! The adaptive split is computed in Rust ([`allocate`](crate::rate_limit::adaptive::allocate)) from user activity that every machine
//! writes to `p:rl:{r}:act` in the admission script. Each process reads it (one script) at most
//! once per [recalculation interval](crate::rate_limit::AdaptiveConfig::recalculation_interval)
//! per resource, like the SQLite store, and passes the split's numbers to the admission script:
//! the activity behind a background decision may be up to one interval old; the counts of the
//! windows never are.
//!
//! # When Redis fails
//!
//! Every call (a decision with its activity read included) is bounded by the [operation
//! timeout](crate::store::redis::RedisStoreBuilder::operation_timeout) and fails with a
//! [`StoreError`] whose source is a [`RedisError`]; the layer then fails closed (the request is
//! not sent) or open, as [`RateLimitLayer::on_store_error`](crate::rate_limit::RateLimitLayer::on_store_error)
//! says. After a restart the store reconnects by itself: a command that fails on the broken
//! connection is sent once more on a new one, within the same timeout.
//!
//! # Note on cancellation
//!
//! A request dropped before its script reaches Redis records nothing. One dropped while the
//! script runs (or whose connection broke after Redis ran it, and was retried) may be recorded
//! without being sent: it over-counts by one, which never lets the API see more than the limit.
//! Recorded in flight, such an admission is never settled and holds its slot until its expiry
//! (and counts one window after it), like the admission of a process that died.
//!
//! # Example
//!
//! ```no_run
//! use courteous::rate_limit::{Limit, Limits, RateLimitLayer};
//! use courteous::store::redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisStore::builder("redis://127.0.0.1:6379/").prefix("myapp").connect()?;
//! let limits = Limits::new().default_limit(Limit::per_hour(200));
//! let layer = RateLimitLayer::new(redis.rate_limits(), limits)?;
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! # Source layout
//!
//! `mod.rs` holds the store and its [`RateLimitStore`] impl; `scripts.rs` the Lua scripts (one
//! `.lua` file each, after the shared `prelude.lua`); `acquire.rs` a decision, with the activity
//! read (`activity.rs`) and the in-flight identities (`in_flight.rs`); `status.rs` a resource's
//! status; `stats.rs` what the store holds; `clock.rs` [`RedisClock`] and the moves between time lines; `reply.rs` the decoding
//! of the scripts' replies.

mod acquire;
mod activity;
mod clock;
mod in_flight;
mod reply;
mod scripts;
mod stats;
mod status;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    AdmissionRequest, Decision, InFlight, RateLimitStatus, RateLimitStore, ServerFeedback,
};
use crate::context::Priority;
use crate::rate_limit::adaptive::{Activity, AdaptiveConfig};
use crate::rate_limit::limit::Limit;
use crate::rate_limit::stats::RateLimitStoreStats;
use crate::resource::Resource;
use crate::store::StoreError;
use crate::store::redis::{RedisError, RedisStore};
use crate::time::Timestamp;
use clock::UNKNOWN;
use reply::time;
use scripts::{FEEDBACK, MAX_MS, SETTLE, STATE_TTL_MS, capped};

pub use clock::RedisClock;

impl RedisStore {
    /// A [`RateLimitStore`] on this Redis server, shared with every process (on any machine)
    /// that uses the same server and prefix. See [`RedisRateLimitStore`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// use courteous::rate_limit::{Limit, Limits, RateLimitLayer};
    /// use courteous::store::redis::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = RedisStore::builder("redis://127.0.0.1:6379/").prefix("myapp").connect()?;
    /// let limits = Limits::new().default_limit(Limit::per_second(5));
    /// let layer = RateLimitLayer::new(redis.rate_limits(), limits)?;
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn rate_limits(&self) -> RedisRateLimitStore {
        RedisRateLimitStore {
            redis: self.clone(),
            clock: RedisClock::Server,
            inner: Arc::new(Inner {
                offset: AtomicI64::new(UNKNOWN),
                activity: Mutex::default(),
            }),
        }
    }
}

/// Admissions counted on a Redis server, across machines. Made by [`RedisStore::rate_limits`];
/// see the [module docs](self) for the keys, the clocks and the failure behaviour.
///
/// Clones share the activity cache.
///
/// # Example
///
/// ```no_run
/// use courteous::rate_limit::{AdmissionRequest, Decision, Limit, RateLimitStore, AdaptiveConfig, Timestamp};
/// use courteous::store::redis::RedisStore;
/// use courteous::{Priority, Resource};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::StoreError> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379/")?.rate_limits();
/// let request = AdmissionRequest::new(
///     Resource::new("search").unwrap(),
///     Priority::User,
///     Arc::new([Limit::per_second(1)]),
///     Arc::new(AdaptiveConfig::default()),
///     Timestamp::from_system_time(std::time::SystemTime::now()),
/// );
/// assert!(matches!(store.acquire(request.clone()).await?, Decision::Admitted { remaining: 0, .. }));
/// assert!(matches!(store.acquire(request).await?, Decision::Refused { .. }));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisRateLimitStore {
    redis: RedisStore,
    clock: RedisClock,
    inner: Arc<Inner>,
}

struct Inner {
    /// The store's time minus the caller's, as of the last reply (`UNKNOWN` before one).
    offset: AtomicI64,
    /// Activity read from Redis, with the store's time of the read, reused for the
    /// recalculation interval.
    activity: Mutex<HashMap<Resource, (u64, Activity)>>,
}

impl fmt::Debug for RedisRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitStore")
            .field("redis", &self.redis)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// A resource's Redis keys.
struct Keys {
    all: String,
    bg: String,
    state: String,
    act: String,
    actidx: String,
}

impl RedisRateLimitStore {
    /// Whose clock stamps admissions (default [`RedisClock::Server`]).
    #[must_use]
    pub fn clock(mut self, clock: RedisClock) -> Self {
        self.clock = clock;
        self
    }

    fn keys(&self, resource: &Resource) -> Keys {
        let r = resource.as_str();
        Keys {
            all: self.redis.key(format_args!("rl:{{{r}}}:all")),
            bg: self.redis.key(format_args!("rl:{{{r}}}:bg")),
            state: self.redis.key(format_args!("rl:{{{r}}}:state")),
            act: self.redis.key(format_args!("rl:{{{r}}}:act")),
            actidx: self.redis.key(format_args!("rl:{{{r}}}:actidx")),
        }
    }
}

#[async_trait]
impl RateLimitStore for RedisRateLimitStore {
    async fn acquire(&self, request: AdmissionRequest) -> Result<Decision, StoreError> {
        // The activity read and the decision together stay within one operation timeout.
        let after = self.redis.operation_timeout();
        let decision = tokio::time::timeout(after, self.decide(&request))
            .await
            .map_err(|_| RedisError::Timeout {
                operation: "rate-limit acquire",
                after,
            })??;
        Ok(decision)
    }

    async fn settle(&self, admission: &InFlight, at: Timestamp) -> Result<(), StoreError> {
        let keys = self.keys(&admission.resource);
        let mut invocation = SETTLE.prepare_invoke();
        invocation
            .key(&keys.all)
            .key(&keys.bg)
            .key(&keys.state)
            .arg(self.now_arg(at))
            .arg(admission.id)
            // The same in every frame: the decision's time on Redis's clock is its expiry there
            // less this.
            .arg(capped(
                admission
                    .expires_at
                    .as_millis()
                    .saturating_sub(admission.admitted_at.as_millis()),
            ))
            .arg(match admission.priority {
                Priority::User => "u",
                Priority::Background => "b",
            })
            .arg(self.slack());
        let _settled: i64 = self.redis.script("rate-limit settle", invocation).await?;
        Ok(())
    }

    async fn feedback(
        &self,
        resource: &Resource,
        feedback: ServerFeedback,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let keys = self.keys(resource);
        // At most `MAX_MS` either way, whatever the server sent.
        let delay = |t: Timestamp| {
            let max = i128::from(MAX_MS);
            (i128::from(t.as_millis()) - i128::from(now.as_millis())).clamp(-max, max) as i64
        };
        let (kind, delay, remaining) = match feedback {
            ServerFeedback::Block { until } => ("block", delay(until), 0),
            ServerFeedback::Remaining { remaining, reset } => ("budget", delay(reset), remaining),
        };
        let mut invocation = FEEDBACK.prepare_invoke();
        invocation
            .key(&keys.state)
            .arg(self.now_arg(now))
            .arg(kind)
            .arg(delay)
            .arg(remaining)
            .arg(STATE_TTL_MS.saturating_add(self.slack()));
        let store_now: i64 = self.redis.script("rate-limit feedback", invocation).await?;
        self.observe_offset(time(store_now), now);
        Ok(())
    }

    async fn status(
        &self,
        resource: &Resource,
        limits: &[Limit],
        adaptive: &AdaptiveConfig,
        now: Timestamp,
    ) -> Result<RateLimitStatus, StoreError> {
        self.read_status(resource, limits, adaptive, now).await
    }

    /// A `SCAN` of the prefix for the resources' state hashes (`p:rl:{*}:state`; it walks
    /// every key in the database, the prefix's or not, in batches of 500), and one script per
    /// resource found (run concurrently per batch), on Redis's clock (with
    /// [`RedisClock::Caller`]: this machine's wall clock). Keys written or expiring during the
    /// walk may be counted or not; each resource's counts are read atomically.
    async fn stats(&self) -> Result<RateLimitStoreStats, StoreError> {
        Ok(self.read_stats().await?)
    }

    async fn unblock(&self, resource: &Resource) -> Result<(), StoreError> {
        // Every decision reads these fields in its script: the next one, on any machine, sees
        // the block and the budget gone. The hash's expiry stays as it is.
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.keys(resource).state).arg(&[
            "blocked_until",
            "budget_remaining",
            "budget_observed",
            "budget_reset",
        ]);
        let _: i64 = self.redis.query("rate-limit unblock", cmd).await?;
        Ok(())
    }
}
