//! Errors of the SQLite backend.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::ErrorCode;

use crate::store::{StoreError, StoreErrorKind};

/// A failure of the SQLite backend, with the file it concerns.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use courteous::store::sqlite::{SqliteError, SqliteStore};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("not-a-db");
/// std::fs::write(&path, b"this is a text file, not a database, but it is long enough").unwrap();
/// let err = SqliteStore::open(&path).await.unwrap_err();
/// assert!(err.is_not_a_database());
/// assert_eq!(err.code(), "sqlite_not_a_database");
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The file could not be created or opened.
    #[error(
        "cannot open sqlite database {path}: {source}; check that the directory exists and is writable"
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The file (or its directory, where the `-wal` and `-shm` files live) is not writable.
    #[error(
        "sqlite database {path} is read-only; courteous needs write access to the file and to its directory"
    )]
    ReadOnly {
        /// The database file.
        path: PathBuf,
    },
    /// The path is a SQLite `file:` URI with parameters or a host, which courteous does not pass
    /// on: it opens the file itself, in WAL mode and created owner-only (0600).
    #[error(
        "{path} is a sqlite URI with {what}; courteous opens the file itself (WAL, created with mode 0600): pass a plain path or a file: URI without parameters"
    )]
    UnsupportedUri {
        /// The path as given.
        path: PathBuf,
        /// What it carries that courteous does not support.
        what: &'static str,
    },
    /// The file is not a SQLite database (or is encrypted).
    #[error("{path} is not a sqlite database; point courteous at a new file or move this one away")]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The database is damaged.
    #[error("sqlite database {path} is corrupt; move it away and let courteous create a new one")]
    Corrupt {
        /// The database file.
        path: PathBuf,
    },
    /// Another connection held a lock for longer than the busy timeout.
    #[error("sqlite database {path} stayed locked for longer than the busy timeout of {timeout:?}")]
    Busy {
        /// The database file.
        path: PathBuf,
        /// The busy timeout that ran out.
        timeout: Duration,
    },
    /// The file was written by a newer version of courteous.
    #[error(
        "the {component} tables in {path} have schema version {found}, newer than the {supported} this version of courteous knows; upgrade courteous"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Which part of the schema.
        component: &'static str,
        /// The version found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The deferred-write queue is full: the database has not accepted writes for a while.
    #[error(
        "the write-behind queue of {path} is full ({capacity} writes); the database is not keeping up or refuses writes"
    )]
    Backlog {
        /// The database file.
        path: PathBuf,
        /// The queue's capacity.
        capacity: usize,
    },
    /// The store was closed.
    #[error("the sqlite store is closed")]
    Closed,
    /// A job run on a store thread panicked; its transaction was rolled back.
    #[error("a sqlite job panicked; its transaction was rolled back")]
    Panicked,
    /// Any other SQLite error.
    #[error("sqlite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl SqliteError {
    /// A short, stable code for logs.
    pub const fn code(&self) -> &'static str {
        match self {
            SqliteError::Open { .. } => "sqlite_open",
            SqliteError::ReadOnly { .. } => "sqlite_read_only",
            SqliteError::UnsupportedUri { .. } => "sqlite_unsupported_uri",
            SqliteError::NotADatabase { .. } => "sqlite_not_a_database",
            SqliteError::Corrupt { .. } => "sqlite_corrupt",
            SqliteError::Busy { .. } => "sqlite_busy",
            SqliteError::SchemaTooNew { .. } => "sqlite_schema_too_new",
            SqliteError::Backlog { .. } => "sqlite_backlog",
            SqliteError::Closed => "sqlite_closed",
            SqliteError::Panicked => "sqlite_panicked",
            SqliteError::Sqlite(_) => "sqlite_error",
        }
    }

    /// The file is read-only.
    pub fn is_read_only(&self) -> bool {
        matches!(self, SqliteError::ReadOnly { .. })
    }

    /// The file is not a SQLite database.
    pub fn is_not_a_database(&self) -> bool {
        matches!(self, SqliteError::NotADatabase { .. })
    }

    /// The database is damaged.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, SqliteError::Corrupt { .. })
    }

    /// The database stayed locked past the busy timeout.
    pub fn is_busy(&self) -> bool {
        matches!(self, SqliteError::Busy { .. })
    }

    /// The file could not be opened or created.
    pub fn is_open(&self) -> bool {
        matches!(self, SqliteError::Open { .. })
    }

    /// The store was closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, SqliteError::Closed)
    }

    /// Replaces a generic SQLite error by the typed variant its code stands for.
    pub(crate) fn refine(self, path: &std::path::Path, busy_timeout: Duration) -> SqliteError {
        let SqliteError::Sqlite(error) = self else {
            return self;
        };
        let path = path.to_path_buf();
        match error.sqlite_error_code() {
            Some(ErrorCode::ReadOnly) => SqliteError::ReadOnly { path },
            Some(ErrorCode::NotADatabase) => SqliteError::NotADatabase { path },
            Some(ErrorCode::DatabaseCorrupt) => SqliteError::Corrupt { path },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => SqliteError::Busy {
                path,
                timeout: busy_timeout,
            },
            Some(ErrorCode::CannotOpen) => SqliteError::Open {
                path,
                source: Box::new(error),
            },
            _ => SqliteError::Sqlite(error),
        }
    }

    /// Whether the failure concerns the database as a whole (so a batch must be kept and
    /// retried), rather than one statement.
    pub(crate) fn is_transient_code(error: &rusqlite::Error) -> bool {
        matches!(
            error.sqlite_error_code(),
            Some(
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::ReadOnly
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::DiskFull
                    | ErrorCode::DatabaseCorrupt
                    | ErrorCode::NotADatabase
                    | ErrorCode::CannotOpen
                    | ErrorCode::OutOfMemory
            )
        )
    }
}

impl From<SqliteError> for StoreError {
    fn from(error: SqliteError) -> Self {
        let kind = match &error {
            SqliteError::Open { .. } | SqliteError::UnsupportedUri { .. } => {
                StoreErrorKind::Unavailable
            }
            SqliteError::ReadOnly { .. } => StoreErrorKind::ReadOnly,
            SqliteError::NotADatabase { .. }
            | SqliteError::Corrupt { .. }
            | SqliteError::SchemaTooNew { .. } => StoreErrorKind::Corrupt,
            SqliteError::Busy { .. } | SqliteError::Backlog { .. } => StoreErrorKind::Busy,
            SqliteError::Closed => StoreErrorKind::Closed,
            SqliteError::Panicked | SqliteError::Sqlite(_) => StoreErrorKind::Other,
        };
        StoreError::new("sqlite", kind, error)
    }
}
