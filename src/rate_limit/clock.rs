//! Time, injectable for tests.

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
/// use courteous::rate_limit::Timestamp;
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

/// Where the rate limiter reads the time.
///
/// [`SystemClock`] (the default) reads the wall clock, which every process on a machine shares.
/// [`TokioClock`] follows tokio's clock, so tests with `tokio::time::pause()` move it without
/// sleeping.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// A timestamp is a clock that stands still at it: for tests, and for callers that decide the
/// time themselves.
///
/// ```
/// use courteous::rate_limit::{Clock, Timestamp};
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
/// use courteous::rate_limit::{Clock, SystemClock};
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
/// use courteous::rate_limit::{Clock, TokioClock};
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
