//! Opening connections: file creation, pragmas, and a fine-grained busy handler.

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::error::SqliteError;
use super::{Config, Location};

thread_local! {
    /// The busy timeout of the connection owned by this thread, and when its current wait began.
    static BUSY: Cell<(Duration, Option<Instant>)> = const { Cell::new((Duration::ZERO, None)) };
}

/// SQLite's own busy handler sleeps in steps of whole milliseconds, which puts millisecond tails
/// on every contended write. This one yields, then sleeps 20 µs, doubling up to 250 µs, until the
/// thread's busy timeout runs out: at most 4,000 polls a second, a few per cent of a core, so that
/// a short gap between another connection's transactions is not missed (the rate limiter leaves
/// gaps of 300 µs for such waiters). Each connection lives on one thread, so the timeout is a
/// thread-local.
fn busy_handler(attempt: i32) -> bool {
    const MAX_BUSY_SLEEP: Duration = Duration::from_micros(250);
    BUSY.with(|busy| {
        let (timeout, started) = busy.get();
        let now = Instant::now();
        let started = match started {
            Some(started) if attempt > 0 => started,
            _ => now,
        };
        busy.set((timeout, Some(started)));
        if now.duration_since(started) >= timeout {
            return false;
        }
        if attempt < 3 {
            std::thread::yield_now();
        } else {
            let shift = (attempt - 3).min(6) as u32;
            std::thread::sleep(Duration::from_micros(20u64 << shift).min(MAX_BUSY_SLEEP));
        }
        true
    })
}

#[cfg(unix)]
fn create_owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn create_owner_only(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs `attempt` again while it fails with [`SqliteError::Busy`], for up to `timeout`.
///
/// Some steps get `SQLITE_BUSY` at once, without the busy handler being asked: switching a new
/// file to WAL while another process does the same, or reading the schema while another process
/// is creating it. Those are retried here with a short back-off.
pub(super) fn retry_busy<T>(
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T, SqliteError>,
) -> Result<T, SqliteError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match attempt() {
            Err(error) if error.is_busy() && started.elapsed() < timeout => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Opens one connection, configured for concurrent use by several threads and processes.
///
/// Must be called on the thread that will own the connection (the busy timeout is per thread).
pub(super) fn open(location: &Location, config: &Config) -> Result<Connection, SqliteError> {
    retry_busy(config.busy_timeout, || open_once(location, config))
}

fn open_once(location: &Location, config: &Config) -> Result<Connection, SqliteError> {
    BUSY.with(|busy| busy.set((config.busy_timeout, None)));
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let path = location.path();
    let conn = match location {
        Location::File(path) => {
            // SQLite creates its -wal and -shm files with the database file's permissions.
            create_owner_only(path).map_err(|e| SqliteError::Open {
                path: path.clone(),
                source: Box::new(e),
            })?;
            Connection::open_with_flags(path, flags)
        }
        Location::Memory(name) => {
            Connection::open_with_flags(format!("file:/{name}?vfs=memdb"), flags)
        }
    }
    .map_err(|e| SqliteError::from(e).refine(path, config.busy_timeout))?;
    let mut conn = conn;
    configure(&mut conn, location, config).map_err(|e| e.refine(path, config.busy_timeout))?;
    Ok(conn)
}

fn configure(
    conn: &mut Connection,
    location: &Location,
    config: &Config,
) -> Result<(), SqliteError> {
    conn.busy_handler(Some(busy_handler))?;
    // Reading the schema fails at once on a file that is not a database.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Err(SqliteError::ReadOnly {
            path: location.path().to_path_buf(),
        });
    }
    if let (Some(page_size), Location::File(_)) = (config.page_size, location) {
        // Takes effect only on a new, empty file.
        conn.pragma_update(None, "page_size", page_size)?;
    }
    if let Location::File(_) = location {
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SqliteError::Sqlite(rusqlite::Error::InvalidParameterName(
                format!("journal_mode stayed {mode}; WAL is required for concurrent use"),
            )));
        }
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 0;",
    )?;
    // SQLite would cut the WAL file back in the first commit after the WAL starts over, which
    // held every writer up for 20 ms (ext4 with online discard). The file keeps the size it
    // reached instead, which `max_wal_size` bounds (see `checkpoint`), and goes when the last
    // connection closes.
    conn.pragma_update(None, "journal_size_limit", -1i64)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Runs a passive checkpoint: copies what it can from the WAL into the database without waiting
/// for readers or writers. Automatic checkpoints are off on every connection so that no request
/// ever pays for one. When the WAL then holds more than `max_wal_size` bytes, a restart
/// checkpoint follows, so that it starts over (see [`SqliteStoreBuilder::max_wal_size`]).
/// Returns whether a restart checkpoint ran and succeeded.
///
/// [`SqliteStoreBuilder::max_wal_size`]: super::SqliteStoreBuilder::max_wal_size
pub(super) fn checkpoint(conn: &Connection, max_wal_size: u64) -> bool {
    let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        row.get::<_, i64>(1)
    });
    let frames = match passive {
        Ok(frames) => u64::try_from(frames).unwrap_or(0),
        Err(error) => {
            tracing::debug!(%error, "passive wal checkpoint did not run");
            return false;
        }
    };
    let page_size = conn
        .query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0))
        .map_or(4096, |size| u64::try_from(size).unwrap_or(4096));
    if frames.saturating_mul(page_size) <= max_wal_size {
        return false;
    }
    match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
        row.get::<_, i64>(0)
    }) {
        Ok(0) => true,
        Ok(_) => {
            tracing::debug!(frames, "restart wal checkpoint was blocked");
            false
        }
        Err(error) => {
            tracing::debug!(%error, frames, "restart wal checkpoint did not run");
            false
        }
    }
}
