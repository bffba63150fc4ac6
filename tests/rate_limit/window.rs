//! The sliding-window invariant, under random arrival schedules (store level, injected time).

use std::sync::Arc;
use std::time::Duration;

use courteous::rate_limit::{
    AdaptiveConfig, AdmissionRequest, Decision, Limit, MemoryRateLimitStore, RateLimitStore,
    Timestamp,
};
use courteous::{Priority, Resource};
use proptest::prelude::*;

/// Arrivals: (gap in ms since the previous one, background?).
fn schedule() -> impl Strategy<Value = Vec<(u64, bool)>> {
    prop::collection::vec((0u64..400, any::<bool>()), 1..300)
}

fn limits() -> impl Strategy<Value = Vec<Limit>> {
    prop::collection::vec(
        (1u32..12, 1u64..3000).prop_map(|(max, ms)| Limit::new(max, Duration::from_millis(ms))),
        1..3,
    )
}

pub(crate) async fn run_schedule(
    store: &dyn RateLimitStore,
    limits: &[Limit],
    arrivals: &[(u64, bool)],
) -> Vec<(u64, bool, Decision)> {
    let limits: Arc<[Limit]> = limits.into();
    let adaptive = Arc::new(AdaptiveConfig::default());
    let resource = Resource::new("things").unwrap();
    let mut now = 1_700_000_000_000;
    let mut out = Vec::new();
    for (gap, background) in arrivals {
        now += gap;
        let priority = if *background {
            Priority::Background
        } else {
            Priority::User
        };
        let request = AdmissionRequest::new(
            resource.clone(),
            priority,
            limits.clone(),
            adaptive.clone(),
            Timestamp::from_millis(now),
        );
        let decision = store.acquire(request).await.unwrap();
        out.push((now, *background, decision));
    }
    out
}

/// Never more than `max` admissions in any interval of length `window`; and a user request is
/// refused only when some limit's window really is full (the limiter is exact, not just safe).
pub(crate) fn check_invariants(limits: &[Limit], decisions: &[(u64, bool, Decision)]) {
    let admitted: Vec<u64> = decisions
        .iter()
        .filter(|(_, _, d)| matches!(d, Decision::Admitted { .. }))
        .map(|(t, _, _)| *t)
        .collect();
    for limit in limits {
        let window = limit.window().as_millis() as u64;
        for (i, start) in admitted.iter().enumerate() {
            let inside = admitted[i..]
                .iter()
                .take_while(|t| **t < start + window)
                .count();
            assert!(
                inside <= limit.max() as usize,
                "{inside} admissions in [{start}, +{window}) over a limit of {}",
                limit.max()
            );
        }
    }
    for (t, background, decision) in decisions {
        if *background || !matches!(decision, Decision::Refused { .. }) {
            continue;
        }
        let full = limits.iter().any(|limit| {
            let window = limit.window().as_millis() as u64;
            let inside = admitted
                .iter()
                .filter(|a| **a > t.saturating_sub(window) && **a <= *t)
                .count();
            inside >= limit.max() as usize
        });
        assert!(
            full,
            "user request at {t} refused with room in every window"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn memory_store_never_exceeds_a_window_and_refuses_only_when_full(
        limits in limits(),
        arrivals in schedule(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let store = MemoryRateLimitStore::new();
        let decisions = runtime.block_on(run_schedule(&store, &limits, &arrivals));
        check_invariants(&limits, &decisions);
    }
}
