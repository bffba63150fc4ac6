//! Whose clock stamps admissions ([`RedisClock`]), and the moves between the store's time line
//! and the caller's (see "Clocks" in the [module docs](super)).

use std::sync::atomic::Ordering;

use super::RedisRateLimitStore;
use crate::time::Timestamp;

/// How much longer keys live with [`RedisClock::Caller`], whose times Redis's expiry cannot
/// follow.
const CALLER_CLOCK_SLACK_MS: u64 = 3600 * 1000;

/// Whose clock stamps the admissions of a [`RedisRateLimitStore`].
///
/// # Example
///
/// ```no_run
/// use courteous::rate_limit::RedisClock;
/// use courteous::store::redis::RedisStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::redis::RedisError> {
/// let redis = RedisStore::connect("redis://127.0.0.1:6379/")?;
/// // For tests that run the layer on tokio's paused clock.
/// let store = redis.rate_limits().clock(RedisClock::Caller);
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RedisClock {
    /// The Redis server's clock (`TIME`, read when Redis runs the script), which every machine
    /// shares, whatever its own clock says (default).
    #[default]
    Server,
    /// The caller's clock ([`AdmissionRequest::clock`](crate::rate_limit::AdmissionRequest::clock), the layer's
    /// [`Clock`](crate::rate_limit::Clock), read right before the script is sent; the time a
    /// settlement is given): for tests with injected or paused time, or machines whose clocks
    /// are synchronised. Machines whose clocks disagree miscount, a command's wait in the
    /// connection or a stalled server is not seen, and keys live an hour longer than their
    /// windows need (Redis expires them by its own clock).
    Caller,
}

/// The offset before the first reply.
pub(super) const UNKNOWN: i64 = i64::MIN;

/// `t` in the store's frame moved to the caller's (`offset` = store − caller).
pub(super) fn to_caller(t: u64, offset: i64) -> u64 {
    (i128::from(t) - i128::from(offset)).clamp(0, i128::from(u64::MAX)) as u64
}

impl RedisRateLimitStore {
    /// `ARGV[1]` of every script.
    pub(super) fn now_arg(&self, caller_now: Timestamp) -> String {
        match self.clock {
            RedisClock::Server => String::new(),
            RedisClock::Caller => caller_now.as_millis().to_string(),
        }
    }

    /// How much longer than their windows keys live (an hour with the caller's clock).
    pub(super) fn slack(&self) -> u64 {
        match self.clock {
            RedisClock::Server => 0,
            RedisClock::Caller => CALLER_CLOCK_SLACK_MS,
        }
    }

    /// Notes the store's time against the caller's.
    pub(super) fn observe_offset(&self, store_now: u64, caller_now: Timestamp) {
        let offset = i128::from(store_now) - i128::from(caller_now.as_millis());
        let offset = offset.clamp(i128::from(i64::MIN + 1), i128::from(i64::MAX)) as i64;
        self.inner.offset.store(offset, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_move_between_frames_without_overflow() {
        assert_eq!(to_caller(5_000, 3_000), 2_000);
        assert_eq!(to_caller(5_000, -3_000), 8_000);
        assert_eq!(to_caller(1_000, 3_000), 0);
        assert_eq!(to_caller(u64::MAX, -5), u64::MAX);
    }
}
