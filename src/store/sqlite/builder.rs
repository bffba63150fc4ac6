//! Options for opening a [`SqliteStore`]: the public [`SqliteStoreBuilder`] and the
//! [`Config`] it fills in, which the connections and the writer read.

use std::path::PathBuf;
use std::time::Duration;

use super::{Location, SqliteError, SqliteStore};

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) busy_timeout: Duration,
    pub(crate) workers: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) max_batch: usize,
    pub(crate) max_pending: usize,
    pub(crate) page_size: Option<u32>,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) max_wal_size: u64,
    pub(crate) tighten_permissions: bool,
    pub(crate) file_check_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            busy_timeout: Duration::from_secs(5),
            workers: 2,
            flush_interval: Duration::from_millis(50),
            max_batch: 1024,
            max_pending: 100_000,
            page_size: None,
            checkpoint_interval: Duration::from_secs(1),
            max_wal_size: 64 << 20,
            tighten_permissions: false,
            file_check_interval: Duration::from_secs(1),
        }
    }
}

/// Options for opening a [`SqliteStore`].
///
/// # Example
///
/// ```
/// use courteous::store::sqlite::SqliteStore;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::sqlite::SqliteError> {
/// let store = SqliteStore::builder(":memory:")
///     .workers(1)
///     .max_batch(256)
///     .open()
///     .await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct SqliteStoreBuilder {
    pub(super) path: PathBuf,
    pub(super) config: Config,
}

impl SqliteStoreBuilder {
    /// How long a statement waits for another connection's lock before failing with
    /// [`SqliteError::Busy`] (default 5 s). Waiting starts with yields and 20 µs sleeps, not
    /// SQLite's millisecond steps.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.config.busy_timeout = timeout;
        self
    }

    /// Connections (and threads) for [`SqliteStore::call`] (default 2, at least 1).
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers.max(1);
        self
    }

    /// How long a deferred write may wait before it is committed (default 50 ms).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.config.flush_interval = interval;
        self
    }

    /// Commit as soon as this many deferred writes are pending (default 1024, at least 1).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.config.max_batch = max_batch.max(1);
        self
    }

    /// How many deferred writes may wait while the database refuses them before the oldest are
    /// dropped, and before [`SqliteStore::defer`] refuses new ones with
    /// [`SqliteError::Backlog`] (default 100,000).
    pub fn max_pending(mut self, max_pending: usize) -> Self {
        self.config.max_pending = max_pending.max(1);
        self
    }

    /// The page size of a new file (SQLite's default is 4096). Larger pages make reads of large
    /// blobs (cached bodies) faster; an existing file keeps its page size.
    pub fn page_size(mut self, bytes: u32) -> Self {
        self.config.page_size = Some(bytes);
        self
    }

    /// How often the writer runs a passive WAL checkpoint (default 1 s).
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.config.checkpoint_interval = interval;
        self
    }

    /// How large the WAL may grow before the writer's checkpoint makes it start over (default
    /// 64 MiB).
    ///
    /// A passive checkpoint never waits for writers, and SQLite starts the WAL over only once a
    /// checkpoint has caught up with every write. Under a steady stream of writes that leaves it
    /// no pause (several processes' saturated rate limiters: 50 MB a second), a passive
    /// checkpoint never catches up and the WAL grows without bound. Past this size the writer's
    /// checkpoint also runs SQLite's restart checkpoint, which takes the write lock (with the
    /// busy handler), copies what the passive one left and lets the next write start the WAL
    /// from the beginning: other writers wait for it (milliseconds; it gives up after 50 ms, and
    /// is not tried while a reader holds an older snapshot, which it would wait for). The WAL
    /// file keeps its size and is reused; only when it has grown past twice this size (a spike,
    /// or a reader that held the WAL for a while) does the writer cut it back.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let sqlite = courteous::store::sqlite::SqliteStore::builder(dir.path().join("c.db"))
    ///     .max_wal_size(16 << 20)
    ///     .open()
    ///     .await?;
    /// # sqlite.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_wal_size(mut self, bytes: u64) -> Self {
        self.config.max_wal_size = bytes;
        self
    }

    /// Makes an existing database that group or others may read owner-only at open: `chmod
    /// 0600` of the file and of its `-wal` and `-shm` files (default off: such a file is only
    /// reported, with a warning). A new file is always created 0600.
    ///
    /// Cached bodies, rate-limit history and dedupe results may be private; leave this off only
    /// when other users are meant to share the file.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::fs::PermissionsExt;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("c.db");
    /// std::fs::write(&path, b"")?;
    /// std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    /// let sqlite = courteous::store::sqlite::SqliteStore::builder(&path)
    ///     .tighten_permissions(true)
    ///     .open()
    ///     .await?;
    /// assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
    /// # sqlite.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tighten_permissions(mut self, tighten: bool) -> Self {
        self.config.tighten_permissions = tighten;
        self
    }

    /// How often the writer checks that the path still names the file it opened (default 1 s,
    /// at least 10 ms).
    ///
    /// A database file deleted or replaced under a running process (a cleanup script, a restore
    /// from backup) stays open in that process, which goes on alone with the old file (SQLite
    /// refuses its writes) while the others use the new one: they stop sharing limits, cache
    /// and dedupe. When the path's identity (device and inode) changes, or the file is gone,
    /// the store logs a warning, reopens the path (creating and migrating a new file if
    /// needed) and counts it in [`SqliteStats::reopened`]; deferred writes not yet committed
    /// go to the new file. A write refused as read-only makes the writer check at once.
    ///
    /// Replace a database with its `-wal` and `-shm` files removed (SQLite's own rule): a WAL
    /// left next to the new file would be read as the new file's.
    ///
    /// [`SqliteStats::reopened`]: super::SqliteStats::reopened
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let sqlite = courteous::store::sqlite::SqliteStore::builder(dir.path().join("c.db"))
    ///     .file_check_interval(std::time::Duration::from_secs(5))
    ///     .open()
    ///     .await?;
    /// assert_eq!(sqlite.stats().reopened, 0);
    /// # sqlite.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn file_check_interval(mut self, interval: Duration) -> Self {
        // Zero would keep the writer thread polling the file system.
        self.config.file_check_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Opens (creating if needed) and migrates the database.
    pub async fn open(self) -> Result<SqliteStore, SqliteError> {
        SqliteStore::start(Location::new(&self.path)?, self.config).await
    }
}
