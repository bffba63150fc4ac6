//! The in-process store.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    AdmissionLog, AdmissionRequest, Decision, InFlight, RateLimitStatus, RateLimitStore,
    SETTLE_ROUNDING_MS, ServerFeedback, ServerState, decide, retention, status_of,
};
use crate::context::Priority;
use crate::rate_limit::adaptive::{Activity, ActivityLog, AdaptiveConfig, WindowUsage};
use crate::rate_limit::limit::Limit;
use crate::rate_limit::stats::RateLimitStoreStats;
use crate::resource::Resource;
use crate::store::StoreError;
use crate::time::{Clock, SystemClock, Timestamp};

/// Admissions counted in this process, behind one lock.
///
/// Shared by every clone of the layers built over it (clone the store, or wrap it in an `Arc`).
/// Each resource keeps the admissions of its longest window (at most that limit's `max`, plus
/// those in flight; while a server's `RateLimit-Remaining` budget applies, those since it was
/// observed) and per-second user counts over the monitoring window: memory stays bounded per
/// resource. The time of a decision is read under the lock, from the request's clock; the
/// store's own [`clock`](Self::clock) only tells [`stats`](RateLimitStore::stats) what is in
/// flight or blocked now.
///
/// # Example
///
/// ```
/// use courteous::rate_limit::{Limit, Limits, MemoryRateLimitStore, RateLimitLayer};
///
/// let store = MemoryRateLimitStore::new();
/// let limits = Limits::new().default_limit(Limit::per_second(5));
/// let layer = RateLimitLayer::new(store.clone(), limits).unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct MemoryRateLimitStore {
    resources: Arc<Mutex<HashMap<Resource, State>>>,
    /// Identities of in-flight admissions.
    next_id: Arc<AtomicU64>,
    /// "Now" for [`stats`](RateLimitStore::stats).
    clock: Arc<dyn Clock>,
}

impl Default for MemoryRateLimitStore {
    fn default() -> Self {
        MemoryRateLimitStore {
            resources: Arc::default(),
            next_id: Arc::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The stamps of the admissions, oldest first (in-flight ones at their expiry, see
    /// [`InFlight`]).
    all: VecDeque<u64>,
    /// The stamps of the background ones, oldest first.
    background: VecDeque<u64>,
    /// In-flight admissions not yet settled: id -> expiry.
    in_flight: HashMap<u64, u64>,
    activity: ActivityLog,
    cached: Option<(u64, Activity)>,
    server: ServerState,
}

impl State {
    fn activity(&mut self, config: &AdaptiveConfig, now: u64) -> Activity {
        let every = u64::try_from(config.recalculation_interval.as_millis()).unwrap_or(u64::MAX);
        match self.cached {
            // The initial state lasts only until the first request.
            Some((at, activity))
                if now.saturating_sub(at) < every && at <= now && activity.any_request =>
            {
                activity
            }
            _ => {
                let activity = self.activity.activity(config, now);
                self.cached = Some((now, activity));
                activity
            }
        }
    }

    fn prune(&mut self, limits: &[Limit], now: u64) {
        let keep = u64::try_from(retention(limits).as_millis()).unwrap_or(u64::MAX);
        let mut cutoff = now.saturating_sub(keep);
        // While the server's budget applies, it counts every admission since it was observed.
        if let Some((_, observed, reset)) = self.server.budget
            && reset > now
        {
            cutoff = cutoff.min(observed);
        }
        for times in [&mut self.all, &mut self.background] {
            while times.front().is_some_and(|at| *at <= cutoff) {
                times.pop_front();
            }
        }
        // In-flight admissions whose stamps were pruned (never settled) are forgotten; each
        // one still held has its stamp in `all`, so only stale ones can make the map larger.
        if self.in_flight.len() > self.all.len() {
            self.in_flight.retain(|_, expiry| *expiry > cutoff);
        }
    }

    fn record(&mut self, at: u64, background: bool) {
        insert_sorted(&mut self.all, at);
        if background {
            insert_sorted(&mut self.background, at);
        }
    }

    fn remove(&mut self, at: u64, background: bool) {
        for (times, remove) in [(&mut self.all, true), (&mut self.background, background)] {
            if remove {
                let i = times.partition_point(|t| *t < at);
                if times.get(i) == Some(&at) {
                    times.remove(i);
                }
            }
        }
    }
}

fn insert_sorted(times: &mut VecDeque<u64>, at: u64) {
    // Usually the newest, or among the in-flight ones at the end.
    let i = times.partition_point(|t| *t <= at);
    times.insert(i, at);
}

struct Log<'a>(&'a State);

impl AdmissionLog for Log<'_> {
    type Error = Infallible;

    fn usage(&mut self, since: u64) -> Result<WindowUsage, Infallible> {
        let count = |times: &VecDeque<u64>| {
            let n = times.len() - times.partition_point(|at| *at <= since);
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        Ok(WindowUsage {
            total: count(&self.0.all),
            background: count(&self.0.background),
        })
    }

    fn kth_oldest(&mut self, since: u64, k: u32) -> Result<Option<u64>, Infallible> {
        let start = self.0.all.partition_point(|at| *at <= since);
        Ok(self
            .0
            .all
            .get(start + k.saturating_sub(1) as usize)
            .copied())
    }
}

impl MemoryRateLimitStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where [`stats`](RateLimitStore::stats) reads "now", to tell the admissions in flight
    /// and the resources blocked (default [`SystemClock`]): give it the layer's
    /// [`clock`](crate::rate_limit::RateLimitLayer::clock). Decisions read the request's clock.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::rate_limit::{MemoryRateLimitStore, TokioClock};
    ///
    /// let store = MemoryRateLimitStore::new().clock(TokioClock::new());
    /// # let _ = store;
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn with_state<R>(&self, resource: &Resource, f: impl FnOnce(&mut State) -> R) -> R {
        let mut map = self.resources.lock();
        if let Some(state) = map.get_mut(resource) {
            return f(state);
        }
        f(map.entry(resource.clone()).or_default())
    }

    /// Decides synchronously (the whole decision is one critical section, and its time is read
    /// inside it).
    pub(crate) fn acquire_now(&self, request: &AdmissionRequest) -> Decision {
        let bg = request.priority == Priority::Background;
        self.with_state(&request.resource, |state| {
            let at = request.clock.now();
            let now = at.as_millis();
            state.prune(&request.limits, now);
            let activity = state.activity(&request.adaptive, now);
            let Ok(mut decision) = decide(&mut Log(state), request, at, &activity, &state.server);
            match &mut decision {
                Decision::Admitted { in_flight, .. } => {
                    let stamp = request.stamp(at);
                    state.record(stamp.as_millis(), bg);
                    if request.in_flight.is_some() {
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        state.in_flight.insert(id, stamp.as_millis());
                        *in_flight = Some(InFlight::new(
                            request.resource.clone(),
                            request.priority,
                            id,
                            at,
                            stamp,
                        ));
                    }
                    state.activity.record(!bg, now);
                }
                Decision::Refused { .. } => {}
            }
            decision
        })
    }

    /// Re-stamps an in-flight admission (see [`RateLimitStore::settle`]).
    pub(crate) fn settle_now(&self, admission: &InFlight, at: Timestamp) {
        let bg = admission.priority == Priority::Background;
        self.with_state(&admission.resource, |state| {
            // Only the admission this store gave out: same id and expiry (an `InFlight` of
            // another store, or forged, settles nothing).
            let expiry = admission.expires_at.as_millis();
            if state.in_flight.get(&admission.id) != Some(&expiry) {
                return;
            }
            state.in_flight.remove(&admission.id);
            state.remove(expiry, bg);
            state.record(admission.settled_stamp(at).as_millis(), bg);
        });
    }
}

#[async_trait]
impl RateLimitStore for MemoryRateLimitStore {
    async fn acquire(&self, request: AdmissionRequest) -> Result<Decision, StoreError> {
        Ok(self.acquire_now(&request))
    }

    async fn settle(&self, admission: &InFlight, at: Timestamp) -> Result<(), StoreError> {
        self.settle_now(admission, at);
        Ok(())
    }

    async fn feedback(
        &self,
        resource: &Resource,
        feedback: ServerFeedback,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.with_state(resource, |state| state.server.apply(feedback, now));
        Ok(())
    }

    async fn status(
        &self,
        resource: &Resource,
        limits: &[Limit],
        adaptive: &AdaptiveConfig,
        now: Timestamp,
    ) -> Result<RateLimitStatus, StoreError> {
        let now_ms = now.as_millis();
        Ok(self.with_state(resource, |state| {
            state.prune(limits, now_ms);
            let activity = state.activity.activity(adaptive, now_ms);
            let Ok(status) = status_of(
                &mut Log(state),
                resource,
                limits,
                adaptive,
                &activity,
                &state.server,
                now,
            );
            status
        }))
    }

    /// Reads the map under its lock, on the store's [clock](MemoryRateLimitStore::clock).
    async fn stats(&self) -> Result<RateLimitStoreStats, StoreError> {
        let now = self.clock.now().as_millis();
        // Stamped after now (and a settlement's rounding): in flight (see `InFlight`).
        let live = now.saturating_add(SETTLE_ROUNDING_MS);
        let map = self.resources.lock();
        let mut stats = RateLimitStoreStats::default();
        for state in map.values() {
            let settled = state.all.partition_point(|at| *at <= live);
            stats.resources += 1;
            stats.admissions += state.all.len() as u64;
            stats.in_flight += (state.all.len() - settled) as u64;
            stats.blocked += u64::from(state.server.blocked_until > now);
        }
        Ok(stats)
    }

    async fn unblock(&self, resource: &Resource) -> Result<(), StoreError> {
        self.with_state(resource, |state| state.server = ServerState::default());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn admit(store: &MemoryRateLimitStore, now: u64, bound_s: u64) -> InFlight {
        let request = AdmissionRequest::new(
            Resource::new("x").unwrap(),
            Priority::User,
            vec![Limit::per_second(10)].into(),
            Arc::new(AdaptiveConfig::default()),
            Timestamp::from_millis(now),
        )
        .in_flight(Some(Duration::from_secs(bound_s)));
        match store.acquire_now(&request) {
            Decision::Admitted {
                in_flight: Some(in_flight),
                ..
            } => in_flight,
            other => panic!("{other:?}"),
        }
    }

    fn in_flight(store: &MemoryRateLimitStore, now: u64) -> u32 {
        store.with_state(&Resource::new("x").unwrap(), |state| {
            Log(state).usage(now + 1).unwrap().total
        })
    }

    /// `stats` reads "now" from the store's clock: an admission never settled stops being in
    /// flight at its expiry, and a block stops at its end.
    #[tokio::test]
    async fn stats_read_now_from_the_stores_clock() {
        let early = MemoryRateLimitStore::new().clock(Timestamp::from_millis(1_000));
        admit(&early, 1_000, 60);
        let late = MemoryRateLimitStore {
            clock: Arc::new(Timestamp::from_millis(61_001)),
            ..early.clone()
        };
        let until = Timestamp::from_millis(31_000);
        early
            .feedback(
                &Resource::new("y").unwrap(),
                ServerFeedback::Block { until },
                Timestamp::from_millis(1_000),
            )
            .await
            .unwrap();
        let counts = |s: RateLimitStoreStats| (s.resources, s.admissions, s.in_flight, s.blocked);
        assert_eq!(counts(early.stats().await.unwrap()), (2, 1, 1, 1));
        assert_eq!(counts(late.stats().await.unwrap()), (2, 1, 0, 0));
    }

    /// Only the store's own admission, by id and expiry, is settled: an `InFlight` of another
    /// store (same id, another expiry), or one settled before, changes nothing.
    #[test]
    fn only_its_own_in_flight_admission_is_settled() {
        let (a, b) = (MemoryRateLimitStore::new(), MemoryRateLimitStore::new());
        let of_a = admit(&a, 1_000, 60);
        let of_b = admit(&b, 1_000, 30);
        assert_eq!(of_a.id, of_b.id);
        b.settle_now(&of_a, Timestamp::from_millis(1_100));
        assert_eq!(in_flight(&b, 1_100), 1);
        b.settle_now(&of_b, Timestamp::from_millis(1_100));
        assert_eq!(in_flight(&b, 1_100), 0);
        // Settled twice: the second is nothing (not another admission's removal).
        let again = admit(&b, 1_200, 30);
        assert_eq!(
            again.expires_at,
            of_b.expires_at + Duration::from_millis(200)
        );
        b.settle_now(&of_b, Timestamp::from_millis(1_300));
        assert_eq!(in_flight(&b, 1_300), 1);
    }
}
