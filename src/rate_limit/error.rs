//! Errors of the rate-limit layer.

use std::time::Duration;

use crate::resource::Resource;

/// A request was not sent because its resource's limit was reached and no slot freed within the
/// time it may wait.
///
/// The layer returns it as a [`BoxError`](crate::BoxError); recover it with `downcast_ref`.
///
/// # Example
///
/// ```
/// use courteous::Resource;
/// use courteous::rate_limit::RateLimited;
/// use std::time::Duration;
///
/// let err = RateLimited::new(Resource::new("search").unwrap(), Duration::from_secs(3));
/// assert_eq!(err.code(), "rate_limited");
/// assert_eq!(err.retry_after(), Duration::from_secs(3));
/// assert_eq!(
///     err.to_string(),
///     "rate limit of resource search reached; retry in 3s or allow the request to wait longer"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limit of resource {resource} reached; retry in {retry_after:?} or allow the request to wait longer"
)]
pub struct RateLimited {
    resource: Resource,
    retry_after: Duration,
}

impl RateLimited {
    /// `resource` is full for `retry_after`.
    pub fn new(resource: Resource, retry_after: Duration) -> Self {
        RateLimited {
            resource,
            retry_after,
        }
    }

    /// The resource whose limit was reached.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// How long until a request may be admitted (a lower bound: other processes may take the slot).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// `"rate_limited"`.
    pub const fn code(&self) -> &'static str {
        "rate_limited"
    }
}

/// A rate-limit configuration that cannot work, refused when the layer is built.
///
/// # Example
///
/// ```
/// use courteous::rate_limit::{Limit, Limits, MemoryRateLimitStore, RateLimitLayer};
/// use std::num::NonZeroU32;
/// use std::time::Duration;
///
/// let limits = Limits::new().resource("issues", Limit::new(NonZeroU32::MIN, Duration::ZERO));
/// let err = RateLimitLayer::new(MemoryRateLimitStore::new(), limits).unwrap_err();
/// assert_eq!(err.code(), "rate_limit_zero_window");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitConfigError {
    /// A limit has a window shorter than a millisecond.
    #[error(
        "a rate limit of resource {resource} has a zero window; give it a window of at least 1 ms"
    )]
    ZeroWindow {
        /// The resource (or `(default)`).
        resource: String,
    },
    /// A limit was given for a resource whose name is empty.
    #[error("a rate limit was given for an empty resource name; name the resource")]
    EmptyResource,
}

impl RateLimitConfigError {
    /// A short, stable code per variant.
    pub const fn code(&self) -> &'static str {
        match self {
            RateLimitConfigError::ZeroWindow { .. } => "rate_limit_zero_window",
            RateLimitConfigError::EmptyResource => "rate_limit_empty_resource",
        }
    }
}
