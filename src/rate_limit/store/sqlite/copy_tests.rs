//! the exact count, what another process or an older version inserts is seen, and a failed
//! transaction leaves no copy behind.

use super::queue::{Queue, Waiting};
use super::turn::TurnLock;
use super::window;
use super::*;
use crate::context::Priority;
use crate::store::sqlite::schema::Component;
use rusqlite::Connection;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;

/// A resource whose decision panics (see `decide_in`).
pub(super) const PANIC: &str = "test-panic";

struct Process {
    sqlite: SqliteStore,
    store: SqliteRateLimitStore,
}

impl Process {
    async fn open(path: &std::path::Path) -> Self {
        let sqlite = SqliteStore::open(path).await.unwrap();
        let store = sqlite.rate_limits();
        Process { sqlite, store }
    }

    async fn ask(&self, resource: &str, max: u32, now: u64) -> Result<Decision, StoreError> {
        self.ask_as(Priority::User, resource, max, now).await
    }

    async fn ask_as(
        &self,
        priority: Priority,
        resource: &str,
        max: u32,
        now: u64,
    ) -> Result<Decision, StoreError> {
        self.store
            .acquire(AdmissionRequest::new(
                Resource::new(resource).unwrap(),
                priority,
                vec![Limit::per_minute(max)].into(),
                Arc::new(AdaptiveConfig::default()),
                Timestamp::from_millis(now),
            ))
            .await
    }

    /// Admits a request in flight (bound 60 s) at `now`.
    async fn admit_in_flight(&self, resource: &str, max: u32, now: u64) -> InFlight {
        let decision = self
            .store
            .acquire(
                AdmissionRequest::new(
                    Resource::new(resource).unwrap(),
                    Priority::User,
                    vec![Limit::per_minute(max)].into(),
                    Arc::new(AdaptiveConfig::default()),
                    Timestamp::from_millis(now),
                )
                .in_flight(Some(Duration::from_secs(60))),
            )
            .await
            .unwrap();
        match decision {
            Decision::Admitted {
                in_flight: Some(in_flight),
                ..
            } => in_flight,
            other => panic!("refused at {now}: {other:?}"),
        }
    }

    async fn admit(&self, resource: &str, max: u32, now: u64) -> u32 {
        match self.ask(resource, max, now).await.unwrap() {
            Decision::Admitted { remaining, .. } => remaining,
            other => panic!("refused at {now}: {other:?}"),
        }
    }

    fn counts(&self) -> window::Counts {
        self.store.inner.windows.lock().counts()
    }

    /// Waits until no runner is active, so that requests queued next share one batch (a
    /// runner still finishing the last batch could take the first of them alone).
    async fn idle(&self) {
        loop {
            {
                let queue = self.store.inner.queue.lock();
                if !queue.active && !queue.scheduled {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Asserts that this process's copy of `resource` holds exactly the rows after its start
    /// and the generation in the file.
    async fn assert_copy_is_exact(&self, resource: &'static str) {
        let (from, copy, generation) = self
            .store
            .inner
            .windows
            .lock()
            .copy_of(resource)
            .expect("a copy");
        let (table, in_file) = self
            .sqlite
            .call(move |conn| {
                let times = |background: &str| -> rusqlite::Result<Vec<u64>> {
                    conn.prepare(&format!(
                        "SELECT at FROM rate_limit_admissions
                         WHERE resource = ?1 AND at > ?2 {background} ORDER BY at"
                    ))?
                    .query_map(params![resource, from as i64], |r| {
                        Ok(r.get::<_, i64>(0)? as u64)
                    })?
                    .collect()
                };
                let generation: i64 = conn.query_row(
                    "SELECT generation FROM rate_limit_state WHERE resource = ?1",
                    [resource],
                    |r| r.get(0),
                )?;
                Ok(((times("")?, times("AND background != 0")?), generation))
            })
            .await
            .unwrap();
        assert_eq!((copy, generation), (table, in_file));
    }

    async fn close(self) {
        self.sqlite.close().await.unwrap();
    }
}

async fn two() -> (tempfile::TempDir, Process, Process) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copies.db");
    // Separate stores on one file have separate connections and copies, as processes do.
    let (a, b) = (Process::open(&path).await, Process::open(&path).await);
    (dir, a, b)
}

/// How a copy caught up: which counter moved.
#[derive(Debug, PartialEq, Eq)]
enum Way {
    Log,
    Tail,
    Read,
}

/// `a` admits at T0 (its copy), `b` admits at each of `stamps` (one of them background when
/// `background`), then `a` admits at `at`: returns what remained for `a`, and how its copy
/// caught up, after checking that the copy is exact.
async fn catch_up(max: u32, stamps: &[u64], background: bool, at: u64) -> (u32, Way) {
    let (_dir, a, b) = two().await;
    assert_eq!(a.admit("x", max, T0).await, max - 1);
    for (i, stamp) in stamps.iter().enumerate() {
        let priority = if background && i == 0 {
            Priority::Background
        } else {
            Priority::User
        };
        let decision = b.ask_as(priority, "x", max, *stamp).await;
        assert!(
            matches!(decision, Ok(Decision::Admitted { .. })),
            "{decision:?}"
        );
    }
    let before = a.counts();
    let remaining = a.admit("x", max, at).await;
    a.assert_copy_is_exact("x").await;
    let after = a.counts();
    let way = match (
        after.from_log - before.from_log,
        after.from_tail - before.from_tail,
        after.reads - before.reads,
    ) {
        (1, 0, 0) => Way::Log,
        (0, 1, 0) => Way::Tail,
        (0, 0, 1) => Way::Read,
        other => panic!("caught up {other:?} times"),
    };
    a.close().await;
    b.close().await;
    (remaining, way)
}

#[tokio::test(flavor = "current_thread")]
async fn a_copy_behind_by_a_few_catches_up_from_the_state_row() {
    // Seven admitted: a's copy counts b's six (one of them background).
    let stamps: Vec<u64> = (1..=6).map(|i| T0 + i).collect();
    assert_eq!(catch_up(10, &stamps, true, T0 + 10).await, (2, Way::Log));
}

#[tokio::test(flavor = "current_thread")]
async fn a_copy_behind_by_many_catches_up_from_the_newest_rows() {
    // More than the state row logs.
    let stamps: Vec<u64> = (1..=80).map(|i| T0 + i).collect();
    assert_eq!(
        catch_up(200, &stamps, false, T0 + 90).await,
        (118, Way::Tail)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_copy_that_misses_older_stamped_rows_is_read_again() {
    // Eighty admissions (more than the state row logs) stamped 10 s earlier, still in the
    // minute.
    let stamps: Vec<u64> = (1..=80).map(|i| T0 - 10_000 + i).collect();
    assert_eq!(
        catch_up(200, &stamps, false, T0 + 1).await,
        (118, Way::Read)
    );
}

/// An in-flight admission is stamped with its expiry and counts in every window; its
/// re-stamp by its own process keeps that process's copy exact without reading it again.
#[tokio::test(flavor = "current_thread")]
async fn a_restamp_keeps_the_own_copy_exact() {
    let (_dir, a, b) = two().await;
    let in_flight = a.admit_in_flight("x", 10, T0).await;
    assert_eq!(in_flight.expires_at, Timestamp::from_millis(T0 + 60_000));
    // 59 s later it still counts: in flight.
    assert_eq!(a.admit("x", 10, T0 + 59_000).await, 8);
    let before = a.counts();
    a.store
        .settle(&in_flight, Timestamp::from_millis(T0 + 200))
        .await
        .unwrap();
    a.assert_copy_is_exact("x").await;
    // Settled at T0 + 200: it leaves the minute at T0 + 60_200.
    assert_eq!(a.admit("x", 10, T0 + 60_201).await, 8);
    a.assert_copy_is_exact("x").await;
    assert_eq!(a.counts().reads, before.reads, "read the window again");
    // Settling again does nothing.
    a.store
        .settle(&in_flight, Timestamp::from_millis(T0 + 60_300))
        .await
        .unwrap();
    a.assert_copy_is_exact("x").await;
    assert_eq!(a.admit("x", 10, T0 + 60_301).await, 7);
    a.close().await;
    b.close().await;
}

/// Another process's re-stamp (two log entries) is caught up from the state row: the copy
/// drops the old stamp and takes the new one.
#[tokio::test(flavor = "current_thread")]
async fn a_restamp_by_another_process_is_caught_up_from_the_log() {
    let (_dir, a, b) = two().await;
    let in_flight = b.admit_in_flight("x", 10, T0).await;
    assert_eq!(a.admit("x", 10, T0 + 1).await, 8);
    b.store
        .settle(&in_flight, Timestamp::from_millis(T0 + 100))
        .await
        .unwrap();
    let before = a.counts();
    // b's admission left the minute at T0 + 60_100; a's at T0 + 60_001.
    assert_eq!(a.admit("x", 10, T0 + 60_101).await, 9);
    a.assert_copy_is_exact("x").await;
    let after = a.counts();
    assert_eq!(
        (after.from_log - before.from_log, after.reads - before.reads),
        (1, 0)
    );
    a.close().await;
    b.close().await;
}

/// Many re-stamps by another process (more than the log holds) make the copy read again,
/// never take the tail for exact (a re-stamp moves a row without adding one).
#[tokio::test(flavor = "current_thread")]
async fn many_restamps_by_another_process_read_the_copy_again() {
    let (_dir, a, b) = two().await;
    let mut admitted = Vec::new();
    for i in 0..40 {
        admitted.push(b.admit_in_flight("x", 100, T0 + i).await);
    }
    assert_eq!(a.admit("x", 100, T0 + 50).await, 59);
    for (i, in_flight) in admitted.iter().enumerate() {
        b.store
            .settle(in_flight, Timestamp::from_millis(T0 + 100 + i as u64))
            .await
            .unwrap();
    }
    let before = a.counts();
    assert_eq!(a.admit("x", 100, T0 + 200).await, 58);
    a.assert_copy_is_exact("x").await;
    assert_eq!(a.counts().reads - before.reads, 1);
    a.close().await;
    b.close().await;
}

/// An in-flight admission whose caller gave up while it was being decided (its answer cannot
/// be sent) is settled at its decision by the runner, not held to its bound.
#[tokio::test(flavor = "current_thread")]
async fn an_admission_whose_caller_left_is_settled_at_its_decision() {
    let (_dir, a, b) = two().await;
    let in_flight = a.admit_in_flight("x", 10, T0).await;
    // Its answer goes to a caller that is gone.
    let (reply, gone) = oneshot::channel();
    drop(gone);
    let asked = AdmissionRequest::new(
        Resource::new("x").unwrap(),
        Priority::User,
        vec![Limit::per_minute(10)].into(),
        Arc::new(AdaptiveConfig::default()),
        Timestamp::from_millis(T0),
    )
    .in_flight(Some(Duration::from_secs(60)));
    a.store.inner.answer(
        Waiting {
            request: asked,
            reply,
            queued_at: None,
            requeued: false,
        },
        Decision::Admitted {
            remaining: 9,
            at: in_flight.admitted_at,
            in_flight: Some(in_flight),
        },
    );
    // The next run of the runner writes it: x is stamped at T0, and left the minute by
    // T0 + 60_001 (in flight, it would count until T0 + 60_000 and then a minute more).
    assert_eq!(a.admit("y", 10, T0 + 1).await, 9);
    assert_eq!(b.admit("x", 10, T0 + 60_001).await, 9);
    b.assert_copy_is_exact("x").await;
    a.close().await;
    b.close().await;
}

/// A file made by schema `rate_limit` v3 (before in-flight admissions) upgrades in place:
/// its admissions still count, and re-stamps are logged so that every copy stays exact.
#[tokio::test(flavor = "current_thread")]
async fn a_file_of_schema_v3_upgrades_and_logs_restamps() {
    use crate::store::sqlite::schema::{CORE, migrate};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        let v3 = Component {
            name: "rate_limit",
            migrations: &RATE_LIMIT.migrations[..3],
        };
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path, &[CORE, v3]).unwrap();
        // What the v3 code inserted.
        for (i, background) in [(0i64, 0i64), (1, 1)] {
            conn.execute(
                "INSERT INTO rate_limit_admissions (resource, at, id, background)
                 VALUES ('x', ?1, ?2, ?3)",
                params![T0 as i64 + i, i, background],
            )
            .unwrap();
        }
    }
    let (a, b) = (Process::open(&path).await, Process::open(&path).await);
    let version: i64 = a
        .sqlite
        .call(|conn| {
            Ok(conn.query_row(
                "SELECT version FROM courteous_schema WHERE component = 'rate_limit'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(version, RATE_LIMIT.migrations.len() as i64);
    // The two old admissions count.
    assert_eq!(b.admit("x", 10, T0 + 5).await, 7);
    let in_flight = a.admit_in_flight("x", 10, T0 + 10).await;
    a.store
        .settle(&in_flight, Timestamp::from_millis(T0 + 20))
        .await
        .unwrap();
    let before = b.counts();
    assert_eq!(b.admit("x", 10, T0 + 30).await, 5);
    b.assert_copy_is_exact("x").await;
    assert_eq!(b.counts().from_log - before.from_log, 1);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn rows_inserted_by_an_older_version_are_counted() {
    let (_dir, a, b) = two().await;
    assert_eq!(a.admit("x", 10, T0).await, 9);
    // Version 2 of the schema inserted admissions with plain SQL and knew nothing of the
    // generation: the trigger keeps the copies right.
    b.sqlite
        .call(|conn| {
            for i in 1..=3i64 {
                conn.execute(
                    "INSERT INTO rate_limit_admissions (resource, at, id, background)
                     VALUES ('x', ?1, ?2, 0)",
                    params![T0 as i64 + i, i],
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(a.admit("x", 10, T0 + 10).await, 5);
    a.assert_copy_is_exact("x").await;
    a.close().await;
    b.close().await;
}

/// Makes inserts for the resource `poison` fail (as a constraint would).
async fn poison(process: &Process) {
    process
        .sqlite
        .call(|conn| {
            conn.execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON rate_limit_admissions
                 WHEN NEW.resource = 'poison'
                 BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
            )?;
            Ok(())
        })
        .await
        .unwrap();
}

/// Waits until `ready` holds of the queue.
async fn until_queue(process: &Process, ready: impl Fn(&Queue) -> bool) {
    while !ready(&process.store.inner.queue.lock()) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A request queued while a transaction that is going to fail waits for its turn is decided
/// in the next transaction: the failure is its own batch's, not every later request's.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_transaction_fails_only_its_own_requests() {
    let (dir, a, b) = two().await;
    poison(&a).await;
    a.idle().await;
    // Hold the turn, as another process would: a's runner takes its batch and waits.
    let turn = TurnLock::open(&dir.path().join("copies.db")).unwrap();
    assert!(turn.take());
    let store = a.store.clone();
    let failing = tokio::spawn(async move {
        store
            .acquire(AdmissionRequest::new(
                Resource::new("poison").unwrap(),
                Priority::User,
                vec![Limit::per_minute(10)].into(),
                Arc::new(AdaptiveConfig::default()),
                Timestamp::from_millis(T0),
            ))
            .await
    });
    until_queue(&a, |q| q.active && q.items.is_empty()).await;
    let (later, ()) = tokio::join!(a.ask("x", 10, T0), async {
        until_queue(&a, |q| q.items.len() == 1).await;
        turn.give();
    });
    assert!(failing.await.unwrap().is_err());
    assert!(matches!(later, Ok(Decision::Admitted { .. })), "{later:?}");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_transaction_leaves_no_copy_behind() {
    let (_dir, a, b) = two().await;
    assert_eq!(a.admit("x", 10, T0).await, 9);
    poison(&a).await;
    // One transaction (both are queued before the runner starts on this thread): x is
    // admitted and added to the copy, then poison fails, and the transaction rolls back.
    a.idle().await;
    let (x, poison) = tokio::join!(a.ask("x", 10, T0 + 1), a.ask("poison", 10, T0 + 1));
    assert!(x.is_err() && poison.is_err(), "{x:?} {poison:?}");
    // Another process admits once, stamped long before the window: the generation is where
    // a copy that kept the rolled-back admission would be, with other rows.
    b.admit("x", 10, T0 - 120_000).await;
    // One admission in the minute (T0), so 8 remain after this one.
    assert_eq!(a.admit("x", 10, T0 + 2).await, 8);
    a.assert_copy_is_exact("x").await;
    a.close().await;
    b.close().await;
}

/// A transaction that panics after an admission was added to a copy is rolled back: the
/// copy must not keep the admission (one admission by another process would bring the
/// file's generation level with the copy's, and the copy would be taken as exact).
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_transaction_leaves_no_copy_behind() {
    let (dir, a, b) = two().await;
    // a's copy of x: T0, generation 1.
    assert_eq!(a.admit("x", 2, T0).await, 1);
    // One batch: x at T0 - 59 s (a request that waited) is admitted and added to the copy;
    // then the transaction panics. Both must be queued before the runner takes a batch (a
    // runner started by the first could take it alone, and admit it): hold the turn, as
    // another process would, while the runner waits with a first batch of its own.
    a.idle().await;
    let turn = TurnLock::open(&dir.path().join("copies.db")).unwrap();
    assert!(turn.take());
    let (first, (x, panicked, ())) = tokio::join!(a.ask("y", 2, T0), async {
        until_queue(&a, |q| q.active && q.items.is_empty()).await;
        tokio::join!(a.ask("x", 2, T0 - 59_000), a.ask(PANIC, 1, T0), async {
            until_queue(&a, |q| q.items.len() == 2).await;
            turn.give();
        })
    });
    assert!(matches!(first, Ok(Decision::Admitted { .. })), "{first:?}");
    assert!(x.is_err() && panicked.is_err(), "{x:?} {panicked:?}");
    // The callers hear of the panic as their replies are dropped, before the runner's
    // guard fails what is queued: a request queued in between would fail too.
    a.idle().await;
    // Another process admits x once (the file: T0, T0 + 5, generation 2).
    assert_eq!(b.admit("x", 2, T0 + 5).await, 0);
    // Two admissions in the minute before T0 + 2 s: x is full.
    let third = a.ask("x", 2, T0 + 2_000).await.unwrap();
    assert!(
        matches!(third, Decision::Refused { .. }),
        "a third admission in a minute limited to 2: {third:?}"
    );
    a.assert_copy_is_exact("x").await;
    a.close().await;
    b.close().await;
}

/// A runner job dropped before a store thread runs it (its runtime shut down while the job
/// waited for a connection, and `call` skips a job whose caller is gone) must not leave later
/// requests queued behind a runner that never comes.
#[test]
fn a_runner_job_dropped_with_its_runtime_leaves_no_caller_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dropped.db");
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sqlite, store) = first.block_on(async {
        let sqlite = SqliteStore::builder(&path).workers(1).open().await.unwrap();
        let store = sqlite.rate_limits();
        (sqlite, store)
    });
    first.block_on(async {
        // Keep the only connection busy, so the runner job waits in the store's queue.
        let busy = sqlite.clone();
        tokio::spawn(async move {
            busy.call(|_| {
                std::thread::sleep(Duration::from_millis(300));
                Ok(())
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let asking = store.clone();
        tokio::spawn(async move {
            let _ = asking
                .acquire(AdmissionRequest::new(
                    Resource::new("x").unwrap(),
                    Priority::User,
                    vec![Limit::per_minute(10)].into(),
                    Arc::new(AdaptiveConfig::default()),
                    Timestamp::from_millis(T0),
                ))
                .await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    // The runtime goes, with the detached runner job in it.
    drop(first);
    std::thread::sleep(Duration::from_millis(400));
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answered = second.block_on(async {
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            store.acquire(AdmissionRequest::new(
                Resource::new("x").unwrap(),
                Priority::User,
                vec![Limit::per_minute(10)].into(),
                Arc::new(AdaptiveConfig::default()),
                Timestamp::from_millis(T0 + 1),
            )),
        )
        .await;
        sqlite.close().await.unwrap();
        answer
    });
    assert!(answered.is_ok(), "the request was never decided");
}

/// A request stamped a little earlier than the one decided before it (stamps are taken
/// before requests queue) is decided on the copy, without reading the window again.
#[tokio::test(flavor = "current_thread")]
async fn a_request_stamped_a_little_earlier_is_decided_on_the_copy() {
    let (_dir, a, b) = two().await;
    assert_eq!(a.admit("x", 100, T0 + 1).await, 99);
    let before = a.counts();
    assert_eq!(a.admit("x", 100, T0).await, 98);
    let after = a.counts();
    b.close().await;
    a.close().await;
    assert_eq!(after.reads, before.reads, "read the window again");
}

/// The trigger logs `printf('%016x', at * 2 + background)`: from 2^62 ms on (absurd clocks)
/// `at * 2` overflows SQLite's integers and printf clamps it. A copy must not catch up from
/// such an entry.
#[tokio::test(flavor = "current_thread")]
async fn a_copy_is_exact_for_stamps_past_what_the_log_can_hold() {
    const FAR: u64 = 1 << 62;
    let (_dir, a, b) = two().await;
    b.admit("x", 10, FAR).await;
    a.admit("x", 10, FAR + 10).await;
    b.admit("x", 10, FAR + 20).await;
    b.assert_copy_is_exact("x").await;
    a.close().await;
    b.close().await;
}
