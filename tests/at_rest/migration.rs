//! A cache file written before the stores shared one header codec (cache schema version 1)
//! opens with the new code: its entries read back intact, and a row an older process still
//! writes in the old form is a miss, never a panic.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use courteous::RequestKey;
use courteous::cache::{CacheEntry, CacheStore};
use courteous::store::sqlite::SqliteStore;
use http::{HeaderMap, HeaderValue, StatusCode, Version};
use rusqlite::{Connection, params};

use crate::support::temp_db;

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

fn key(n: u8) -> RequestKey {
    RequestKey::from_parts([n; 32], format!("GET http://h/{n}"))
}

/// A second ago, in whole milliseconds (what the store keeps).
fn a_second_ago() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms(SystemTime::now()) as u64 - 1000)
}

/// An entry of `body_len` bytes stored at `now`, fresh for an hour, with every field set.
fn entry(n: u8, body_len: usize, now: SystemTime) -> CacheEntry {
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
