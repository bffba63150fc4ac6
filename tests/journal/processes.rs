//! The SQLite journal across real processes: two writing one file while a third reads, and a
//! writer killed mid-batch.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use courteous::journal::{GroupBy, JournalQuery, JournalStore};
use courteous::store::sqlite::SqliteStore;
use courteous::time::{Clock, SystemClock};

use crate::row;
use crate::support::{child, temp_db};

/// Writes `ROWS` rows of resource `NAME` to `DB`, flushing every 100 and printing
/// `flushed {n}` after each flush; then waits (when `HOLD` is set) to be killed.
#[tokio::test]
#[ignore = "child process entry point, started by the tests of this module"]
async fn child_writer() {
    if !child::is_child("processes::child_writer") {
        return;
    }
    let path: String = child::param("DB");
    let rows: u64 = child::param("ROWS");
    let name: String = child::param("NAME");
    let hold = std::env::var("HOLD").is_ok();
    let store = SqliteStore::open(Path::new(&path)).await.unwrap();
    let journal = store.journal();
    for n in 1..=rows {
        journal.record(row(SystemClock.now(), &name, 200, n % 50));
        if n % 100 == 0 {
            journal.flush().await.unwrap();
            println!("flushed {n}");
        }
    }
    journal.flush().await.unwrap();
    if hold {
        // Rows recorded and never flushed: the kill loses them, and only them.
        for n in 0..1_000 {
            journal.record(row(SystemClock.now(), &name, 200, n % 50));
        }
        println!("holding");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    store.close().await.unwrap();
    println!("done {rows}");
}

fn writer(path: &Path, name: &str, rows: u64, hold: bool) -> std::process::Child {
    let mut env = vec![
        ("DB", path.display().to_string()),
        ("ROWS", rows.to_string()),
        ("NAME", name.to_owned()),
    ];
    if hold {
        env.push(("HOLD", "1".to_owned()));
    }
    child::spawn("processes::child_writer", &env)
}

fn integrity(path: &Path) -> String {
    let conn = courteous::store::sqlite::rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_write_one_file_while_a_third_reads() {
    const ROWS: u64 = 3_000;
    let (_dir, path) = temp_db();
    // Created (and migrated) first, so that the writers race on rows, not on the schema.
    let reader = SqliteStore::open(&path).await.unwrap();
    let journal = reader.journal();
    let a = writer(&path, "alpha", ROWS, false);
    let b = writer(&path, "beta", ROWS, false);
    // Reads while they write: never an error, never more than was written.
    let mut last = 0;
    for _ in 0..20 {
        let summary = journal
            .summary(&JournalQuery::all(), GroupBy::Resource)
            .await
            .unwrap();
        assert!(summary.total.calls >= last && summary.total.calls <= 2 * ROWS);
        last = summary.total.calls;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a, b) = (child::wait_ok(a), child::wait_ok(b));
    assert!(a.contains("done") && b.contains("done"), "{a}\n{b}");
    let summary = journal
        .summary(&JournalQuery::all(), GroupBy::Resource)
        .await
        .unwrap();
    let groups: Vec<_> = summary
        .groups
        .iter()
        .map(|g| (g.key.as_str(), g.calls))
        .collect();
    assert_eq!(groups, [("alpha", ROWS), ("beta", ROWS)]);
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows.len() as u64, 2 * ROWS);
    assert!(
        rows.windows(2).all(|w| w[0].time <= w[1].time),
        "oldest first"
    );
    reader.close().await.unwrap();
    assert_eq!(integrity(&path), "ok");
}

/// A writer killed (`SIGKILL`) mid-stream: every row it reported flushed is in the file, only
/// rows it had not flushed are lost, and the file is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_batch_loses_only_unflushed_rows() {
    const ROWS: u64 = 2_000;
    let (_dir, path) = temp_db();
    SqliteStore::open(&path)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let mut child = writer(&path, "killed", ROWS, true);
    let stdout = child.stdout.take().unwrap();
    let mut flushed = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("flushed ") {
            flushed = n.parse().unwrap();
        }
        if line == "holding" {
            break;
        }
    }
    assert_eq!(flushed, ROWS);
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(integrity(&path), "ok");
    let store = SqliteStore::open(&path).await.unwrap();
    let journal = store.journal();
    let kept = journal.query(&JournalQuery::all()).await.unwrap().len() as u64;
    // The held rows were recorded but never flushed: the kill may lose them (the writer may
    // also have committed some on its interval).
    assert!(
        (ROWS..=ROWS + 1_000).contains(&kept),
        "{kept} rows after the kill"
    );
    store.close().await.unwrap();
}
