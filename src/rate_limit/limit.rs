//! Limits and their configuration per resource.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::error::RateLimitConfigError;
use crate::resource::Resource;

/// At most `max` admissions in any interval of length `window`.
///
/// The count cannot be zero (it is a [`NonZeroU32`]); a zero window is refused when the layer is
/// built.
///
/// # Example
///
/// ```
/// use courteous::rate_limit::Limit;
/// use std::num::NonZeroU32;
/// use std::time::Duration;
///
/// let n = |n| NonZeroU32::new(n).unwrap();
/// assert_eq!(Limit::per_hour(n(200)), Limit::new(n(200), Duration::from_secs(3600)));
/// assert_eq!(Limit::per_second(n(1)).window(), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    max: NonZeroU32,
    window: Duration,
}

impl Limit {
    /// `max` admissions per `window`.
    pub const fn new(max: NonZeroU32, window: Duration) -> Self {
        Limit { max, window }
    }

    /// `max` per second.
    pub const fn per_second(max: NonZeroU32) -> Self {
        Self::new(max, Duration::from_secs(1))
    }

    /// `max` per minute.
    pub const fn per_minute(max: NonZeroU32) -> Self {
        Self::new(max, Duration::from_secs(60))
    }

    /// `max` per hour.
    pub const fn per_hour(max: NonZeroU32) -> Self {
        Self::new(max, Duration::from_secs(3600))
    }

    /// The most admissions in one window.
    pub const fn max(&self) -> u32 {
        self.max.get()
    }

    pub(crate) const fn max_nonzero(&self) -> NonZeroU32 {
        self.max
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
/// use std::num::NonZeroU32;
///
/// let n = |n| NonZeroU32::new(n).unwrap();
/// let limits = Limits::new()
///     .default_limit(Limit::per_hour(n(200)))
///     .resource("search", Limit::per_minute(n(10)))
///     .resource("search", Limit::per_second(n(1)));
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
            let resource = Resource::new(name).ok_or(RateLimitConfigError::EmptyResource)?;
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
