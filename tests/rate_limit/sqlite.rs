//! The SQLite store: the window invariant under random schedules. (Real processes sharing one
//! file are in `processes`, a suite shared with Redis.)

use std::num::NonZeroU32;
use std::time::Duration;

use courteous::rate_limit::{Limit, SqliteRateLimitStore};
use courteous::store::sqlite::SqliteStore;
use proptest::prelude::*;

use crate::window::{check_invariants, run_schedule};

fn n(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn sqlite_store_never_exceeds_a_window_and_refuses_only_when_full(
        max in 1u32..8,
        window_ms in 1u64..2000,
        arrivals in prop::collection::vec((0u64..300, any::<bool>()), 1..120),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let limits = [Limit::new(n(max), Duration::from_millis(window_ms))];
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
