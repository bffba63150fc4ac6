//! Time, in one place: the injectable [`Clock`] every layer and store reads, the [`Timestamp`]
//! they store, and the conversions between them and [`SystemTime`] / [`Duration`].
//!
//! * [`Clock`] is what the rate limiter, the cache and the dedupe stores read "now" from;
//!   [`SystemClock`] (the wall clock, shared by every process on a machine) is the default and
//!   [`TokioClock`] follows `tokio::time::pause()` for tests.
//! * [`Timestamp`] is milliseconds since the Unix epoch, the unit every store keeps.
//! * The crate-private helpers below convert with saturation, never a panic: the numbers can come
//!   from a store other processes write, or from a server.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time: milliseconds since the Unix epoch.
///
/// Admissions are stored with wall-clock time so that every process sharing a store counts them
/// on one time line.
///
/// # Example
///
/// ```
/// use courteous::time::Timestamp;
/// use std::time::Duration;
///
/// let t = Timestamp::from_millis(1_000);
/// assert_eq!(t + Duration::from_millis(500), Timestamp::from_millis(1_500));
/// assert_eq!(Timestamp::from_millis(1_500).saturating_since(t), Duration::from_millis(500));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The timestamp of a [`SystemTime`] (the epoch for times before it).
    pub fn from_system_time(time: SystemTime) -> Self {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// This timestamp as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl std::ops::Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_sub(u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An HTTP date stops at the year 9999 (a `Retry-After` of centuries goes further).
        const YEAR_10000_MS: u64 = 253_402_300_800_000;
        if self.0 >= YEAR_10000_MS {
            return write!(f, "{} ms after the epoch", self.0);
        }
        write!(f, "{}", httpdate::fmt_http_date(self.to_system_time()))
    }
}

/// Where the layers and stores read the time.
///
/// [`SystemClock`] (the default) reads the wall clock, which every process on a machine shares.
/// [`TokioClock`] follows tokio's clock, so tests with `tokio::time::pause()` move it without
/// sleeping.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;

    /// Now as a [`SystemTime`] (millisecond precision), for code that computes with those.
    fn system_time(&self) -> SystemTime {
        self.now().to_system_time()
    }
}

/// A timestamp is a clock that stands still at it: for tests, and for callers that decide the
/// time themselves.
///
/// ```
/// use courteous::time::{Clock, Timestamp};
///
/// assert_eq!(Timestamp::from_millis(7).now(), Timestamp::from_millis(7));
/// ```
impl Clock for Timestamp {
    fn now(&self) -> Timestamp {
        *self
    }
}

/// The wall clock.
///
/// # Example
///
/// ```
/// use courteous::time::{Clock, SystemClock};
///
/// assert!(SystemClock.now().as_millis() > 1_600_000_000_000);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }
}

/// A clock that starts at the wall-clock time it was made and then advances with tokio's clock,
/// so that `tokio::time::pause()` and `advance()` move it.
///
/// Use it in tests (with the memory store) to run minutes of rate limiting in milliseconds.
///
/// # Example
///
/// ```
/// use courteous::time::{Clock, TokioClock};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// tokio::time::pause();
/// let clock = TokioClock::new();
/// let before = clock.now();
/// tokio::time::advance(Duration::from_secs(60)).await;
/// assert_eq!(clock.now().saturating_since(before), Duration::from_secs(60));
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: Timestamp,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Starts now.
    pub fn new() -> Self {
        TokioClock {
            wall: SystemClock.now(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.wall + self.start.elapsed()
    }
}

/// Milliseconds since the Unix epoch, negative before it; saturates at `i64::MIN`/`i64::MAX`.
#[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
pub(crate) fn epoch_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration in whole milliseconds, saturating at `i64::MAX` (for stores that keep `i64`).
#[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
pub(crate) fn duration_ms_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// 9999-12-31T23:59:59Z in seconds since the Unix epoch.
const END_OF_TIME_SECS: u64 = 253_402_300_799;

/// The latest time the crate computes with: the end of the year 9999.
pub(crate) fn end_of_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(END_OF_TIME_SECS)
}

/// `t + d`, or [`end_of_time`] when that is later or does not exist (never earlier than `t`).
pub(crate) fn add(t: SystemTime, d: Duration) -> SystemTime {
    let cap = end_of_time().max(t);
    t.checked_add(d).map_or(cap, |sum| sum.min(cap))
}

/// The time `ms` milliseconds after the Unix epoch (before it when negative), as a store
/// codec wrote it; saturates at [`end_of_time`] and at the earliest time the platform holds.
#[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
pub(crate) fn from_epoch_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        add(UNIX_EPOCH, Duration::from_millis(ms.unsigned_abs()))
    } else {
        let back = Duration::from_millis(ms.unsigned_abs());
        UNIX_EPOCH.checked_sub(back).unwrap_or_else(|| {
            // The earliest time this platform can represent, found by halving the step.
            let mut t = UNIX_EPOCH;
            let mut step = back;
            while !step.is_zero() {
                match t.checked_sub(step) {
                    Some(earlier) => t = earlier,
                    None => step /= 2,
                }
            }
            t
        })
    }
}

/// A random number for ids (lease owners, store instances, admission ids), different on every
/// call: the standard library's randomly keyed hasher over the process id, the wall clock in
/// nanoseconds and a counter, so that processes in different PID namespaces (containers) that
/// share a store do not collide. Not for cryptography.
pub(crate) fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate() {
        assert_eq!(epoch_ms(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
        assert_eq!(epoch_ms(UNIX_EPOCH - Duration::from_millis(1500)), -1500);
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
        assert_eq!(duration_ms_i64(Duration::MAX), i64::MAX);
        assert_eq!(duration_ms_i64(Duration::from_millis(7)), 7);
        assert_eq!(
            Timestamp::from_millis(u64::MAX) + Duration::MAX,
            Timestamp::from_millis(u64::MAX)
        );
    }

    #[test]
    fn additions_stop_at_the_end_of_time() {
        let now = SystemTime::now();
        assert_eq!(add(now, Duration::MAX), end_of_time());
        assert_eq!(add(now, Duration::from_secs(u64::MAX / 2)), end_of_time());
        assert_eq!(
            add(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        // Never earlier than the time it adds to.
        let beyond = end_of_time() + Duration::from_secs(10);
        assert_eq!(add(beyond, Duration::from_secs(1)), beyond);
        assert_eq!(from_epoch_ms(i64::MAX), end_of_time());
        assert!(from_epoch_ms(i64::MIN) < UNIX_EPOCH);
        assert_eq!(
            from_epoch_ms(-1500),
            UNIX_EPOCH - Duration::from_millis(1500)
        );
        assert_eq!(
            from_epoch_ms(1500),
            UNIX_EPOCH + Duration::from_millis(1500)
        );
    }

    #[test]
    fn random_numbers_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
