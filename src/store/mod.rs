//! Where the layers keep their state: the storage engines, and what every store shares.
//!
//! Each concern has a small async trait beside its layer (`cache::store`, `dedupe::store`,
//! `rate_limit::store`), with one implementation per backend there too:
//!
//! | backend | for | shared by |
//! |---|---|---|
//! | memory | tests, one process | the clones of one layer |
//! | [`sqlite`] | the embedded default | every process on one machine that opens the file |
//! | `redis` (feature `redis`) | fleets of machines | every process that uses the same Redis and prefix |
//!
//! What lives here:
//!
//! * the engines: [`sqlite`] (one file holding every store's tables, opened once as a
//!   [`SqliteStore`](sqlite::SqliteStore) and shared by all stores and processes) and `redis`
//!   (one `RedisStore`: its connection, circuit breaker and subscriptions);
//! * [`StoreError`], how every store reports a failure to its layer;
//! * `budget`: one budget of remote-store time per request, across every layer it crosses;
//! * `warn`: store-failure warnings, at most one per store per interval;
//! * `codec`: one entry/header codec, the bytes in which the SQLite and Redis stores keep a
//!   cache entry and response headers.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courteous::store::sqlite::SqliteError> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = courteous::store::sqlite::SqliteStore::open(dir.path().join("courteous.db")).await?;
//! store.close().await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

use crate::error::BoxError;

pub(crate) mod budget;
#[cfg(any(feature = "sqlite", feature = "redis"))]
pub(crate) mod codec;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub(crate) mod warn;

/// What kind of failure a store reported, for callers that react differently to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend cannot be reached or opened.
    Unavailable,
    /// The backend refuses writes (a read-only file or replica).
    ReadOnly,
    /// The stored data is damaged or is not ours.
    Corrupt,
    /// The backend stayed busy longer than the configured timeout.
    Busy,
    /// The store was closed.
    Closed,
    /// Anything else.
    Other,
}

/// A failure of a storage backend, as layers see it.
///
/// Layers never fail a request because their store failed where passing the request through is
/// safe; they log the error with `tracing` and count it in their statistics.
///
/// # Example
///
/// ```
/// use courteous::store::{StoreError, StoreErrorKind};
///
/// let err = StoreError::new("memory", StoreErrorKind::Closed, "the store was closed");
/// assert_eq!(err.kind(), StoreErrorKind::Closed);
/// assert_eq!(err.to_string(), "memory store failed: the store was closed");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{backend} store failed: {source}")]
pub struct StoreError {
    backend: &'static str,
    kind: StoreErrorKind,
    #[source]
    source: BoxError,
}

impl StoreError {
    /// A failure of `backend` ("memory", "sqlite", ...).
    pub fn new(backend: &'static str, kind: StoreErrorKind, source: impl Into<BoxError>) -> Self {
        StoreError {
            backend,
            kind,
            source: source.into(),
        }
    }

    /// The backend that failed.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// What kind of failure it was.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}
