//! The Redis journal: the contract, and the stream's cap.

use std::time::Duration;

use courteous::journal::{GroupBy, Journal, JournalQuery};
use courteous::store::redis::RedisStore;
use courteous::time::{Clock, SystemClock};

use crate::row;
use crate::support::TestServer;
use crate::support::redis::{shared_url, unique_prefix};
use crate::{fetch, journaled};

async fn store(test: &str) -> Option<RedisStore> {
    let url = shared_url().await?;
    Some(
        RedisStore::builder(url)
            .prefix(unique_prefix(test))
            .connect()
            .unwrap(),
    )
}

async fn delete(redis: &RedisStore) {
    let client = redis::Client::open(shared_url().await.unwrap()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:journal", redis.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn redis_keeps_the_contract() {
    let Some(redis) = store("journal-contract").await else {
        return;
    };
    crate::stores::contract(&Journal::new(redis.journal())).await;
    delete(&redis).await;
}

#[tokio::test]
async fn the_stream_is_capped() {
    let Some(redis) = store("journal-cap").await else {
        return;
    };
    let journal = Journal::new(redis.journal().max_len(100));
    let now = SystemClock.now();
    for n in 0..1_000 {
        journal.record(row(now + Duration::from_millis(n), "a", 200, 1));
    }
    journal.flush().await.unwrap();
    let stats = journal.stats();
    assert_eq!((stats.recorded, stats.dropped), (1_000, 0));
    let kept = journal
        .summary(&JournalQuery::all(), GroupBy::Resource)
        .await
        .unwrap()
        .total
        .calls;
    // `MAXLEN ~` trims whole stream nodes (100 entries by default): about 100 are kept.
    assert!((100..300).contains(&kept), "{kept} rows kept");
    let newest = journal.query(&JournalQuery::all().limit(1)).await.unwrap();
    assert_eq!(newest[0].time, now + Duration::from_millis(999));
    delete(&redis).await;
}

#[tokio::test]
async fn a_full_queue_drops_rows_instead_of_waiting() {
    let Some(redis) = store("journal-queue").await else {
        return;
    };
    let journal = Journal::new(redis.journal().queue(1));
    let now = SystemClock.now();
    for n in 0..50 {
        journal.record(row(now + Duration::from_millis(n), "a", 200, 1));
    }
    journal.flush().await.unwrap();
    let stats = journal.stats();
    assert_eq!(stats.recorded, 50);
    assert!(stats.dropped > 0, "{stats:?}");
    let kept = journal.query(&JournalQuery::all()).await.unwrap().len() as u64;
    assert_eq!(kept, 50 - stats.dropped);
    delete(&redis).await;
}

#[tokio::test]
async fn the_stack_writes_to_the_stream() {
    let Some(redis) = store("journal-stack").await else {
        return;
    };
    let server = TestServer::start().await;
    let journal = Journal::new(redis.journal());
    let client = journaled(&journal);
    fetch(&client, &server.url("/api/issues/1?access_token=x")).await;
    journal.flush().await.unwrap();
    // Another process would read it with its own store on the same prefix.
    let reader = RedisStore::builder(shared_url().await.unwrap())
        .prefix(redis.prefix())
        .connect()
        .unwrap();
    let rows = Journal::new(reader.journal())
        .query(&JournalQuery::all())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].url,
        server.url("/api/issues/1?access_token=REDACTED")
    );
    delete(&redis).await;
}

/// Redis is down (nothing listens on the port): `record` returns at once, every row is
/// counted as dropped, a flush reports the error, and a read is an error, not a hang.
#[tokio::test]
async fn redis_down_never_blocks_and_counts_every_row_dropped() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
        .connect_timeout(Duration::from_millis(200))
        .connect()
        .unwrap();
    let journal = Journal::new(redis.journal().queue(1_000));
    let now = SystemClock.now();
    let started = std::time::Instant::now();
    for n in 0..20_000 {
        journal.record(row(now + Duration::from_millis(n), "a", 200, 1));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "record waited: {:?}",
        started.elapsed()
    );
    let flushed = tokio::time::timeout(Duration::from_secs(30), journal.flush())
        .await
        .expect("a flush answers");
    assert!(flushed.is_err());
    let stats = journal.stats();
    assert_eq!((stats.recorded, stats.dropped), (20_000, 20_000));
    let read = tokio::time::timeout(Duration::from_secs(30), journal.query(&JournalQuery::all()))
        .await
        .expect("a read answers");
    assert!(read.is_err());
}

/// The runtime the background task ran in is gone (a `block_on` in a synchronous wrapper, a
/// test's runtime) with rows in its queue: they are lost, and counted.
#[test]
fn rows_lost_with_the_tasks_runtime_are_counted_dropped() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The application's runtime, where the store was made.
    let application = tokio::runtime::Runtime::new().unwrap();
    let _entered = application.enter();
    let redis = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
        .connect()
        .unwrap();
    let journal = Journal::new(redis.journal());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for n in 0..100 {
            journal.record(row(SystemClock.now(), "a", 200, n));
        }
    });
    // The task never ran: its queue goes with the runtime.
    drop(runtime);
    let stats = journal.stats();
    assert_eq!((stats.recorded, stats.dropped), (100, 100));
}
