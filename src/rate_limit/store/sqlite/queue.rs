//! What waits for the runner: requests for a decision, re-stamps of in-flight admissions, and
//! the flags that say whether a runner is active or scheduled (see [`Queue`]).

use std::time::Instant;

use tokio::sync::oneshot;

use super::phases::Phases;
use crate::rate_limit::store::{AdmissionRequest, Decision, InFlight};
use crate::store::{StoreError, StoreErrorKind};
use crate::time::Timestamp;

/// Most decisions in one transaction.
const MAX_BATCH: usize = 256;

pub(super) type Reply = oneshot::Sender<Result<Decision, StoreError>>;

/// A request waiting for its decision.
pub(super) struct Waiting {
    pub(super) request: AdmissionRequest,
    pub(super) reply: Reply,
    /// When it was queued, kept only while phases are measured.
    pub(super) queued_at: Option<Instant>,
    /// Put back at the head of the queue after a transaction ran out of time.
    pub(super) requeued: bool,
}

/// An in-flight admission of this process waiting to be re-stamped.
pub(super) struct Settling {
    pub(super) admission: InFlight,
    pub(super) at: Timestamp,
    pub(super) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// What one transaction does: re-stamps first (they can only free slots), then decisions.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) decisions: Vec<Waiting>,
    pub(super) settles: Vec<Settling>,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.decisions.is_empty() && self.settles.is_empty()
    }
}

/// Requests waiting for a decision, and who is deciding them.
///
/// All three fields change under one lock, which makes the hand-off race-free: a runner stops
/// only when it finds the queue empty under the lock, and a request queued after that sees no
/// runner and schedules a job.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) items: Vec<Waiting>,
    /// Re-stamps waiting to be written (they share the decisions' transactions).
    pub(super) settles: Vec<Settling>,
    /// A runner is deciding batches (one per process at a time).
    pub(super) active: bool,
    /// A job is queued that will become the runner.
    pub(super) scheduled: bool,
}

impl Queue {
    /// Answers every queued request with an error (nobody will decide them).
    pub(super) fn fail_all(&mut self, message: &'static str) {
        let error = || StoreError::new("sqlite", StoreErrorKind::Other, message);
        for waiting in self.items.drain(..) {
            let _ = waiting.reply.send(Err(error()));
        }
        for settling in self.settles.drain(..) {
            let _ = settling.reply.send(Err(error()));
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty() && self.settles.is_empty()
    }
}

pub(super) fn take_batch(queue: &mut Queue, phases: Option<&Phases>) -> Batch {
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
