//! Local flights: the in-process leader of a key and its followers.
//!
//! The first request for a key in this process leads ([`LocalLead`]); identical requests that
//! arrive while it runs follow it on a `watch` channel ([`run`]), with no store round trip and
//! no copy of the body. A leader that is dropped or hands off wakes its followers, and one of
//! them leads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;

use crate::error::BoxError;
use crate::key::RequestKey;

use super::layer::Counters;
use super::layer::{Config, OnTimeout};
use super::lease::run_leader;
use super::service::{Response, own_request};
use super::share::may_follow;
use super::store::{DedupeStore, covers, url_of};
use super::{BypassReason, DedupeError, DedupeRole, SharedResponse};

/// `started + timeout`, saturating: a configured `Duration::MAX` means "30 years" (as tokio's own
/// far future), not a panic on `Instant` overflow.
pub(super) fn deadline_after(started: Instant, timeout: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    started.checked_add(timeout.min(FAR)).unwrap_or(started)
}

/// What a local leader leaves for its followers in this process.
#[derive(Clone)]
pub(super) enum Outcome {
    Response(Arc<SharedResponse>),
    Failed(DedupeError),
    OwnRequest(BypassReason),
}

#[derive(Clone)]
enum Slot {
    Pending,
    Done(Outcome),
    /// The leader gave up on its own deadline without an outcome (it waited on a leader in
    /// another process): each follower joins again and waits until its own deadline.
    HandedOff,
}

struct Flight {
    id: u64,
    rx: watch::Receiver<Slot>,
}

/// State shared by a layer and every service it made.
pub(crate) struct State {
    pub(crate) store: Arc<dyn DedupeStore>,
    counters: Counters,
    local: Mutex<HashMap<RequestKey, Flight>>,
    next_id: AtomicU64,
}

impl State {
    pub(crate) fn new(store: Arc<dyn DedupeStore>) -> Self {
        State {
            store,
            counters: Counters::default(),
            local: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// What this layer (and its clones) did: the counters behind [`DedupeStats`](super::DedupeStats).
    pub(super) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Discards what this layer and its store hold for `path` (scheme, host and path; any
    /// query): local flights stop taking followers (those already waiting still get their
    /// leader's answer), and the store drops the leases and results of every process for it.
    pub(super) async fn invalidate(&self, path: &str) {
        {
            let mut local = self.local.lock();
            local.retain(|key, _| !covers(path, url_of(key)));
        }
        Counters::add(&self.counters().invalidations, 1);
        match self.store.invalidate(path).await {
            Ok(n) => tracing::debug!(
                url = path,
                discarded = n,
                "unsafe request discarded dedupe results"
            ),
            Err(error) => {
                Counters::add(&self.counters().store_errors, 1);
                crate::store::warn::store_warn!(&*self.store, %error, url = path, "dedupe store could not discard the results for a URL an unsafe request changed");
            }
        }
    }

    /// Follows the local flight for `key`, or starts one and leads it.
    fn join_or_lead(self: &Arc<Self>, key: &RequestKey) -> Join {
        let mut local = self.local.lock();
        if let Some(flight) = local.get(key) {
            return Join::Follow(flight.rx.clone());
        }
        let (tx, rx) = watch::channel(Slot::Pending);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        local.insert(key.clone(), Flight { id, rx });
        Join::Lead(LocalLead {
            state: self.clone(),
            key: key.clone(),
            id,
            tx: Some(tx),
        })
    }
}

enum Join {
    Follow(watch::Receiver<Slot>),
    Lead(LocalLead),
}

/// The local leadership of a key. Dropped without [`finish`](LocalLead::finish) (the leader was
/// cancelled or panicked), it removes the flight and closes the channel: the followers wake up
/// and one of them leads.
pub(super) struct LocalLead {
    pub(super) state: Arc<State>,
    pub(super) key: RequestKey,
    id: u64,
    tx: Option<watch::Sender<Slot>>,
}

impl LocalLead {
    /// Hands `outcome` to the followers in this process; returns how many were waiting.
    pub(super) fn finish(self, outcome: Outcome) -> u32 {
        let Some(tx) = &self.tx else { return 0 };
        // Each follower holds a receiver; so does the flight while it is in the map.
        let listed = self
            .state
            .local
            .lock()
            .get(&self.key)
            .is_some_and(|f| f.id == self.id);
        let waiting = tx.receiver_count().saturating_sub(usize::from(listed));
        tx.send_replace(Slot::Done(outcome));
        u32::try_from(waiting).unwrap_or(u32::MAX)
    }

    /// Leaves the followers to their own deadlines: they join again and one of them leads.
    pub(super) fn hand_off(mut self) {
        self.leave();
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Slot::HandedOff);
        }
    }

    fn leave(&self) {
        let mut local = self.state.local.lock();
        if local.get(&self.key).is_some_and(|f| f.id == self.id) {
            local.remove(&self.key);
        }
    }
}

impl Drop for LocalLead {
    fn drop(&mut self) {
        self.leave();
        // Closing the channel after the flight left the map: woken followers start anew.
        drop(self.tx.take());
    }
}

/// Follows the local flight for `key` until its leader's outcome, or leads it; a follower whose
/// wait runs out acts on `on_timeout`.
pub(super) async fn run<S, B>(
    config: Arc<Config>,
    state: Arc<State>,
    inner: S,
    request: http::Request<B>,
    key: RequestKey,
) -> Result<Response, BoxError>
where
    S: Service<http::Request<B>, Response = Response> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
{
    let started = Instant::now();
    let deadline = deadline_after(started, config.follower_timeout);
    let mut took_over = false;
    loop {
        let mut rx = match state.join_or_lead(&key) {
            Join::Lead(lead) => {
                return run_leader(
                    &config, &state, lead, inner, request, key, took_over, started,
                )
                .await;
            }
            Join::Follow(rx) => rx,
        };
        let waited = tokio::time::timeout_at(deadline, async {
            rx.wait_for(|slot| !matches!(slot, Slot::Pending))
                .await
                .map(|slot| slot.clone())
        })
        .await;
        let counters = state.counters();
        match waited {
            Ok(Ok(Slot::Done(Outcome::Response(response)))) => {
                if !may_follow(&key, &response.headers, request.headers()) {
                    Counters::add(&counters.bypassed, 1);
                    return own_request(inner, request, BypassReason::Varies).await;
                }
                Counters::add(&counters.followers, 1);
                return Ok(response.to_response(DedupeRole::Follower));
            }
            Ok(Ok(Slot::Done(Outcome::Failed(error)))) => {
                Counters::add(&counters.followers, 1);
                return Err(Box::new(error));
            }
            Ok(Ok(Slot::Done(Outcome::OwnRequest(reason)))) => {
                Counters::add(&counters.bypassed, 1);
                return own_request(inner, request, reason).await;
            }
            // The leader left us to our own deadline; `wait_for` returns no pending slot, but
            // were it to, joining again is safe.
            Ok(Ok(Slot::HandedOff | Slot::Pending)) => {}
            Ok(Err(_closed)) => {
                // The leader was dropped or panicked: start again, and one of us leads.
                tracing::debug!(key = %key, "dedupe leader went away; taking over");
                took_over = true;
            }
            Err(_elapsed) => {
                Counters::add(&counters.timeouts, 1);
                return timed_out(&config, &state, inner, request, started).await;
            }
        }
    }
}

async fn timed_out<S, B>(
    config: &Config,
    state: &State,
    inner: S,
    request: http::Request<B>,
    started: Instant,
) -> Result<Response, BoxError>
where
    S: Service<http::Request<B>, Response = Response>,
    S::Error: Into<BoxError>,
{
    match config.on_timeout {
        OnTimeout::OwnRequest => {
            Counters::add(&state.counters().bypassed, 1);
            own_request(inner, request, BypassReason::TimedOut).await
        }
        OnTimeout::Fail => Err(Box::new(DedupeError::TimedOut {
            waited: started.elapsed(),
        })),
    }
}
