//! What only the SQLite store does: persistence across processes and restarts, write-behind
//! visibility, and degrading to pass-through when the file fails. The contract it shares with
//! the other stores is in `stores.rs`.

use std::time::Duration;

use courteous::cache::{CacheLayer, CacheStatus, CacheStore, CacheTtl};
use courteous::store::sqlite::SqliteStore;

use crate::stores::{entry, key};
use crate::support::{TestServer, child, temp_db};
use crate::{client, get, send};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn the_sqlite_store_reads_its_own_writes_at_once_and_after_commit() {
    let (_dir, path) = temp_db();
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let store = sqlite.cache();
    store
        .put(&key(1), entry("http://h/1", "one", HOUR))
        .await
        .unwrap();
    // Visible before the writer committed it...
    assert_eq!(store.get(&key(1)).await.unwrap().unwrap().body, "one");
    sqlite.flush().await.unwrap();
    // ...and after, read back from the file by a fresh handle.
    let fresh = sqlite.cache();
    let got = fresh.get(&key(1)).await.unwrap().unwrap();
    assert_eq!(
        (got.body.as_ref(), got.url.as_str()),
        (&b"one"[..], "http://h/1")
    );
    // A delete supersedes a pending write.
    store
        .put(&key(2), entry("http://h/2", "two", HOUR))
        .await
        .unwrap();
    store.delete(&key(2)).await.unwrap();
    sqlite.flush().await.unwrap();
    assert!(fresh.get(&key(2)).await.unwrap().is_none());
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.entries, 1);
    assert!(stats.bytes > 3);
    sqlite.close().await.unwrap();
}

/// Child entry: stores one response in the SQLite file through the cache layer, then closes.
#[tokio::test]
#[ignore = "child process entry point, started by an_entry_stored_by_one_process_is_served_to_another_after_a_restart"]
async fn child_stores_one_response() {
    if !child::is_child("sqlite::child_stores_one_response") {
        return;
    }
    let path: String = child::param("DB_PATH");
    let url: String = child::param("URL");
    let sqlite = SqliteStore::open(&path).await.expect("open");
    let client = client(CacheLayer::new(sqlite.cache()).default_ttl(CacheTtl::absolute(HOUR)));
    let got = send(&client, get(&url)).await;
    assert_eq!(got.cache, Some(CacheStatus::Miss));
    println!("body {}", got.text());
    sqlite.close().await.expect("close");
}

#[tokio::test]
async fn an_entry_stored_by_one_process_is_served_to_another_after_a_restart() {
    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let url = server.url("/api/issues/1");
    let out = tokio::task::spawn_blocking({
        let (path, url) = (path.display().to_string(), url.clone());
        move || {
            child::wait_ok(child::spawn(
                "sqlite::child_stores_one_response",
                &[("DB_PATH", path), ("URL", url)],
            ))
        }
    })
    .await
    .unwrap();
    assert_eq!(server.hits(), 1);
    let stored_body = out
        .lines()
        .find_map(|l| l.split_once("body ").map(|(_, body)| body))
        .expect("child printed the body")
        .to_owned();

    let sqlite = SqliteStore::open(&path).await.unwrap();
    let client = client(CacheLayer::new(sqlite.cache()).default_ttl(CacheTtl::absolute(HOUR)));
    let got = send(&client, get(&url)).await;
    assert_eq!(got.cache, Some(CacheStatus::Hit));
    assert_eq!(got.text(), stored_body);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn a_corrupt_database_degrades_to_pass_through() {
    use courteous::store::sqlite::rusqlite;

    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let url = server.url("/api/issues/1");
    {
        let sqlite = SqliteStore::open(&path).await.unwrap();
        let client = client(CacheLayer::new(sqlite.cache()).default_ttl(CacheTtl::absolute(HOUR)));
        send(&client, get(&url)).await;
        sqlite.close().await.unwrap();
    }
    // Damage the page that holds the cache table, leaving the rest of the file intact.
    let (root, page_size): (i64, i64) = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let root = conn
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 'cache_entries'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let page_size = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        (root, page_size)
    };
    let mut file = std::fs::read(&path).unwrap();
    let start = ((root - 1) * page_size) as usize;
    for (i, byte) in file[start..start + page_size as usize]
        .iter_mut()
        .enumerate()
    {
        *byte = (i * 7 % 251) as u8;
    }
    std::fs::write(&path, &file).unwrap();

    let sqlite = SqliteStore::open(&path).await.unwrap();
    let layer = CacheLayer::new(sqlite.cache()).default_ttl(CacheTtl::absolute(HOUR));
    let client = client(layer.clone());
    for _ in 0..3 {
        let got = send(&client, get(&url)).await;
        assert_eq!(got.status, http::StatusCode::OK);
        assert_eq!(got.cache, Some(CacheStatus::Miss));
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(server.hits(), 4);
    let stats = layer.stats().await;
    assert!(stats.store_errors >= 3, "{stats:?}");
}

#[tokio::test]
async fn a_read_only_database_degrades_to_pass_through() {
    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let sqlite = SqliteStore::builder(&path).workers(1).open().await.unwrap();
    // Every connection of the store refuses writes from now on, as on a read-only file (root
    // ignores file permissions, so the test cannot rely on them).
    sqlite
        .call(|conn| Ok(conn.execute_batch("PRAGMA query_only = ON")?))
        .await
        .unwrap();
    sqlite
        .defer(|conn| conn.execute_batch("PRAGMA query_only = ON"))
        .unwrap();
    let _ = sqlite.flush().await;
    let layer = CacheLayer::new(sqlite.cache()).default_ttl(CacheTtl::absolute(HOUR));
    let client = client(layer.clone());
    let url = server.url("/api/issues/1");
    for _ in 0..2 {
        let got = send(&client, get(&url)).await;
        assert_eq!(
            (got.status, got.cache),
            (http::StatusCode::OK, Some(CacheStatus::Miss))
        );
        // The write is refused...
        assert!(sqlite.flush().await.is_err());
        // ...and once the pending window has passed, nothing masks that.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // A POST's invalidation fails too, and still does not fail the request.
    let post = send(&client, http::Request::post(&url)).await;
    assert_eq!(post.status, http::StatusCode::OK);
    assert_eq!(server.hits(), 3);
    assert!(layer.stats().await.store_errors >= 1);
    assert!(sqlite.stats().failed_batches >= 1);
}

/// Expiry is judged by the store's clock: an entry an hour from expiring is expired for a store
/// whose clock is two hours ahead (a miss, and purged), and still there for one on the system
/// clock.
#[tokio::test]
async fn entries_expire_by_the_injected_clock() {
    use courteous::time::{Clock, SystemClock};

    let (_dir, path) = temp_db();
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let now = sqlite.cache();
    let later = sqlite.cache().clock(SystemClock.now() + 2 * HOUR);
    now.put(&key(1), entry("http://h/1", "one", HOUR))
        .await
        .unwrap();
    sqlite.flush().await.unwrap();
    assert!(later.get(&key(1)).await.unwrap().is_none());
    assert!(now.get(&key(1)).await.unwrap().is_some());
    assert_eq!(now.purge_expired().await.unwrap(), 0);
    assert_eq!(later.purge_expired().await.unwrap(), 1);
    assert!(now.get(&key(1)).await.unwrap().is_none());
    sqlite.close().await.unwrap();
}
