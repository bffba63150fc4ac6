//! SQLite-specific: a leader cancelled while its store call waits for the file's write lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use courteous::dedupe::{DedupeLayer, DedupeRole, DedupeStore, KeyState};
use courteous::store::sqlite::SqliteStore;
use courteous::{BoxError, Report};
use tower::{ServiceBuilder, ServiceExt};

fn get(url: &str) -> http::Request<reqwest::Body> {
    http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

/// A caller cancelled while `try_lead` waits for the SQLite write lock (held by another
/// connection, as another process would) does not leave an orphaned lease: the store call has
/// started and commits the lease once the lock is free, and the layer then releases it. Before,
/// nobody owned that lease and the next request for the key waited `lease_timeout` (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cancelled_while_waiting_for_the_write_lock_leaves_no_lease() {
    let (_dir, path) = crate::support::temp_db();
    let (other, ours) = (
        SqliteStore::open(&path).await.unwrap(),
        SqliteStore::open(&path).await.unwrap(),
    );
    // Another connection holds the write lock for 500 ms.
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let locker = {
        let other = other.clone();
        tokio::spawn(async move {
            other
                .call(move |c| {
                    c.execute_batch("BEGIN IMMEDIATE")?;
                    let _ = locked_tx.send(());
                    std::thread::sleep(Duration::from_millis(500));
                    c.execute_batch("COMMIT")?;
                    Ok(())
                })
                .await
        })
    };
    locked_rx.await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let store = ours.dedupe();
    let client = {
        let calls = calls.clone();
        ServiceBuilder::new()
            .layer(DedupeLayer::new(store.clone()))
            .service(tower::service_fn(
                move |_req: http::Request<reqwest::Body>| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, BoxError>(http::Response::new(reqwest::Body::from("answer"))) }
                },
            ))
    };
    let url = "http://h/cancelled-in-try-lead";
    // The caller gives up after 200 ms, while try_lead waits for the lock.
    let cancelled =
        tokio::time::timeout(Duration::from_millis(200), client.clone().oneshot(get(url))).await;
    assert!(
        cancelled.is_err(),
        "the request should still wait for the lock"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    locker.await.unwrap().unwrap();

    let key = {
        let mut r = get(url);
        courteous::dedupe::store_key(&mut r).unwrap()
    };
    // The lease the cancelled call committed is released shortly after the lock is free.
    let started = Instant::now();
    loop {
        match store.poll(&key).await.unwrap() {
            KeyState::Vacant => break,
            status => assert!(
                started.elapsed() < Duration::from_secs(5),
                "the key stays {status:?}: a lease nobody owns"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next = tokio::time::timeout(Duration::from_secs(5), client.clone().oneshot(get(url)))
        .await
        .expect("the next request waited for a lease nobody holds")
        .unwrap();
    assert_eq!(Report::of(&next).unwrap().dedupe, Some(DedupeRole::Leader));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// The SQLite store's leases and results end by the clock it is given, set by hand here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_expires_by_its_clock() {
    let (_dir, path) = crate::support::temp_db();
    let clock = crate::backend::HandClock::at(1_700_000_000_000);
    let store = SqliteStore::open(&path)
        .await
        .unwrap()
        .dedupe()
        .clock(clock.clone());
    let key = courteous::RequestKey::from_parts([10; 32], "GET http://h/clock");
    crate::stores::expires_by_its_clock(&store, &key, |by| {
        clock.advance(by);
        std::future::ready(())
    })
    .await;
}
