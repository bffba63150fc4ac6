//! The in-process store.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    AdmissionLog, AdmissionRequest, Decision, RateLimitStats, RateLimitStatus, RateLimitStore,
    ResourceStats, ServerFeedback, ServerState, decide, retention, status_of,
};
use crate::context::Priority;
use crate::rate_limit::adaptive::{Activity, ActivityLog, AdaptiveConfig, WindowUsage};
use crate::rate_limit::clock::Timestamp;
use crate::rate_limit::limit::Limit;
use crate::resource::Resource;
use crate::store::StoreError;

/// Admissions counted in this process, behind one lock.
///
/// Shared by every clone of the layers built over it (clone the store, or wrap it in an `Arc`).
/// Each resource keeps the admissions of its longest window (at most that limit's `max`; while a
/// server's `RateLimit-Remaining` budget applies, those since it was observed) and per-second user
/// counts over the monitoring window: memory stays bounded per resource.
///
/// # Example
///
/// ```
/// use courteous::rate_limit::{Limit, Limits, MemoryRateLimitStore, RateLimitLayer};
/// use std::num::NonZeroU32;
///
/// let store = MemoryRateLimitStore::new();
/// let limits = Limits::new().default_limit(Limit::per_second(NonZeroU32::new(5).unwrap()));
/// let layer = RateLimitLayer::new(store.clone(), limits).unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryRateLimitStore {
    resources: Arc<Mutex<HashMap<Resource, State>>>,
}

#[derive(Debug, Default)]
struct State {
    /// (admitted at, background admissions pushed up to and including this one, background), in
    /// order.
    log: VecDeque<(u64, u64, bool)>,
    background_pushed: u64,
    activity: ActivityLog,
    cached: Option<(u64, Activity)>,
    server: ServerState,
    stats: ResourceStats,
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
        while self.log.front().is_some_and(|(at, _, _)| *at <= cutoff) {
            self.log.pop_front();
        }
    }
}

struct Log<'a>(&'a VecDeque<(u64, u64, bool)>, u64);

impl AdmissionLog for Log<'_> {
    type Error = Infallible;

    fn usage(&mut self, since: u64) -> Result<WindowUsage, Infallible> {
        let start = self.0.partition_point(|(at, _, _)| *at <= since);
        let total = self.0.len() - start;
        // Background admissions pushed before the window starts.
        let before = self
            .0
            .get(start)
            .map_or(self.1, |(_, cum, bg)| cum - u64::from(*bg));
        Ok(WindowUsage {
            total: u32::try_from(total).unwrap_or(u32::MAX),
            background: u32::try_from(self.1 - before).unwrap_or(u32::MAX),
        })
    }

    fn kth_oldest(&mut self, since: u64, k: u32) -> Result<Option<u64>, Infallible> {
        let start = self.0.partition_point(|(at, _, _)| *at <= since);
        Ok(self
            .0
            .get(start + k.saturating_sub(1) as usize)
            .map(|(at, _, _)| *at))
    }
}

impl MemoryRateLimitStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_state<R>(&self, resource: &Resource, f: impl FnOnce(&mut State) -> R) -> R {
        let mut map = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = map.get_mut(resource) {
            return f(state);
        }
        f(map.entry(resource.clone()).or_default())
    }

    /// Decides synchronously (the whole decision is one critical section).
    pub(crate) fn acquire_now(&self, request: &AdmissionRequest) -> Decision {
        let now = request.now.as_millis();
        let bg = request.priority == Priority::Background;
        self.with_state(&request.resource, |state| {
            state.prune(&request.limits, now);
            let activity = state.activity(&request.adaptive, now);
            let mut log = Log(&state.log, state.background_pushed);
            let Ok(decision) = decide(&mut log, request, &activity, &state.server);
            match decision {
                Decision::Admitted { .. } => {
                    // Out-of-order clocks: record no earlier than the newest entry, which only
                    // keeps the admission counted longer.
                    let at = state.log.back().map_or(now, |(last, _, _)| now.max(*last));
                    state.background_pushed += u64::from(bg);
                    state.log.push_back((at, state.background_pushed, bg));
                    state.activity.record(!bg, now);
                    if bg {
                        state.stats.admitted_background += 1;
                    } else {
                        state.stats.admitted_user += 1;
                    }
                }
                Decision::Refused { .. } => state.stats.refused += 1,
            }
            decision
        })
    }
}

#[async_trait]
impl RateLimitStore for MemoryRateLimitStore {
    async fn acquire(&self, request: AdmissionRequest) -> Result<Decision, StoreError> {
        Ok(self.acquire_now(&request))
    }

    async fn feedback(
        &self,
        resource: &Resource,
        feedback: ServerFeedback,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.with_state(resource, |state| {
            if matches!(feedback, ServerFeedback::Block { .. }) {
                state.stats.server_blocks += 1;
            }
            state.server.apply(feedback, now);
        });
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
            let mut log = Log(&state.log, state.background_pushed);
            let Ok(status) = status_of(
                &mut log,
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

    fn stats(&self) -> RateLimitStats {
        let map = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        RateLimitStats {
            resources: map
                .iter()
                .map(|(r, s)| (r.as_str().to_owned(), s.stats))
                .collect(),
        }
    }

    async fn unblock(&self, resource: &Resource) -> Result<(), StoreError> {
        self.with_state(resource, |state| state.server = ServerState::default());
        Ok(())
    }
}
