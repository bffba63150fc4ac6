//! The SQLite store: the window invariant under random schedules. (Real processes sharing one
//! file are in `processes`, a suite shared with Redis.)

use std::time::Duration;

use courteous::rate_limit::{Limit, SqliteRateLimitStore};
use courteous::store::sqlite::SqliteStore;
use proptest::prelude::*;

use crate::window::{check_invariants, run_schedule};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn sqlite_store_never_exceeds_a_window_and_refuses_only_when_full(
        max in 1u32..8,
        window_ms in 1u64..2000,
        arrivals in prop::collection::vec((0u64..300, any::<bool>()), 1..120),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let limits = [Limit::new(max, Duration::from_millis(window_ms))];
        let decisions = runtime.block_on(async {
            let sqlite = SqliteStore::open(":memory:").await.unwrap();
            let store: SqliteRateLimitStore = sqlite.rate_limits();
            let decisions = run_schedule(&store, &limits, &arrivals).await;
            sqlite.close().await.unwrap();
            decisions
        });
        check_invariants(&limits, &decisions);
    }
}

/// A rolling deploy shortens a limit from an hour to a minute: the process with the minute does
/// not prune the admissions that the process still on the hour counts, and once nobody has
/// counted in the hour for an hour, it prunes to its minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_a_shorter_window_keeps_what_a_longer_window_still_counts() {
    use courteous::rate_limit::{
        AdaptiveConfig, AdmissionRequest, Decision, RateLimitStore, Refusal, Timestamp,
    };
    use courteous::{Priority, Resource};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy.db");
    let (old_file, new_file) = (
        SqliteStore::open(&path).await.unwrap(),
        SqliteStore::open(&path).await.unwrap(),
    );
    let (old, new) = (old_file.rate_limits(), new_file.rate_limits());
    let resource = Resource::new("deploy").unwrap();
    let hour: Arc<[Limit]> = vec![Limit::per_hour(3)].into();
    let minute: Arc<[Limit]> = vec![Limit::per_minute(100)].into();
    let adaptive = Arc::new(AdaptiveConfig::default());
    let t0 = 1_700_000_000_000u64;
    let at = |limits: &Arc<[Limit]>, minutes: u64| {
        AdmissionRequest::new(
            resource.clone(),
            Priority::User,
            limits.clone(),
            adaptive.clone(),
            Timestamp::from_millis(t0 + minutes * 60_000),
        )
    };
    let admitted = |d: Decision| assert!(matches!(d, Decision::Admitted { .. }), "{d:?}");
    // The old process admits twice (its second call prunes, noting its hour).
    admitted(old.acquire(at(&hour, 0)).await.unwrap());
    admitted(old.acquire(at(&hour, 1)).await.unwrap());
    old_file.flush().await.unwrap();
    // The new process admits twice (its second call prunes, with its minute).
    admitted(new.acquire(at(&minute, 2)).await.unwrap());
    admitted(new.acquire(at(&minute, 3)).await.unwrap());
    new_file.flush().await.unwrap();
    // The hour holds four admissions: the old process is over its limit of 3.
    match old.acquire(at(&hour, 4)).await.unwrap() {
        Decision::Refused { retry_at, reason } => {
            assert_eq!(reason, Refusal::Limit);
            assert_eq!(retry_at, Timestamp::from_millis(t0 + 60_000 + 3_600_001));
        }
        other => panic!("the new process pruned what the hour counts: {other:?}"),
    }
    old_file.flush().await.unwrap();
    // The old process last noted its hour at minute 4: at minute 70 the mark has lapsed.
    admitted(new.acquire(at(&minute, 70)).await.unwrap());
    new_file.flush().await.unwrap();
    let rows: i64 = new_file
        .call(|conn| {
            Ok(conn.query_row(
                "SELECT count(*) FROM rate_limit_admissions WHERE resource = 'deploy'",
                [],
                |row| row.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(
        rows, 1,
        "once the hour is no longer counted, the minute prunes"
    );
    old_file.close().await.unwrap();
    new_file.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Two stores on one file (separate connections and separate in-memory copies of the
    /// admissions, as two processes have), asked in a random order with stamps that lag behind
    /// by up to 3 s (requests that waited before their decision): the window invariant holds over
    /// the stamps, and a user request is refused only when the admissions decided before it
    /// fill some window (counted, as the store does, from `now - window` with no upper bound).
    #[test]
    fn two_processes_with_copies_stay_exact_under_random_interleavings(
        max in 1u32..8,
        window_ms in 1u64..3000,
        arrivals in prop::collection::vec(
            (0u64..300, 0u64..3000, any::<bool>(), any::<bool>()),
            1..150,
        ),
    ) {
        use courteous::rate_limit::{AdaptiveConfig, AdmissionRequest, Decision, RateLimitStore, Timestamp};
        use courteous::{Priority, Resource};
        use std::sync::Arc;

        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let limit = Limit::new(max, Duration::from_millis(window_ms));
        let decisions = runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("two.db");
            let files = [SqliteStore::open(&path).await.unwrap(), SqliteStore::open(&path).await.unwrap()];
            let stores = [files[0].rate_limits(), files[1].rate_limits()];
            let limits: Arc<[Limit]> = vec![limit].into();
            let adaptive = Arc::new(AdaptiveConfig::default());
            let resource = Resource::new("things").unwrap();
            let mut clock = 1_700_000_000_000u64;
            let mut out = Vec::new();
            for (gap, lag, background, second) in &arrivals {
                clock += gap;
                let now = clock - lag;
                let priority = if *background { Priority::Background } else { Priority::User };
                let request = AdmissionRequest::new(
                    resource.clone(), priority, limits.clone(), adaptive.clone(),
                    Timestamp::from_millis(now),
                );
                let decision = stores[usize::from(*second)].acquire(request).await.unwrap();
                out.push((now, *background, matches!(decision, Decision::Admitted { .. })));
            }
            for file in files {
                file.close().await.unwrap();
            }
            out
        });
        let window = window_ms;
        let admitted: Vec<u64> = decisions.iter().filter(|d| d.2).map(|d| d.0).collect();
        let mut sorted = admitted.clone();
        sorted.sort_unstable();
        for (i, start) in sorted.iter().enumerate() {
            let inside = sorted[i..].iter().take_while(|t| **t < start + window).count();
            prop_assert!(inside <= max as usize, "{} admissions in [{}, +{})", inside, start, window);
        }
        let mut before = Vec::new();
        for (now, background, admitted) in &decisions {
            if !admitted && !background {
                let counted = before.iter().filter(|t| **t > now.saturating_sub(window)).count();
                prop_assert!(counted >= max as usize, "user request at {} refused with {} counted", now, counted);
            }
            if *admitted {
                before.push(*now);
            }
        }
    }
}
