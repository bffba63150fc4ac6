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
//! With the cargo feature `diagnostics`, the store keeps per-phase latency histograms (turn wait,
//! `BEGIN`, statements, `COMMIT`, queueing, how copies caught up), which the `rate_limit`
//! benchmark prints; without it they compile away.
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
//! # Layout
//!
//! * `mod.rs`: [`SqliteRateLimitStore`], its [`RateLimitStore`] impl and the caller's end of a
//!   decision;
//! * `queue.rs`: what waits for the runner (decisions, re-stamps) and the runner flags;
//! * `runner.rs`: the shared state, the runner that takes batches and answers, and the
//!   scheduling of runner jobs;
//! * `decide.rs`: one transaction (re-stamps, then decisions on the copies);
//! * `turn.rs`: the cross-process turn and gate locks, and the write-gap policy;
//! * `window.rs`: the per-process copies of the admissions;
//! * `sql.rs`: the statements (the admission log in SQL, the state row, activity);
//! * `activity.rs`, `prune.rs`: user activity written behind, and the pruning of old rows;
//! * `schema.rs`: the tables, triggers and migrations; `phases.rs`: the diagnostic histograms.
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

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::params;
use tokio::sync::oneshot;

use super::{
    AdmissionRequest, Decision, InFlight, RateLimitStatus, RateLimitStore, SETTLE_ROUNDING_MS,
    ServerFeedback, status_of,
};
use crate::rate_limit::adaptive::AdaptiveConfig;
use crate::rate_limit::limit::Limit;
use crate::rate_limit::stats::RateLimitStoreStats;
use crate::resource::Resource;
use crate::store::sqlite::{SqliteError, SqliteStore};
use crate::store::{StoreError, StoreErrorKind};
use crate::time::{Clock, SystemClock, Timestamp};

mod activity;
#[cfg(test)]
mod copy_tests;
mod decide;
mod phases;
mod prune;
mod queue;
mod runner;
mod schema;
mod sql;
mod turn;
mod window;

pub(crate) use schema::RATE_LIMIT;

use phases::PhaseSlot;
use queue::{Settling, Waiting};
use runner::Inner;
use sql::{SqlLog, read_activity, read_row, sql_time};

/// A transaction stops taking decisions after this long (the rest go back to the head of the
/// queue), so that one slow batch holds the other processes up no longer than this.
const BATCH_BUDGET: Duration = Duration::from_millis(1);

impl SqliteStore {
    /// A rate-limit store in this file, shared with every process that opens it.
    pub fn rate_limits(&self) -> SqliteRateLimitStore {
        SqliteRateLimitStore {
            sqlite: self.clone(),
            clock: Arc::new(SystemClock),
            inner: Arc::new(Inner {
                phases: PhaseSlot::on(),
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
    /// "Now" for [`stats`](RateLimitStore::stats).
    clock: Arc<dyn Clock>,
    inner: Arc<Inner>,
}

impl SqliteRateLimitStore {
    /// Where [`stats`](RateLimitStore::stats) reads "now", to tell the admissions in flight
    /// and the resources blocked (default [`SystemClock`]): give it the layer's
    /// [`clock`](crate::rate_limit::RateLimitLayer::clock). Decisions read the request's clock.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use courteous::rate_limit::TokioClock;
    ///
    /// let sqlite = courteous::store::sqlite::SqliteStore::open(":memory:").await?;
    /// let store = sqlite.rate_limits().clock(TokioClock::new());
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
}

impl fmt::Debug for SqliteRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteRateLimitStore")
            .field("path", &self.sqlite.path())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "diagnostics")]
impl SqliteRateLimitStore {
    /// Per-phase latency histograms of this store's decisions (turn wait, `BEGIN`, statements,
    /// `COMMIT`, queueing), as a printable table. Only with the cargo feature `diagnostics`,
    /// which makes every store keep them. A diagnostic for benchmarks, not a stable interface.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sqlite = courteous::store::sqlite::SqliteStore::open(":memory:").await?;
    /// let store = sqlite.rate_limits();
    /// println!("{}", store.phase_report());
    /// # Ok(())
    /// # }
    /// ```
    #[doc(hidden)]
    pub fn phase_report(&self) -> String {
        self.inner
            .phases
            .get()
            .map(phases::Phases::report)
            .unwrap_or_default()
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

#[async_trait]
impl RateLimitStore for SqliteRateLimitStore {
    async fn acquire(&self, request: AdmissionRequest) -> Result<Decision, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner.schedule_pruning(&self.sqlite, &request);
        let queued_at = self.inner.phases.get().map(|_| Instant::now());
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
        let now = sql_time(now);
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

    /// Two `COUNT` queries on the store's threads (one read transaction, so the counts agree),
    /// each a scan of its table: of the state rows, and of every admission kept, on the
    /// store's [clock](SqliteRateLimitStore::clock).
    async fn stats(&self) -> Result<RateLimitStoreStats, StoreError> {
        let now = sql_time(self.clock.now());
        self.sqlite
            .call(move |conn| {
                let tx = conn.transaction()?;
                let (resources, blocked) = tx.query_row(
                    "SELECT count(*), coalesce(sum(blocked_until > ?1), 0) FROM rate_limit_state",
                    [now],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )?;
                // Stamped after now (and a settlement's rounding): in flight (see `InFlight`).
                let live = now.saturating_add(SETTLE_ROUNDING_MS as i64);
                let (admissions, in_flight) = tx.query_row(
                    "SELECT count(*), coalesce(sum(at > ?1), 0) FROM rate_limit_admissions",
                    [live],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )?;
                tx.finish()?;
                let n = |v: i64| u64::try_from(v).unwrap_or(0);
                Ok(RateLimitStoreStats {
                    resources: n(resources),
                    admissions: n(admissions),
                    in_flight: n(in_flight),
                    blocked: n(blocked),
                })
            })
            .await
            .map_err(store_error)
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
