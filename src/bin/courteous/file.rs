//! The file itself: `check` (read only, without opening the store, so that it works on a
//! damaged file) and `vacuum`, and the sizes and schema versions `stats` shows.

use std::path::{Path, PathBuf};

use courteous::store::sqlite::{SqliteError, SqliteStore};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

use crate::commands::Failure;
use crate::output::{Report, Table, bytes};

/// The file's companions that SQLite makes in WAL mode.
fn companions(path: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

/// The sizes of the database file and of its WAL (0 for a file that is not there).
pub fn sizes(path: &Path) -> (u64, u64) {
    let [db, wal, _] = companions(path);
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    (size(&db), size(&wal))
}

/// The rows of `courteous_schema`: each part of the file and its schema version.
pub async fn schema_versions(store: &SqliteStore) -> Result<Vec<(String, i64)>, SqliteError> {
    store.call(|conn| read_versions(conn)).await
}

fn read_versions(conn: &Connection) -> Result<Vec<(String, i64)>, SqliteError> {
    let mut statement =
        conn.prepare("SELECT component, version FROM courteous_schema ORDER BY component")?;
    let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// `check`: the report and whether everything is fine.
pub fn check(path: &Path) -> (Report, bool) {
    let mut problems = Vec::new();
    let mut table = Table::new(&["check", "result"]);
    let mut integrity = Vec::new();
    let mut versions = Vec::new();
    match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) {
        Err(e) => problems.push(format!("cannot open {}: {e}", path.display())),
        Ok(conn) => {
            let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
            match integrity_check(&conn) {
                Ok(lines) => integrity = lines,
                Err(e) => integrity = vec![e.to_string()],
            }
            if integrity != ["ok"] {
                problems.push(format!("integrity check: {}", integrity.join("; ")));
            }
            match read_versions(&conn) {
                Ok(v) if !v.is_empty() => versions = v,
                Ok(_) => problems.push("no schema versions in courteous_schema".to_owned()),
                Err(e) => problems.push(format!("schema versions: {e}")),
            }
        }
    }
    table.row(vec!["integrity".into(), integrity.join("; ")]);
    for (component, version) in &versions {
        table.row(vec![format!("schema {component}"), version.to_string()]);
    }
    let mut modes = Vec::new();
    for file in companions(path) {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = file_mode(&meta);
        if mode.is_some_and(|m| m & 0o077 != 0) {
            problems.push(format!(
                "{} is readable by others (mode {:o}; want 600)",
                file.display(),
                mode.unwrap_or(0)
            ));
        }
        let shown = mode.map_or_else(|| "-".to_owned(), |m| format!("{m:o}"));
        table.row(vec![format!("mode {}", file.display()), shown.clone()]);
        modes.push(json!({ "file": file.display().to_string(), "mode": shown }));
    }
    let (db, wal) = sizes(path);
    table.row(vec!["database size".into(), bytes(db)]);
    table.row(vec!["WAL size".into(), bytes(wal)]);
    let ok = problems.is_empty();
    table.row(vec![
        "verdict".into(),
        if ok { "ok".into() } else { problems.join("; ") },
    ]);
    let versions_json: serde_json::Map<_, _> = versions
        .iter()
        .map(|(c, v)| (c.clone(), json!(v)))
        .collect();
    let report = Report {
        json: json!({
            "ok": ok,
            "problems": problems,
            "integrity": integrity,
            "schema": versions_json,
            "modes": modes,
            "database_bytes": db,
            "wal_bytes": wal,
        }),
        tables: vec![(String::new(), table)],
    };
    (report, ok)
}

fn integrity_check(conn: &Connection) -> Result<Vec<String>, rusqlite::Error> {
    let mut statement = conn.prepare("PRAGMA integrity_check")?;
    let rows = statement.query_map([], |r| r.get::<_, String>(0))?;
    rows.collect()
}

#[cfg(unix)]
fn file_mode(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    Some(meta.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn file_mode(_meta: &std::fs::Metadata) -> Option<u32> {
    None
}

/// `vacuum`: rewrites the file (holding the write lock for the whole rewrite).
pub async fn vacuum(store: &SqliteStore) -> Result<Report, Failure> {
    let path = store.path().to_path_buf();
    let (before, _) = sizes(&path);
    store
        .call(|conn| {
            conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok::<_, SqliteError>(())
        })
        .await?;
    let (after, wal) = sizes(&path);
    let mut table = Table::new(&[]);
    table.row(vec![format!(
        "vacuumed {}: {} -> {} (WAL {})",
        path.display(),
        bytes(before),
        bytes(after),
        bytes(wal)
    )]);
    Ok(Report {
        json: json!({ "path": path.display().to_string(), "bytes_before": before, "bytes_after": after, "wal_bytes": wal }),
        tables: vec![(String::new(), table)],
    })
}
