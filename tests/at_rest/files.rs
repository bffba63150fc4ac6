//! Issue 12 item 8: database files are owner-only however they are named, a database others may
//! read is reported (and tightened on request), and the cache layer's `Debug` shows no header
//! values of pending entries.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use courteous::RequestKey;
use courteous::cache::{CacheEntry, CacheLayer, CacheStore};
use courteous::store::sqlite::SqliteStore;

use crate::logs;

fn mode(file: &Path) -> u32 {
    std::fs::metadata(file).unwrap().permissions().mode() & 0o777
}

fn set_mode(file: &Path, mode: u32) {
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn companions(path: &Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

/// A `file:` URI names the file it would name to SQLite, created 0600 like a plain path (it
/// used to reach SQLite, which created it with the process's umask: 0644), and a URI with
/// parameters or a host is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uri_is_created_owner_only_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("by uri.db");
    let uri = format!("file:{}", dir.path().join("by%20uri.db").display());
    let store = SqliteStore::open(&uri).await.unwrap();
    store
        .call(|conn| Ok(conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)")?))
        .await
        .unwrap();
    for file in companions(&file) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    let localhost = format!("file://localhost{}", file.display());
    let again = SqliteStore::open(&localhost).await.unwrap();
    let n: i64 = again
        .call(|conn| Ok(conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(n, 1, "the URI named the same file");
    again.close().await.unwrap();
    store.close().await.unwrap();

    for (uri, what) in [
        (
            format!("file:{}?mode=rwc", dir.path().join("p.db").display()),
            "parameters",
        ),
        (
            format!("file:{}?vfs=unix-none", dir.path().join("p.db").display()),
            "parameters",
        ),
        (
            format!("file://elsewhere{}", dir.path().join("p.db").display()),
            "a host",
        ),
    ] {
        let error = SqliteStore::open(&uri).await.unwrap_err();
        assert_eq!(error.code(), "sqlite_unsupported_uri", "{uri}");
        assert!(error.to_string().contains(what), "{uri}: {error}");
        assert!(error.to_string().contains(&uri), "names the path: {error}");
    }
    assert!(
        !dir.path().join("p.db").exists(),
        "a refused URI created nothing"
    );
}

/// A database (and its `-wal` and `-shm`) that group or others may read is reported at open,
/// and made 0600 with `tighten_permissions(true)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_others_may_read_is_reported_and_tightened_on_request() {
    logs::capture();
    let (_dir, path) = crate::support::temp_db();
    // Kept open, so that the -wal and -shm files stay.
    let first = SqliteStore::open(&path).await.unwrap();
    let files = companions(&path);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
        set_mode(file, 0o644);
    }
    let shown = path.display().to_string();

    let reported = SqliteStore::open(&path).await.unwrap();
    let warnings = logs::lines_with(&["WARN", &shown, "readable by group or others"]);
    assert_eq!(
        warnings.len(),
        1,
        "one warning names the files: {warnings:?}"
    );
    assert!(warnings[0].contains("-shm (644)"), "{}", warnings[0]);
    for file in &files {
        assert_eq!(mode(file), 0o644, "only reported: {}", file.display());
    }
    reported.close().await.unwrap();

    let tightened = SqliteStore::builder(&path)
        .tighten_permissions(true)
        .open()
        .await
        .unwrap();
    for file in &files {
        assert_eq!(mode(file), 0o600, "tightened: {}", file.display());
    }
    assert_eq!(
        logs::lines_with(&["WARN", &shown, "readable by group or others"]).len(),
        1,
        "no new warning once tightened"
    );
    tightened.close().await.unwrap();
    first.close().await.unwrap();
}

/// The layer's `Debug` printed the SQLite store's pending entries, headers and all
/// (`Set-Cookie`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_layer_debug_shows_no_pending_header_values() {
    let (_dir, path) = crate::support::temp_db();
    let sqlite = SqliteStore::builder(&path)
        .flush_interval(Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    let cache = sqlite.cache();
    let mut entry = CacheEntry::new(
        "http://h/me",
        http::StatusCode::OK,
        Bytes::from_static(b"SEKRET-BODY"),
        SystemTime::now(),
    )
    .fresh_for(Duration::from_secs(60), Duration::ZERO);
    entry.headers.insert(
        http::header::SET_COOKIE,
        http::HeaderValue::from_static("session=SEKRET-COOKIE"),
    );
    let key = RequestKey::from_parts([3; 32], "GET http://h/me");
    cache.put(&key, Arc::new(entry)).await.unwrap();
    assert!(
        cache.get(&key).await.unwrap().is_some(),
        "pending in memory"
    );

    let layer = CacheLayer::new(cache.clone());
    for shown in [
        format!("{layer:?}"),
        format!("{cache:?}"),
        format!("{layer:#?}"),
    ] {
        assert!(shown.contains("SqliteCacheStore"), "{shown}");
        assert!(!shown.contains("SEKRET"), "{shown}");
    }
    sqlite.close().await.unwrap();
}
