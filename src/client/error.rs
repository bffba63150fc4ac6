//! Why [`Courteous::build`](super::Courteous::build) failed.

use crate::rate_limit::RateLimitConfigError;

/// Why the builder could not assemble the stack.
///
/// Each variant has a short, stable [`code`](BuildError::code) for logs.
///
/// # Example
///
/// ```
/// use courteous::{BuildError, Courteous};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let error = Courteous::new(reqwest::Client::new())
///     .resource("  ", |r| r)
///     .layers()
///     .await
///     .unwrap_err();
/// assert!(matches!(error, BuildError::InvalidResource { .. }));
/// assert_eq!(error.code(), "build_invalid_resource");
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A resource name is empty or only white space.
    #[error("resource name {name:?} is empty; name the resource as the classifier does")]
    InvalidResource {
        /// The name given to [`Courteous::resource`](super::Courteous::resource).
        name: String,
    },
    /// A resource name the stock classifier never gives (no
    /// [`Courteous::classifier`](super::Courteous::classifier) was set): it names resources by
    /// the first path segment that is not `api` or a version, in lower case, so settings under
    /// this name would never apply.
    #[error(
        "resource {name:?} is never named by the default classifier (a request to /{name}/ is counted in {}); \
         use the name it gives (the first path segment that is not `api` or a version, in lower case) \
         or set .classifier(..)",
        classified_as.as_deref().unwrap_or("no resource: not a valid path")
    )]
    UnclassifiedResource {
        /// The name given to [`Courteous::resource`](super::Courteous::resource).
        name: String,
        /// What the stock classifier names a request to `/{name}/`; `None` when that is not a
        /// valid path.
        classified_as: Option<String>,
    },
    /// The rate limits are not valid (a zero window).
    #[error("the rate limits are not valid: {0}")]
    RateLimit(#[from] RateLimitConfigError),
    /// The SQLite file could not be opened (a missing directory, permissions, a newer schema).
    #[cfg(feature = "sqlite")]
    #[error("opening the SQLite store failed: {0}")]
    Sqlite(#[from] crate::store::sqlite::SqliteError),
    /// The Redis URL is not valid, or no Redis answered it.
    #[cfg(feature = "redis")]
    #[error("the Redis store is not usable: {0}; check the URL and that Redis is running")]
    Redis(#[from] crate::store::redis::RedisError),
}

impl BuildError {
    /// A short, stable code per variant.
    pub const fn code(&self) -> &'static str {
        match self {
            BuildError::InvalidResource { .. } => "build_invalid_resource",
            BuildError::UnclassifiedResource { .. } => "build_unclassified_resource",
            BuildError::RateLimit(_) => "build_rate_limit",
            #[cfg(feature = "sqlite")]
            BuildError::Sqlite(_) => "build_sqlite",
            #[cfg(feature = "redis")]
            BuildError::Redis(_) => "build_redis",
        }
    }
}
