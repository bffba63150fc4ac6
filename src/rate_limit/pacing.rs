//! Pacing: a minimum spacing between calls, for APIs that punish bursts.
//!
//! Limits count admissions per window but let a whole window's worth go out at once. Some APIs
//! refuse or throttle bursts even within their published limit; pacing spaces calls out with the
//! GCRA of [`governor`], one cell per call and no burst.
//!
//! # Note on scope
//!
//! Pacing is **in process**: each process (each [`RateLimitLayer`](super::RateLimitLayer) and its
//! clones) spaces its own calls. Two processes pacing at 100 ms each may together call every
//! 50 ms. The limits themselves are exact across processes; pacing only smooths.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::resource::Resource;

/// What calls are spaced by: the host, or the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacingKey {
    /// Calls to one host are spaced.
    Host,
    /// Calls in one resource are spaced.
    Resource,
}

/// A minimum spacing between calls to one host or in one resource.
///
/// # Example
///
/// ```
/// use courteous::rate_limit::{Limit, Limits, MemoryRateLimitStore, Pacing, RateLimitLayer};
/// use std::time::Duration;
///
/// let limits = Limits::new().default_limit(Limit::per_minute(60));
/// let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), limits)
///     .unwrap()
///     .pacing(Pacing::per_host(Duration::from_millis(250)));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    key: PacingKey,
    spacing: Duration,
}

impl Pacing {
    /// At least `spacing` between two calls to the same host.
    pub const fn per_host(spacing: Duration) -> Self {
        Pacing {
            key: PacingKey::Host,
            spacing,
        }
    }

    /// At least `spacing` between two calls in the same resource.
    pub const fn per_resource(spacing: Duration) -> Self {
        Pacing {
            key: PacingKey::Resource,
            spacing,
        }
    }
}

pub(crate) struct Pacer {
    key: PacingKey,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl fmt::Debug for Pacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pacer")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Pacer {
    pub(crate) fn new(pacing: Pacing) -> Self {
        // `governor` counts in `u64` nanoseconds (584 years) and panics past them: a spacing of
        // `Duration::MAX` ("once, ever") is a century, which no process outlives.
        const CENTURY: Duration = Duration::from_secs(86_400 * 365 * 100);
        let limiter = Quota::with_period(pacing.spacing.min(CENTURY))
            .map(|q| DefaultKeyedRateLimiter::keyed(q.allow_burst(NonZeroU32::MIN)));
        Pacer {
            key: pacing.key,
            limiter,
        }
    }

    /// Waits for this call's turn; fails with the time still to wait if that passes `deadline`.
    pub(crate) async fn wait(
        &self,
        resource: &Resource,
        host: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let key = match self.key {
            // Host names are case-insensitive: one host in any case is one key.
            PacingKey::Host => host.unwrap_or("").to_ascii_lowercase(),
            PacingKey::Resource => resource.as_str().to_owned(),
        };
        if limiter.len() > 4096 {
            limiter.retain_recent();
        }
        loop {
            match limiter.check_key(&key) {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(limiter.clock().now());
                    let wake = super::service::deadline_after(tokio::time::Instant::now(), wait);
                    if wake > deadline {
                        return Err(wait);
                    }
                    tokio::time::sleep_until(wake).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host names are case-insensitive (RFC 3986 section 3.2.2): `API.example.com` is the host
    /// `api.example.com`, and waits its turn.
    #[tokio::test]
    async fn one_host_in_any_case_is_one_turn() {
        let pacer = Pacer::new(Pacing::per_host(Duration::from_secs(3600)));
        let resource = Resource::new("items").unwrap();
        let now = tokio::time::Instant::now();
        assert_eq!(
            pacer.wait(&resource, Some("api.example.com"), now).await,
            Ok(())
        );
        for host in ["API.example.com", "Api.Example.COM"] {
            assert!(
                pacer.wait(&resource, Some(host), now).await.is_err(),
                "{host}"
            );
        }
        // Another host has its own turn.
        assert_eq!(
            pacer.wait(&resource, Some("example.org"), now).await,
            Ok(())
        );
    }
}
