//! Where admissions are counted: the [`RateLimitStore`] trait and its backends.
//!
//! A store makes one decision atomically: it checks a request against every limit of its
//! resource, the adaptive split and the server's feedback, and records the admission in the same
//! step (one lock in memory, one `BEGIN IMMEDIATE` transaction in SQLite, one Lua script in
//! Redis), so that concurrent callers, in this process or in others sharing the store, can never
//! overshoot.
//!
//! `mod.rs` holds the trait, what it takes and answers, and the decision every backend makes over
//! its own admission log (`decide`, `status_of`); `memory.rs` the in-process store; `sqlite/` and
//! `redis/` the shared ones (features `sqlite` and `redis`), each with its own layout notes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::adaptive::{self, Activity, AdaptiveConfig, Check, Split, WindowUsage};
use super::limit::Limit;
use super::stats::RateLimitStoreStats;
use crate::context::Priority;
use crate::resource::Resource;
use crate::store::StoreError;
use crate::time::{Clock, Timestamp};

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// One request asking to go out now.
///
/// It carries the layer's [`Clock`] rather than a time: a store reads the time at the moment it
/// decides (under its lock, inside its transaction, or in its script), however long the request
/// waited for the store before, and stamps the admission with that time.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdmissionRequest {
    /// Its resource.
    pub resource: Resource,
    /// Its priority.
    pub priority: Priority,
    /// The resource's limits (every one must allow the request).
    pub limits: Arc<[Limit]>,
    /// The adaptive split's configuration.
    pub adaptive: Arc<AdaptiveConfig>,
    /// Where the store reads the time of its decision (a [`Timestamp`] is a clock that stands
    /// still, for tests).
    pub clock: Arc<dyn Clock>,
    /// `Some(bound)`: record the admission *in flight* (see [`InFlight`]): it counts in every
    /// window until it is [settled](RateLimitStore::settle), and an admission never settled
    /// (its process died) counts as if stamped at its decision plus `bound`. `None`: stamp it
    /// at the decision, final ([`Accounting::OnSend`](crate::rate_limit::Accounting::OnSend)).
    pub in_flight: Option<Duration>,
}

impl AdmissionRequest {
    /// A request for `resource`, decided at the time `clock` tells when the store decides it,
    /// and stamped final at that time (set [`in_flight`](Self::in_flight) for an admission to
    /// settle later).
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::rate_limit::{AdaptiveConfig, AdmissionRequest, Limit, SystemClock, Timestamp};
    /// use courteous::{Priority, Resource};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let limits: Arc<[Limit]> = vec![Limit::per_second(5)].into();
    /// let resource = Resource::new("items").unwrap();
    /// // Read the wall clock when the store decides; in flight for at most 60 s.
    /// let live = AdmissionRequest::new(resource.clone(), Priority::User, limits.clone(),
    ///     Arc::new(AdaptiveConfig::default()), SystemClock)
    ///     .in_flight(Some(Duration::from_secs(60)));
    /// // A clock that stands still at a given time (tests).
    /// let fixed = AdmissionRequest::new(resource, Priority::User, limits,
    ///     Arc::new(AdaptiveConfig::default()), Timestamp::from_millis(1_000));
    /// # let _ = (live, fixed);
    /// ```
    pub fn new(
        resource: Resource,
        priority: Priority,
        limits: Arc<[Limit]>,
        adaptive: Arc<AdaptiveConfig>,
        clock: impl Clock,
    ) -> Self {
        AdmissionRequest {
            resource,
            priority,
            limits,
            adaptive,
            clock: Arc::new(clock),
            in_flight: None,
        }
    }

    /// The same request with its clock shared from an `Arc`.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Records the admission in flight for at most `bound` (`None`: stamped final at the
    /// decision). See [`AdmissionRequest::in_flight`](Self#structfield.in_flight).
    #[must_use]
    pub fn in_flight(mut self, bound: Option<Duration>) -> Self {
        self.in_flight = bound;
        self
    }

    /// The time to stamp an in-flight admission decided at `now` with: its expiry, `now +
    /// bound` (see [`InFlight`]); `now` itself for an admission stamped final.
    pub fn stamp(&self, now: Timestamp) -> Timestamp {
        match self.in_flight {
            Some(bound) => now + bound.max(Duration::from_millis(1)),
            None => now,
        }
    }
}

/// An admission whose request is in flight: admitted, not yet answered.
///
/// Its request reaches the upstream at some moment between its decision and the arrival of
/// the response head (or the failure), which nobody can see. So a store records it *in flight*
/// and counts it in every window, whatever the window's end, until the layer
/// [settles](RateLimitStore::settle) it at the moment the response head arrived: then it is
/// re-stamped with that moment. No window of the upstream's own clock can then hold more than
/// the limit, with no safety margin.
///
/// Every store represents it the same way: stamped with its *expiry*, `admitted_at + bound`
/// (a time in the future; windows are counted from `now - window` with no upper bound, so it
/// counts in every window until then). An admission never settled (its process died, or its
/// future was dropped where no runtime could write the settlement) thus stops holding its slot
/// at its expiry and counts from then on as if stamped at its expiry, the latest its request
/// could have reached the upstream under the bound: the safe reading.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use courteous::rate_limit::{AdaptiveConfig, AdmissionRequest, Decision, Limit,
///     MemoryRateLimitStore, RateLimitStore, Timestamp};
/// use courteous::{Priority, Resource};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let store = MemoryRateLimitStore::new();
/// let request = AdmissionRequest::new(
///     Resource::new("items").unwrap(),
///     Priority::User,
///     vec![Limit::per_second(1)].into(),
///     Arc::new(AdaptiveConfig::default()),
///     Timestamp::from_millis(1_000),
/// )
/// .in_flight(Some(Duration::from_secs(60)));
/// let Decision::Admitted { in_flight: Some(in_flight), .. } = store.acquire(request).await.unwrap()
/// else { panic!() };
/// assert_eq!(in_flight.expires_at, Timestamp::from_millis(61_000));
/// // The response head arrived 200 ms later: the admission now counts from then.
/// store.settle(&in_flight, Timestamp::from_millis(1_200)).await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct InFlight {
    /// The admission's resource.
    pub resource: Resource,
    /// Its priority.
    pub priority: Priority,
    /// Its identity in the store, unique among the store's admissions of the resource (across
    /// processes).
    pub id: u64,
    /// When it was decided.
    pub admitted_at: Timestamp,
    /// When it stops holding its slot if never settled; also the stamp it carries until then.
    pub expires_at: Timestamp,
}

impl InFlight {
    /// An in-flight admission (for stores).
    pub fn new(
        resource: Resource,
        priority: Priority,
        id: u64,
        admitted_at: Timestamp,
        expires_at: Timestamp,
    ) -> Self {
        InFlight {
            resource,
            priority,
            id,
            admitted_at,
            expires_at,
        }
    }

    /// The stamp a settlement at `at` gives: `at`, but never before the decision.
    pub fn settled_stamp(&self, at: Timestamp) -> Timestamp {
        at.max(self.admitted_at)
    }
}

/// What a store decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Admitted and recorded.
    Admitted {
        /// Admissions left in the tightest limit after this one (and within the server's budget).
        remaining: u32,
        /// The time the store decided (read from the request's clock, or the store's own, at
        /// the decision).
        at: Timestamp,
        /// `Some` when the admission was recorded in flight and must be
        /// [settled](RateLimitStore::settle) once its response head arrived.
        in_flight: Option<InFlight>,
    },
    /// Not admitted; nothing was recorded.
    Refused {
        /// The earliest time worth asking again.
        retry_at: Timestamp,
        /// Why.
        reason: Refusal,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// A limit is used up.
    Limit,
    /// Background work used its share, or the rest is reserved for users.
    BackgroundShare,
    /// Background work is paused while user activity rises.
    BackgroundPaused,
    /// The server said to wait (`Retry-After`).
    ServerBlocked,
    /// The server said no requests remain until its reset.
    ServerBudget,
    /// A limit is used up, and admissions whose requests are still in flight hold the slot
    /// that would free next: it frees one window after they settle, which is not known yet.
    /// They settle no earlier than now, so `retry_at` is one window from now, the earliest it
    /// can free; asked again then, the store knows the exact time.
    InFlight,
}

/// What a server said about its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerFeedback {
    /// Send nothing before `until` (a 429 or 503 with `Retry-After`).
    Block {
        /// When requests may go again.
        until: Timestamp,
    },
    /// Only `remaining` more requests until `reset` (`RateLimit-Remaining`/`-Reset`).
    Remaining {
        /// Requests left.
        remaining: u32,
        /// When the server's window resets.
        reset: Timestamp,
    },
}

/// The state of one limit of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitStatus {
    /// The limit.
    pub limit: Limit,
    /// Admissions in the current window.
    pub used: u32,
    /// Of which background.
    pub background_used: u32,
    /// Admissions left in the window.
    pub remaining: u32,
    /// When the oldest admission in the window leaves it (`None` when the window is empty).
    pub reset: Option<Timestamp>,
    /// The current user/background split.
    pub split: Split,
}

/// A resource's state, for people.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use courteous::rate_limit::{Limit, Limits, MemoryRateLimitStore, RateLimitLayer};
/// use courteous::Resource;
///
/// let limits = Limits::new().default_limit(Limit::per_minute(10));
/// let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), limits).unwrap();
/// let status = layer.status(&Resource::new("issues").unwrap()).await.unwrap();
/// assert_eq!(status.limits[0].remaining, 10);
/// assert!(!status.background_paused);
/// println!("{}", status.reason);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitStatus {
    /// The resource.
    pub resource: Resource,
    /// One entry per limit.
    pub limits: Vec<LimitStatus>,
    /// Admissions left in the tightest limit.
    pub remaining: u32,
    /// When the server allows requests again, if it asked to wait.
    pub blocked_until: Option<Timestamp>,
    /// The server's own count of requests left, while it applies.
    pub server_remaining: Option<u32>,
    /// Whether background requests are paused.
    pub background_paused: bool,
    /// Admissions whose requests are in flight (admitted, not yet answered), which count in
    /// every window until they settle.
    pub in_flight: u32,
    /// Why the resource is in this state, in words.
    pub reason: String,
}

/// Counts admissions for the [`RateLimitLayer`](super::RateLimitLayer).
///
/// Implementations must make [`acquire`](Self::acquire) atomic: the check against every limit
/// and the record of the admission happen in one step that no other caller (in any process
/// sharing the store) can interleave with, and the time of the decision is read in that step
/// (from [`AdmissionRequest::clock`], or the store's own clock), never before. A future dropped
/// before it completes must record nothing, as far as the backend allows (see each backend's
/// notes).
///
/// An admission asked for [in flight](AdmissionRequest::in_flight) is stamped with its expiry
/// (see [`InFlight`]) and returned in [`Decision::Admitted::in_flight`]; [`settle`](Self::settle)
/// re-stamps it, visibly to every process sharing the store.
#[async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    /// Checks a request against its limits, the adaptive split and server feedback, and records
    /// it if admitted.
    async fn acquire(&self, request: AdmissionRequest) -> Result<Decision, StoreError>;

    /// Re-stamps an in-flight admission at `at` (the moment its response head arrived, or its
    /// failure was known; never before its decision: [`InFlight::settled_stamp`]), for every
    /// process. A store may write it behind (batched): until then every process counts the
    /// admission as in flight, the safe side. Settling an admission that is not in flight any
    /// more (settled before, or pruned) does nothing. A store may stamp a later time than `at`
    /// (its own clock when it writes), never an earlier one.
    async fn settle(&self, admission: &InFlight, at: Timestamp) -> Result<(), StoreError>;

    /// Records what the server said about a resource's limits, for every process.
    async fn feedback(
        &self,
        resource: &Resource,
        feedback: ServerFeedback,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// A resource's usage, remaining capacity, split and the reason for it.
    async fn status(
        &self,
        resource: &Resource,
        limits: &[Limit],
        adaptive: &AdaptiveConfig,
        now: Timestamp,
    ) -> Result<RateLimitStatus, StoreError>;

    /// What the store holds, for every process sharing it: the resources it keeps state for,
    /// the admissions it keeps, those in flight and the resources a server blocks now (read
    /// on the store's own clock: see each backend). The layer's own counts are in
    /// [`RateLimitLayer::stats`](super::RateLimitLayer::stats).
    ///
    /// It reads the whole store: a lock over the map in memory, `COUNT` queries over the
    /// tables in SQLite (on the store's threads), a `SCAN` of the prefix and one script per
    /// resource in Redis. Meant for an occasional look, not for every request.
    async fn stats(&self) -> Result<RateLimitStoreStats, StoreError>;

    /// Lifts what the server imposed on `resource` (its `Retry-After` block and its
    /// `RateLimit-Remaining` budget), for every process sharing the store. The resource's own
    /// limits and the admissions they count stay as they are.
    async fn unblock(&self, resource: &Resource) -> Result<(), StoreError>;
}

#[async_trait]
impl<T: RateLimitStore + ?Sized> RateLimitStore for Arc<T> {
    async fn acquire(&self, request: AdmissionRequest) -> Result<Decision, StoreError> {
        (**self).acquire(request).await
    }
    async fn settle(&self, admission: &InFlight, at: Timestamp) -> Result<(), StoreError> {
        (**self).settle(admission, at).await
    }
    async fn feedback(
        &self,
        resource: &Resource,
        feedback: ServerFeedback,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        (**self).feedback(resource, feedback, now).await
    }
    async fn status(
        &self,
        resource: &Resource,
        limits: &[Limit],
        adaptive: &AdaptiveConfig,
        now: Timestamp,
    ) -> Result<RateLimitStatus, StoreError> {
        (**self).status(resource, limits, adaptive, now).await
    }
    async fn stats(&self) -> Result<RateLimitStoreStats, StoreError> {
        (**self).stats().await
    }
    async fn unblock(&self, resource: &Resource) -> Result<(), StoreError> {
        (**self).unblock(resource).await
    }
}

/// The admissions of one resource as a backend keeps them.
pub(crate) trait AdmissionLog {
    type Error;
    /// Admissions recorded at or after `since` + 1 ms (with no upper bound: a record another
    /// process made with a slightly later clock counts too).
    fn usage(&mut self, since: u64) -> Result<WindowUsage, Self::Error>;
    /// The time of the `k`-th oldest (1-based) such admission.
    fn kth_oldest(&mut self, since: u64, k: u32) -> Result<Option<u64>, Self::Error>;
}

/// What the server said, as kept per resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ServerState {
    pub(crate) blocked_until: u64,
    /// (remaining, observed at, reset at)
    pub(crate) budget: Option<(u32, u64, u64)>,
}

impl ServerState {
    pub(crate) fn apply(&mut self, feedback: ServerFeedback, now: Timestamp) {
        match feedback {
            ServerFeedback::Block { until } => {
                self.blocked_until = self.blocked_until.max(until.as_millis());
            }
            ServerFeedback::Remaining { remaining, reset } => {
                self.budget = Some((remaining, now.as_millis(), reset.as_millis()));
            }
        }
    }
}

const PAUSED_RETRY_MS: u64 = 1000;

/// How far ahead of the clock a settled admission may be stamped: the layer rounds the time of
/// a settlement up to the next millisecond. A stamp further ahead is an in-flight admission's
/// expiry.
pub(crate) const SETTLE_ROUNDING_MS: u64 = 1;

/// The decision every backend makes at `now`, over its own log. Records nothing: the caller
/// records the admission in the same atomic step when this returns `Admitted` (whose `at` is
/// `now` and `in_flight` is `None`; the caller fills it in).
pub(crate) fn decide<L: AdmissionLog>(
    log: &mut L,
    request: &AdmissionRequest,
    now: Timestamp,
    activity: &Activity,
    server: &ServerState,
) -> Result<Decision, L::Error> {
    let stamp = now;
    let now = now.as_millis();
    if server.blocked_until > now {
        return Ok(Decision::Refused {
            retry_at: Timestamp::from_millis(server.blocked_until),
            reason: Refusal::ServerBlocked,
        });
    }
    let mut remaining = u32::MAX;
    if let Some((left, observed, reset)) = server.budget
        && reset > now
    {
        let used = log.usage(observed)?.total;
        if used >= left {
            return Ok(Decision::Refused {
                retry_at: Timestamp::from_millis(reset),
                reason: Refusal::ServerBudget,
            });
        }
        remaining = left - used - 1;
    }
    let user = request.priority == Priority::User;
    let mut refused: Option<(u64, Refusal)> = None;
    for limit in request.limits.iter() {
        let window = limit.window_ms();
        let since = now.saturating_sub(window);
        let usage = log.usage(since)?;
        let split =
            (!user).then(|| adaptive::allocate(limit.max(), activity, &request.adaptive, now));
        let (retry_at, reason) = match adaptive::check(user, limit.max(), usage, split.as_ref()) {
            Check::Admit => {
                remaining = remaining.min(limit.max() - usage.total - 1);
                continue;
            }
            Check::Full(k) => {
                let mut oldest = log.kth_oldest(since, k)?.unwrap_or(now);
                let reason = if oldest > now.saturating_add(SETTLE_ROUNDING_MS) {
                    // Stamped with its expiry: in flight (see `InFlight`). It will be
                    // re-stamped no earlier than now, so its slot frees one window from now at
                    // the earliest: the earliest time worth asking again (by then it has
                    // most likely settled, and the answer is exact).
                    oldest = now;
                    Refusal::InFlight
                } else if user || usage.total >= limit.max() {
                    Refusal::Limit
                } else {
                    Refusal::BackgroundShare
                };
                (
                    oldest
                        .saturating_add(window)
                        .saturating_add(1)
                        .max(now.saturating_add(1)),
                    reason,
                )
            }
            Check::Paused => (
                now.saturating_add(PAUSED_RETRY_MS),
                Refusal::BackgroundPaused,
            ),
        };
        if refused.is_none_or(|(at, _)| retry_at > at) {
            refused = Some((retry_at, reason));
        }
    }
    Ok(match refused {
        None => Decision::Admitted {
            remaining,
            at: stamp,
            in_flight: None,
        },
        Some((at, reason)) => Decision::Refused {
            retry_at: Timestamp::from_millis(at),
            reason,
        },
    })
}

/// The status every backend reports, over its own log.
pub(crate) fn status_of<L: AdmissionLog>(
    log: &mut L,
    resource: &Resource,
    limits: &[Limit],
    adaptive: &AdaptiveConfig,
    activity: &Activity,
    server: &ServerState,
    now: Timestamp,
) -> Result<RateLimitStatus, L::Error> {
    let now_ms = now.as_millis();
    let mut out = Vec::with_capacity(limits.len());
    let mut remaining = u32::MAX;
    let mut paused = false;
    let mut reasons = Vec::new();
    for limit in limits {
        let since = now_ms.saturating_sub(limit.window_ms());
        let usage = log.usage(since)?;
        let split = adaptive::allocate(limit.max(), activity, adaptive, now_ms);
        let reset = log
            .kth_oldest(since, 1)?
            .map(|t| Timestamp::from_millis(t.saturating_add(limit.window_ms()).saturating_add(1)));
        let left = limit.max().saturating_sub(usage.total);
        remaining = remaining.min(left);
        paused |= split.background_paused;
        reasons.push(format!(
            "{} of {} per {:?} used ({} background); users reserved {}, background up to {}: {}",
            usage.total,
            limit.max(),
            limit.window(),
            usage.background,
            split.user_reserved,
            split.background_max,
            split.reason
        ));
        out.push(LimitStatus {
            limit: *limit,
            used: usage.total,
            background_used: usage.background,
            remaining: left,
            reset,
            split,
        });
    }
    let blocked_until =
        (server.blocked_until > now_ms).then(|| Timestamp::from_millis(server.blocked_until));
    let mut server_remaining = None;
    if let Some((left, observed, reset)) = server.budget
        && reset > now_ms
    {
        let used = log.usage(observed)?.total;
        let left = left.saturating_sub(used);
        server_remaining = Some(left);
        remaining = remaining.min(left);
        reasons.insert(
            0,
            format!(
                "the server allows {left} more until {}",
                Timestamp::from_millis(reset)
            ),
        );
    }
    if let Some(until) = blocked_until {
        reasons.insert(0, format!("the server asked to wait until {until}"));
    }
    if limits.is_empty() {
        reasons.push("no limits configured".to_owned());
    }
    // Stamped after now (and a settlement's rounding): in flight (see `InFlight`).
    let in_flight = log.usage(now_ms.saturating_add(SETTLE_ROUNDING_MS))?.total;
    if in_flight > 0 {
        reasons.push(format!("{in_flight} in flight"));
    }
    Ok(RateLimitStatus {
        resource: resource.clone(),
        limits: out,
        remaining: if blocked_until.is_some() {
            0
        } else {
            remaining
        },
        blocked_until,
        server_remaining,
        background_paused: paused,
        in_flight,
        reason: reasons.join("; "),
    })
}

/// The longest window among `limits` (what a backend must keep).
pub(crate) fn retention(limits: &[Limit]) -> Duration {
    limits.iter().map(Limit::window).max().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request stamped at the end of time, over its limit, is refused with the end of time as
    /// its `retry_at`, where `now + 1` used to overflow (a panic in debug builds).
    #[test]
    fn a_refusal_at_the_end_of_time_does_not_overflow() {
        let memory = memory::MemoryRateLimitStore::new();
        let ask = |priority| {
            memory.acquire_now(&AdmissionRequest::new(
                Resource::new("y").unwrap(),
                priority,
                vec![Limit::per_minute(1)].into(),
                Arc::new(AdaptiveConfig::default()),
                Timestamp::from_millis(u64::MAX),
            ))
        };
        assert!(matches!(ask(Priority::User), Decision::Admitted { .. }));
        for priority in [Priority::User, Priority::Background] {
            match ask(priority) {
                Decision::Refused { retry_at, .. } => assert_eq!(retry_at.as_millis(), u64::MAX),
                other => panic!("{other:?}"),
            }
        }
    }
}
