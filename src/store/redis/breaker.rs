//! The circuit breaker: stops asking a failing Redis for a while (see the module's "Note on
//! outages").

use std::time::Duration;

use parking_lot::Mutex;

/// Stops asking a failing Redis for a while (see the module's "Note on outages").
#[derive(Debug)]
pub(super) struct Breaker {
    /// Failures in a row that open it (0: never).
    pub(super) failures: u32,
    pub(super) open_for: Duration,
    pub(super) state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
pub(super) struct BreakerState {
    /// Failures in a row.
    failed: u32,
    /// Set while open: when the next probe may go.
    open_until: Option<tokio::time::Instant>,
    /// A probe in flight, until this time (a probe that is dropped stops counting then).
    probing_until: Option<tokio::time::Instant>,
}

/// What the breaker let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    Closed,
    Probe,
}

/// How an attempt went, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Redis answered (an error reply included: it is up).
    Answered,
    /// Redis could not be reached, or was silent for a whole operation timeout.
    Failed,
    /// Silent for less than a whole timeout (the request's budget was nearly spent): says
    /// nothing either way.
    Inconclusive,
}

impl Breaker {
    /// Whether an operation may go now; `Err(retry_in)` while open.
    pub(super) fn pass(&self, timeout: Duration) -> Result<Pass, Duration> {
        if self.failures == 0 {
            return Ok(Pass::Closed);
        }
        let now = tokio::time::Instant::now();
        let mut state = self.state.lock();
        let Some(open_until) = state.open_until else {
            return Ok(Pass::Closed);
        };
        if now < open_until {
            return Err(open_until - now);
        }
        if let Some(probing) = state.probing_until
            && now < probing
        {
            return Err(probing - now);
        }
        state.probing_until = Some(now + timeout);
        Ok(Pass::Probe)
    }

    pub(super) fn record(&self, pass: Pass, outcome: Outcome) {
        if self.failures == 0 {
            return;
        }
        let mut state = self.state.lock();
        if pass == Pass::Probe {
            state.probing_until = None;
        }
        match outcome {
            Outcome::Answered => {
                if state.open_until.take().is_some() {
                    tracing::info!("redis answers again; circuit breaker closed");
                }
                state.failed = 0;
            }
            Outcome::Failed => {
                state.failed = state.failed.saturating_add(1);
                if state.open_until.is_some() || state.failed >= self.failures {
                    if state.open_until.is_none() {
                        tracing::warn!(
                            failures = state.failed,
                            open_for = ?self.open_for,
                            "redis failed repeatedly; circuit breaker open: operations fail at once until a probe succeeds"
                        );
                    }
                    state.open_until = Some(tokio::time::Instant::now() + self.open_for);
                }
            }
            Outcome::Inconclusive => {}
        }
    }
}
