//! Issue 12 item 11, second half: a database file deleted or replaced under a running store is
//! noticed, logged and reopened, so that the store shares with the others again.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use courteous::RequestKey;
use courteous::cache::{CacheEntry, CacheStore, SqliteCacheStore};
use courteous::store::sqlite::SqliteStore;

use crate::logs;

fn entry(body: &'static str) -> Arc<CacheEntry> {
    Arc::new(
        CacheEntry::new(
            format!("http://h/{body}"),
            http::StatusCode::OK,
            Bytes::from_static(body.as_bytes()),
            SystemTime::now(),
        )
        .fresh_for(Duration::from_secs(600), Duration::ZERO),
    )
}

fn key(n: u8) -> RequestKey {
    RequestKey::from_parts([n; 32], format!("GET http://h/{n}"))
}

/// Waits (generously: the machine may be loaded) until `cache` has `key`.
async fn eventually_sees(cache: &SqliteCacheStore, key: &RequestKey) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if cache.get(key).await.unwrap().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn remove_database(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(name));
    }
}

/// `rm courteous.db*` under a running store, then another store creates the file anew: the
/// first one went on alone with the deleted file and never saw the other's writes again. Then
/// the file is replaced by another database (`mv`, the old `-wal` and `-shm` removed): both
/// follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_replaced_database_is_reopened() {
    logs::capture();
    let (dir, path) = crate::support::temp_db();
    let open = || {
        SqliteStore::builder(&path)
            .file_check_interval(Duration::from_millis(20))
            .open()
    };
    let first = open().await.unwrap();
    let first_cache = first.cache();
    first_cache.put(&key(1), entry("one")).await.unwrap();
    first.flush().await.unwrap();

    remove_database(&path);
    // Its WAL is never checkpointed while open: what it commits stays in its -wal.
    let second = SqliteStore::builder(&path)
        .file_check_interval(Duration::from_millis(20))
        .checkpoint_interval(Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    let second_cache = second.cache();
    assert!(
        second_cache.get(&key(1)).await.unwrap().is_none(),
        "a new file"
    );
    second_cache.put(&key(2), entry("two")).await.unwrap();
    second.flush().await.unwrap();
    assert!(
        eventually_sees(&first_cache, &key(2)).await,
        "the first store never saw the new file's entry"
    );
    assert_eq!(first.stats().reopened, 1);
    let shown = path.display().to_string();
    assert_eq!(
        // "deleted" or "replaced", whichever the check saw first.
        logs::lines_with(&["WARN", &shown, "while open; reopening"]).len(),
        1,
        "logged once"
    );
    // Every connection of the first store has moved to the new file, closing its connection to
    // the old one: that must not have taken the new file's -wal (SQLite would delete it by
    // name, were the moved file not noticed).
    for _ in 0..8 {
        let _ = first_cache.get(&key(9)).await.unwrap();
    }
    second_cache.put(&key(5), entry("five")).await.unwrap();
    second.flush().await.unwrap();
    let third = SqliteStore::open(&path).await.unwrap();
    assert!(
        third.cache().get(&key(5)).await.unwrap().is_some(),
        "the second store's -wal was lost"
    );
    third.close().await.unwrap();
    // Writes of the first store reach the new file.
    first_cache.put(&key(3), entry("three")).await.unwrap();
    first.flush().await.unwrap();
    assert!(eventually_sees(&second_cache, &key(3)).await);

    // Replaced: another database moved over the path.
    let other_path = dir.path().join("other.db");
    let other = SqliteStore::open(&other_path).await.unwrap();
    other.cache().put(&key(4), entry("four")).await.unwrap();
    other.close().await.unwrap();
    // As SQLite requires of any replacement: the old -wal and -shm go too (a WAL left next to
    // the new file would be read as the new file's).
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::fs::remove_file(std::path::PathBuf::from(name)).unwrap();
    }
    std::fs::rename(&other_path, &path).unwrap();
    assert!(eventually_sees(&first_cache, &key(4)).await, "first");
    assert!(eventually_sees(&second_cache, &key(4)).await, "second");
    assert_eq!(first.stats().reopened, 2);
    assert_eq!(second.stats().reopened, 1);
    assert_eq!(
        logs::lines_with(&["WARN", &shown, "while open; reopening"]).len(),
        3,
        "each store logged its reopening"
    );

    second.close().await.unwrap();
    first.close().await.unwrap();
    // The file the stores use last holds every entry written to it.
    let check = SqliteStore::open(&path).await.unwrap();
    for n in [4] {
        assert!(check.cache().get(&key(n)).await.unwrap().is_some(), "{n}");
    }
    check.close().await.unwrap();
}

/// The same across real processes: after `rm courteous.db*`, a process that creates the file
/// anew and the running store share again, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_store_shares_with_other_processes_after_its_file_was_deleted() {
    use crate::support::child::{spawn, wait_ok};

    let (_dir, path) = crate::support::temp_db();
    let store = SqliteStore::builder(&path)
        .file_check_interval(Duration::from_millis(20))
        .open()
        .await
        .unwrap();
    let cache = store.cache();
    cache.put(&key(1), entry("one")).await.unwrap();
    store.flush().await.unwrap();

    remove_database(&path);
    let env = |op: &str, n: u8| {
        [
            ("DB", path.display().to_string()),
            ("OP", op.to_owned()),
            ("N", n.to_string()),
        ]
    };
    let out = wait_ok(spawn("reopen::child_cache", &env("put", 2)));
    assert!(out.contains("CHILD-OK"), "{out}");
    assert!(
        eventually_sees(&cache, &key(2)).await,
        "the running store never saw the other process's entry"
    );
    cache.put(&key(3), entry("three")).await.unwrap();
    store.flush().await.unwrap();
    let out = wait_ok(spawn("reopen::child_cache", &env("get", 3)));
    assert!(
        out.contains("CHILD-FOUND"),
        "the other process never saw ours: {out}"
    );
    assert_eq!(store.stats().reopened, 1);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_running_store_shares_with_other_processes_after_its_file_was_deleted"]
async fn child_cache() {
    use crate::support::child::{is_child, param};

    if !is_child("reopen::child_cache") {
        return;
    }
    let path: std::path::PathBuf = param("DB");
    let op: String = param("OP");
    let n: u8 = param("N");
    let store = SqliteStore::open(&path).await.unwrap();
    let cache = store.cache();
    match op.as_str() {
        "put" => {
            cache.put(&key(n), entry("from a child")).await.unwrap();
            store.flush().await.unwrap();
            println!("CHILD-OK");
        }
        _ => {
            if cache.get(&key(n)).await.unwrap().is_some() {
                println!("CHILD-FOUND");
            }
        }
    }
    store.close().await.unwrap();
}

/// Limits after a reopen: the rate limiter's copy of a window from the deleted file, at the
/// same generation as the new file's row, must not be taken for the new file's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_after_a_reopen_count_the_new_files_admissions() {
    use courteous::rate_limit::{
        AdaptiveConfig, AdmissionRequest, Decision, Limit, RateLimitStore, Timestamp,
    };
    use courteous::{Priority, Resource};

    let (_dir, path) = crate::support::temp_db();
    let open = || {
        SqliteStore::builder(&path)
            .file_check_interval(Duration::from_millis(20))
            .open()
    };
    let limits: Arc<[Limit]> = vec![Limit::per_minute(3)].into();
    let adaptive = Arc::new(AdaptiveConfig::default());
    let t0 = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ask = |at: u64| {
        AdmissionRequest::new(
            Resource::new("items").unwrap(),
            Priority::User,
            limits.clone(),
            adaptive.clone(),
            Timestamp::from_millis(at),
        )
    };
    let first = open().await.unwrap();
    let first_limits = first.rate_limits();
    for i in 0..3 {
        let decision = first_limits.acquire(ask(t0 + i)).await.unwrap();
        assert!(
            matches!(decision, Decision::Admitted { .. }),
            "{decision:?}"
        );
    }

    remove_database(&path);
    let second = open().await.unwrap();
    let second_limits = second.rate_limits();
    for i in 0..3 {
        let decision = second_limits.acquire(ask(t0 + 30_000 + i)).await.unwrap();
        assert!(
            matches!(decision, Decision::Admitted { .. }),
            "{decision:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while first.stats().reopened == 0 {
        assert!(Instant::now() < deadline, "never reopened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A minute after the first store's admissions, 31 s after the second's: the new file's
    // minute is full.
    let decision = first_limits.acquire(ask(t0 + 61_000)).await.unwrap();
    assert!(
        matches!(decision, Decision::Refused { .. }),
        "a fourth admission in a minute limited to 3: {decision:?}"
    );
    second.close().await.unwrap();
    first.close().await.unwrap();
}
