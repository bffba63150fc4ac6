//! A resource's status: its counts read by one script, answered in the caller's time line.

use std::convert::Infallible;

use super::RedisRateLimitStore;
use super::clock::to_caller;
use super::reply::{time, unexpected};
use super::scripts::{ACTIVITY, STATUS, capped};
use crate::rate_limit::adaptive::{AdaptiveConfig, WindowUsage, activity_from_buckets};
use crate::rate_limit::limit::Limit;
use crate::rate_limit::store::{AdmissionLog, RateLimitStatus, ServerState, status_of};
use crate::resource::Resource;
use crate::store::StoreError;
use crate::time::Timestamp;

/// The counts the status script read, answered as an [`AdmissionLog`] (in the caller's frame).
struct Prefetched {
    /// (since, usage, oldest admission after since)
    windows: Vec<(u64, WindowUsage, Option<u64>)>,
}

impl AdmissionLog for Prefetched {
    type Error = Infallible;

    fn usage(&mut self, since: u64) -> Result<WindowUsage, Infallible> {
        Ok(self
            .windows
            .iter()
            .find(|(s, _, _)| *s == since)
            .map(|(_, u, _)| *u)
            .unwrap_or_default())
    }

    /// The oldest only: all that `status_of` asks for.
    fn kth_oldest(&mut self, since: u64, k: u32) -> Result<Option<u64>, Infallible> {
        debug_assert_eq!(k, 1, "the status script reads only the oldest admission");
        Ok(self
            .windows
            .iter()
            .find(|(s, _, _)| *s == since)
            .and_then(|(_, _, t)| *t))
    }
}

impl RedisRateLimitStore {
    /// [`RateLimitStore::status`](crate::rate_limit::store::RateLimitStore::status) on Redis.
    pub(super) async fn read_status(
        &self,
        resource: &Resource,
        limits: &[Limit],
        adaptive: &AdaptiveConfig,
        now: Timestamp,
    ) -> Result<RateLimitStatus, StoreError> {
        const OP: &str = "rate-limit status";
        let keys = self.keys(resource);
        let mut invocation = STATUS.prepare_invoke();
        invocation
            .key(&keys.all)
            .key(&keys.bg)
            .key(&keys.state)
            .arg(self.now_arg(now))
            .arg(limits.len());
        for limit in limits {
            invocation.arg(capped(limit.window_ms()));
        }
        let reply: Vec<Vec<i64>> = self.redis.script(OP, invocation).await?;
        let bad = || unexpected(OP, format!("{reply:?}"));
        let Some(
            [
                store_now,
                blocked,
                left,
                observed,
                reset,
                used,
                live,
                live_bg,
            ],
        ) = reply.first().map(|h| &h[..])
        else {
            return Err(bad().into());
        };
        if reply.len() != limits.len() + 1 || reply[1..].iter().any(|w| w.len() != 3) {
            return Err(bad().into());
        }
        // Saturating: the times come from the server.
        let caller_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
        let offset = store_now.saturating_sub(caller_ms);
        let caller = |t: i64| to_caller(time(t), offset);
        // Everything in the caller's frame, so that `status_of` reports the caller's times.
        let server = ServerState {
            blocked_until: caller(*blocked),
            budget: (*left >= 0 && *observed >= 0 && *reset >= 0).then(|| {
                (
                    u32::try_from(*left).unwrap_or(u32::MAX),
                    caller(*observed),
                    caller(*reset),
                )
            }),
        };
        let now_ms = now.as_millis();
        let mut log = Prefetched {
            windows: limits
                .iter()
                .zip(&reply[1..])
                .map(|(limit, w)| {
                    (
                        now_ms.saturating_sub(limit.window_ms()),
                        WindowUsage {
                            total: u32::try_from(w[0]).unwrap_or(u32::MAX),
                            background: u32::try_from(w[1]).unwrap_or(u32::MAX),
                        },
                        (w[2] >= 0).then(|| caller(w[2])),
                    )
                })
                .collect(),
        };
        // Stamped after now and a settlement's rounding: in flight (what `status_of` reports as
        // such).
        log.windows.push((
            now_ms.saturating_add(crate::rate_limit::store::SETTLE_ROUNDING_MS),
            WindowUsage {
                total: u32::try_from((*live).max(0)).unwrap_or(u32::MAX),
                background: u32::try_from((*live_bg).max(0)).unwrap_or(u32::MAX),
            },
            None,
        ));
        if let Some((_, observed, _)) = server.budget {
            log.windows.push((
                observed,
                WindowUsage {
                    total: u32::try_from((*used).max(0)).unwrap_or(u32::MAX),
                    background: 0,
                },
                None,
            ));
        }
        // Fresh activity, as the other stores report it.
        let mut invocation = ACTIVITY.prepare_invoke();
        invocation
            .key(&keys.state)
            .key(&keys.act)
            .arg(self.now_arg(now))
            .arg(capped(adaptive.monitoring_ms()));
        let reply: Vec<i64> = self.redis.script(OP, invocation).await?;
        let [act_now, any, last, buckets @ ..] = &reply[..] else {
            return Err(unexpected(OP, format!("{reply:?}")).into());
        };
        let act_offset = act_now.saturating_sub(caller_ms);
        let activity = activity_from_buckets(
            buckets.chunks_exact(2).map(|b| {
                // Seconds move with the frame too.
                let at = to_caller(time(b[0]).saturating_mul(1000), act_offset);
                (at / 1000, u32::try_from(b[1]).unwrap_or(0))
            }),
            adaptive,
            now_ms,
            (*last >= 0).then(|| to_caller(time(*last), act_offset)),
            *any == 1,
        );
        let Ok(status) = status_of(
            &mut log, resource, limits, adaptive, &activity, &server, now,
        );
        Ok(status)
    }
}
