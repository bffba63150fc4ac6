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

/// The file a `file:` URI names, percent-decoded; `None` when `path` is not a `file:` URI.
///
/// A URI with parameters or a fragment (`?mode=ro`, `?vfs=`, `#...`), or with a host other than
/// `localhost`, is refused: courteous opens the file itself, and SQLite would create a file it
/// names with the default permissions instead of 0600.
pub(super) fn uri_path(path: &Path) -> Result<Option<std::path::PathBuf>, SqliteError> {
    let raw = path.as_os_str().as_encoded_bytes();
    let Some(rest) = raw.strip_prefix(b"file:") else {
        return Ok(None);
    };
    let refuse = |what| {
        Err(SqliteError::UnsupportedUri {
            path: path.to_path_buf(),
            what,
        })
    };
    if rest.iter().any(|&b| b == b'?' || b == b'#') {
        return refuse("parameters");
    }
    let rest = match rest.strip_prefix(b"//") {
        Some(authority_and_path) => {
            let end = authority_and_path
                .iter()
                .position(|&b| b == b'/')
                .unwrap_or(authority_and_path.len());
            let host = &authority_and_path[..end];
            if !host.is_empty() && !host.eq_ignore_ascii_case(b"localhost") {
                return refuse("a host");
            }
            &authority_and_path[end..]
        }
        None => rest,
    };
    let mut decoded = Vec::with_capacity(rest.len());
    let mut i = 0;
    while i < rest.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (rest[i], rest.get(i + 1).copied(), rest.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                decoded.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    if decoded.is_empty() {
        return refuse("no file name");
    }
    #[cfg(unix)]
    let file = {
        use std::os::unix::ffi::OsStringExt;
        std::path::PathBuf::from(std::ffi::OsString::from_vec(decoded))
    };
    #[cfg(not(unix))]
    let file = std::path::PathBuf::from(String::from_utf8_lossy(&decoded).into_owned());
    Ok(Some(file))
}

/// What identifies a file whatever its name: device and inode.
pub(super) type FileId = (u64, u64);

/// The identity of the file `location`'s path names now; `None` when there is none (or for an
/// in-memory database).
pub(super) fn file_id(location: &Location) -> Option<FileId> {
    let Location::File(path) = location else {
        return None;
    };
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// `path` with `suffix` appended to its file name (`-wal`, `-shm`).
pub(super) fn companion(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Reports (and with `tighten`, fixes) a database that group or others may read, and gives the
/// `-wal` and `-shm` files back the owner's read and write access the database file has.
///
/// SQLite creates the `-wal` and `-shm` files with the database file's mode. A read-only open of
/// a file made read-only (0400) therefore leaves a 0400 `-shm` behind; once the file is writable
/// again, SQLite opened that `-shm` read-only and every write failed while the open succeeded.
/// Runs on the writer thread before any connection opens.
#[cfg(unix)]
pub(super) fn check_permissions(path: &Path, tighten: bool) {
    use std::os::unix::fs::PermissionsExt;

    let mode_of = |file: &Path| {
        std::fs::metadata(file)
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
    };
    let set_mode = |file: &Path, mode: u32| {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))
    };
    // A new file is created 0600 by `create_owner_only`.
    let Some(db_mode) = mode_of(path) else {
        return;
    };
    let mut open_to_others = Vec::new();
    for (file, suffix) in [
        (path.to_path_buf(), ""),
        (companion(path, "-wal"), "-wal"),
        (companion(path, "-shm"), "-shm"),
    ] {
        let Some(mode) = mode_of(&file) else {
            continue;
        };
        let mut wanted = mode;
        if !suffix.is_empty() {
            // The owner's access the database file has, which SQLite copied at creation.
            wanted |= db_mode & 0o600;
        }
        if tighten {
            wanted &= !0o077;
        }
        if wanted != mode {
            match set_mode(&file, wanted) {
                Ok(()) => tracing::info!(
                    file = %file.display(),
                    from = format_args!("{mode:o}"),
                    to = format_args!("{wanted:o}"),
                    "changed the mode of a sqlite database file"
                ),
                Err(error) => tracing::warn!(
                    file = %file.display(),
                    mode = format_args!("{mode:o}"),
                    %error,
                    "could not change the mode of a sqlite database file"
                ),
            }
        }
        let now = mode_of(&file).unwrap_or(wanted);
        if now & 0o077 != 0 {
            open_to_others.push(format!("{}{suffix} ({now:o})", path.display()));
        }
    }
    if !open_to_others.is_empty() {
        tracing::warn!(
            files = %open_to_others.join(", "),
            "sqlite database files are readable by group or others; open with \
             SqliteStoreBuilder::tighten_permissions(true) (or chmod 0600 them) unless other \
             users are meant to share them"
        );
    }
}

#[cfg(not(unix))]
pub(super) fn check_permissions(_path: &Path, _tighten: bool) {}

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
            // SQLite (built with URIs on) would read a name starting with `file:` as a URI.
            let path = if path.as_os_str().as_encoded_bytes().starts_with(b"file:") {
                Path::new(".").join(path)
            } else {
                path.clone()
            };
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
    // A connection that may read but not write (a `-shm` or `-wal` file it may only read) opens
    // without complaint and fails every write later: take the write lock once to find out.
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .map_err(|error| match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ReadOnly) => SqliteError::ReadOnly {
                path: location.path().to_path_buf(),
            },
            _ => SqliteError::from(error),
        })?;
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
