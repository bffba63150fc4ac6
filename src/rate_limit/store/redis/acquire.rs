//! A decision: the admission script, with the adaptive split of the activity read before it,
//! and its answer moved to the caller's time line.

use std::time::Duration;

use redis::Value;

use super::RedisRateLimitStore;
use super::clock::RedisClock;
use super::in_flight::{LostReply, proposed_id};
use super::reply::{Answer, decode_acquire};
use super::scripts::{ACQUIRE, MAX_MS, STATE_TTL_MS, capped};
use crate::context::Priority;
use crate::rate_limit::adaptive::allocate;
use crate::rate_limit::store::{AdmissionRequest, Decision, InFlight, retention};
use crate::store::redis::RedisError;
use crate::time::duration_ms;

impl RedisRateLimitStore {
    /// One decision, with its activity read: not bounded by a timeout (the caller bounds it).
    pub(super) async fn decide(&self, request: &AdmissionRequest) -> Result<Decision, RedisError> {
        let keys = self.keys(&request.resource);
        let user = request.priority == Priority::User;
        let config = &request.adaptive;
        let activity = if user {
            None
        } else {
            Some(
                self.activity(&request.resource, &keys, config, request.clock.now())
                    .await?,
            )
        };
        // With `RedisClock::Caller`, the time of the decision: read after every other wait, right
        // before the script is sent (with `RedisClock::Server` the script reads `TIME` instead,
        // when Redis runs it).
        let sent_at = request.clock.now();
        let state_ttl = STATE_TTL_MS
            .max(capped(duration_ms(config.sustained_inactivity)).saturating_mul(2))
            .max(config.monitoring_ms())
            .saturating_add(self.slack())
            .min(MAX_MS);
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .key(&keys.all)
            .key(&keys.bg)
            .key(&keys.state)
            .key(&keys.act)
            .key(&keys.actidx)
            .arg(self.now_arg(sent_at))
            .arg(
                request
                    .in_flight
                    .map(|bound| capped(duration_ms(bound)).to_string())
                    .unwrap_or_default(),
            )
            .arg(if user { "u" } else { "b" })
            .arg(capped(duration_ms(retention(&request.limits))))
            .arg(state_ttl)
            .arg(capped(config.monitoring_ms()))
            .arg(self.slack())
            .arg(crate::rate_limit::store::PAUSED_RETRY_MS)
            .arg(request.limits.len());
        for limit in request.limits.iter() {
            invocation.arg(capped(limit.window_ms())).arg(limit.max());
            match &activity {
                None => invocation.arg(0).arg(0).arg(0),
                Some((activity, now)) => {
                    let split = allocate(limit.max(), activity, config, *now);
                    invocation
                        .arg(split.user_reserved)
                        .arg(split.background_max)
                        .arg(u8::from(split.background_paused))
                }
            };
        }
        // Should the reply be lost (a timeout, or this future dropped) after Redis ran the
        // script, the admission it may have recorded in flight is settled at the decision
        // rather than holding its slot until its bound: the guard knows its identity.
        let proposed = proposed_id();
        invocation.arg(proposed);
        let mut lost = LostReply {
            store: self.clone(),
            admission: request.in_flight.map(|bound| {
                InFlight::new(
                    request.resource.clone(),
                    request.priority,
                    proposed,
                    sent_at,
                    sent_at + bound.max(Duration::from_millis(1)),
                )
            }),
            at: sent_at,
        };
        let reply: Vec<Value> = self.redis.script("rate-limit acquire", invocation).await?;
        let (now, answer) = decode_acquire(&reply)?;
        lost.admission = None;
        // The caller's time that goes with the store's `now`: read as the reply arrives, so that
        // a refusal's delay counts from the moment the layer gets it.
        let caller_now = match self.clock {
            RedisClock::Server => request.clock.now(),
            RedisClock::Caller => sent_at,
        };
        self.observe_offset(now, caller_now);
        Ok(match answer {
            // On the caller's time line: the decision was at `now` on Redis's, which is the
            // caller's `caller_now` (as far as one reply tells); the expiry is as far after it
            // on either.
            Answer::Admitted {
                remaining,
                id,
                stamp,
            } => Decision::Admitted {
                remaining,
                at: caller_now,
                in_flight: request.in_flight.map(|_| {
                    InFlight::new(
                        request.resource.clone(),
                        request.priority,
                        id,
                        caller_now,
                        caller_now + Duration::from_millis(stamp.saturating_sub(now)),
                    )
                }),
            },
            Answer::Refused { retry_at, reason } => Decision::Refused {
                // The same delay from the caller's now.
                retry_at: caller_now + Duration::from_millis(retry_at.saturating_sub(now)),
                reason,
            },
        })
    }
}
