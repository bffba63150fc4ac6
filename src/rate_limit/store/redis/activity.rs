//! The user activity behind background decisions: read from Redis at most once per
//! recalculation interval per resource, and cached in between.

use std::sync::atomic::Ordering;

use super::clock::UNKNOWN;
use super::reply::{time, unexpected};
use super::scripts::{ACTIVITY, capped};
use super::{Keys, RedisRateLimitStore};
use crate::rate_limit::adaptive::{Activity, AdaptiveConfig, activity_from_buckets};
use crate::resource::Resource;
use crate::store::redis::RedisError;
use crate::time::{Timestamp, duration_ms};

impl RedisRateLimitStore {
    /// The user activity of `resource` and the store's time it holds for: cached for the
    /// recalculation interval, else read from Redis.
    pub(super) async fn activity(
        &self,
        resource: &Resource,
        keys: &Keys,
        config: &AdaptiveConfig,
        caller_now: Timestamp,
    ) -> Result<(Activity, u64), RedisError> {
        let offset = self.inner.offset.load(Ordering::Relaxed);
        if offset != UNKNOWN {
            let now = (i128::from(caller_now.as_millis()) + i128::from(offset))
                .clamp(0, i128::from(u64::MAX)) as u64;
            let every = capped(duration_ms(config.recalculation_interval));
            if let Some((at, activity)) = self.inner.activity.lock().get(resource)
                && now.saturating_sub(*at) < every
                && *at <= now
                && activity.any_request
            {
                return Ok((*activity, now));
            }
        }
        let mut invocation = ACTIVITY.prepare_invoke();
        invocation
            .key(&keys.state)
            .key(&keys.act)
            .arg(self.now_arg(caller_now))
            .arg(capped(config.monitoring_ms()));
        let reply: Vec<i64> = self.redis.script("rate-limit activity", invocation).await?;
        let [now, any, last, buckets @ ..] = &reply[..] else {
            return Err(unexpected("rate-limit activity", format!("{reply:?}")));
        };
        let now = time(*now);
        self.observe_offset(now, caller_now);
        let activity = activity_from_buckets(
            buckets
                .chunks_exact(2)
                .map(|b| (time(b[0]), u32::try_from(b[1]).unwrap_or(0))),
            config,
            now,
            (*last >= 0).then_some(time(*last)),
            *any == 1,
        );
        let mut cache = self.inner.activity.lock();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(resource.clone(), (now, activity));
        Ok((activity, now))
    }
}
