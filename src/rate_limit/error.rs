//! Errors of the rate-limit layer.

use std::time::Duration;

use crate::resource::Resource;
use crate::store::{StoreError, StoreErrorKind};

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
/// use std::time::Duration;
///
/// let limits = Limits::new().resource("issues", Limit::new(1, Duration::ZERO));
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

/// A request was not sent because the rate limiter's store failed (Redis unreachable or slow, a
/// SQLite error) and the layer fails closed ([`OnStoreError::FailClosed`], the default): a
/// request that cannot be counted could exceed the API's limit.
///
/// The layer returns it as a [`BoxError`](crate::BoxError); recover it with `downcast_ref`.
///
/// # Example
///
/// ```
/// use courteous::Resource;
/// use courteous::rate_limit::RateLimitStoreFailed;
/// use courteous::store::{StoreError, StoreErrorKind};
///
/// let store = StoreError::new("redis", StoreErrorKind::Unavailable, "connection refused");
/// let err = RateLimitStoreFailed::new(Resource::new("search").unwrap(), store);
/// assert_eq!(err.code(), "rate_limit_store_failed");
/// assert!(err.is_unavailable());
/// assert_eq!(err.store_error().backend(), "redis");
/// assert_eq!(
///     err.to_string(),
///     "request to resource search not sent: its rate limit could not be checked \
///      (redis store failed: connection refused); retry later, or allow sending unchecked \
///      with on_store_error(OnStoreError::FailOpen)"
/// );
/// ```
#[derive(Debug, thiserror::Error)]
#[error(
    "request to resource {resource} not sent: its rate limit could not be checked ({source}); retry later, or allow sending unchecked with on_store_error(OnStoreError::FailOpen)"
)]
pub struct RateLimitStoreFailed {
    resource: Resource,
    #[source]
    source: StoreError,
}

impl RateLimitStoreFailed {
    /// `resource`'s request was refused because of `source`.
    pub fn new(resource: Resource, source: StoreError) -> Self {
        RateLimitStoreFailed { resource, source }
    }

    /// The resource of the request.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The store's failure (its [`backend`](StoreError::backend) says which store).
    pub fn store_error(&self) -> &StoreError {
        &self.source
    }

    /// Whether the store could not be reached in time (unreachable, or slower than its
    /// timeout), rather than failing otherwise.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.source.kind(),
            StoreErrorKind::Unavailable | StoreErrorKind::Busy
        )
    }

    /// `"rate_limit_store_failed"`.
    pub const fn code(&self) -> &'static str {
        "rate_limit_store_failed"
    }
}

/// What the [`RateLimitLayer`](super::RateLimitLayer) does with a request when its store fails
/// (Redis unreachable or slower than its operation timeout, a SQLite error).
///
/// # Example
///
/// ```
/// use courteous::rate_limit::{Limits, MemoryRateLimitStore, OnStoreError, RateLimitLayer};
///
/// let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), Limits::new())
///     .unwrap()
///     .on_store_error(OnStoreError::FailOpen);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Do not send it: it fails at once with [`RateLimitStoreFailed`] (default). The API's
    /// limit is never risked, at the cost of the requests made while the store is down.
    #[default]
    FailClosed,
    /// Send it uncounted. Each such request is logged (`tracing` warning) and counted in
    /// [`ResourceStats::admitted_unchecked`](super::ResourceStats::admitted_unchecked), and its
    /// [`RateLimitReport::unchecked`](super::RateLimitReport::unchecked) is set. Other
    /// processes do not see it, so the API's limit may be exceeded while the store is down.
    FailOpen,
}
