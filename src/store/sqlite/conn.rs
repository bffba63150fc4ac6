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
    // held every writer up for 20 ms (ext4 with online discard). The writer's checkpoint cuts it
    // back instead, only after a spike (see `checkpoint`).
    conn.pragma_update(None, "journal_size_limit", -1i64)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// How long the writer's restart and truncate checkpoints wait for the write lock and for
/// readers, holding the write lock while they wait for readers: every other writer waits too.
const RESTART_BUSY: Duration = Duration::from_millis(50);

/// Runs a passive checkpoint: copies what it can from the WAL into the database without waiting
/// for readers or writers. Automatic checkpoints are off on every connection so that no request
/// ever pays for one. Returns whether the WAL was started over.
///
/// When the WAL then holds more than `max_wal_size` bytes (see
/// [`SqliteStoreBuilder::max_wal_size`]) and the passive checkpoint copied all of it, a restart
/// checkpoint follows, so that it starts over; and when the WAL file (of the database at `path`)
/// has grown past twice `max_wal_size` (a spike, or a reader that held the WAL for a while), a
/// truncate checkpoint cuts it back. Both wait at most [`RESTART_BUSY`]. When the passive
/// checkpoint could not copy everything, a reader is on an older snapshot: a restart would hold
/// the write lock while waiting for it, so none is tried.
///
/// [`SqliteStoreBuilder::max_wal_size`]: super::SqliteStoreBuilder::max_wal_size
pub(super) fn checkpoint(conn: &Connection, path: &Path, max_wal_size: u64) -> bool {
    let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    let (frames, copied) = match passive {
        Ok(counts) => counts,
        Err(error) => {
            tracing::debug!(%error, "passive wal checkpoint did not run");
            return false;
        }
    };
    let page_size = conn
        .query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0))
        .map_or(4096, |size| u64::try_from(size).unwrap_or(4096));
    let bytes = u64::try_from(frames).unwrap_or(0).saturating_mul(page_size);
    if bytes <= max_wal_size || copied < frames {
        return false;
    }
    if !checkpoint_briefly(conn, "RESTART") {
        return false;
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if std::fs::metadata(wal).is_ok_and(|file| file.len() > max_wal_size.saturating_mul(2)) {
        checkpoint_briefly(conn, "TRUNCATE");
    }
    true
}

/// Runs a blocking checkpoint (`RESTART` or `TRUNCATE`) with a busy timeout of
/// [`RESTART_BUSY`]; whether it completed.
fn checkpoint_briefly(conn: &Connection, mode: &str) -> bool {
    let saved = BUSY.with(|busy| busy.replace((RESTART_BUSY, None)));
    let result = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        row.get::<_, i64>(0)
    });
    BUSY.with(|busy| busy.set(saved));
    match result {
        Ok(0) => true,
        Ok(_) => {
            tracing::debug!(mode, "wal checkpoint was blocked");
            false
        }
        Err(error) => {
            tracing::debug!(%error, mode, "wal checkpoint did not run");
            false
        }
    }
}
