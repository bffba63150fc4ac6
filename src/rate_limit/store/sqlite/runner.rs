//! The runner: one job per process at a time that takes everything queued and decides it in
//! transactions of up to `MAX_BATCH` decisions, hands the turn over as soon as each commits,
//! answers the callers, and stops when the queue is empty. Also the state it shares with the
//! store's handles ([`Inner`]) and the scheduling of runner jobs (`enqueue`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::SqliteRateLimitStore;
use super::activity::PendingActivity;
use super::phases::PhaseSlot;
use super::queue::{Batch, Queue, Settling, Waiting, take_batch};
use super::turn::{Gaps, TurnLock};
use super::window::Windows;
use crate::context::Priority;
use crate::rate_limit::adaptive::Activity;
use crate::rate_limit::store::Decision;
use crate::resource::Resource;
use crate::store::StoreError;
use crate::store::StoreErrorKind;
use crate::store::sqlite::{SqliteError, SqliteStore};

#[derive(Default)]
pub(super) struct Inner {
    pub(super) queue: Mutex<Queue>,
    /// Per-phase timings, with the `diagnostics` feature (see `phases`).
    pub(super) phases: PhaseSlot,
    /// How long a transaction takes decisions (`BATCH_BUDGET`).
    pub(super) budget: Duration,
    /// The lock files beside the database that make processes take turns (see the module
    /// docs), opened on first use; `None` for `:memory:` or when they cannot be opened.
    pub(super) turn: OnceLock<Option<TurnLock>>,
    /// User admissions not yet written to the activity table: (resource, second) -> count, and
    /// the last user admission per resource.
    pub(super) activity_pending: Arc<Mutex<PendingActivity>>,
    /// Activity read from the file, reused for the recalculation interval.
    pub(super) activity: Mutex<HashMap<Resource, (u64, Activity)>>,
    /// Per resource: when old rows were last pruned, and the longest window seen.
    pub(super) pruning: Mutex<HashMap<Resource, (u64, u64)>>,
    /// This process's copies of the admissions in its windows (see `window`); used by the
    /// runner only.
    pub(super) windows: Mutex<Windows>,
    /// The opening of the file the copies were made from (see `store::sqlite::file_epoch`).
    pub(super) file_epoch: AtomicU64,
}

/// Runs its closure when dropped, unwinding included.
pub(super) struct OnDrop<F: FnOnce()>(pub(super) Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
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
        let mut queue = self.inner.queue.lock();
        if queue.is_empty() {
            queue.active = false;
            self.stopped = true;
            return None;
        }
        Some(take_batch(&mut queue, self.inner.phases.get()))
    }
}

impl Drop for RunnerGuard<'_> {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let mut queue = self.inner.queue.lock();
        queue.active = false;
        queue.fail_all("a rate-limit decision panicked; retry the request");
    }
}

impl Inner {
    /// Forgets a runner job that never started: the next request schedules another, and the
    /// requests queued now are failed unless a runner is active (which will take them).
    pub(super) fn abandon(&self) {
        let mut queue = self.queue.lock();
        queue.scheduled = false;
        if !queue.active {
            queue.fail_all(
                "the rate-limit decision was not made: the store closed or its runtime shut \
                 down; retry the request",
            );
        }
    }

    /// Becomes the runner, unless one is active, and decides every queued request in
    /// transactions of up to `MAX_BATCH` until the queue is empty. Runs on a store thread.
    pub(super) fn run_batches(
        &self,
        sqlite: &SqliteStore,
        conn: &mut Connection,
    ) -> Result<(), SqliteError> {
        let mut batch = {
            let mut queue = self.queue.lock();
            queue.scheduled = false;
            if queue.active {
                // The active runner will see whatever is queued.
                return Ok(());
            }
            queue.active = true;
            take_batch(&mut queue, self.phases.get())
        };
        // Whatever happens below (a panic too), the queue is left with no runner and no caller
        // waiting forever.
        let mut runner = RunnerGuard::new(self);
        let turn = self.turn(sqlite);
        let mut gaps = Gaps::default();
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
            let phases = self.phases.get();
            let waiting = phases.map(|_| Instant::now());
            let locked = turn.is_some_and(TurnLock::take);
            let taken = Instant::now();
            if let (Some(phases), Some(waiting)) = (phases, waiting) {
                phases.turn.record(taken - waiting);
            }
            // Other writers (the write-behind writer, other stores, a process opening the file)
            // wait with SQLite's polling busy handler, which sleeps up to 250 µs between tries:
            // a runner that never leaves a gap that long could starve them. Holding the turn, so
            // that no other runner takes the gap, leave one.
            if gaps.leave_if_due()
                && let Some(phases) = phases
            {
                phases.gap.record(taken.elapsed());
            }
            let gap_end = Instant::now();
            // The turn is handed over as soon as the transaction ends, before the answers go
            // out: the next process need not wait for this one's bookkeeping.
            // A guard, so that a panic in the transaction still hands the turn over.
            let release = OnDrop(Some(|| {
                if locked && let Some(turn) = turn {
                    turn.give();
                }
                gaps.held(gap_end.elapsed());
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
            .get_or_init(|| TurnLock::beside(sqlite.path()))
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
                    self.queue.lock().items.splice(0..0, rest);
                }
                {
                    let mut pending = self.activity_pending.lock();
                    for (Waiting { request, .. }, decision) in batch.iter().zip(&decisions) {
                        if let (Decision::Admitted { at, .. }, Priority::User) =
                            (decision, request.priority)
                        {
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
                    }
                }
                let phases = self.phases.get();
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
    pub(super) fn answer(&self, waiting: Waiting, decision: Decision) {
        if let Err(Ok(Decision::Admitted {
            in_flight: Some(in_flight),
            ..
        })) = waiting.reply.send(Ok(decision))
        {
            let at = in_flight.admitted_at;
            self.queue.lock().settles.push(Settling {
                admission: in_flight,
                at,
                reply: oneshot::channel().0,
            });
        }
    }
}

impl SqliteRateLimitStore {
    /// Queues work for the runner (under the queue's lock), and schedules a runner job unless
    /// one is active or scheduled.
    pub(super) async fn enqueue(&self, push: impl FnOnce(&mut Queue)) {
        let schedule = {
            let mut queue = self.inner.queue.lock();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::adaptive::AdaptiveConfig;
    use crate::rate_limit::limit::Limit;
    use crate::rate_limit::store::{AdmissionRequest, RateLimitStore};

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
        inner.queue.lock().active = true;
        let mut a = RunnerGuard::new(&inner);
        assert!(a.stop_if_idle().is_none());
        assert!(!inner.queue.lock().active);
        // ...and before its guard is dropped, runner B starts for a request queued meanwhile.
        let (reply, mut answer) = oneshot::channel();
        {
            let mut queue = inner.queue.lock();
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
        let queue = inner.queue.lock();
        assert!(queue.active);
        assert_eq!(queue.items.len(), 1);
    }

    #[test]
    fn a_runner_that_failed_answers_what_is_queued_and_clears_its_flag() {
        let inner = Inner::default();
        inner.queue.lock().active = true;
        let runner = RunnerGuard::new(&inner);
        let (reply, mut answer) = oneshot::channel();
        inner.queue.lock().items.push(Waiting {
            request: request(&Resource::new("items").unwrap(), 1_000),
            reply,
            queued_at: None,
            requeued: false,
        });
        // Dropped without stopping: a panic ended the runner.
        drop(runner);
        assert!(answer.try_recv().unwrap().is_err());
        assert!(!inner.queue.lock().active);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_transaction_out_of_time_leaves_the_rest_to_the_next_in_order() {
        let sqlite = SqliteStore::open(":memory:").await.unwrap();
        let store = SqliteRateLimitStore {
            sqlite: sqlite.clone(),
            clock: Arc::new(crate::time::SystemClock),
            inner: Arc::new(Inner {
                phases: PhaseSlot::on(),
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
        #[cfg(feature = "diagnostics")]
        {
            let phases = store.inner.phases.get().unwrap();
            assert_eq!((phases.size.count(), phases.size.max()), (20, 1));
        }
        sqlite.close().await.unwrap();
    }
}
