//! Read-your-writes in the SQLite cache store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use crate::support;
use bytes::Bytes;
use courteous::RequestKey;
use courteous::cache::{CacheEntry, CacheStore};
use courteous::store::sqlite::SqliteStore;
use http::StatusCode;

/// A deferred write that holds the writer's transaction open (after the writes queued before
/// it ran, before the commit) until released.
#[derive(Clone, Default)]
struct Gate {
    entered: Arc<AtomicBool>,
    open: Arc<(Mutex<bool>, Condvar)>,
}

impl Gate {
    fn hold(&self, store: &SqliteStore) {
        let gate = self.clone();
        store
            .defer(move |_conn| {
                gate.entered.store(true, Ordering::SeqCst);
                let (lock, cvar) = &*gate.open;
                let mut open = lock.lock().unwrap();
                while !*open {
                    open = cvar.wait(open).unwrap();
                }
                Ok(())
            })
            .unwrap();
    }

    async fn entered(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self.entered.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "writer never reached the gate"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn release(&self) {
        let (lock, cvar) = &*self.open;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }
}

fn entry(body: &'static str) -> Arc<CacheEntry> {
    Arc::new(
        CacheEntry::new(
            "http://h/item",
            StatusCode::OK,
            Bytes::from_static(body.as_bytes()),
            SystemTime::now(),
        )
        .fresh_for(Duration::from_secs(600), Duration::ZERO),
    )
}

/// Issue 12 item 9: the copy of a `put` kept in memory was dropped when the writer *ran* the
/// write, before its transaction committed; a read in between went to the file and got the old
/// row. The gate holds the writer exactly in that gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_stays_visible_until_its_transaction_commits() {
    let (_dir, path) = support::temp_db();
    let store = SqliteStore::builder(&path)
        .flush_interval(Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    let cache = store.cache();
    let key = RequestKey::from_parts([7; 32], "GET http://h/item");

    cache.put(&key, entry("old")).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(&cache.get(&key).await.unwrap().unwrap().body[..], b"old");

    cache.put(&key, entry("new")).await.unwrap();
    let gate = Gate::default();
    gate.hold(&store);
    let flush = tokio::spawn({
        let store = store.clone();
        async move { store.flush().await }
    });
    gate.entered().await;
    // The writer has run the put and is holding its transaction open.
    for _ in 0..3 {
        let got = cache.get(&key).await.unwrap().expect("entry");
        assert_eq!(
            &got.body[..],
            b"new",
            "a read between the write and its commit saw the old row"
        );
    }
    gate.release();
    flush.await.unwrap().unwrap();
    // Committed: read from the file, by another store over the same file too.
    assert_eq!(&cache.get(&key).await.unwrap().unwrap().body[..], b"new");
    let other = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        &other.cache().get(&key).await.unwrap().unwrap().body[..],
        b"new"
    );
    other.close().await.unwrap();
    store.close().await.unwrap();
}

/// A commit that takes longer than a second (the file locked by another process, a backlog)
/// while the database accepts writes: the entry stays readable until it is done. It used to be
/// dropped from memory after a second whatever the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_stays_visible_through_a_slow_commit() {
    let (_dir, path) = support::temp_db();
    let store = SqliteStore::builder(&path)
        .flush_interval(Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    let cache = store.cache();
    let key = RequestKey::from_parts([8; 32], "GET http://h/item");
    cache.put(&key, entry("old")).await.unwrap();
    store.flush().await.unwrap();

    cache.put(&key, entry("new")).await.unwrap();
    let gate = Gate::default();
    gate.hold(&store);
    let flush = tokio::spawn({
        let store = store.clone();
        async move { store.flush().await }
    });
    gate.entered().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = cache.get(&key).await.unwrap().expect("entry");
    assert_eq!(
        &got.body[..],
        b"new",
        "dropped from memory before its commit"
    );
    gate.release();
    flush.await.unwrap().unwrap();
    assert_eq!(&cache.get(&key).await.unwrap().unwrap().body[..], b"new");
    store.close().await.unwrap();
}

/// A database that refuses writes is not masked for long: once it has refused a batch, an entry
/// put more than a second ago is no longer served from memory.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_writes_is_not_masked_for_long() {
    let (_dir, path) = support::temp_db();
    let store = SqliteStore::builder(&path)
        .flush_interval(Duration::from_millis(10))
        .busy_timeout(Duration::from_millis(50))
        .open()
        .await
        .unwrap();
    let cache = store.cache();
    let key = RequestKey::from_parts([9; 32], "GET http://h/refused");
    // Another connection holds the write lock: every batch is refused (busy).
    let blocker = rusqlite_connection(&path);
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    cache.put(&key, entry("pending")).await.unwrap();
    assert!(
        cache.get(&key).await.unwrap().is_some(),
        "served from memory"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.stats().failed_batches == 0 {
        assert!(std::time::Instant::now() < deadline, "no batch refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Not from memory any more; the read itself goes to the file (readers are not blocked).
    assert!(cache.get(&key).await.unwrap().is_none());
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    store.flush().await.unwrap();
    assert!(
        cache.get(&key).await.unwrap().is_some(),
        "committed once allowed"
    );
    store.close().await.unwrap();
}

fn rusqlite_connection(path: &std::path::Path) -> courteous::store::sqlite::rusqlite::Connection {
    courteous::store::sqlite::rusqlite::Connection::open(path).unwrap()
}
