//! Limits and their configuration per resource.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::error::RateLimitConfigError;
use crate::resource::Resource;

/// At most `max` admissions in any interval of length `window`.
///
/// The count is a plain integer that must be at least 1: [`Limit::new`] and the `per_*`
/// shorthands are `const fn`s that panic on 0 (for the literals of a configuration, where a zero
/// is a typo caught at once, at compile time in a `const`), and [`Limit::try_new`] returns an
/// [`InvalidLimit`] instead (for counts read at run time). A window shorter than a millisecond is
/// refused when the layer is built ([`RateLimitConfigError::ZeroWindow`]).
///
/// # Example
///
/// ```
/// use courteous::rate_limit::Limit;
/// use std::time::Duration;
///
/// const SEARCH: Limit = Limit::per_minute(10);
/// assert_eq!(Limit::per_hour(200), Limit::new(200, Duration::from_secs(3600)));
/// assert_eq!(Limit::per_second(1).window(), Duration::from_secs(1));
/// assert_eq!(SEARCH.max(), 10);
///
/// let configured: u32 = "0".parse().unwrap();
/// assert!(Limit::try_new(configured, Duration::from_secs(1)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    max: NonZeroU32,
    window: Duration,
}

impl Limit {
    /// `max` admissions per `window`.
    ///
    /// # Panics
    ///
    /// When `max` is 0. Use [`Limit::try_new`] for counts read at run time.
    pub const fn new(max: u32, window: Duration) -> Self {
        match Self::try_new(max, window) {
            Ok(limit) => limit,
            Err(_) => panic!(
                "a rate limit must admit at least 1 request per window; \
                 use Limit::try_new for counts read at run time"
            ),
        }
    }

    /// `max` admissions per `window`, or an [`InvalidLimit`] when `max` is 0.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::rate_limit::Limit;
    /// use std::time::Duration;
    ///
    /// let limit = Limit::try_new(200, Duration::from_secs(3600)).unwrap();
    /// assert_eq!(limit, Limit::per_hour(200));
    /// let err = Limit::try_new(0, Duration::from_secs(1)).unwrap_err();
    /// assert_eq!(err.code(), "rate_limit_zero_count");
    /// ```
    pub const fn try_new(max: u32, window: Duration) -> Result<Self, InvalidLimit> {
        match NonZeroU32::new(max) {
            Some(max) => Ok(Limit { max, window }),
            None => Err(InvalidLimit(())),
        }
    }

    /// `max` per second.
    ///
    /// # Panics
    ///
    /// When `max` is 0 (see [`Limit::new`]).
    pub const fn per_second(max: u32) -> Self {
        Self::new(max, Duration::from_secs(1))
    }

    /// `max` per minute.
    ///
    /// # Panics
    ///
    /// When `max` is 0 (see [`Limit::new`]).
    pub const fn per_minute(max: u32) -> Self {
        Self::new(max, Duration::from_secs(60))
    }

    /// `max` per hour.
    ///
    /// # Panics
    ///
    /// When `max` is 0 (see [`Limit::new`]).
    pub const fn per_hour(max: u32) -> Self {
        Self::new(max, Duration::from_secs(3600))
    }

    /// The same count over another window (the layer widens windows by its margin).
    pub(crate) const fn with_window(self, window: Duration) -> Self {
        Limit {
            max: self.max,
            window,
        }
    }

    /// The most admissions in one window.
    pub const fn max(&self) -> u32 {
        self.max.get()
    }

    /// The window's length.
    pub const fn window(&self) -> Duration {
        self.window
    }

    pub(crate) fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The limits of every resource: a default, and overrides by resource name.
///
/// A resource may have several limits at once (200 per hour *and* 1 per second); a request is
/// admitted only when every one of them allows it. A resource without an entry gets the default
/// limits; with no default, it is not limited.
///
/// # Example
///
/// ```
/// use courteous::rate_limit::{Limit, Limits};
///
/// let limits = Limits::new()
///     .default_limit(Limit::per_hour(200))
///     .resource("search", Limit::per_minute(10))
///     .resource("search", Limit::per_second(1));
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Limits {
    default: Vec<Limit>,
    resources: Vec<(String, Limit)>,
}

impl Limits {
    /// No limits yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a limit for every resource that has none of its own.
    pub fn default_limit(mut self, limit: Limit) -> Self {
        self.default.push(limit);
        self
    }

    /// Adds a limit for the resource named `name` (replacing the defaults for it).
    pub fn resource(mut self, name: impl Into<String>, limit: Limit) -> Self {
        self.resources.push((name.into(), limit));
        self
    }

    /// Checks the configuration and indexes it by resource.
    pub(crate) fn resolve(&self) -> Result<ResolvedLimits, RateLimitConfigError> {
        let check = |resource: &str, limit: &Limit| {
            if limit.window.is_zero() || limit.window_ms() == 0 {
                Err(RateLimitConfigError::ZeroWindow {
                    resource: resource.to_owned(),
                })
            } else {
                Ok(())
            }
        };
        for limit in &self.default {
            check("(default)", limit)?;
        }
        let mut resources: HashMap<Resource, Vec<Limit>> = HashMap::new();
        for (name, limit) in &self.resources {
            let resource = Resource::new(name).map_err(|_| RateLimitConfigError::EmptyResource)?;
            check(resource.as_str(), limit)?;
            resources.entry(resource).or_default().push(*limit);
        }
        Ok(ResolvedLimits {
            default: self.default.clone().into(),
            resources: resources
                .into_iter()
                .map(|(r, l)| (r, Arc::from(l)))
                .collect(),
        })
    }
}

/// Validated limits, ready for lookup.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedLimits {
    default: Arc<[Limit]>,
    resources: HashMap<Resource, Arc<[Limit]>>,
}

impl ResolvedLimits {
    pub(crate) fn of(&self, resource: &Resource) -> Arc<[Limit]> {
        self.resources
            .get(resource)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

/// A [`Limit`] whose count is 0: it would admit nothing. Returned by [`Limit::try_new`].
///
/// # Example
///
/// ```
/// use courteous::rate_limit::Limit;
/// use std::time::Duration;
///
/// let err = Limit::try_new(0, Duration::from_secs(60)).unwrap_err();
/// assert_eq!(err.code(), "rate_limit_zero_count");
/// assert_eq!(
///     err.to_string(),
///     "a rate limit must admit at least 1 request per window; give it a count of at least 1"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a rate limit must admit at least 1 request per window; give it a count of at least 1")]
pub struct InvalidLimit(());

impl InvalidLimit {
    /// `"rate_limit_zero_count"`.
    pub const fn code(&self) -> &'static str {
        "rate_limit_zero_count"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "must admit at least 1 request per window")]
    fn a_zero_count_panics_with_a_clear_message() {
        let _ = Limit::per_minute(0);
    }

    #[test]
    fn try_new_agrees_with_new() {
        let window = Duration::from_secs(7);
        assert_eq!(Limit::try_new(3, window), Ok(Limit::new(3, window)));
        assert_eq!(
            Limit::try_new(u32::MAX, window).map(|l| l.max()),
            Ok(u32::MAX)
        );
        assert!(Limit::try_new(0, window).is_err());
    }

    #[test]
    fn limits_refuse_an_empty_resource_name_when_built() {
        for name in ["", "  "] {
            let limits = Limits::new().resource(name, Limit::per_second(1));
            assert_eq!(
                limits.resolve().unwrap_err(),
                RateLimitConfigError::EmptyResource
            );
        }
        let limits = Limits::new().resource(" search ", Limit::per_second(1));
        let resolved = limits.resolve().unwrap();
        assert_eq!(
            &*resolved.of(&Resource::from_static("search")),
            &[Limit::per_second(1)]
        );
    }
}
