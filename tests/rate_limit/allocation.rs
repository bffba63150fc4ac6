//! The adaptive split as a table of cases.

use std::time::Duration;

use courteous::rate_limit::{Activity, AdaptiveConfig, Trend, allocate};

const MIN: u64 = 60_000;
const NOW: u64 = 10_000 * MIN;

struct Case {
    limit: u32,
    /// user requests in W, recent third, previous third
    a: (u32, u32, u32),
    last_user_min_ago: Option<u64>,
    any: bool,
    user: u32,
    background: u32,
    paused: bool,
    reason: &'static str,
}

#[test]
fn the_split_follows_the_table() {
    let config = AdaptiveConfig::default();
    #[rustfmt::skip]
    let cases = [
        // High activity, rising: users get min(0.9 L, 0.5 L x 2) and background pauses.
        Case { limit: 200, a: (12, 8, 2), last_user_min_ago: Some(0), any: true, user: 180, background: 20, paused: true, reason: "high user activity" },
        // High activity, stable: same split, background not paused.
        Case { limit: 200, a: (12, 4, 4), last_user_min_ago: Some(0), any: true, user: 180, background: 20, paused: false, reason: "high user activity" },
        // Moderate, stable: 0.4 L x (1 + 5/10) = 120.
        Case { limit: 200, a: (5, 2, 2), last_user_min_ago: Some(1), any: true, user: 120, background: 80, paused: false, reason: "moderate" },
        // Moderate, rising: 80 x 1.6 x 1.2 = 153.6, capped at 0.7 L = 140.
        Case { limit: 200, a: (6, 4, 1), last_user_min_ago: Some(1), any: true, user: 140, background: 60, paused: false, reason: "moderate" },
        // Moderate, falling: 80 x 1.3 x 0.8 = 83.2 -> 83.
        Case { limit: 200, a: (3, 0, 3), last_user_min_ago: Some(6), any: true, user: 83, background: 117, paused: false, reason: "moderate" },
        // Low activity: max(0.3 L, 5).
        Case { limit: 200, a: (1, 1, 0), last_user_min_ago: Some(1), any: true, user: 60, background: 140, paused: false, reason: "low user activity" },
        // Nothing ever: initial state.
        Case { limit: 200, a: (0, 0, 0), last_user_min_ago: None, any: false, user: 60, background: 140, paused: false, reason: "initial state" },
        // Background only so far: the minimum reserve.
        Case { limit: 200, a: (0, 0, 0), last_user_min_ago: None, any: true, user: 5, background: 195, paused: false, reason: "no user activity yet" },
        // Recently idle.
        Case { limit: 200, a: (0, 0, 0), last_user_min_ago: Some(20), any: true, user: 5, background: 195, paused: false, reason: "recent user inactivity" },
        // Long idle: the reference gave users 0 (defect 9); we keep the minimum reserve.
        Case { limit: 200, a: (0, 0, 0), last_user_min_ago: Some(45), any: true, user: 5, background: 195, paused: false, reason: "sustained user inactivity" },
        // A small limit: the reserve is bounded by half the limit, so background keeps a share.
        Case { limit: 4, a: (0, 0, 0), last_user_min_ago: Some(45), any: true, user: 2, background: 2, paused: false, reason: "sustained" },
        Case { limit: 1, a: (0, 0, 0), last_user_min_ago: None, any: true, user: 0, background: 1, paused: false, reason: "no user activity yet" },
        // Whole numbers that sum to the limit, for an odd limit.
        Case { limit: 7, a: (12, 4, 4), last_user_min_ago: Some(0), any: true, user: 6, background: 1, paused: false, reason: "high" },
    ];
    for (i, c) in cases.iter().enumerate() {
        let activity = Activity::new(
            c.a.0,
            c.a.1,
            c.a.2,
            c.last_user_min_ago.map(|m| NOW - m * MIN),
            c.any,
        );
        let split = allocate(c.limit, &activity, &config, NOW);
        assert_eq!(
            (
                split.user_reserved,
                split.background_max,
                split.background_paused
            ),
            (c.user, c.background, c.paused),
            "case {i}: {}",
            split.reason
        );
        assert!(
            split.reason.contains(c.reason),
            "case {i}: {}",
            split.reason
        );
        assert!(split.user_reserved + split.background_max <= c.limit);
    }
}

#[test]
fn trend_thresholds() {
    let t =
        |recent, previous| Activity::new(recent + previous, recent, previous, None, true).trend();
    assert_eq!(t(0, 0), Trend::None);
    assert_eq!(t(4, 2), Trend::Increasing);
    assert_eq!(t(3, 2), Trend::Stable);
    assert_eq!(t(0, 2), Trend::Decreasing);
}

#[test]
fn a_zero_minimum_gives_background_everything_after_sustained_inactivity() {
    let config = AdaptiveConfig::default().min_user_reserved(0);
    let idle = Activity::new(0, 0, 0, Some(NOW - 45 * MIN), true);
    let split = allocate(200, &idle, &config, NOW);
    assert_eq!((split.user_reserved, split.background_max), (0, 200));
    // The pause can be switched off.
    let config = AdaptiveConfig::default().pause_background_on_increasing_trend(false);
    let busy = Activity::new(12, 8, 2, Some(NOW), true);
    assert!(!allocate(200, &busy, &config, NOW).background_paused);
    let _ = Duration::ZERO;
}
