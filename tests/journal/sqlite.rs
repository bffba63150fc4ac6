//! The SQLite journal: the contract, retention, and a second store reading the same file.

use std::time::Duration;

use courteous::journal::{GroupBy, Journal, JournalQuery, JournalStore};
use courteous::store::sqlite::SqliteStore;
use courteous::time::{Clock, SystemClock};

use crate::support::{TestServer, temp_db};
use crate::{fetch, journaled, row};

async fn count(journal: &impl JournalStore) -> u64 {
    journal
        .summary(&JournalQuery::all(), GroupBy::Resource)
        .await
        .unwrap()
        .total
        .calls
}

#[tokio::test]
async fn sqlite_keeps_the_contract() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    crate::stores::contract(&Journal::new(store.journal())).await;
    store.close().await.unwrap();
}

#[tokio::test]
async fn the_table_is_created_by_a_migration() {
    let store = SqliteStore::open(":memory:").await.unwrap();
    let version: i64 = store
        .call(|conn| {
            Ok(conn.query_row(
                "SELECT version FROM courteous_schema WHERE component = 'journal'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(version, 1);
}

#[tokio::test]
async fn rows_past_the_row_cap_are_pruned_in_the_background() {
    let store = SqliteStore::open(":memory:").await.unwrap();
    let journal = store.journal().max_rows(10).prune_interval(Duration::ZERO);
    let now = SystemClock.now();
    for n in 0..25 {
        journal.record(row(now + Duration::from_millis(n), "a", 200, n));
    }
    journal.flush().await.unwrap();
    // The rows went in first, then the prune.
    assert_eq!(count(&journal).await, 10);
    journal.record(row(now + Duration::from_millis(25), "a", 200, 25));
    journal.flush().await.unwrap();
    assert_eq!(count(&journal).await, 10);
    let kept = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(
        kept[0].latency,
        Duration::from_millis(16),
        "the newest are kept"
    );
    assert_eq!(journal.stats().recorded, 26);
}

#[tokio::test]
async fn rows_older_than_the_max_age_are_pruned() {
    let store = SqliteStore::open(":memory:").await.unwrap();
    let journal = store.journal().max_age(Duration::from_secs(3600));
    let now = SystemClock.now();
    // The first row queues a prune (the journal never pruned), which runs after the rows.
    journal.record(row(now - Duration::from_secs(7200), "old", 200, 1));
    journal.record(row(now - Duration::from_secs(5400), "old", 200, 1));
    journal.record(row(now, "new", 200, 1));
    journal.flush().await.unwrap();
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].resource.as_str(), "new");
    // The next prune waits for the prune interval; an explicit one runs now.
    journal.record(row(now - Duration::from_secs(4000), "old", 200, 1));
    journal.flush().await.unwrap();
    assert_eq!(count(&journal).await, 2);
    assert_eq!(journal.prune().await.unwrap(), 1);
    assert_eq!(count(&journal).await, 1);
}

#[tokio::test]
async fn the_default_retention_is_seven_days_and_a_million_rows() {
    let store = SqliteStore::open(":memory:").await.unwrap();
    let journal = store.journal();
    let now = SystemClock.now();
    journal.record(row(now - Duration::from_secs(8 * 24 * 3600), "old", 200, 1));
    journal.record(row(
        now - Duration::from_secs(6 * 24 * 3600),
        "kept",
        200,
        1,
    ));
    journal.flush().await.unwrap();
    journal.prune().await.unwrap();
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].resource.as_str(), "kept");
    assert!(format!("{journal:?}").contains("max_rows: 1000000"));
}

#[tokio::test]
async fn a_second_store_on_the_file_reads_what_the_stack_wrote() {
    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let writer = SqliteStore::open(&path).await.unwrap();
    let journal = Journal::new(writer.journal());
    let client = journaled(&journal);
    fetch(&client, &server.url("/api/issues/1?api_key=s3cret")).await;
    fetch(&client, &server.url("/api/issues/1?api_key=s3cret")).await;
    fetch(&client, &server.url("/api/search/?q=a&size=10")).await;
    journal.flush().await.unwrap();

    // As a command-line tool would: its own store on the same file, while the writer runs.
    let reader = SqliteStore::open(&path).await.unwrap();
    let rows = reader.journal().query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows.len(), 2, "one miss per URL; the hit is not journaled");
    assert_eq!(rows[0].url, server.url("/api/issues/1?api_key=REDACTED"));
    assert_eq!(rows[1].bytes, Some(10));
    let summary = Journal::new(reader.journal())
        .summary(
            &JournalQuery::since(Duration::from_secs(60)),
            GroupBy::Resource,
        )
        .await
        .unwrap();
    let keys: Vec<_> = summary.groups.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(keys, ["issues", "search"]);
    reader.close().await.unwrap();
    writer.close().await.unwrap();
}

#[tokio::test]
async fn rows_recorded_after_close_are_dropped_and_counted() {
    let store = SqliteStore::open(":memory:").await.unwrap();
    let journal = store.journal();
    store.close().await.unwrap();
    journal.record(row(SystemClock.now(), "a", 200, 1));
    let stats = journal.stats();
    assert_eq!((stats.recorded, stats.dropped), (1, 1));
}

#[tokio::test]
async fn a_row_no_build_wrote_is_an_error_not_a_panic() {
    let store = SqliteStore::open(":memory:").await.unwrap();
    store
        .call(|conn| {
            conn.execute_batch(
                "INSERT INTO courteous_journal (time, resource, priority, method, url, status,
                     latency_us, bytes, revalidation, wait_us, followers)
                 VALUES (1, 'a', 'urgent', 'GET', 'http://h/', 200, -5, -1, 0, 0, 0)",
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let journal = store.journal();
    assert!(journal.query(&JournalQuery::all()).await.is_err());
    // Sums do not read the priority: negative numbers saturate instead.
    let summary = journal
        .summary(&JournalQuery::all(), GroupBy::Priority)
        .await
        .unwrap();
    assert_eq!(summary.total.calls, 1);
    assert_eq!(summary.total.latency_max, Duration::ZERO);
}

/// The file refuses writes (another connection holds the write lock, as a full disk or a
/// read-only file would refuse them): the writer keeps the journal's batches and retries them,
/// and the rows they hold, with those waiting, stay bounded (100,000); the rest are dropped
/// and counted, and once the file takes writes again every row is either in it or counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_held_while_the_file_refuses_writes_are_bounded_and_counted() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::builder(&path)
        .flush_interval(Duration::from_millis(10))
        .busy_timeout(Duration::from_millis(20))
        .open()
        .await
        .unwrap();
    let journal = store.journal().prune_interval(Duration::from_secs(3600));
    let blocker = courteous::store::sqlite::rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let now = SystemClock.now();
    let mut sent = 0u64;
    for _ in 0..3 {
        for n in 0..100_000u64 {
            journal.record(row(now + Duration::from_millis(n % 1_000), "a", 200, 1));
            sent += 1;
        }
        // A refused commit: the batch that took the rows is kept for a retry.
        assert!(journal.flush().await.is_err());
    }
    let stats = journal.stats();
    assert_eq!(stats.recorded, sent);
    assert!(
        stats.dropped >= 200_000,
        "rows held while the file refuses writes: {}",
        sent - stats.dropped
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    journal.flush().await.unwrap();
    let stats = journal.stats();
    assert_eq!(count(&journal).await + stats.dropped, stats.recorded);
    store.close().await.unwrap();
}

/// Four tasks on two stores of one file write at once, with retention by rows and by age and
/// a prune at every chance: the table never ends past the cap, keeps the newest rows written,
/// and never a row past the age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_holds_under_concurrent_writes_from_two_stores() {
    let (_dir, path) = temp_db();
    let stores = [
        SqliteStore::open(&path).await.unwrap(),
        SqliteStore::open(&path).await.unwrap(),
    ];
    let journals: Vec<_> = stores
        .iter()
        .map(|s| {
            s.journal()
                .max_rows(1_000)
                .max_age(Duration::from_secs(3600))
                .prune_interval(Duration::ZERO)
        })
        .collect();
    let now = SystemClock.now();
    let tasks = (0..4).map(|t| {
        let journal = journals[t % 2].clone();
        tokio::spawn(async move {
            for n in 0..5_000u64 {
                // Every tenth row is two hours old.
                let time = if n % 10 == 0 {
                    now - Duration::from_secs(7200)
                } else {
                    now
                };
                journal.record(row(time, "a", 200, n));
                if n % 500 == 0 {
                    journal.flush().await.unwrap();
                }
            }
            journal.flush().await.unwrap();
        })
    });
    for task in tasks {
        task.await.unwrap();
    }
    for journal in &journals {
        journal.prune().await.unwrap();
    }
    let rows = journals[0].query(&JournalQuery::all()).await.unwrap();
    assert!(
        rows.len() <= 1_000 && rows.len() >= 800,
        "{} rows",
        rows.len()
    );
    assert!(
        rows.iter()
            .all(|r| r.time >= now - Duration::from_secs(3600))
    );
    let stats: Vec<_> = journals.iter().map(|j| j.stats()).collect();
    assert_eq!(stats[0].recorded + stats[1].recorded, 20_000);
    assert_eq!(stats[0].dropped + stats[1].dropped, 0);
    for store in stores {
        store.close().await.unwrap();
    }
}
