//! The embedded SQLite backend: one file for every store and every process on a machine.
//!
//! [`SqliteStore`] owns the file. It opens it in WAL mode with `synchronous=NORMAL`, a busy
//! timeout and owner-only permissions (0600, inherited by the `-wal` and `-shm` files), applies the
//! schema migrations every compiled-in store needs (see the `schema` notes below), and runs all
//! SQLite work on threads of its own:
//!
//! * a small pool of connections (two by default) runs [`call`](SqliteStore::call) jobs: reads,
//!   and writes that must be committed before the request goes on (a rate-limit admission);
//! * one writer thread commits deferred writes in batches (write-behind): see
//!   [`defer`](SqliteStore::defer), [`flush`](SqliteStore::flush) and [`close`](SqliteStore::close).
//!
//! The async runtime only ever waits on a channel. Several processes may open the same file at
//! once; locks are waited for with a fine-grained busy handler (no millisecond sleeps), and WAL
//! checkpoints run passively on the writer thread, never on a request; only when the WAL has
//! grown past [`max_wal_size`](SqliteStoreBuilder::max_wal_size) (writes that never pause) does
//! the writer's checkpoint make other writers wait while it starts the WAL over.
//!
//! # Files
//!
//! A new database is created 0600; SQLite gives its `-wal` and `-shm` files the database's mode.
//! A `file:` URI is taken as the file it names (a URI with parameters or a host is refused with
//! [`SqliteError::UnsupportedUri`]). At open, files that group or others may read are reported
//! (made 0600 with [`tighten_permissions`](SqliteStoreBuilder::tighten_permissions)), the
//! `-wal` and `-shm` get back the owner access the database has (a failed read-only open left a
//! 0400 `-shm` that broke every later write), and each connection takes the write lock once, so
//! that a store that could only read fails at open with [`SqliteError::ReadOnly`]. A file
//! deleted or replaced while open is reopened (see
//! [`file_check_interval`](SqliteStoreBuilder::file_check_interval)).
//!
//! # Schema
//!
//! Each part of courteous that keeps tables here has its own numbered list of migrations, recorded
//! per part in the `courteous_schema` table. Opening a file made by an older version upgrades it in
//! place, in one transaction; a file made by a newer version is refused with
//! [`SqliteError::SchemaTooNew`].
//!
//! # Your own tables
//!
//! [`call`](SqliteStore::call) and [`defer`](SqliteStore::defer) hand you a
//! [`rusqlite::Connection`] on a store thread, so an application can keep its own tables in the
//! same file, on the same threads. The `rusqlite` version is re-exported as
//! [`courteous::store::sqlite::rusqlite`](rusqlite).
//!
//! # Note on dropping
//!
//! Dropping the last handle makes the writer commit what is pending and stop, but nothing waits for
//! it; a process that is about to exit should `close().await` (or `flush().await`) first.
//!
//! # Layout
//!
//! * `mod.rs`: [`SqliteStore`] (opening, the worker threads, `call`, `defer`, `flush`,
//!   `close`) and where the database lives;
//! * `builder.rs`: [`SqliteStoreBuilder`] and the configuration it fills in;
//! * `conn.rs`: opening one connection (pragmas, permissions, the busy handler);
//! * `writer.rs`: the write-behind writer thread (batches, checkpoints, reopening);
//! * `schema.rs`: the versioned migrations of every component;
//! * `stats.rs`: the writer's counters and [`SqliteStats`]; `error.rs`: [`SqliteError`].
//!
//! # Example
//!
//! ```
//! use courteous::store::sqlite::SqliteStore;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courteous::store::sqlite::SqliteError> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::builder(dir.path().join("courteous.db"))
//!     .busy_timeout(Duration::from_secs(5))
//!     .flush_interval(Duration::from_millis(50))
//!     .open()
//!     .await?;
//!
//! store
//!     .call(|conn| {
//!         conn.execute_batch("CREATE TABLE IF NOT EXISTS visits (url TEXT NOT NULL)")?;
//!         Ok(())
//!     })
//!     .await?;
//! store.defer(|conn| conn.execute("INSERT INTO visits VALUES ('/a')", []).map(drop))?;
//! store.flush().await?;
//! let n: i64 = store
//!     .call(|conn| Ok(conn.query_row("SELECT count(*) FROM visits", [], |r| r.get(0))?))
//!     .await?;
//! assert_eq!(n, 1);
//! store.close().await?;
//! # Ok(())
//! # }
//! ```

mod builder;
mod conn;
mod error;
pub(crate) mod schema;
mod stats;
mod writer;

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
pub use rusqlite;
use rusqlite::Connection;
use tokio::sync::oneshot;

pub use builder::SqliteStoreBuilder;
pub use error::SqliteError;
pub use stats::SqliteStats;
pub use writer::DeferredWrite;

pub(crate) use builder::Config;
pub(crate) use stats::Counters;
use writer::{AfterCommit, Message, Writer};

/// Where the database lives.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    File(PathBuf),
    /// An in-memory database shared by the store's connections (SQLite's `memdb` VFS).
    Memory(String),
}

impl Location {
    /// Where `path` points. A `file:` URI without parameters is the file it names (created
    /// owner-only like any other); one with parameters (`?mode=`, `?vfs=`, `?immutable=`...) or
    /// a host is refused: courteous opens the file itself, and SQLite would otherwise create it
    /// with the default permissions.
    fn new(path: &Path) -> Result<Self, SqliteError> {
        let path = match conn::uri_path(path)? {
            Some(file) => file,
            None => path.to_path_buf(),
        };
        if path.as_os_str() == ":memory:" {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            Ok(Location::Memory(format!(
                "courteous-{}-{n}",
                std::process::id()
            )))
        } else {
            Ok(Location::File(path))
        }
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            Location::File(path) => path,
            Location::Memory(_) => Path::new(":memory:"),
        }
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send + 'static>;

thread_local! {
    /// On a store thread: which opening of the database file its connection belongs to.
    static FILE_EPOCH: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Which opening of the database file the connection of the current store thread belongs to
/// (in a [`SqliteStore::call`] job). It changes when the file was deleted or replaced and the
/// connection reopened it (see [`SqliteStoreBuilder::file_check_interval`]): what a store keeps
/// in memory about the file's rows belongs to the old file then.
pub(crate) fn file_epoch() -> u64 {
    FILE_EPOCH.with(std::cell::Cell::get)
}

struct Shared {
    location: Location,
    config: Config,
    counters: Arc<Counters>,
    jobs: RwLock<Option<Sender<Job>>>,
    writer: Mutex<Option<Sender<Message>>>,
    /// One per worker, resolved once its connection is closed.
    workers_done: Mutex<Vec<oneshot::Receiver<()>>>,
}

/// A SQLite database file shared by every courteous store and process on a machine.
///
/// Cheap to clone: clones share the file, the threads and the queue. See the
/// [module documentation](self) for what it does and the example.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.location.path())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn spawn_thread(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), SqliteError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map(drop)
        .map_err(|e| SqliteError::Open {
            path: PathBuf::from("<thread>"),
            source: Box::new(e),
        })
}

impl SqliteStore {
    /// Opens the database at `path` with the default options; `":memory:"` makes a private
    /// in-memory database (shared by this store's connections, gone when it closes).
    ///
    /// # Errors
    ///
    /// [`SqliteError::Open`] when the file cannot be created or opened,
    /// [`SqliteError::ReadOnly`], [`SqliteError::NotADatabase`], [`SqliteError::Corrupt`],
    /// [`SqliteError::SchemaTooNew`], [`SqliteError::UnsupportedUri`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, SqliteError> {
        Self::builder(path).open().await
    }

    /// Options for opening the database at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_path_buf(),
            config: Config::default(),
        }
    }

    async fn start(location: Location, config: Config) -> Result<Self, SqliteError> {
        let counters = Arc::new(Counters::default());
        let thread_tag = match &location {
            Location::File(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Location::Memory(_) => "memory".to_owned(),
        };

        // The writer opens first and migrates the schema; the workers open after it.
        let (writer_tx, writer_rx) = crossbeam_channel::bounded::<Message>(config.max_pending);
        let (ready_tx, ready_rx) = oneshot::channel();
        {
            let (location, config, counters) = (location.clone(), config.clone(), counters.clone());
            spawn_thread(format!("courteous-sqlite-writer-{thread_tag}"), move || {
                if let Location::File(path) = &location {
                    conn::check_permissions(path, config.tighten_permissions);
                }
                let opened = writer::open_and_migrate(&location, &config);
                match opened {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        Writer::new(conn, location, config, counters).run(writer_rx);
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            })?;
        }
        ready_rx.await.map_err(|_| SqliteError::Panicked)??;

        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
        let mut ready = Vec::with_capacity(config.workers);
        let mut workers_done = Vec::with_capacity(config.workers);
        for i in 0..config.workers {
            let (location, config, jobs) = (location.clone(), config.clone(), jobs_rx.clone());
            let counters = counters.clone();
            let (ready_tx, ready_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            ready.push(ready_rx);
            workers_done.push(done_rx);
            spawn_thread(
                format!("courteous-sqlite-{i}-{thread_tag}"),
                move || match conn::open(&location, &config) {
                    Ok(mut conn) => {
                        let _ = ready_tx.send(Ok(()));
                        let mut generation = counters.generation.load(Ordering::Acquire);
                        FILE_EPOCH.with(|epoch| epoch.set(generation));
                        for job in jobs {
                            // The writer found the file deleted or replaced and reopened it.
                            let now = counters.generation.load(Ordering::Acquire);
                            if now != generation {
                                match conn::open(&location, &config) {
                                    Ok(reopened) => {
                                        conn = reopened;
                                        generation = now;
                                        FILE_EPOCH.with(|epoch| epoch.set(now));
                                    }
                                    Err(error) => tracing::warn!(
                                        %error,
                                        "could not reopen the sqlite database; will try again"
                                    ),
                                }
                            }
                            job(&mut conn);
                        }
                        drop(conn);
                        let _ = done_tx.send(());
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                },
            )?;
        }
        let store = SqliteStore {
            shared: Arc::new(Shared {
                location,
                config,
                counters,
                jobs: RwLock::new(Some(jobs_tx)),
                writer: Mutex::new(Some(writer_tx)),
                workers_done: Mutex::new(workers_done),
            }),
        };
        for ready in ready {
            ready.await.map_err(|_| SqliteError::Panicked)??;
        }
        Ok(store)
    }

    /// The database file (`":memory:"` for an in-memory database).
    pub fn path(&self) -> &Path {
        self.shared.location.path()
    }

    /// Runs `f` with a connection on one of the store's threads and returns its result.
    ///
    /// Use it for reads and for writes that must be committed before the caller goes on; wrap
    /// several statements in a transaction (`conn.transaction_with_behavior(Immediate)`) to make
    /// them atomic. Generic SQLite errors come back as the typed [`SqliteError`] variant their
    /// code stands for (busy, read-only, corrupt...).
    ///
    /// If the returned future is dropped before a thread picks the job up, the job is skipped: a
    /// cancelled caller leaves nothing behind. If `f` panics, its open transaction is rolled back
    /// and the call fails with [`SqliteError::Panicked`].
    pub async fn call<F, R>(&self, f: F) -> Result<R, SqliteError>
    where
        F: FnOnce(&mut Connection) -> Result<R, SqliteError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            if reply.is_closed() {
                return;
            }
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)));
            if !conn.is_autocommit() {
                // A job that returned or panicked inside a transaction leaves nothing open.
                let _ = conn.execute_batch("ROLLBACK");
            }
            let _ = reply.send(outcome.unwrap_or(Err(SqliteError::Panicked)));
        });
        {
            let jobs = self.shared.jobs.read();
            let sender = jobs.as_ref().ok_or(SqliteError::Closed)?;
            sender.send(job).map_err(|_| SqliteError::Closed)?;
        }
        let config = &self.shared.config;
        result
            .await
            .map_err(|_| SqliteError::Closed)?
            .map_err(|e| e.refine(self.path(), config.busy_timeout))
    }

    /// Queues a write for the write-behind writer, which commits it with others in one
    /// transaction within the flush interval. See [`defer_keyed`](Self::defer_keyed) for writes
    /// that supersede each other.
    ///
    /// # Errors
    ///
    /// [`SqliteError::Closed`] after [`close`](Self::close); [`SqliteError::Backlog`] when the
    /// queue is full because the database has refused writes for a long time.
    pub fn defer<F>(&self, write: F) -> Result<(), SqliteError>
    where
        F: Fn(&Connection) -> rusqlite::Result<()> + Send + 'static,
    {
        self.send_write(None, Box::new(write), None)
    }

    /// Like [`defer`](Self::defer), but a pending write with the same `key` is replaced by this
    /// one instead of running too (last write wins).
    pub fn defer_keyed<F>(&self, key: impl Into<Box<[u8]>>, write: F) -> Result<(), SqliteError>
    where
        F: Fn(&Connection) -> rusqlite::Result<()> + Send + 'static,
    {
        self.send_write(Some(key.into()), Box::new(write), None)
    }

    /// Like [`defer_keyed`](Self::defer_keyed), and runs `after` on the writer thread once the
    /// transaction that ran `write` has committed (not when `write` is replaced by a later write
    /// with the same key, dropped from a full queue, or lost at close). A store that keeps its
    /// own copy of what it wrote, readable until the file has it, drops the copy here.
    pub(crate) fn defer_keyed_then<F>(
        &self,
        key: impl Into<Box<[u8]>>,
        write: F,
        after: impl FnOnce() + Send + 'static,
    ) -> Result<(), SqliteError>
    where
        F: Fn(&Connection) -> rusqlite::Result<()> + Send + 'static,
    {
        self.send_write(Some(key.into()), Box::new(write), Some(Box::new(after)))
    }

    fn send_write(
        &self,
        key: Option<Box<[u8]>>,
        write: DeferredWrite,
        after: Option<AfterCommit>,
    ) -> Result<(), SqliteError> {
        let writer = self.shared.writer.lock();
        let sender = writer.as_ref().ok_or(SqliteError::Closed)?;
        match sender.try_send(Message::Write { key, write, after }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SqliteError::Backlog {
                path: self.path().to_path_buf(),
                capacity: self.shared.config.max_pending,
            }),
            Err(TrySendError::Disconnected(_)) => Err(SqliteError::Closed),
        }
    }

    /// Commits every write deferred before this call.
    ///
    /// # Errors
    ///
    /// The error of the commit when the database refused it; the writes stay queued and are
    /// retried.
    pub async fn flush(&self) -> Result<(), SqliteError> {
        let (reply, result) = oneshot::channel();
        {
            let writer = self.shared.writer.lock();
            let sender = writer.as_ref().ok_or(SqliteError::Closed)?;
            sender
                .send(Message::Flush(reply))
                .map_err(|_| SqliteError::Closed)?;
        }
        result.await.map_err(|_| SqliteError::Closed)?
    }

    /// Commits what is pending, runs a last checkpoint and stops the store's threads, returning
    /// once every connection of this store is closed. Every clone is closed; later calls fail
    /// with [`SqliteError::Closed`].
    ///
    /// # Errors
    ///
    /// The error of the last commit, if the database refused it (the writes it held are lost).
    pub async fn close(&self) -> Result<(), SqliteError> {
        let writer = self.shared.writer.lock().take();
        self.shared.jobs.write().take();
        let Some(writer) = writer else {
            return Ok(());
        };
        let (reply, result) = oneshot::channel();
        writer
            .send(Message::Close(reply))
            .map_err(|_| SqliteError::Closed)?;
        let result = result.await.map_err(|_| SqliteError::Closed)?;
        let workers = std::mem::take(&mut *self.shared.workers_done.lock());
        for done in workers {
            // Finishes the jobs queued before close, then closes its connection.
            let _ = done.await;
        }
        result
    }
}
