//! The adaptive split of a limit between users and background work.
//!
//! [`allocate`] is a pure function of (limit, [`Activity`], [`AdaptiveConfig`], now): it decides
//! how much of a limit is *reserved* for [`Priority::User`](crate::Priority::User) requests and
//! how much background work may take. The rules follow the reference's table (see the crate's
//! design notes), with these changes:
//!
//! * **A reservation, not a partition.** A user request is admitted while the total usage of the
//!   window is below the limit: users may take whatever background leaves idle. A background
//!   request is admitted while background usage is below [`Split::background_max`], the unused
//!   part of the user reservation stays free, and background is not paused.
//! * **No starvation after idle.** The user reservation never drops below
//!   [`AdaptiveConfig::min_user_reserved`], bounded by half the limit so that background work
//!   still gets a share of a small limit (a limit of 1 per second would otherwise be all users').
//!   After sustained inactivity background gets everything but that reserve; set
//!   `min_user_reserved(0)` to give it the whole limit.
//! * **Activity from the shared store.** User activity is counted by the store, so every process
//!   sees the users of every other process.
//! * **Whole numbers** that sum to at most the limit.

use std::time::Duration;

/// The knobs of the adaptive split. The defaults are the reference's.
///
/// # Example
///
/// ```
/// use courteous::rate_limit::AdaptiveConfig;
/// use std::time::Duration;
///
/// let config = AdaptiveConfig::default()
///     .monitoring_window(Duration::from_secs(300))
///     .min_user_reserved(10);
/// assert_eq!(config.high_activity_threshold, 10);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AdaptiveConfig {
    /// How far back user activity is counted (default 15 min).
    pub monitoring_window: Duration,
    /// User requests in the monitoring window that mean people are busy (default 10).
    pub high_activity_threshold: u32,
    /// User requests in the monitoring window that mean moderate activity (default 3; below the
    /// high threshold).
    pub moderate_activity_threshold: u32,
    /// No user request for this long gives background everything but the user reserve
    /// (default 30 min).
    pub sustained_inactivity: Duration,
    /// How long a store may reuse the activity it read for the split (default 30 s).
    pub recalculation_interval: Duration,
    /// Cap on the user multiplier (default 2.0).
    pub max_user_scaling: f64,
    /// The user reserve kept in quiet periods (default 5); never below this, bounded by half the
    /// limit.
    pub min_user_reserved: u32,
    /// Stop background work while user activity is high and rising (default true).
    pub pause_background_on_increasing_trend: bool,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            monitoring_window: Duration::from_secs(15 * 60),
            high_activity_threshold: 10,
            moderate_activity_threshold: 3,
            sustained_inactivity: Duration::from_secs(30 * 60),
            recalculation_interval: Duration::from_secs(30),
            max_user_scaling: 2.0,
            min_user_reserved: 5,
            pause_background_on_increasing_trend: true,
        }
    }
}

impl AdaptiveConfig {
    /// Sets [`monitoring_window`](Self::monitoring_window).
    #[must_use]
    pub fn monitoring_window(mut self, window: Duration) -> Self {
        self.monitoring_window = window;
        self
    }

    /// Sets the high and moderate activity thresholds.
    #[must_use]
    pub fn activity_thresholds(mut self, high: u32, moderate: u32) -> Self {
        self.high_activity_threshold = high;
        self.moderate_activity_threshold = moderate;
        self
    }

    /// Sets [`sustained_inactivity`](Self::sustained_inactivity).
    #[must_use]
    pub fn sustained_inactivity(mut self, after: Duration) -> Self {
        self.sustained_inactivity = after;
        self
    }

    /// Sets [`recalculation_interval`](Self::recalculation_interval).
    #[must_use]
    pub fn recalculation_interval(mut self, interval: Duration) -> Self {
        self.recalculation_interval = interval;
        self
    }

    /// Sets [`max_user_scaling`](Self::max_user_scaling).
    #[must_use]
    pub fn max_user_scaling(mut self, scaling: f64) -> Self {
        self.max_user_scaling = scaling;
        self
    }

    /// Sets [`min_user_reserved`](Self::min_user_reserved).
    #[must_use]
    pub fn min_user_reserved(mut self, reserved: u32) -> Self {
        self.min_user_reserved = reserved;
        self
    }

    /// Sets [`pause_background_on_increasing_trend`](Self::pause_background_on_increasing_trend).
    #[must_use]
    pub fn pause_background_on_increasing_trend(mut self, pause: bool) -> Self {
        self.pause_background_on_increasing_trend = pause;
        self
    }

    pub(crate) fn monitoring_ms(&self) -> u64 {
        u64::try_from(self.monitoring_window.as_millis())
            .unwrap_or(u64::MAX)
            .max(3)
    }
}

/// Recent user activity on a resource, as the store counted it across processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Activity {
    /// User requests in the monitoring window.
    pub user_requests: u32,
    /// User requests in the last third of the monitoring window.
    pub recent: u32,
    /// User requests in the third before it.
    pub previous: u32,
    /// Milliseconds since the epoch of the last user request ever recorded, if any.
    pub last_user_at: Option<u64>,
    /// Whether any request (of either priority) was ever recorded for the resource.
    pub any_request: bool,
}

impl Activity {
    /// Activity with these numbers.
    pub fn new(
        user_requests: u32,
        recent: u32,
        previous: u32,
        last_user_at: Option<u64>,
        any_request: bool,
    ) -> Self {
        Activity {
            user_requests,
            recent,
            previous,
            last_user_at,
            any_request,
        }
    }

    /// Whether user activity is rising, falling or steady.
    pub fn trend(&self) -> Trend {
        let (recent, previous) = (f64::from(self.recent), f64::from(self.previous));
        if self.recent == 0 && self.previous == 0 {
            Trend::None
        } else if recent > 1.5 * previous {
            Trend::Increasing
        } else if recent < 0.5 * previous {
            Trend::Decreasing
        } else {
            Trend::Stable
        }
    }
}

/// The direction of user activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trend {
    /// No user requests in the last two thirds of the monitoring window.
    None,
    /// The last third saw more than 1.5 times the third before.
    Increasing,
    /// The last third saw less than half the third before.
    Decreasing,
    /// Neither.
    Stable,
}

/// How one limit is shared between users and background work.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Split {
    /// Admissions reserved for user requests in the window (background may not use them).
    pub user_reserved: u32,
    /// The most background admissions in the window.
    pub background_max: u32,
    /// Whether background requests must wait regardless.
    pub background_paused: bool,
    /// Why, in words.
    pub reason: String,
}

/// Splits a limit of `limit` admissions between users and background work.
///
/// A pure function: the same inputs always give the same split. See the [module docs](self).
///
/// # Example
///
/// ```
/// use courteous::rate_limit::{Activity, AdaptiveConfig, allocate};
///
/// let config = AdaptiveConfig::default();
/// let busy = Activity::new(12, 6, 2, Some(1_000), true);
/// let split = allocate(200, &busy, &config, 2_000);
/// assert_eq!((split.user_reserved, split.background_max), (180, 20));
/// assert!(split.background_paused, "{}", split.reason);
/// ```
pub fn allocate(limit: u32, activity: &Activity, config: &AdaptiveConfig, now_ms: u64) -> Split {
    let l = f64::from(limit);
    let a = activity.user_requests;
    let trend = activity.trend();
    let floor = |x: f64| -> u32 {
        if x.is_finite() && x > 0.0 {
            x.floor().min(f64::from(u32::MAX)) as u32
        } else {
            0
        }
    };
    let scaling = if config.max_user_scaling.is_finite() {
        config.max_user_scaling.max(1.0)
    } else {
        1.0
    };
    let min_reserve = config.min_user_reserved.min(limit / 2);
    let low = floor(0.3 * l).max(min_reserve);
    let (user, paused, reason) = if a >= config.high_activity_threshold.max(1) {
        let paused = trend == Trend::Increasing && config.pause_background_on_increasing_trend;
        let user = floor(0.9 * l).min(floor(0.5 * l * scaling));
        let reason = if paused {
            format!(
                "high user activity ({a} requests in the monitoring window) and rising: background paused"
            )
        } else {
            format!(
                "high user activity ({a} requests in the monitoring window): prioritising users"
            )
        };
        (user, paused, reason)
    } else if a >= config.moderate_activity_threshold.max(1) {
        let factor = match trend {
            Trend::Increasing => 1.2,
            Trend::Decreasing => 0.8,
            Trend::None | Trend::Stable => 1.0,
        };
        let high = f64::from(config.high_activity_threshold.max(1));
        let multiplier = (1.0 + f64::from(a) / high).clamp(1.0, scaling) * factor;
        let user = floor(0.7 * l).min(floor(f64::from(floor(0.4 * l)) * multiplier));
        (
            user,
            false,
            format!("moderate user activity ({a} requests): dynamic scaling (x{multiplier:.2})"),
        )
    } else if a == 0 {
        match activity.last_user_at {
            _ if !activity.any_request => (low, false, "initial state".to_owned()),
            None => (
                min_reserve,
                false,
                "no user activity yet: background scales up".to_owned(),
            ),
            Some(last)
                if now_ms.saturating_sub(last)
                    >= u64::try_from(config.sustained_inactivity.as_millis())
                        .unwrap_or(u64::MAX) =>
            {
                (
                    min_reserve,
                    false,
                    "sustained user inactivity: all capacity but the user reserve to background"
                        .to_owned(),
                )
            }
            Some(_) => (
                min_reserve,
                false,
                "recent user inactivity: background scales up".to_owned(),
            ),
        }
    } else {
        (
            low,
            false,
            format!("low user activity ({a} requests): background scales up"),
        )
    };
    let user = user.clamp(min_reserve, limit);
    Split {
        user_reserved: user,
        background_max: limit - user,
        background_paused: paused,
        reason,
    }
}

/// Counts in one limit's window, by priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct WindowUsage {
    pub(crate) total: u32,
    pub(crate) background: u32,
}

/// Why a request may not go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Admit,
    /// The window must lose this many of its oldest admissions first.
    Full(u32),
    /// Background is paused; try again later.
    Paused,
}

/// The admission rule for one limit (see the module docs): users up to the limit, background up
/// to its share while leaving the unused user reservation free.
pub(crate) fn check(user: bool, limit: u32, usage: WindowUsage, split: Option<&Split>) -> Check {
    let total = usage.total;
    if user || split.is_none() {
        return if total < limit {
            Check::Admit
        } else {
            Check::Full(total - limit + 1)
        };
    }
    let split = split.expect("checked above");
    if split.background_paused {
        return Check::Paused;
    }
    let users = total.saturating_sub(usage.background);
    let unused_reserve = split.user_reserved.saturating_sub(users);
    let over_share = (usage.background + 1).saturating_sub(split.background_max);
    let over_total = (total + unused_reserve + 1).saturating_sub(limit);
    match over_share.max(over_total) {
        0 => Check::Admit,
        n => Check::Full(n),
    }
}

/// Per-second counts of user requests over the monitoring window, for a memory store.
#[derive(Debug, Default)]
pub(crate) struct ActivityLog {
    buckets: std::collections::VecDeque<(u64, u32)>,
    last_user_at: Option<u64>,
    any_request: bool,
}

impl ActivityLog {
    pub(crate) fn record(&mut self, user: bool, now_ms: u64) {
        self.any_request = true;
        if !user {
            return;
        }
        self.last_user_at = Some(self.last_user_at.map_or(now_ms, |t| t.max(now_ms)));
        let second = now_ms / 1000;
        match self.buckets.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.buckets.push_back((second, 1)),
        }
    }

    pub(crate) fn activity(&mut self, config: &AdaptiveConfig, now_ms: u64) -> Activity {
        let window = config.monitoring_ms();
        let start = now_ms.saturating_sub(window);
        while self.buckets.front().is_some_and(|(s, _)| s * 1000 < start) {
            self.buckets.pop_front();
        }
        activity_from_buckets(
            self.buckets.iter().copied(),
            config,
            now_ms,
            self.last_user_at,
            self.any_request,
        )
    }
}

/// Sums per-second user buckets into an [`Activity`].
pub(crate) fn activity_from_buckets(
    buckets: impl Iterator<Item = (u64, u32)>,
    config: &AdaptiveConfig,
    now_ms: u64,
    last_user_at: Option<u64>,
    any_request: bool,
) -> Activity {
    let window = config.monitoring_ms();
    let start = now_ms.saturating_sub(window);
    let third = window / 3;
    let recent_start = now_ms.saturating_sub(third);
    let previous_start = now_ms.saturating_sub(2 * third);
    let mut activity = Activity {
        last_user_at,
        any_request,
        ..Activity::default()
    };
    for (second, n) in buckets {
        let at = second * 1000;
        if at < start || at > now_ms {
            continue;
        }
        activity.user_requests += n;
        if at >= recent_start {
            activity.recent += n;
        } else if at >= previous_start {
            activity.previous += n;
        }
    }
    activity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_leaves_the_unused_user_reserve_free() {
        let split = Split {
            user_reserved: 5,
            background_max: 15,
            background_paused: false,
            reason: String::new(),
        };
        let usage = |total, background| WindowUsage { total, background };
        // 14 background, 0 users: 14 + 5 reserved + 1 > 20 would overshoot? 14+5+1 = 20: fits.
        assert_eq!(check(false, 20, usage(14, 14), Some(&split)), Check::Admit);
        assert_eq!(
            check(false, 20, usage(15, 15), Some(&split)),
            Check::Full(1)
        );
        // Users used their reserve: background still capped by its share.
        assert_eq!(
            check(false, 20, usage(20, 15), Some(&split)),
            Check::Full(1)
        );
        // Users may take what background leaves idle.
        assert_eq!(check(true, 20, usage(19, 2), Some(&split)), Check::Admit);
        assert_eq!(check(true, 20, usage(20, 2), Some(&split)), Check::Full(1));
    }
}
