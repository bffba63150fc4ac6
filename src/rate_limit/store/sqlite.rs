//! The SQLite store: admissions shared by every process that opens the file.
//!
//! # How a decision is made
//!
//! [`acquire`](RateLimitStore::acquire) queues the request. One job per process at a time (a
//! *runner*, on the [`SqliteStore`]'s threads) takes everything queued and decides it in one
//! `BEGIN IMMEDIATE` transaction of up to 256 decisions: each decision reads its resource's state
//! row (server feedback, and a generation that tells whether anything was admitted since) and
//! counts the admissions in its windows on this process's copy of them, which the generation
//! proves exact or which first catches up with what other processes admitted (see "Copies"
//! below: most decisions read no admission rows); an admitted request is inserted in the same
//! transaction before the next is decided. The transaction commits before any caller hears
//! its answer, so an admission is in the file, and visible to every other process, before the
//! request goes out. Under load many decisions share one transaction (group commit); alone, a
//! decision is one short transaction. A transaction stops taking decisions after 1 ms (the rest
//! go first in the next one), so that no batch holds the other processes up for long. The runner
//! goes on while requests keep arriving, and stops when the queue is empty.
//!
//! Processes take turns through advisory locks on two files beside the database
//! (`<file>-ratelimit.lock` and `<file>-ratelimit.gate`, 0600): the *turn*, held for one
//! transaction and handed over as soon as it commits (before the answers go out), and a *gate*
//! that the process waiting for the turn holds, so that the process handing the turn over cannot
//! take it straight back. A waiting process is woken the moment the turn is released (where
//! SQLite's busy handler polls and can miss the short gaps between another process's
//! transactions), and busy processes alternate transaction by transaction (a bare lock let one
//! process win it again and again, and left the other waiting for over 100 ms). The locks only
//! order admission transactions; SQLite's own locking still guarantees correctness. A runner that
//! has held the turn for 10 ms in all leaves the database free for 300 µs (still holding the
//! turn), longer than the busy handler's longest sleep, so that writers waiting with the polling
//! busy handler (the write-behind writer, other stores, a process opening the file) are never
//! starved by a saturated limiter.
//!
//! With the environment variable `COURTEOUS_RL_PHASES` set, the store keeps per-phase latency
//! histograms (turn wait, `BEGIN`, statements, `COMMIT`, queueing, how copies caught up), which
//! the `rate_limit` benchmark prints.
//!
//! Windows are counted from `now - window` *with no upper bound*, so an admission another process
//! stamped a few microseconds later still counts: the window invariant holds across processes
//! whatever order their transactions commit in.
//!
//! # Time and in-flight admissions
//!
//! Each decision reads the request's clock inside the transaction, just before it is made: a
//! request that waited in the queue or for another process's turn is stamped when it is decided,
//! not when it asked. An admission asked *in flight* (see [`InFlight`]) is inserted with its
//! expiry as its stamp, and [`settle`](RateLimitStore::settle) re-stamps it (an `UPDATE` of
//! `at`, found by its primary key): settlements are queued like decisions and written in the
//! same transactions, before the decisions of that transaction, so that many share one commit.
//! Until one is committed, every process counts the admission in flight, the safe side.
//!
//! # User activity
//!
//! User admissions are counted per resource and second and written behind (through
//! [`SqliteStore::defer`], committed within the writer's flush interval) to
//! `rate_limit_activity`, which every process reads for its adaptive split (at most once per
//! recalculation interval). Activity is a heuristic input: a crash can lose the last flush
//! interval of it, never an admission.
//!
//! # Growth
//!
//! Admissions older than the longest window in use for the resource, and user activity older
//! than the monitoring window, are deleted by write-behind jobs coalesced per resource (at most
//! one pending per resource, run at most every 5 s). "In use" is across processes: each job
//! notes its process's longest window in `rate_limit_retention`, where a longer window stands
//! until one window after the last process using it noted it, so that during a rolling deploy
//! that shortens a limit, processes on the shorter window do not prune what those on the longer
//! one still count. Admissions a server's `RateLimit-Remaining` budget counts are kept until it
//! resets. The tables stay as large as the windows require, and so do the copies in memory (the
//! admissions of each resource's longest window, for at most 4,096 resources, least recently
//! used dropped first). A decision costs the same whatever the number of admissions in the
//! window, except when its copy is read again whole (a range scan of the window: the first
//! decision for a resource, or after other processes admitted more than 16 times with stamps
//! far apart).
//!
//! # Copies
//!
//! Each process keeps, per resource, the times of the admissions in its windows (and one second
//! before them). Schema `rate_limit` v3 adds to `rate_limit_state` a `generation` and a log of
//! the last admissions (`recent`), which a trigger updates with every insert into
//! `rate_limit_admissions`, whatever process or version of this crate makes it; v4 keeps 64
//! entries and adds a trigger for re-stamps, which raises the generation by two and logs the
//! removal of the old stamp and the new one. A copy at the generation in the row is exact. One
//! that is behind by `d` catches up from the log (`d` ≤ 64: no other page read, which matters
//! since SQLite drops a connection's page cache whenever another process wrote), else from the
//! newest rows when exactly `d` new ones are there and nothing was re-stamped, else by reading
//! the window again. A transaction that fails or panics drops every copy. Deleting
//! admissions or state rows by hand, or putting back an older copy of the file, while processes
//! have it open, can leave their copies wrong: restart them afterwards.
//!
//! # Note on cancellation
//!
//! A request dropped before its batch is taken is skipped and records nothing. One dropped while
//! its batch is being decided may be recorded without being sent: it over-counts by one, which
//! never lets the API see more than the limit. If it was asked in flight, it is settled at its
//! decision (by the runner, or by the dropped caller when the answer had already arrived), so it
//! counts for one window, not until its in-flight bound.
//!
//! # Example
//!
//! ```
//! use courteous::rate_limit::{Limit, Limits, RateLimitLayer};
//! use courteous::store::sqlite::SqliteStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let sqlite = SqliteStore::open(dir.path().join("courteous.db")).await?;
//! let limits = Limits::new().default_limit(Limit::per_hour(200));
//! let layer = RateLimitLayer::new(sqlite.rate_limits(), limits)?;
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{
    AdmissionLog, AdmissionRequest, Decision, InFlight, RateLimitStats, RateLimitStatus,
    RateLimitStore, ResourceStats, ServerFeedback, ServerState, decide, retention, status_of,
};
use crate::context::Priority;
use crate::rate_limit::adaptive::{Activity, AdaptiveConfig, WindowUsage, activity_from_buckets};
use crate::rate_limit::limit::Limit;
use crate::resource::Resource;
use crate::store::sqlite::schema::Component;
use crate::store::sqlite::{SqliteError, SqliteStore};
use crate::store::{StoreError, StoreErrorKind};
use crate::time::Timestamp;

mod phases;
mod window;
use phases::Phases;
use window::{CachedLog, Windows};

/// The rate limiter's tables.
pub(crate) const RATE_LIMIT: Component = Component {
    name: "rate_limit",
    migrations: &[
        // 1: admissions, per-second user activity, per-resource state.
        "CREATE TABLE rate_limit_admissions (
             resource   TEXT NOT NULL,
             at         INTEGER NOT NULL,
             id         INTEGER NOT NULL,
             background INTEGER NOT NULL,
             PRIMARY KEY (resource, at, id)
         ) STRICT, WITHOUT ROWID;
         CREATE TABLE rate_limit_activity (
             resource TEXT NOT NULL,
             second   INTEGER NOT NULL,
             users    INTEGER NOT NULL,
             PRIMARY KEY (resource, second)
         ) STRICT, WITHOUT ROWID;
         CREATE TABLE rate_limit_state (
             resource         TEXT PRIMARY KEY NOT NULL,
             first_at         INTEGER NOT NULL,
             last_user_at     INTEGER,
             blocked_until    INTEGER NOT NULL DEFAULT 0,
             budget_remaining INTEGER,
             budget_observed  INTEGER,
             budget_reset     INTEGER
         ) STRICT;",
        // 2: the longest window any process still counts in, per resource, so that a process
        // with a shorter one (a rolling deploy that shortened a limit) does not prune what the
        // others count.
        "CREATE TABLE rate_limit_retention (
             resource TEXT PRIMARY KEY NOT NULL,
             keep_ms  INTEGER NOT NULL,
             until_ms INTEGER NOT NULL
         ) STRICT;",
        // 3: a per-resource generation, raised by a trigger with every admission inserted
        // (whatever version of this crate inserts it), which tells a process whether its copy of
        // a resource's admissions is still exact, and the last 16 admissions, from which a copy
        // that is behind catches up (see `window`). The trigger also creates the state row on a
        // resource's first admission.
        "ALTER TABLE rate_limit_state ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE rate_limit_state ADD COLUMN recent TEXT NOT NULL DEFAULT '';
         CREATE TRIGGER rate_limit_admission_generation AFTER INSERT ON rate_limit_admissions
         BEGIN
             INSERT INTO rate_limit_state (resource, first_at, generation, recent)
                 VALUES (NEW.resource, NEW.at, 1,
                         printf('%016x', NEW.at * 2 + (NEW.background != 0)))
             ON CONFLICT (resource) DO UPDATE SET
                 generation = generation + 1,
                 recent = substr(recent || excluded.recent, -256);
         END;",
        // 4: in-flight admissions are re-stamped (an UPDATE of `at`) when their response
        // arrives: the generation rises by two and the log gets two entries, the removal of the
        // old stamp (the top bit set) and the new one, so that copies stay exact (see
        // `window`). The log keeps the last 64 entries.
        "DROP TRIGGER rate_limit_admission_generation;
         CREATE TRIGGER rate_limit_admission_generation AFTER INSERT ON rate_limit_admissions
         BEGIN
             INSERT INTO rate_limit_state (resource, first_at, generation, recent)
                 VALUES (NEW.resource, NEW.at, 1,
                         printf('%016x', NEW.at * 2 + (NEW.background != 0)))
             ON CONFLICT (resource) DO UPDATE SET
                 generation = generation + 1,
                 recent = substr(recent || excluded.recent, -1024);
         END;
         CREATE TRIGGER rate_limit_admission_restamp AFTER UPDATE OF at ON rate_limit_admissions
         BEGIN
             UPDATE rate_limit_state SET
                 generation = generation + 2,
                 recent = substr(recent
                     || printf('%016x', (OLD.at * 2 + (OLD.background != 0)) | (1 << 63))
                     || printf('%016x', NEW.at * 2 + (NEW.background != 0)), -1024)
             WHERE resource = NEW.resource;
         END;",
    ],
};

/// How often a process prunes one resource's old rows.
const PRUNE_EVERY_MS: u64 = 5000;

/// A runner that has held the turn this long (in all, since its last gap) leaves the write lock
/// free for `GAP`, longer than the longest sleep of the busy handler (250 µs), so that a writer
/// polling for it gets in.
const HOLD_BEFORE_GAP: Duration = Duration::from_millis(10);
const GAP: Duration = Duration::from_micros(300);

/// Most decisions in one transaction.
const MAX_BATCH: usize = 256;

/// A transaction stops taking decisions after this long (the rest go back to the head of the
/// queue), so that one slow batch holds the other processes up no longer than this.
const BATCH_BUDGET: Duration = Duration::from_millis(1);

impl SqliteStore {
    /// A rate-limit store in this file, shared with every process that opens it.
    pub fn rate_limits(&self) -> SqliteRateLimitStore {
        SqliteRateLimitStore {
            sqlite: self.clone(),
            inner: Arc::new(Inner {
                phases: Phases::from_env(),
                budget: BATCH_BUDGET,
                ..Inner::default()
            }),
        }
    }
}

/// Admissions counted in a SQLite file, across processes. See the [module docs](self).
#[derive(Clone)]
pub struct SqliteRateLimitStore {
    sqlite: SqliteStore,
    inner: Arc<Inner>,
}

impl fmt::Debug for SqliteRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteRateLimitStore")
            .field("path", &self.sqlite.path())
            .finish_non_exhaustive()
    }
}

impl SqliteRateLimitStore {
    /// Per-phase latency histograms of this store's decisions (turn wait, `BEGIN`, statements,
    /// `COMMIT`, queueing), as a printable table; `None` unless the environment variable
    /// `COURTEOUS_RL_PHASES` was set when the store was created. A diagnostic for benchmarks,
    /// not a stable interface.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sqlite = courteous::store::sqlite::SqliteStore::open(":memory:").await?;
    /// let store = sqlite.rate_limits();
    /// if let Some(table) = store.phase_report() {
    ///     println!("{table}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[doc(hidden)]
    pub fn phase_report(&self) -> Option<String> {
        self.inner.phases.as_ref().map(|p| p.report())
    }
}

type Reply = oneshot::Sender<Result<Decision, StoreError>>;

/// A request waiting for its decision.
struct Waiting {
    request: AdmissionRequest,
    reply: Reply,
    /// When it was queued, kept only while phases are measured.
    queued_at: Option<Instant>,
    /// Put back at the head of the queue after a transaction ran out of time.
    requeued: bool,
}

/// An in-flight admission of this process waiting to be re-stamped.
struct Settling {
    admission: InFlight,
    at: Timestamp,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// What one transaction does: re-stamps first (they can only free slots), then decisions.
#[derive(Default)]
struct Batch {
    decisions: Vec<Waiting>,
    settles: Vec<Settling>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.decisions.is_empty() && self.settles.is_empty()
    }
}

/// Requests waiting for a decision, and who is deciding them.
///
/// All three fields change under one lock, which makes the hand-off race-free: a runner stops
/// only when it finds the queue empty under the lock, and a request queued after that sees no
/// runner and schedules a job.
#[derive(Default)]
struct Queue {
    items: Vec<Waiting>,
    /// Re-stamps waiting to be written (they share the decisions' transactions).
    settles: Vec<Settling>,
    /// A runner is deciding batches (one per process at a time).
    active: bool,
    /// A job is queued that will become the runner.
    scheduled: bool,
}

impl Queue {
    /// Answers every queued request with an error (nobody will decide them).
    fn fail_all(&mut self, message: &'static str) {
        let error = || StoreError::new("sqlite", StoreErrorKind::Other, message);
        for waiting in self.items.drain(..) {
            let _ = waiting.reply.send(Err(error()));
        }
        for settling in self.settles.drain(..) {
            let _ = settling.reply.send(Err(error()));
        }
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty() && self.settles.is_empty()
    }
}

#[derive(Default)]
struct PendingActivity {
    users: HashMap<(Resource, u64), u32>,
    last_user: HashMap<Resource, u64>,
    /// A deferred write is queued that will take everything pending when it runs.
    queued: bool,
}

impl PendingActivity {
    fn merge(&mut self, users: HashMap<(Resource, u64), u32>, last_user: HashMap<Resource, u64>) {
        for (key, n) in users {
            *self.users.entry(key).or_default() += n;
        }
        for (resource, at) in last_user {
            let last = self.last_user.entry(resource).or_default();
            *last = (*last).max(at);
        }
    }
}

/// Distinguishes admissions stamped in the same millisecond (primary key).
fn next_id() -> i64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    ((u64::from(std::process::id()) << 40) ^ n) as i64
}

#[derive(Default)]
struct Inner {
    queue: Mutex<Queue>,
    /// Per-phase timings, when `COURTEOUS_RL_PHASES` is set (see [`phases`]).
    phases: Option<Box<Phases>>,
    /// How long a transaction takes decisions ([`BATCH_BUDGET`]).
    budget: Duration,
    /// The lock files beside the database that make processes take turns (see the module
    /// docs), opened on first use; `None` for `:memory:` or when they cannot be opened.
    turn: OnceLock<Option<TurnLock>>,
    /// User admissions not yet written to the activity table: (resource, second) -> count, and
    /// the last user admission per resource.
    activity_pending: Arc<Mutex<PendingActivity>>,
    /// Activity read from the file, reused for the recalculation interval.
    activity: Mutex<HashMap<Resource, (u64, Activity)>>,
    /// Per resource: when old rows were last pruned, and the longest window seen.
    pruning: Mutex<HashMap<Resource, (u64, u64)>>,
    /// This process's copies of the admissions in its windows (see [`window`]); used by the
    /// runner only.
    windows: Mutex<Windows>,
    stats: Mutex<HashMap<Resource, ResourceStats>>,
    /// The opening of the file the copies were made from (see `store::sqlite::file_epoch`).
    file_epoch: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct SqlLog<'a> {
    conn: &'a Connection,
    resource: &'a str,
}

impl AdmissionLog for SqlLog<'_> {
    type Error = rusqlite::Error;

    fn usage(&mut self, since: u64) -> rusqlite::Result<WindowUsage> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT count(*), coalesce(sum(background), 0) FROM rate_limit_admissions
             WHERE resource = ?1 AND at > ?2",
        )?;
        stmt.query_row(params![self.resource, since as i64], |r| {
            Ok(WindowUsage {
                total: r.get::<_, i64>(0)? as u32,
                background: r.get::<_, i64>(1)? as u32,
            })
        })
    }

    fn kth_oldest(&mut self, since: u64, k: u32) -> rusqlite::Result<Option<u64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at FROM rate_limit_admissions WHERE resource = ?1 AND at > ?2
             ORDER BY at LIMIT 1 OFFSET ?3",
        )?;
        stmt.query_row(
            params![self.resource, since as i64, i64::from(k.max(1) - 1)],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map(|v| v.map(|v| v as u64))
    }
}

/// The per-resource row, as read in a transaction.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    exists: bool,
    last_user_at: Option<u64>,
    server: ServerState,
    /// Raised with every admission of the resource (by a trigger).
    generation: i64,
}

fn read_row(conn: &Connection, resource: &str) -> rusqlite::Result<Row> {
    let mut stmt = conn.prepare_cached(
        "SELECT last_user_at, blocked_until, budget_remaining, budget_observed, budget_reset,
                generation
         FROM rate_limit_state WHERE resource = ?1",
    )?;
    let row = stmt
        .query_row([resource], |r| {
            let budget = match (
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ) {
                (Some(left), Some(observed), Some(reset)) => {
                    Some((left.max(0) as u32, observed as u64, reset as u64))
                }
                _ => None,
            };
            Ok(Row {
                exists: true,
                last_user_at: r.get::<_, Option<i64>>(0)?.map(|v| v as u64),
                server: ServerState {
                    blocked_until: r.get::<_, i64>(1)?.max(0) as u64,
                    budget,
                },
                generation: r.get(5)?,
            })
        })
        .optional()?;
    Ok(row.unwrap_or_default())
}

fn read_activity(
    conn: &Connection,
    resource: &str,
    row: &Row,
    config: &AdaptiveConfig,
    now: u64,
) -> rusqlite::Result<Activity> {
    let since = now.saturating_sub(config.monitoring_ms()) / 1000;
    let mut stmt = conn.prepare_cached(
        "SELECT second, users FROM rate_limit_activity WHERE resource = ?1 AND second >= ?2",
    )?;
    let buckets = stmt
        .query_map(params![resource, since as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u32))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(activity_from_buckets(
        buckets.into_iter(),
        config,
        now,
        row.last_user_at,
        row.exists,
    ))
}

fn write_activity(
    conn: &Connection,
    users: &HashMap<(Resource, u64), u32>,
    last_user: &HashMap<Resource, u64>,
) -> rusqlite::Result<()> {
    let mut add = conn.prepare_cached(
        "INSERT INTO rate_limit_activity (resource, second, users) VALUES (?1, ?2, ?3)
         ON CONFLICT (resource, second) DO UPDATE SET users = users + excluded.users",
    )?;
    for ((resource, second), n) in users {
        add.execute(params![resource.as_str(), *second as i64, i64::from(*n)])?;
    }
    let mut last = conn.prepare_cached(
        "INSERT INTO rate_limit_state (resource, first_at, last_user_at) VALUES (?1, ?2, ?2)
         ON CONFLICT (resource) DO UPDATE SET last_user_at =
             max(coalesce(last_user_at, 0), excluded.last_user_at)",
    )?;
    for (resource, at) in last_user {
        last.execute(params![resource.as_str(), *at as i64])?;
    }
    Ok(())
}

/// Turn-taking between processes, fair under contention: two advisory locks on files beside the
/// database, a *turn* (held for one transaction) and a *gate* (held only while waiting for the
/// turn).
///
/// A process takes the gate, then the turn, then lets the gate go. The one waiting for the turn
/// holds the gate, so the process that hands the turn over cannot take it straight back: it
/// waits at the gate until the waiter has the turn. Two busy processes therefore alternate
/// transaction by transaction, where a bare lock lets the process that just released it win
/// again and again (the kernel wakes the waiter, but the releaser is already running) and starve
/// the other for tens of milliseconds. Uncontended, it costs two more system calls.
struct TurnLock {
    turn: File,
    gate: File,
}

impl TurnLock {
    fn open(database: &std::path::Path) -> std::io::Result<Self> {
        let open = |suffix: &str| {
            let mut name = database.as_os_str().to_owned();
            name.push(suffix);
            let mut options = std::fs::OpenOptions::new();
            options.read(true).write(true).create(true).truncate(false);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options.open(name)
        };
        Ok(TurnLock {
            turn: open("-ratelimit.lock")?,
            gate: open("-ratelimit.gate")?,
        })
    }

    /// Waits for the turn; `false` if the lock failed (SQLite's own locking still applies).
    fn take(&self) -> bool {
        let gated = self.gate.lock().is_ok();
        let taken = self.turn.lock().is_ok();
        if gated {
            let _ = self.gate.unlock();
        }
        taken
    }

    fn give(&self) {
        let _ = self.turn.unlock();
    }
}

/// Runs its closure when dropped, unwinding included.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn take_batch(queue: &mut Queue, phases: Option<&Phases>) -> Batch {
    let n = queue.items.len().min(MAX_BATCH);
    let batch: Vec<Waiting> = queue.items.drain(..n).collect();
    let n = queue.settles.len().min(MAX_BATCH);
    let settles: Vec<Settling> = queue.settles.drain(..n).collect();
    if let Some(phases) = phases {
        let now = Instant::now();
        for w in batch.iter().filter(|w| !w.requeued) {
            if let Some(at) = w.queued_at {
                phases.queued.record(now.duration_since(at));
            }
        }
    }
    Batch {
        decisions: batch,
        settles,
    }
}

/// Clears the runner flag when a runner stops for any reason other than an empty queue (a
/// panic: a failed transaction answers its own callers and the runner goes on), and fails the
/// requests still queued (nobody else would decide them).
///
/// A runner that stops because the queue is empty says so with [`stop_if_idle`](Self::stop_if_idle)
/// under the queue's lock, which disarms the guard: by the time the guard is dropped, another
/// runner may have started and set the flag again, and the guard must then leave it and its
/// queue alone.
struct RunnerGuard<'a> {
    inner: &'a Inner,
    stopped: bool,
}

impl<'a> RunnerGuard<'a> {
    fn new(inner: &'a Inner) -> Self {
        RunnerGuard {
            inner,
            stopped: false,
        }
    }

    /// Stops the runner if nothing is queued (under the lock the requests are queued with, so
    /// that a request queued afterwards sees no runner and schedules one); otherwise takes the
    /// next batch.
    fn stop_if_idle(&mut self) -> Option<Batch> {
        let mut queue = lock(&self.inner.queue);
        if queue.is_empty() {
            queue.active = false;
            self.stopped = true;
            return None;
        }
        Some(take_batch(&mut queue, self.inner.phases.as_deref()))
    }
}

impl Drop for RunnerGuard<'_> {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let mut queue = lock(&self.inner.queue);
        queue.active = false;
        queue.fail_all("a rate-limit decision panicked; retry the request");
    }
}

impl Inner {
    /// Forgets a runner job that never started: the next request schedules another, and the
    /// requests queued now are failed unless a runner is active (which will take them).
    fn abandon(&self) {
        let mut queue = lock(&self.queue);
        queue.scheduled = false;
        if !queue.active {
            queue.fail_all(
                "the rate-limit decision was not made: the store closed or its runtime shut \
                 down; retry the request",
            );
        }
    }

    fn cached_activity(
        &self,
        conn: &Connection,
        resource: &Resource,
        row: &Row,
        config: &AdaptiveConfig,
        now: u64,
    ) -> rusqlite::Result<Activity> {
        let every = u64::try_from(config.recalculation_interval.as_millis()).unwrap_or(u64::MAX);
        if let Some((at, activity)) = lock(&self.activity).get(resource)
            && now.saturating_sub(*at) < every
            && *at <= now
            && activity.any_request
        {
            return Ok(*activity);
        }
        let activity = read_activity(conn, resource.as_str(), row, config, now)?;
        lock(&self.activity).insert(resource.clone(), (now, activity));
        Ok(activity)
    }

    /// Becomes the runner, unless one is active, and decides every queued request in
    /// transactions of up to `MAX_BATCH` until the queue is empty. Runs on a store thread.
    fn run_batches(&self, sqlite: &SqliteStore, conn: &mut Connection) -> Result<(), SqliteError> {
        let mut batch = {
            let mut queue = lock(&self.queue);
            queue.scheduled = false;
            if queue.active {
                // The active runner will see whatever is queued.
                return Ok(());
            }
            queue.active = true;
            take_batch(&mut queue, self.phases.as_deref())
        };
        // Whatever happens below (a panic too), the queue is left with no runner and no caller
        // waiting forever.
        let mut runner = RunnerGuard::new(self);
        let turn = self.turn(sqlite);
        let mut held_since_gap = Duration::ZERO;
        loop {
            if batch.is_empty() {
                match runner.stop_if_idle() {
                    None => return Ok(()),
                    Some(next) => batch = next,
                }
                continue;
            }
            // Across processes: a waiting process is woken the moment the turn is handed over,
            // where SQLite's busy handler would poll, and could miss the short gaps between
            // another process's transactions.
            let phases = self.phases.as_deref();
            let waiting = phases.map(|_| Instant::now());
            let locked = turn.is_some_and(TurnLock::take);
            let taken = Instant::now();
            if let (Some(phases), Some(waiting)) = (phases, waiting) {
                phases.turn.record(taken - waiting);
            }
            if held_since_gap >= HOLD_BEFORE_GAP {
                // Other writers (the write-behind writer, other stores, a process opening the
                // file) wait with SQLite's polling busy handler, which sleeps up to 250 µs
                // between tries: a runner that never leaves a gap that long could starve them.
                // Holding the turn, so that no other runner takes the gap, leave one.
                std::thread::sleep(GAP);
                held_since_gap = Duration::ZERO;
                if let Some(phases) = phases {
                    phases.gap.record(taken.elapsed());
                }
            }
            let gap_end = Instant::now();
            // The turn is handed over as soon as the transaction ends, before the answers go
            // out: the next process need not wait for this one's bookkeeping.
            // A guard, so that a panic in the transaction still hands the turn over.
            let release = OnDrop(Some(|| {
                if locked && let Some(turn) = turn {
                    turn.give();
                }
                held_since_gap += gap_end.elapsed();
                if let Some(phases) = phases {
                    phases.held.record(taken.elapsed());
                }
            }));
            if let Err(error) = self.run_batch(sqlite, conn, std::mem::take(&mut batch), release) {
                // Its callers have their error. The runner goes on: the next batch may well
                // succeed (the error can be the batch's own), and if it fails too, its callers
                // get the real error, not word of an earlier one.
                tracing::debug!(%error, "a rate-limit transaction failed");
            }
        }
    }

    fn turn(&self, sqlite: &SqliteStore) -> Option<&TurnLock> {
        self.turn
            .get_or_init(|| {
                let path = sqlite.path();
                if path == std::path::Path::new(":memory:") {
                    return None;
                }
                match TurnLock::open(path) {
                    Ok(turn) => Some(turn),
                    Err(error) => {
                        tracing::warn!(%error, "rate-limit lock files not opened; relying on sqlite's busy handler");
                        None
                    }
                }
            })
            .as_ref()
    }

    fn run_batch(
        &self,
        sqlite: &SqliteStore,
        conn: &mut Connection,
        batch: Batch,
        release: OnDrop<impl FnOnce()>,
    ) -> Result<(), SqliteError> {
        // A caller that gave up before its turn records nothing. (A re-stamp is written even
        // when its caller is gone: a response future dropped mid-flight settles that way.)
        let Batch { decisions, settles } = batch;
        let mut batch: Vec<_> = decisions
            .into_iter()
            .filter(|w| !w.reply.is_closed())
            .collect();
        if batch.is_empty() && settles.is_empty() {
            return Ok(());
        }
        let decided = self.decide_all(conn, &settles, &batch);
        drop(release);
        match decided {
            Ok(decisions) => {
                for settling in settles {
                    let _ = settling.reply.send(Ok(()));
                }
                if decisions.len() < batch.len() {
                    // Out of time: the rest go first in the next transaction.
                    let mut rest = batch.split_off(decisions.len());
                    for w in &mut rest {
                        w.requeued = true;
                    }
                    lock(&self.queue).items.splice(0..0, rest);
                }
                {
                    let mut stats = lock(&self.stats);
                    let mut pending = lock(&self.activity_pending);
                    for (Waiting { request, .. }, decision) in batch.iter().zip(&decisions) {
                        let entry = stats.entry(request.resource.clone()).or_default();
                        match (decision, request.priority) {
                            (Decision::Refused { .. }, _) => entry.refused += 1,
                            (Decision::Admitted { at, .. }, Priority::User) => {
                                entry.admitted_user += 1;
                                let now = at.as_millis();
                                *pending
                                    .users
                                    .entry((request.resource.clone(), now / 1000))
                                    .or_default() += 1;
                                let last = pending
                                    .last_user
                                    .entry(request.resource.clone())
                                    .or_default();
                                *last = (*last).max(now);
                            }
                            (_, Priority::Background) => entry.admitted_background += 1,
                        }
                    }
                }
                let phases = self.phases.as_deref();
                for (waiting, decision) in batch.into_iter().zip(decisions) {
                    let queued_at = waiting.queued_at;
                    self.answer(waiting, decision);
                    if let (Some(phases), Some(at)) = (phases, queued_at) {
                        phases.in_store.record(at.elapsed());
                    }
                }
                self.flush_activity(sqlite);
                Ok(())
            }
            Err(error) => {
                let error = SqliteError::from(error);
                let kind = if error.is_busy() {
                    StoreErrorKind::Busy
                } else {
                    StoreErrorKind::Other
                };
                let message = error.to_string();
                for waiting in batch {
                    let _ =
                        waiting
                            .reply
                            .send(Err(StoreError::new("sqlite", kind, message.clone())));
                }
                for settling in settles {
                    let _ =
                        settling
                            .reply
                            .send(Err(StoreError::new("sqlite", kind, message.clone())));
                }
                Err(error)
            }
        }
    }

    /// Sends a decision to its caller. An in-flight admission whose caller gave up while it was
    /// decided was never sent: its re-stamp at its decision is queued for the runner (which is
    /// active, and takes it before it stops), so that it does not hold its slot to its bound.
    fn answer(&self, waiting: Waiting, decision: Decision) {
        if let Err(Ok(Decision::Admitted {
            in_flight: Some(in_flight),
            ..
        })) = waiting.reply.send(Ok(decision))
        {
            let at = in_flight.admitted_at;
            lock(&self.queue).settles.push(Settling {
                admission: in_flight,
                at,
                reply: oneshot::channel().0,
            });
        }
    }

    /// Queues the batch's user activity for the write-behind writer, which commits it with
    /// other deferred writes within its flush interval.
    fn flush_activity(&self, sqlite: &SqliteStore) {
        {
            let mut pending = lock(&self.activity_pending);
            if pending.users.is_empty() || pending.queued {
                return;
            }
            pending.queued = true;
        }
        // One deferred write at a time takes everything accumulated until it runs, so the
        // writer does a few upserts per flush interval however many batches ran.
        let shared = self.activity_pending.clone();
        let result = sqlite.defer(move |conn| {
            let (users, last_user) = {
                let mut pending = lock(&shared);
                pending.queued = false;
                (
                    std::mem::take(&mut pending.users),
                    std::mem::take(&mut pending.last_user),
                )
            };
            let result = write_activity(conn, &users, &last_user);
            if result.is_err() {
                // Kept for the retry of the writer's batch.
                lock(&shared).merge(users, last_user);
            }
            result
        });
        if let Err(error) = result {
            lock(&self.activity_pending).queued = false;
            tracing::debug!(%error, "user activity not queued for writing");
        }
    }

    fn decide_all(
        &self,
        conn: &mut Connection,
        settles: &[Settling],
        batch: &[Waiting],
    ) -> rusqlite::Result<Vec<Decision>> {
        let phases = self.phases.as_deref();
        let started = phases.map(|_| Instant::now());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let begun = Instant::now();
        let mut windows = lock(&self.windows);
        // The file was deleted or replaced and this connection reopened it: the copies (and
        // the activity read) are the old file's, whatever their generations say.
        let epoch = crate::store::sqlite::file_epoch();
        if self.file_epoch.swap(epoch, Ordering::Relaxed) != epoch {
            windows.clear();
            lock(&self.activity).clear();
        }
        let counts = windows.counts();
        // A panic rolls the transaction back too (the transaction's guard, and `call`): what it
        // added to the copies must go with it.
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.decide_in(&tx, &mut windows, settles, batch, begun)
        }))
        .unwrap_or_else(|panic| {
            windows.clear();
            std::panic::resume_unwind(panic)
        });
        let decided = decided.and_then(|decisions| {
            let decided = phases.map(|_| Instant::now());
            tx.commit().map(|()| (decisions, decided))
        });
        match decided {
            Ok((decisions, decided)) => {
                if let (Some(phases), Some(started), Some(decided)) = (phases, started, decided) {
                    phases.begin.record(begun - started);
                    phases.statements.record(decided - begun);
                    phases.commit.record(decided.elapsed());
                    phases.size.record_count(decisions.len());
                    let now = windows.counts();
                    phases
                        .from_log
                        .record_count((now.from_log - counts.from_log) as usize);
                    phases
                        .from_tail
                        .record_count((now.from_tail - counts.from_tail) as usize);
                    phases
                        .reads
                        .record_count((now.reads - counts.reads) as usize);
                }
                Ok(decisions)
            }
            Err(error) => {
                // What this transaction added to the copies was rolled back.
                windows.clear();
                Err(error)
            }
        }
    }

    /// Re-stamps `settles` and decides `batch` in order in the open transaction `tx`, until the
    /// budget has passed since `begun` (always at least one decision), recording each admission
    /// in the table and in the copies.
    fn decide_in(
        &self,
        tx: &Connection,
        windows: &mut Windows,
        settles: &[Settling],
        batch: &[Waiting],
        begun: Instant,
    ) -> rusqlite::Result<Vec<Decision>> {
        let mut rows: HashMap<&Resource, Row> = HashMap::new();
        for Settling { admission, at, .. } in settles {
            let resource = &admission.resource;
            let row = match rows.entry(resource) {
                std::collections::hash_map::Entry::Occupied(row) => row.into_mut(),
                std::collections::hash_map::Entry::Vacant(row) => {
                    row.insert(read_row(tx, resource.as_str())?)
                }
            };
            let old = sql_time(admission.expires_at);
            let new = sql_time(admission.settled_stamp(*at));
            // Only while it is still there with its expiry as its stamp: settled once, or
            // pruned, it is left alone. The trigger raises the generation by two and logs the
            // move.
            let changed = tx
                .prepare_cached(
                    "UPDATE rate_limit_admissions SET at = ?4
                     WHERE resource = ?1 AND at = ?2 AND id = ?3",
                )?
                .execute(params![resource.as_str(), old, admission.id as i64, new])?;
            if changed == 1 && row.exists {
                let background = admission.priority == Priority::Background;
                windows.restamp(resource, row.generation, old as u64, new as u64, background);
                row.generation += 2;
            }
        }
        let mut decisions = Vec::with_capacity(batch.len());
        for Waiting { request, .. } in batch {
            if !decisions.is_empty() && begun.elapsed() >= self.budget {
                break;
            }
            // The time of the decision, read inside the transaction.
            let stamp = request.clock.now();
            let now = stamp.as_millis();
            let resource = request.resource.as_str();
            #[cfg(test)]
            if resource == copy_tests::PANIC {
                panic!("a decision for {resource} panics");
            }
            let row = match rows.entry(&request.resource) {
                std::collections::hash_map::Entry::Occupied(row) => row.into_mut(),
                std::collections::hash_map::Entry::Vacant(row) => {
                    row.insert(read_row(tx, resource)?)
                }
            };
            let activity =
                self.cached_activity(tx, &request.resource, row, &request.adaptive, now)?;
            let keep = u64::try_from(retention(&request.limits).as_millis()).unwrap_or(u64::MAX);
            let window = windows.get(
                tx,
                &request.resource,
                row.generation,
                now.saturating_sub(keep),
                now,
            )?;
            let mut log = CachedLog {
                window,
                table: SqlLog { conn: tx, resource },
            };
            let mut decision = decide(&mut log, request, stamp, &activity, &row.server)?;
            if let Decision::Admitted { in_flight, .. } = &mut decision {
                let background = request.priority == Priority::Background;
                // In flight: stamped with its expiry (see `InFlight`). Stamps past SQLite's
                // integers (absurd clocks) are stored as its largest.
                let expiry = request.stamp(stamp);
                let at = sql_time(expiry);
                let id = next_id();
                // The trigger raises the resource's generation (and creates its state row on
                // its first admission, which leaves the adaptive split's initial state); the
                // copy and the row follow.
                tx.prepare_cached(
                    "INSERT INTO rate_limit_admissions (resource, at, id, background)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![resource, at, id, i64::from(background)])?;
                window.record(at as u64, background);
                row.generation = window.generation();
                row.exists = true;
                if request.in_flight.is_some() {
                    *in_flight = Some(InFlight::new(
                        request.resource.clone(),
                        request.priority,
                        id as u64,
                        stamp,
                        Timestamp::from_millis(at as u64),
                    ));
                }
            }
            decisions.push(decision);
        }
        Ok(decisions)
    }

    /// Queues pruning of the rows that no window in use (in any process) needs any more, at
    /// most once every `PRUNE_EVERY_MS` per resource (coalesced in the write-behind queue).
    fn schedule_pruning(&self, sqlite: &SqliteStore, request: &AdmissionRequest) {
        let now = request.clock.now().as_millis();
        let window = u64::try_from(retention(&request.limits).as_millis()).unwrap_or(u64::MAX);
        let keep = {
            let mut pruning = lock(&self.pruning);
            let entry = pruning.entry(request.resource.clone()).or_insert((now, 0));
            entry.1 = entry.1.max(window);
            if now.saturating_sub(entry.0) < PRUNE_EVERY_MS {
                return;
            }
            entry.0 = now;
            entry.1
        };
        let resource = request.resource.as_str().to_owned();
        // Bounded so that their sum stays an INTEGER in SQLite (it turns to REAL on overflow).
        const BOUND: u64 = 1 << 61;
        let keep_ms = keep.min(BOUND) as i64;
        let now_ms = now.min(BOUND) as i64;
        let activity_before =
            (now.saturating_sub(request.adaptive.monitoring_ms()) / 1000).saturating_sub(1) as i64;
        let mut key = b"rate_limit.prune:".to_vec();
        key.extend_from_slice(resource.as_bytes());
        let result = sqlite.defer_keyed(key, move |conn| {
            // Note this process's window: it stands until one window after its last note, unless
            // a process notes a window at least as long.
            conn.prepare_cached(
                "INSERT INTO rate_limit_retention (resource, keep_ms, until_ms)
                 VALUES (?1, ?2, ?3 + ?2)
                 ON CONFLICT (resource) DO UPDATE SET
                     keep_ms = CASE WHEN excluded.keep_ms >= keep_ms OR until_ms <= ?3
                                    THEN excluded.keep_ms ELSE keep_ms END,
                     until_ms = CASE WHEN excluded.keep_ms >= keep_ms OR until_ms <= ?3
                                     THEN excluded.until_ms ELSE until_ms END",
            )?
            .execute(params![resource, keep_ms, now_ms])?;
            // Keep what the longest window still standing counts, and, while a server's budget
            // applies, every admission since it was observed, however old (until it resets).
            conn.prepare_cached(
                "DELETE FROM rate_limit_admissions
                 WHERE resource = ?1
                   AND at < ?3 - 1000 - max(?2, COALESCE(
                       (SELECT keep_ms FROM rate_limit_retention
                        WHERE resource = ?1 AND until_ms > ?3), 0))
                   AND at < COALESCE(
                       (SELECT budget_observed FROM rate_limit_state
                        WHERE resource = ?1 AND budget_reset > ?3),
                       ?3)",
            )?
            .execute(params![resource, keep_ms, now_ms])?;
            conn.prepare_cached(
                "DELETE FROM rate_limit_activity WHERE resource = ?1 AND second < ?2",
            )?
            .execute(params![resource, activity_before])?;
            Ok(())
        });
        if let Err(error) = result {
            tracing::debug!(%error, "rate-limit pruning not queued");
        }
    }
}

fn store_error(error: SqliteError) -> StoreError {
    StoreError::from(error)
}

/// The caller's end of a decision; see [`SqliteRateLimitStore::acquire`].
struct Answer<'a> {
    store: &'a SqliteRateLimitStore,
    answer: Option<oneshot::Receiver<Result<Decision, StoreError>>>,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        let Some(mut answer) = self.answer.take() else {
            return;
        };
        // No answer can arrive after this: the runner then finds the channel closed and settles
        // an in-flight admission itself; one that arrived before is settled here.
        answer.close();
        if let Ok(Ok(Decision::Admitted {
            in_flight: Some(in_flight),
            ..
        })) = answer.try_recv()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let store = self.store.clone();
            drop(handle.spawn(async move {
                let at = in_flight.admitted_at;
                let _ = store.settle(&in_flight, at).await;
            }));
        }
    }
}

impl SqliteRateLimitStore {
    /// Queues work for the runner (under the queue's lock), and schedules a runner job unless
    /// one is active or scheduled.
    async fn enqueue(&self, push: impl FnOnce(&mut Queue)) {
        let schedule = {
            let mut queue = lock(&self.inner.queue);
            push(&mut queue);
            let schedule = !queue.active && !queue.scheduled;
            queue.scheduled |= schedule;
            schedule
        };
        if schedule {
            // The job runs detached, so that a caller that gives up does not take with it the
            // job other callers' requests wait for.
            let (sqlite, inner) = (self.sqlite.clone(), self.inner.clone());
            let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let job = async move {
                // A job whose closure never started (the store closed, or the job was dropped
                // waiting for a connection: its runtime shut down, or its caller gave up on the
                // path without a runtime) would leave `scheduled` set, and every later request
                // queued behind a runner that never comes. A job that started has answered its
                // callers already, even if it failed (its runner guard).
                let unstarted = (inner.clone(), started.clone());
                let _abandon = OnDrop(Some(move || {
                    if !unstarted.1.load(Ordering::SeqCst) {
                        unstarted.0.abandon();
                    }
                }));
                let worker = (sqlite.clone(), inner, started);
                let _ = sqlite
                    .call(move |conn| {
                        worker.2.store(true, Ordering::SeqCst);
                        worker.1.run_batches(&worker.0, conn)
                    })
                    .await;
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(job)),
                Err(_) => job.await,
            }
        }
    }
}

#[async_trait]
impl RateLimitStore for SqliteRateLimitStore {
    async fn acquire(&self, request: AdmissionRequest) -> Result<Decision, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner.schedule_pruning(&self.sqlite, &request);
        let queued_at = self.inner.phases.as_ref().map(|_| Instant::now());
        self.enqueue(|queue| {
            queue.items.push(Waiting {
                request,
                reply,
                queued_at,
                requeued: false,
            });
        })
        .await;
        // Dropped after its admission was decided but before it was read, the admission is
        // settled at its decision, not held in flight to its bound (it was never sent).
        let mut answer = Answer {
            store: self,
            answer: Some(answer),
        };
        let answer = answer.answer.as_mut().expect("taken only on drop");
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(StoreError::new(
                "sqlite",
                StoreErrorKind::Other,
                "the rate-limit decision was lost (the store closed or failed); retry the request",
            )),
        }
    }

    async fn settle(&self, admission: &InFlight, at: Timestamp) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let admission = admission.clone();
        self.enqueue(|queue| {
            queue.settles.push(Settling {
                admission,
                at,
                reply,
            });
        })
        .await;
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::new(
                "sqlite",
                StoreErrorKind::Other,
                "the re-stamp of an in-flight admission was lost (the store closed or failed)",
            ))
        })
    }

    async fn feedback(
        &self,
        resource: &Resource,
        feedback: ServerFeedback,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let resource = resource.as_str().to_owned();
        let now = now.as_millis() as i64;
        if let ServerFeedback::Block { .. } = feedback {
            let mut stats = lock(&self.inner.stats);
            if let Ok(r) = Resource::new(&resource) {
                stats.entry(r).or_default().server_blocks += 1;
            }
        }
        self.sqlite
            .call(move |conn| {
                match feedback {
                    ServerFeedback::Block { until } => conn.execute(
                        "INSERT INTO rate_limit_state (resource, first_at, blocked_until) VALUES (?1, ?2, ?3)
                         ON CONFLICT (resource) DO UPDATE SET
                             blocked_until = max(blocked_until, excluded.blocked_until)",
                        params![resource, now, sql_time(until)],
                    )?,
                    ServerFeedback::Remaining { remaining, reset } => conn.execute(
                        "INSERT INTO rate_limit_state
                             (resource, first_at, budget_remaining, budget_observed, budget_reset)
                         VALUES (?1, ?2, ?3, ?2, ?4)
                         ON CONFLICT (resource) DO UPDATE SET
                             budget_remaining = excluded.budget_remaining,
                             budget_observed = excluded.budget_observed,
                             budget_reset = excluded.budget_reset",
                        params![resource, now, i64::from(remaining), sql_time(reset)],
                    )?,
                };
                Ok(())
            })
            .await
            .map_err(store_error)
    }

    async fn status(
        &self,
        resource: &Resource,
        limits: &[Limit],
        adaptive: &AdaptiveConfig,
        now: Timestamp,
    ) -> Result<RateLimitStatus, StoreError> {
        let (resource, limits, adaptive) = (resource.clone(), limits.to_vec(), adaptive.clone());
        self.sqlite
            .call(move |conn| {
                let now_ms = now.as_millis();
                let row = read_row(conn, resource.as_str())?;
                let activity = read_activity(conn, resource.as_str(), &row, &adaptive, now_ms)?;
                let mut log = SqlLog {
                    conn,
                    resource: resource.as_str(),
                };
                Ok(status_of(
                    &mut log,
                    &resource,
                    &limits,
                    &adaptive,
                    &activity,
                    &row.server,
                    now,
                )?)
            })
            .await
            .map_err(store_error)
    }

    fn stats(&self) -> RateLimitStats {
        RateLimitStats {
            resources: lock(&self.inner.stats)
                .iter()
                .map(|(r, s)| (r.as_str().to_owned(), *s))
                .collect(),
        }
    }

    async fn unblock(&self, resource: &Resource) -> Result<(), StoreError> {
        let resource = resource.as_str().to_owned();
        self.sqlite
            .call(move |conn| {
                // Read by every decision in its transaction: the next one, in any process,
                // sees the block gone.
                conn.execute(
                    "UPDATE rate_limit_state SET blocked_until = 0, budget_remaining = NULL,
                         budget_observed = NULL, budget_reset = NULL
                     WHERE resource = ?1",
                    [resource],
                )?;
                Ok(())
            })
            .await
            .map_err(store_error)
    }
}

/// A time as SQLite stores it: times past `i64::MAX` ms (a `Retry-After` of centuries) are
/// clamped to it, rather than wrapping to a negative that reads as "never".
fn sql_time(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_process_handing_the_turn_over_cannot_take_it_straight_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("turns.db");
        // Each open file description is locked on its own, as another process's would be.
        let (a, b, probe) = (
            TurnLock::open(&db).unwrap(),
            TurnLock::open(&db).unwrap(),
            TurnLock::open(&db).unwrap(),
        );
        assert!(a.take());
        let (order, seen) = mpsc::channel();
        let waiter = {
            let order = order.clone();
            std::thread::spawn(move || {
                assert!(b.take());
                order.send("b").unwrap();
                b.give();
            })
        };
        // Wait until the other side holds the gate, i.e. waits for the turn (bounded, so that
        // a lock without a gate fails the assertion below instead of hanging here).
        let started = Instant::now();
        while probe.gate.try_lock().is_ok() && started.elapsed() < Duration::from_secs(2) {
            let _ = probe.gate.unlock();
            std::thread::yield_now();
        }
        // Hand the turn over and ask for it again at once: the waiter goes first.
        a.give();
        assert!(a.take());
        order.send("a").unwrap();
        a.give();
        waiter.join().unwrap();
        let order: Vec<_> = seen.try_iter().collect();
        assert_eq!(order, ["b", "a"]);
    }

    fn request(resource: &Resource, now: u64) -> AdmissionRequest {
        AdmissionRequest::new(
            resource.clone(),
            Priority::User,
            vec![Limit::per_second(100)].into(),
            Arc::new(AdaptiveConfig::default()),
            crate::time::Timestamp::from_millis(now),
        )
    }

    #[test]
    fn a_runner_that_stopped_leaves_the_next_runner_and_its_queue_alone() {
        let inner = Inner::default();
        // Runner A finds the queue empty and stops...
        lock(&inner.queue).active = true;
        let mut a = RunnerGuard::new(&inner);
        assert!(a.stop_if_idle().is_none());
        assert!(!lock(&inner.queue).active);
        // ...and before its guard is dropped, runner B starts for a request queued meanwhile.
        let (reply, mut answer) = oneshot::channel();
        {
            let mut queue = lock(&inner.queue);
            queue.active = true;
            queue.items.push(Waiting {
                request: request(&Resource::new("items").unwrap(), 1_000),
                reply,
                queued_at: None,
                requeued: false,
            });
        }
        drop(a);
        // A's guard neither failed B's request nor cleared B's flag.
        assert!(matches!(
            answer.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        let queue = lock(&inner.queue);
        assert!(queue.active);
        assert_eq!(queue.items.len(), 1);
    }

    #[test]
    fn a_runner_that_failed_answers_what_is_queued_and_clears_its_flag() {
        let inner = Inner::default();
        lock(&inner.queue).active = true;
        let runner = RunnerGuard::new(&inner);
        let (reply, mut answer) = oneshot::channel();
        lock(&inner.queue).items.push(Waiting {
            request: request(&Resource::new("items").unwrap(), 1_000),
            reply,
            queued_at: None,
            requeued: false,
        });
        // Dropped without stopping: a panic ended the runner.
        drop(runner);
        assert!(answer.try_recv().unwrap().is_err());
        assert!(!lock(&inner.queue).active);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_transaction_out_of_time_leaves_the_rest_to_the_next_in_order() {
        let sqlite = SqliteStore::open(":memory:").await.unwrap();
        let store = SqliteRateLimitStore {
            sqlite: sqlite.clone(),
            inner: Arc::new(Inner {
                phases: Some(Box::default()),
                // Every transaction is out of time after its first decision.
                budget: Duration::ZERO,
                ..Inner::default()
            }),
        };
        let limits: Arc<[Limit]> = vec![Limit::per_second(100)].into();
        let resource = Resource::new("items").unwrap();
        let now = crate::time::Timestamp::from_millis(1_000_000);
        // All queued before the runner starts (it is spawned on this thread).
        let decisions = futures_util::future::join_all((0..20).map(|_| {
            store.acquire(AdmissionRequest::new(
                resource.clone(),
                Priority::User,
                limits.clone(),
                Arc::new(AdaptiveConfig::default()),
                now,
            ))
        }))
        .await;
        let remaining: Vec<u32> = decisions
            .into_iter()
            .map(|d| match d.unwrap() {
                Decision::Admitted { remaining, .. } => remaining,
                other => panic!("{other:?}"),
            })
            .collect();
        // Decided one per transaction, in the order they were queued.
        assert_eq!(remaining, (80..100).rev().collect::<Vec<u32>>());
        let phases = store.inner.phases.as_ref().unwrap();
        assert_eq!((phases.size.count(), phases.size.max()), (20, 1));
        sqlite.close().await.unwrap();
    }
}

#[cfg(test)]
mod copy_tests {
    //! The per-process copies of the admissions (`window`): every way a copy catches up gives
    //! the exact count, what another process or an older version inserts is seen, and a failed
    //! transaction leaves no copy behind.

    use super::*;

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
            lock(&self.store.inner.windows).counts()
        }

        /// Waits until no runner is active, so that requests queued next share one batch (a
        /// runner still finishing the last batch could take the first of them alone).
        async fn idle(&self) {
            loop {
                {
                    let queue = lock(&self.store.inner.queue);
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
            let (from, copy, generation) = lock(&self.store.inner.windows)
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
        while !ready(&lock(&process.store.inner.queue)) {
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
}
