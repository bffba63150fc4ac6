//! What the store holds ([`RateLimitStore::stats`](crate::rate_limit::RateLimitStore::stats)):
//! a `SCAN` of the prefix for the resources' state hashes, then one script per resource.

use std::collections::HashSet;

use super::RedisRateLimitStore;
use super::reply::unexpected;
use super::scripts::STATS;
use crate::rate_limit::stats::RateLimitStoreStats;
use crate::store::redis::{RedisError, glob_escape};
use crate::time::{Clock, SystemClock};

impl RedisRateLimitStore {
    /// [`RateLimitStore::stats`](crate::rate_limit::RateLimitStore::stats) on Redis.
    pub(super) async fn read_stats(&self) -> Result<RateLimitStoreStats, RedisError> {
        const OP: &str = "rate-limit stats";
        // `p:rl:{r}:state`, whatever `r` holds (the prefix's glob characters escaped).
        let pattern = format!("{}*}}:state", glob_escape(&self.redis.key("rl:{")));
        // With the caller's clock, the times in the keys are callers' wall clocks.
        let now = self.now_arg(SystemClock.now());
        let mut stats = RateLimitStoreStats::default();
        // `SCAN` may return a key more than once.
        let mut seen = HashSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, states) = self
                .redis
                .scan("rate-limit stats scan", &pattern, cursor)
                .await?;
            let reads = states
                .into_iter()
                .filter(|state| seen.insert(state.clone()))
                .filter_map(|state| {
                    let all = format!("{}:all", state.strip_suffix(":state")?);
                    let mut invocation = STATS.prepare_invoke();
                    invocation.key(all).key(state).arg(&now);
                    Some(async move { self.redis.script::<Vec<i64>>(OP, invocation).await })
                });
            for reply in futures_util::future::join_all(reads).await {
                let reply = reply?;
                let &[admissions, in_flight, blocked] = &reply[..] else {
                    return Err(unexpected(OP, format!("{reply:?}")));
                };
                let n = |v: i64| u64::try_from(v).unwrap_or(0);
                stats.resources += 1;
                stats.admissions += n(admissions);
                stats.in_flight += n(in_flight);
                stats.blocked += n(blocked);
            }
            cursor = next;
            if cursor == 0 {
                return Ok(stats);
            }
        }
    }
}
