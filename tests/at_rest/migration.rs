//! A cache file written before the stores shared one header codec (cache schema version 1)
//! opens with the new code: its entries read back intact, and a row an older process still
//! writes in the old form is a miss, never a panic. Attacked: headers at the edges of what the
//! old encoder wrote, two processes migrating one file at once, a process killed in the middle
//! of the migration, and a file a newer build wrote.

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use courteous::RequestKey;
use courteous::cache::{CacheEntry, CacheStore};
use courteous::store::sqlite::SqliteStore;
use http::{HeaderMap, HeaderValue, StatusCode, Version};
use rusqlite::{Connection, params};

use crate::support::{child, temp_db};

/// The schema table and the cache's table exactly as version 1 created them.
const VERSION_1: &str = "
CREATE TABLE courteous_schema (
    component   TEXT PRIMARY KEY NOT NULL,
    version     INTEGER NOT NULL,
    migrated_at TEXT NOT NULL
) STRICT;
INSERT INTO courteous_schema VALUES ('cache', 1, '2026-01-01T00:00:00Z');
CREATE TABLE cache_entries (
     key         BLOB PRIMARY KEY NOT NULL,
     url         TEXT NOT NULL,
     status      INTEGER NOT NULL,
     version     INTEGER NOT NULL,
     headers     BLOB NOT NULL,
     vary        TEXT NOT NULL,
     stored_at   INTEGER NOT NULL,
     age_ms      INTEGER NOT NULL,
     fresh_until INTEGER NOT NULL,
     expires_at  INTEGER NOT NULL,
     sliding_ms  INTEGER,
     size        INTEGER NOT NULL,
     body        BLOB NOT NULL
 ) STRICT;
CREATE INDEX cache_entries_by_expiry ON cache_entries (expires_at);
CREATE INDEX cache_entries_by_url ON cache_entries (url);";

/// Version 1's header encoder, as it was: `count u32, (name len u16, name, value len u32,
/// value)*`, little-endian.
fn encode_v1(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.as_str().len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn key(n: u32) -> RequestKey {
    let mut hash = [7; 32];
    hash[..4].copy_from_slice(&n.to_be_bytes());
    RequestKey::from_parts(hash, format!("GET http://h/{n}"))
}

/// A second ago, in whole milliseconds (what the store keeps).
fn a_second_ago() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms(SystemTime::now()) as u64 - 1000)
}

/// An entry of `body_len` bytes stored at `now`, fresh for an hour, with every field set.
fn entry(n: u32, body_len: usize, now: SystemTime) -> CacheEntry {
    let body: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
    let mut entry = CacheEntry::new(
        format!("http://h/{n}"),
        StatusCode::NOT_FOUND,
        Bytes::from(body),
        now,
    )
    .fresh_for(Duration::from_secs(3600), Duration::from_secs(60));
    entry.version = Version::HTTP_2;
    entry
        .headers
        .insert("content-type", HeaderValue::from_static("text/plain"));
    entry
        .headers
        .append("set-cookie", HeaderValue::from_static("a=1"));
    entry
        .headers
        .append("set-cookie", HeaderValue::from_static("b=2"));
    entry
        .headers
        .insert("x-empty", HeaderValue::from_static(""));
    entry.vary = vec![http::header::ACCEPT, http::header::ACCEPT_LANGUAGE];
    entry.age_at_store = Duration::from_millis(1500);
    entry.sliding = Some(Duration::from_secs(30));
    entry
}

/// Writes `entry` under `key` as version 1 did, with `headers` as its headers column.
fn insert_v1(conn: &Connection, key: &RequestKey, entry: &CacheEntry, headers: Vec<u8>) {
    conn.execute(
        "INSERT OR REPLACE INTO cache_entries
         (key, url, status, version, headers, vary, stored_at, age_ms, fresh_until, expires_at,
          sliding_ms, size, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            &key.as_bytes()[..],
            entry.url,
            i64::from(entry.status.as_u16()),
            20,
            headers,
            "accept,accept-language",
            ms(entry.stored_at),
            entry.age_at_store.as_millis() as i64,
            ms(entry.fresh_until),
            ms(entry.expires_at),
            entry.sliding.map(|d| d.as_millis() as i64),
            entry.size() as i64,
            &entry.body[..],
        ],
    )
    .unwrap();
}

fn assert_intact(got: &CacheEntry, want: &CacheEntry) {
    assert_eq!(got.url, want.url);
    assert_eq!(got.status, want.status);
    assert_eq!(got.version, want.version);
    assert_eq!(got.headers, want.headers);
    assert_eq!(got.body, want.body);
    assert_eq!(got.vary, want.vary);
    assert_eq!(got.stored_at, want.stored_at);
    assert_eq!(got.age_at_store, want.age_at_store);
    assert_eq!(got.fresh_until, want.fresh_until);
    assert_eq!(got.expires_at, want.expires_at);
    assert_eq!(got.sliding, want.sliding);
}

#[tokio::test]
async fn a_version_1_file_opens_with_its_entries_intact() {
    let (_dir, path) = temp_db();
    // Small bodies are read from the row, large ones straight from the pages.
    let entries = [(1, 0), (2, 100), (3, 200 * 1024)];
    let now = a_second_ago();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(VERSION_1).unwrap();
        for (n, len) in entries {
            let entry = entry(n, len, now);
            insert_v1(&conn, &key(n), &entry, encode_v1(&entry.headers));
        }
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let cache = store.cache();
    for (n, len) in entries {
        let got = cache
            .get(&key(n))
            .await
            .unwrap()
            .expect("kept by the migration");
        assert_intact(&got, &entry(n, len, now));
    }
    store.close().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row(
            "SELECT version FROM courteous_schema WHERE component = 'cache'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(version, 2);
}

#[tokio::test]
async fn a_row_an_old_process_writes_after_the_migration_is_a_miss() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let cache = store.cache();
    // Another process, started before the migration, still writes the old form; or the row is
    // damaged.
    let now = a_second_ago();
    let old = entry(1, 10, now);
    let conn = Connection::open(&path).unwrap();
    insert_v1(&conn, &key(1), &old, encode_v1(&old.headers));
    insert_v1(
        &conn,
        &key(2),
        &entry(2, 10, now),
        b"\xff\xff\xff\xffdamaged".to_vec(),
    );
    insert_v1(
        &conn,
        &key(3),
        &entry(3, 10, now),
        encode_v1(&HeaderMap::new()),
    );
    for n in 1..=3 {
        assert!(cache.get(&key(n)).await.unwrap().is_none(), "key {n}");
    }
    // The next write replaces it.
    cache.put(&key(1), Arc::new(old.clone())).await.unwrap();
    store.flush().await.unwrap();
    let fresh = store.cache();
    assert_intact(&fresh.get(&key(1)).await.unwrap().unwrap(), &old);
    let stats = cache.stats().await.unwrap();
    assert_eq!((stats.misses, stats.errors), (3, 0), "{stats:?}");
    store.close().await.unwrap();
}

/// Headers at the edges of what version 1 wrote: an empty value, obs-text bytes (0x80-0xff),
/// a tab inside a value, a long name, one name with many values and 10,000 fields in all.
fn odd_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-empty", HeaderValue::from_static(""));
    headers.insert(
        "x-obs-text",
        HeaderValue::from_bytes(b"caf\xe9 \x80\xff\ttab").unwrap(),
    );
    let long = "x-".to_owned() + &"n".repeat(4000);
    headers.insert(
        http::HeaderName::from_bytes(long.as_bytes()).unwrap(),
        HeaderValue::from_static("long name"),
    );
    for i in 0..5_000 {
        headers.append("x-dup", HeaderValue::from(i));
        headers.insert(
            http::HeaderName::from_bytes(format!("x-h-{i}").as_bytes()).unwrap(),
            HeaderValue::from_static(""),
        );
    }
    assert!(headers.len() > 10_000);
    headers
}

/// Entry `n` of the files below: every fiftieth one (the first included) with
/// [`odd_headers`].
fn varied_entry(n: u32, now: SystemTime) -> CacheEntry {
    let mut entry = entry(n, (n as usize * 37) % 300, now);
    if n.is_multiple_of(50) {
        entry.headers = odd_headers();
    }
    entry
}

/// A version 1 file at `path` holding `rows` [`varied_entry`]s, written in one transaction.
fn write_v1_file(path: &Path, rows: u32, now: SystemTime) {
    let mut conn = Connection::open(path).unwrap();
    conn.execute_batch(VERSION_1).unwrap();
    let tx = conn.transaction().unwrap();
    for n in 0..rows {
        let entry = varied_entry(n, now);
        insert_v1(&tx, &key(n), &entry, encode_v1(&entry.headers));
    }
    tx.commit().unwrap();
}

/// Reads every entry of a [`write_v1_file`] file through a freshly opened store.
async fn assert_file_intact(path: &Path, rows: u32, now: SystemTime) {
    let store = SqliteStore::open(path).await.expect("opens the file");
    let cache = store.cache();
    for n in 0..rows {
        let got = cache.get(&key(n)).await.unwrap();
        assert_intact(
            &got.unwrap_or_else(|| panic!("entry {n} lost")),
            &varied_entry(n, now),
        );
    }
    store.close().await.unwrap();
}

fn schema_version(conn: &Connection, component: &str) -> Option<i64> {
    conn.query_row(
        "SELECT version FROM courteous_schema WHERE component = ?1",
        [component],
        |row| row.get(0),
    )
    .ok()
}

#[tokio::test]
async fn odd_headers_the_old_encoder_wrote_survive_the_migration() {
    let (_dir, path) = temp_db();
    let now = a_second_ago();
    write_v1_file(&path, 15, now);
    assert_file_intact(&path, 15, now).await;
}

/// Child entry: opens the file named by `DB` at `START_AT_MS` (ms since the epoch) and reads
/// its `ROWS` entries back.
#[tokio::test]
#[ignore = "child process entry point, started by two_processes_open_an_old_file_at_once"]
async fn child_open() {
    if !child::is_child("migration::child_open") {
        return;
    }
    let path: String = child::param("DB");
    let rows: u32 = child::param("ROWS");
    let now = UNIX_EPOCH + Duration::from_millis(child::param("NOW_MS"));
    let start = UNIX_EPOCH + Duration::from_millis(child::param("START_AT_MS"));
    if let Ok(wait) = start.duration_since(SystemTime::now()) {
        std::thread::sleep(wait);
    }
    assert_file_intact(Path::new(&path), rows, now).await;
    println!("intact {rows}");
}

/// Two processes open one version 1 file at the same moment: one migrates, the other waits
/// for it and then finds the file up to date. Migrating twice would run the old decoder over
/// re-encoded headers and drop every row, so every entry read back intact in both processes
/// (and again afterwards) shows it ran once.
#[tokio::test]
async fn two_processes_open_an_old_file_at_once() {
    const ROWS: u32 = 2_000;
    let (_dir, path) = temp_db();
    let now = a_second_ago();
    write_v1_file(&path, ROWS, now);
    let start_at = ms(SystemTime::now()) + 500;
    let env = vec![
        ("DB", path.display().to_string()),
        ("ROWS", ROWS.to_string()),
        ("NOW_MS", ms(now).to_string()),
        ("START_AT_MS", start_at.to_string()),
    ];
    let children: Vec<Child> = (0..2)
        .map(|_| child::spawn("migration::child_open", &env))
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children.into_iter().map(child::wait_ok).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for out in outputs {
        assert!(out.contains(&format!("intact {ROWS}")), "{out}");
    }
    assert_file_intact(&path, ROWS, now).await;
    let conn = Connection::open(&path).unwrap();
    assert_eq!(schema_version(&conn, "cache"), Some(2));
}

/// Child entry: opens the file named by `DB` (migrating it) and reports.
#[tokio::test]
#[ignore = "child process entry point, started by a_migration_killed_midway_leaves_one_version"]
async fn child_migrate() {
    if !child::is_child("migration::child_migrate") {
        return;
    }
    let path: String = child::param("DB");
    let store = SqliteStore::open(Path::new(&path)).await.unwrap();
    store.close().await.unwrap();
    println!("migrated");
}

/// A process killed (`SIGKILL`) while it migrates a large version 1 file, once its
/// uncommitted pages have started to reach the WAL: the migration is one transaction, so the
/// file is still wholly version 1 (or, had the kill come late, wholly version 2), and the next
/// process to open it migrates it with every entry intact.
#[tokio::test]
async fn a_migration_killed_midway_leaves_one_version() {
    // 3,000 rows, every fiftieth with 10,000 headers: some 10 MB of headers to re-encode, far
    // more than SQLite's page cache, so the transaction spills into the WAL before it commits.
    const ROWS: u32 = 3_000;
    for kill_at_wal in [128 * 1024, 2 * 1024 * 1024] {
        let (_dir, path) = temp_db();
        let now = a_second_ago();
        write_v1_file(&path, ROWS, now);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let env = vec![("DB", path.display().to_string())];
        let mut migrating = child::spawn("migration::child_migrate", &env);
        let killed = tokio::task::spawn_blocking(move || {
            loop {
                if let Some(status) = migrating.try_wait().unwrap() {
                    assert!(status.success(), "the migrating child failed: {status}");
                    return false;
                }
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() >= kill_at_wal) {
                    migrating.kill().unwrap();
                    migrating.wait().unwrap();
                    return true;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
        .await
        .unwrap();
        let version = {
            let conn = Connection::open(&path).unwrap();
            schema_version(&conn, "cache")
        };
        eprintln!(
            "killed at {kill_at_wal} bytes of WAL: {killed}; cache version after: {version:?}"
        );
        assert!(matches!(version, Some(1 | 2)), "{version:?}");
        assert_file_intact(&path, ROWS, now).await;
    }
}

/// A file whose cache tables a newer build wrote (version 3) is refused with
/// `SchemaTooNew`, and left as it was: its rows, its versions, and no other component's
/// tables created by the refused open.
#[tokio::test]
async fn a_file_from_a_newer_build_is_refused_untouched() {
    let (_dir, path) = temp_db();
    let now = a_second_ago();
    write_v1_file(&path, 3, now);
    let before: Vec<Vec<u8>> = {
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE courteous_schema SET version = 3 WHERE component = 'cache'",
            [],
        )
        .unwrap();
        let mut select = conn
            .prepare("SELECT headers FROM cache_entries ORDER BY key")
            .unwrap();
        select
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(
        matches!(
            err,
            courteous::store::sqlite::SqliteError::SchemaTooNew {
                component: "cache",
                found: 3,
                supported: 2,
                ..
            }
        ),
        "{err}"
    );
    let conn = Connection::open(&path).unwrap();
    assert_eq!(schema_version(&conn, "cache"), Some(3));
    let components: i64 = conn
        .query_row("SELECT count(*) FROM courteous_schema", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(components, 1, "no other component recorded");
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(tables, 2, "no other component's tables");
    let after: Vec<Vec<u8>> = conn
        .prepare("SELECT headers FROM cache_entries ORDER BY key")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(before, after);
}
