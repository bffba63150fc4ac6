//! The shared SQLite engine, on real files in temp dirs and with real child processes.

use std::path::Path;
use std::time::{Duration, Instant};

use courteous::store::sqlite::rusqlite::{self, TransactionBehavior};
use courteous::store::sqlite::{SqliteError, SqliteStore};

use crate::support::{child, temp_db};

/// `SELECT count(*) FROM t`, on a store thread.
async fn rows_in_t(store: &SqliteStore) -> i64 {
    store
        .call(|conn| Ok(conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
        .await
        .unwrap()
}

const ROWS_TABLE: &str = "CREATE TABLE IF NOT EXISTS rows (
    writer INTEGER NOT NULL, seq INTEGER NOT NULL, how TEXT NOT NULL, PRIMARY KEY (writer, seq))";

const DEFERRED: u64 = 3000;
const IMMEDIATE: u64 = 300;
const WRITERS: u64 = 4;

/// Child entry: opens the shared file and writes `DEFERRED` rows through the write-behind writer and
/// `IMMEDIATE` rows in their own transactions, interleaved; any error fails the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by processes_write_one_file_and_nothing_is_lost"]
async fn child_writer() {
    if !child::is_child("sqlite::child_writer") {
        return;
    }
    let path: String = child::param("DB_PATH");
    let writer: i64 = child::param("WRITER");
    let store = SqliteStore::open(&path).await.expect("open");
    store
        .call(|conn| Ok(conn.execute_batch(ROWS_TABLE)?))
        .await
        .expect("create table");
    for seq in 0..DEFERRED as i64 {
        store
            .defer(move |conn| {
                conn.execute(
                    "INSERT INTO rows (writer, seq, how) VALUES (?1, ?2, 'deferred')",
                    (writer, seq),
                )
                .map(drop)
            })
            .expect("defer");
        if seq % 10 == 0 {
            let seq = DEFERRED as i64 + seq / 10;
            store
                .call(move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    tx.execute(
                        "INSERT INTO rows (writer, seq, how) VALUES (?1, ?2, 'immediate')",
                        (writer, seq),
                    )?;
                    tx.commit()?;
                    Ok(())
                })
                .await
                .expect("immediate write");
        }
    }
    store.close().await.expect("close");
    let stats = store.stats();
    println!("stats {stats:?}");
    assert_eq!(stats.committed, DEFERRED);
    assert_eq!((stats.failed, stats.dropped, stats.pending), (0, 0, 0));
}

#[tokio::test]
async fn processes_write_one_file_and_nothing_is_lost() {
    let (_dir, path) = temp_db();
    // All start on a file that does not exist yet: they also race to create, switch to WAL and
    // migrate it (which once surfaced a busy error at open).
    let children: Vec<_> = (1..=WRITERS)
        .map(|writer| {
            child::spawn(
                "sqlite::child_writer",
                &[
                    ("DB_PATH", path.display().to_string()),
                    ("WRITER", writer.to_string()),
                ],
            )
        })
        .collect();
    for c in children {
        let out = child::wait_ok(c);
        assert!(out.contains("stats"), "child did not run its work: {out}");
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let per_writer: Vec<(i64, i64, i64)> = conn
        .prepare("SELECT writer, count(*), sum(how = 'immediate') FROM rows GROUP BY writer ORDER BY writer")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected = (DEFERRED + IMMEDIATE) as i64;
    let want: Vec<_> = (1..=WRITERS as i64)
        .map(|w| (w, expected, IMMEDIATE as i64))
        .collect();
    assert_eq!(per_writer, want);
}

#[cfg(unix)]
#[tokio::test]
async fn the_file_is_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .call(|conn| Ok(conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")?))
        .await
        .unwrap();
    for file in [path.clone(), path.with_extension("db-wal")] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_file_made_before_courteous_tables_existed_is_upgraded_in_place() {
    let (_dir, path) = temp_db();
    {
        // An application's file, with its own data and no courteous schema yet.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE app (v TEXT); INSERT INTO app VALUES ('kept');")
            .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let (kept, components): (String, i64) = store
        .call(|conn| {
            Ok((
                conn.query_row("SELECT v FROM app", [], |r| r.get(0))?,
                conn.query_row(
                    "SELECT count(*) FROM courteous_schema WHERE version > 0",
                    [],
                    |r| r.get(0),
                )?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(kept, "kept");
    assert!(components >= 1);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_file_from_a_newer_version_is_refused() {
    let (_dir, path) = temp_db();
    SqliteStore::open(&path)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE courteous_schema SET version = 999 WHERE component = 'core'",
            [],
        )
        .unwrap();
    }
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert_eq!(err.code(), "sqlite_schema_too_new", "{err}");
    assert!(err.to_string().contains("upgrade courteous"));
}

#[tokio::test]
async fn a_path_that_cannot_be_opened_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(dir.path().join("missing-dir/courteous.db"))
        .await
        .unwrap_err();
    assert!(err.is_open(), "{err:?}");
    assert!(err.to_string().contains("missing-dir"), "{err}");

    // A directory where the file should be.
    let err = SqliteStore::open(dir.path()).await.unwrap_err();
    assert!(err.is_open(), "{err:?}");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_a_typed_error_and_is_left_alone() {
    let (_dir, path) = temp_db();
    let content = b"name,value\nthis,is a csv file that someone put here by mistake\n".repeat(20);
    std::fs::write(&path, &content).unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(err.is_not_a_database(), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), content);
}

/// Makes a file read-only even for root (which ignores permission bits), undoing it on drop.
struct ReadOnly<'a>(&'a Path, bool);

impl<'a> ReadOnly<'a> {
    fn make(path: &'a Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
        if std::fs::OpenOptions::new().write(true).open(path).is_err() {
            return Some(ReadOnly(path, false));
        }
        // Root: mark the file immutable instead.
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(ReadOnly(path, true))
    }
}

impl Drop for ReadOnly<'_> {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(self.0)
                .status();
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_read_only_file_is_a_typed_error_and_is_left_alone() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .call(|conn| Ok(conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);")?))
        .await
        .unwrap();
    store.close().await.unwrap();
    let before = std::fs::read(&path).unwrap();
    let Some(_guard) = ReadOnly::make(&path) else {
        eprintln!("SKIPPED: cannot make a read-only file here (root without chattr)");
        return;
    };
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(err.is_read_only(), "{err:?}");
    assert!(err.to_string().contains("read-only"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn keyed_deferred_writes_coalesce_and_a_failing_write_does_not_sink_the_batch() {
    let store = SqliteStore::builder(":memory:")
        .flush_interval(Duration::from_secs(60))
        .open()
        .await
        .unwrap();
    store
        .call(|conn| {
            Ok(conn.execute_batch("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")?)
        })
        .await
        .unwrap();
    for v in 0..5 {
        store
            .defer_keyed(&b"counter"[..], move |conn| {
                conn.execute("INSERT OR REPLACE INTO kv VALUES ('counter', ?1)", [v])
                    .map(drop)
            })
            .unwrap();
    }
    store
        .defer(|conn| {
            conn.execute("INSERT INTO kv VALUES ('other', 1)", [])
                .map(drop)
        })
        .unwrap();
    // Violates NOT NULL: dropped alone.
    store
        .defer(|conn| {
            conn.execute("INSERT INTO kv VALUES ('bad', NULL)", [])
                .map(drop)
        })
        .unwrap();
    store.flush().await.unwrap();
    let rows: Vec<(String, i64)> = store
        .call(|conn| {
            Ok(conn
                .prepare("SELECT k, v FROM kv ORDER BY k")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(rows, vec![("counter".into(), 4), ("other".into(), 1)]);
    let stats = store.stats();
    assert_eq!(
        (
            stats.committed,
            stats.coalesced,
            stats.failed,
            stats.batches
        ),
        (2, 4, 1, 1)
    );
}

#[tokio::test]
async fn a_busy_file_keeps_deferred_writes_until_it_frees_up() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::builder(&path)
        .busy_timeout(Duration::from_millis(100))
        .flush_interval(Duration::from_secs(60))
        .open()
        .await
        .unwrap();
    store
        .call(|conn| Ok(conn.execute_batch("CREATE TABLE t (x INTEGER)")?))
        .await
        .unwrap();
    // Another connection (as another process would) holds the write lock.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for x in 0..10 {
        store
            .defer(move |conn| conn.execute("INSERT INTO t VALUES (?1)", [x]).map(drop))
            .unwrap();
    }
    let err = store.flush().await.unwrap_err();
    assert!(err.is_busy(), "{err:?}");
    assert_eq!(store.stats().pending, 10);
    blocker.execute_batch("COMMIT").unwrap();
    // The writer retries after a short back-off.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.flush().await {
            Ok(()) => break,
            Err(e) if e.is_busy() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let n = rows_in_t(&store).await;
    assert_eq!(n, 10);
    assert_eq!(store.stats().pending, 0);
    assert!(store.stats().failed_batches >= 1);
}

#[tokio::test]
async fn the_memory_database_is_shared_by_all_workers() {
    let store = SqliteStore::builder(":memory:")
        .workers(3)
        .open()
        .await
        .unwrap();
    store
        .call(|conn| Ok(conn.execute_batch("CREATE TABLE t (x INTEGER)")?))
        .await
        .unwrap();
    let writes: Vec<_> = (0..30)
        .map(|x| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .call(move |conn| Ok(conn.execute("INSERT INTO t VALUES (?1)", [x])?))
                    .await
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    let n = rows_in_t(&store).await;
    assert_eq!(n, 30);
    // Another in-memory store is another database.
    let other = SqliteStore::open(":memory:").await.unwrap();
    let err = other
        .call(|conn| Ok(conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))?))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no such table"), "{err}");
}

#[tokio::test]
async fn a_panicking_job_rolls_back_and_the_store_goes_on() {
    let store = SqliteStore::builder(":memory:")
        .workers(1)
        .open()
        .await
        .unwrap();
    store
        .call(|conn| Ok(conn.execute_batch("CREATE TABLE t (x INTEGER)")?))
        .await
        .unwrap();
    let err = store
        .call(|conn| -> Result<(), SqliteError> {
            conn.execute_batch("BEGIN; INSERT INTO t VALUES (1);")?;
            panic!("job bug");
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "sqlite_panicked");
    let n = rows_in_t(&store).await;
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_cancelled_call_is_skipped() {
    let store = SqliteStore::builder(":memory:")
        .workers(1)
        .open()
        .await
        .unwrap();
    store
        .call(|conn| Ok(conn.execute_batch("CREATE TABLE t (x INTEGER)")?))
        .await
        .unwrap();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    // Occupies the only worker until released.
    let busy = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .call(move |_| {
                    wait.recv().unwrap();
                    Ok(())
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Queued behind it, then cancelled.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        store.call(|conn| Ok(conn.execute("INSERT INTO t VALUES (1)", [])?)),
    )
    .await;
    assert!(cancelled.is_err(), "the call should still have been queued");
    release.send(()).unwrap();
    busy.await.unwrap().unwrap();
    let n = rows_in_t(&store).await;
    assert_eq!(n, 0, "a cancelled call must leave nothing behind");
}

#[tokio::test(flavor = "current_thread")]
async fn slow_sqlite_work_never_blocks_the_runtime() {
    let store = SqliteStore::open(":memory:").await.unwrap();
    let started = Instant::now();
    let slow = store.call(|_| {
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    });
    // On a single-threaded runtime, ticks only happen if the job runs elsewhere.
    let ticks = async {
        let mut ticks = 0;
        while started.elapsed() < Duration::from_millis(250) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks += 1;
        }
        ticks
    };
    let (slow, ticks) = tokio::join!(slow, ticks);
    slow.unwrap();
    assert!(ticks >= 10, "the runtime was blocked: {ticks} ticks");
}

#[tokio::test]
async fn a_closed_store_says_so() {
    let store = SqliteStore::open(":memory:").await.unwrap();
    let clone = store.clone();
    store.close().await.unwrap();
    assert!(clone.call(|_| Ok(())).await.unwrap_err().is_closed());
    assert!(clone.defer(|_| Ok(())).unwrap_err().is_closed());
    assert!(clone.flush().await.unwrap_err().is_closed());
}

/// Two stores on one file whose rate limiters admit without pause: a passive checkpoint never
/// catches up with writes that leave it no pause, and the WAL would grow for as long as they
/// go on. Past `max_wal_size` the writer starts it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_past_its_size_limit_is_started_over_under_steady_writes() {
    use courteous::rate_limit::{
        AdaptiveConfig, AdmissionRequest, Clock, Limit, RateLimitStore, SystemClock,
    };
    use courteous::{Priority, Resource};
    use std::sync::Arc;

    let (_dir, path) = temp_db();
    let limit = 256 << 10;
    let open = || {
        SqliteStore::builder(&path)
            .max_wal_size(limit)
            .checkpoint_interval(Duration::from_millis(20))
            .open()
    };
    let stores = [open().await.unwrap(), open().await.unwrap()];
    let limits: Arc<[Limit]> = vec![Limit::per_second(1_000_000)].into();
    let adaptive = Arc::new(AdaptiveConfig::default());
    let until = Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for t in 0..8 {
            let (limiter, limits, adaptive) =
                (store.rate_limits(), limits.clone(), adaptive.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = t;
                while Instant::now() < until {
                    i += 8;
                    let resource = Resource::new(format!("r{s}-{}", i % 64)).unwrap();
                    let request = AdmissionRequest::new(
                        resource,
                        Priority::Background,
                        limits.clone(),
                        adaptive.clone(),
                        SystemClock.now(),
                    );
                    limiter.acquire(request).await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let size = std::fs::metadata(&wal).unwrap().len();
    let restarts: u64 = stores.iter().map(|s| s.stats().wal_restarts).sum();
    for store in stores {
        store.close().await.unwrap();
    }
    assert!(restarts > 0, "the WAL was never started over");
    assert!(
        size < 8 << 20,
        "the WAL grew to {size} bytes past a limit of {limit}"
    );
}

/// Deferred writes that take longer than a slice (1 ms) are committed in several transactions,
/// so that the writer never holds the write lock for long; every write is committed once.
#[tokio::test]
async fn a_long_deferred_batch_is_committed_in_slices() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::builder(&path)
        .flush_interval(Duration::from_secs(60))
        .open()
        .await
        .unwrap();
    store
        .call(|conn| Ok(conn.execute_batch("CREATE TABLE slow (n INTEGER PRIMARY KEY)")?))
        .await
        .unwrap();
    for n in 0..40i64 {
        store
            .defer(move |conn| {
                std::thread::sleep(Duration::from_micros(250));
                conn.execute("INSERT INTO slow VALUES (?1)", [n]).map(drop)
            })
            .unwrap();
    }
    store.flush().await.unwrap();
    let rows: i64 = store
        .call(|conn| Ok(conn.query_row("SELECT count(*) FROM slow", [], |r| r.get(0))?))
        .await
        .unwrap();
    let stats = store.stats();
    assert_eq!((rows, stats.committed, stats.pending), (40, 40, 0));
    // 10 ms of writes: at least 4 transactions of about 1 ms (each takes one write past it).
    assert!(stats.batches >= 4, "{} transactions", stats.batches);
    store.close().await.unwrap();
}

/// A store (2 s busy timeout, checkpoints every 20 ms) whose WAL has grown by `blobs` blobs of
/// `bytes` each, past `max_wal_size`, while a reader holds a snapshot, as a long read or a
/// backup would.
async fn a_wal_grown_under_an_old_snapshot(
    max_wal_size: u64,
    blobs: usize,
    bytes: i64,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    SqliteStore,
    rusqlite::Connection,
) {
    let (dir, path) = temp_db();
    let store = SqliteStore::builder(&path)
        .busy_timeout(Duration::from_secs(2))
        .max_wal_size(max_wal_size)
        .checkpoint_interval(Duration::from_millis(20))
        .open()
        .await
        .unwrap();
    store
        .call(|conn| Ok(conn.execute_batch("CREATE TABLE t (b BLOB)")?))
        .await
        .unwrap();
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM t;")
        .unwrap();
    store
        .call(move |conn| {
            for _ in 0..blobs {
                conn.execute("INSERT INTO t VALUES (zeroblob(?1))", [bytes])?;
            }
            Ok(())
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    (dir, path, store, reader)
}

/// A reader that holds an old snapshot (a long `SELECT`, a backup, litestream) would make the
/// writer's RESTART checkpoint hold the WAL write lock while it waits for the reader (a whole busy
/// timeout, every checkpoint interval): every other writer, and `flush()` behind the writer
/// thread, would wait that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_on_an_old_snapshot_holds_up_neither_writes_nor_flushes() {
    let (_dir, _, store, reader) = a_wal_grown_under_an_old_snapshot(64 << 10, 16, 65536).await;
    let (mut write, mut flush) = (Duration::ZERO, Duration::ZERO);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let started = Instant::now();
        let result = store
            .call(|conn| Ok(conn.execute("INSERT INTO t VALUES (1)", [])?))
            .await;
        write = write.max(started.elapsed());
        assert!(result.is_ok(), "a write failed: {result:?}");
        store
            .defer(|conn| conn.execute("INSERT INTO t VALUES (2)", []).map(drop))
            .unwrap();
        let started = Instant::now();
        store.flush().await.unwrap();
        flush = flush.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(reader);
    store.close().await.unwrap();
    let limit = Duration::from_millis(500);
    assert!(write < limit, "a write waited {write:?}");
    assert!(flush < limit, "flush() waited {flush:?}");
}

/// A reader holding a snapshot lets the WAL grow past max_wal_size (no checkpoint can restart
/// it); once the reader is gone the WAL restarts, and its file, grown past twice the limit, is
/// cut back (SQLite's own cut-back in a commit is off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_file_is_cut_back_after_a_spike() {
    let (_dir, path, store, reader) = a_wal_grown_under_an_old_snapshot(1 << 20, 80, 1 << 20).await;
    drop(reader);
    let until = Instant::now() + Duration::from_secs(5);
    while store.stats().wal_restarts == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.stats().wal_restarts > 0);
    for _ in 0..3 {
        store
            .call(|conn| Ok(conn.execute("INSERT INTO t VALUES (1)", [])?))
            .await
            .unwrap();
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let size = std::fs::metadata(&wal).unwrap().len();
    store.close().await.unwrap();
    assert!(
        size <= 64 << 20,
        "the WAL file stayed at {size} bytes after it restarted (max_wal_size 1 MiB)"
    );
}

/// `recv_deadline` returns a waiting message before it reports a passed deadline: under a steady
/// stream of deferred writes the writer must still checkpoint (and so bound the WAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_checkpoints_under_a_steady_stream_of_deferred_writes() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::builder(&path)
        .max_wal_size(256 << 10)
        .max_pending(10_000)
        .checkpoint_interval(Duration::from_millis(20))
        .open()
        .await
        .unwrap();
    store
        .call(|conn| Ok(conn.execute_batch("CREATE TABLE t (b BLOB)")?))
        .await
        .unwrap();
    let producer = {
        let store = store.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                let _ = store.defer(|conn| {
                    conn.execute("INSERT INTO t VALUES (zeroblob(4096))", [])
                        .map(drop)
                });
            }
        })
    };
    producer.join().unwrap();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let size = std::fs::metadata(&wal).unwrap().len();
    let stats = store.stats();
    store.close().await.unwrap();
    assert!(
        stats.wal_restarts > 0 && size < 8 << 20,
        "no restart ({} restarts) and a WAL of {size} bytes after {} deferred writes",
        stats.wal_restarts,
        stats.committed
    );
}
