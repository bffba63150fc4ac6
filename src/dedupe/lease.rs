//! Store leases: leading a key across processes.
//!
//! The local leader claims the key in the [`DedupeStore`] ([`run_leader`]): it takes the lease
//! (and then goes upstream, renewing it while the call runs), finds a published result
//! ([`joined`]), or waits for the process that holds the lease. A lease or a claim in flight
//! that is dropped releases the key in the background.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;

use crate::error::BoxError;
use crate::key::RequestKey;
use crate::store::StoreError;

use super::flight::{LocalLead, Outcome, State, deadline_after};
use super::layer::Counters;
use super::layer::{Config, OnTimeout};
use super::service::{Response, own_request};
use super::share::{may_follow, upstream};
use super::store::{Completion, DedupeStore, KeyState, Lead};
use super::{BypassReason, DedupeError, DedupeRole};

/// A lease held in the store. Dropped while armed (the leader was cancelled or panicked), it
/// releases the key in the background, if a runtime is there to do it; otherwise the lease
/// expires.
pub(super) struct StoreLease {
    state: Arc<State>,
    key: RequestKey,
    owner: String,
    armed: bool,
}

impl StoreLease {
    /// Publishes `completion`; if that fails, the lease stays armed and is released on drop,
    /// so that followers in other processes lead at once instead of waiting for the lease.
    pub(super) async fn publish(mut self, completion: Completion, ttl: Duration) {
        match self
            .state
            .store
            .publish(&self.key, &self.owner, completion, ttl)
            .await
        {
            Ok(()) => self.armed = false,
            Err(error) => {
                Counters::add(&self.state.counters().store_errors, 1);
                crate::store::warn::store_warn!(&*self.state.store, %error, key = %self.key, "dedupe store could not publish a result; releasing the lease so that followers in other processes lead");
            }
        }
    }

    /// Ends the lease leaving nothing, so that followers in other processes lead at once; if
    /// that fails, the lease stays armed and its drop tries again in the background.
    pub(super) async fn release(mut self) {
        match self.state.store.release(&self.key, &self.owner).await {
            Ok(()) => self.armed = false,
            Err(error) => {
                Counters::add(&self.state.counters().store_errors, 1);
                tracing::debug!(%error, key = %self.key, "dedupe store could not release a lease");
            }
        }
    }
}

impl Drop for StoreLease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (store, key, owner) = (
                self.state.store.clone(),
                self.key.clone(),
                std::mem::take(&mut self.owner),
            );
            let release = async move {
                if let Err(error) = store.release(&key, &owner).await {
                    tracing::debug!(%error, "dedupe store could not release a lease; it will expire");
                }
            };
            handle.spawn(tracing::Instrument::in_current_span(release));
        }
    }
}

type LeadFuture = Pin<Box<dyn Future<Output = Result<Lead, StoreError>> + Send>>;

/// A [`DedupeStore::try_lead`] in flight.
///
/// Dropped before its answer arrived (the caller was cancelled while, say, SQLite waited for the
/// write lock), it is not abandoned: the store call may already be running and cannot be taken
/// back, so a spawned task waits for the answer and releases the lease if it was acquired.
/// Otherwise nobody would own that lease and every process would wait for it to expire.
struct PendingLead {
    future: Option<LeadFuture>,
    store: Arc<dyn DedupeStore>,
    key: RequestKey,
    owner: String,
}

impl PendingLead {
    fn start(store: &Arc<dyn DedupeStore>, key: &RequestKey, owner: &str, lease: Duration) -> Self {
        let future: LeadFuture = {
            let (store, key, owner) = (store.clone(), key.clone(), owner.to_owned());
            Box::pin(async move { store.try_lead(&key, &owner, lease).await })
        };
        PendingLead {
            future: Some(future),
            store: store.clone(),
            key: key.clone(),
            owner: owner.to_owned(),
        }
    }
}

impl Future for PendingLead {
    type Output = Result<Lead, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(future) = self.future.as_mut() else {
            return Poll::Pending;
        };
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl Drop for PendingLead {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime to finish it: an acquired lease expires after `lease_timeout`.
            return;
        };
        let (store, key, owner) = (
            self.store.clone(),
            self.key.clone(),
            std::mem::take(&mut self.owner),
        );
        let finish = async move {
            // Ours as `run_leader` reads it: acquired, or pending under our own id (a step
            // retried after a lost reply found the lease its first try took).
            let ours = match future.await {
                Ok(Lead::Acquired { .. }) => true,
                Ok(Lead::Pending { owner: held, .. }) => held == owner,
                _ => false,
            };
            if ours && let Err(error) = store.release(&key, &owner).await {
                tracing::debug!(%error, "dedupe store could not release a lease taken by a cancelled leader; it will expire");
            }
        };
        handle.spawn(tracing::Instrument::in_current_span(finish));
    }
}

/// A leader's owner id: `<pid>-<random>-<n>`. The random part (drawn once per process) keeps
/// processes in different PID namespaces (containers) sharing a store from colliding.
fn new_owner() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(crate::time::random_u64);
    format!(
        "{}-{:016x}-{}",
        std::process::id(),
        *PROCESS,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Leads `key` across processes for the local leader `lead`: takes the store lease and goes
/// upstream, joins a result another process published, or waits for the process that leads.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_leader<S, B>(
    config: &Config,
    state: &State,
    lead: LocalLead,
    inner: S,
    request: http::Request<B>,
    key: RequestKey,
    took_over: bool,
    started: Instant,
) -> Result<Response, BoxError>
where
    S: Service<http::Request<B>, Response = Response>,
    S::Error: Into<BoxError>,
{
    let counters = state.counters();
    let store = &state.store;
    let owner = new_owner();
    let deadline = deadline_after(started, config.follower_timeout);
    // Lead the key across processes too, or follow whoever does.
    let lease = loop {
        let found = PendingLead::start(store, &key, &owner, config.lease_timeout)
            .await
            .map(|found| match found {
                // A lease under our own id is ours: a backend that retried the step after a lost
                // reply (Redis, after a broken connection) finds the lease its first try took.
                Lead::Pending { owner: o, .. } if o == owner => Lead::Acquired { takeover: false },
                found => found,
            });
        match found {
            Ok(Lead::Acquired { takeover }) => {
                if takeover || took_over {
                    Counters::add(&counters.takeovers, 1);
                }
                break Some(StoreLease {
                    state: lead.state.clone(),
                    key: key.clone(),
                    owner,
                    armed: true,
                });
            }
            Ok(Lead::Completed(completion)) => {
                return joined(state, lead, inner, request, completion).await;
            }
            Ok(Lead::Pending { .. }) => match store.wait(&key, deadline.into_std()).await {
                Ok(KeyState::Completed { completion, .. }) => {
                    return joined(state, lead, inner, request, completion).await;
                }
                Ok(KeyState::Vacant | KeyState::Expired { .. }) => continue,
                Ok(_) => {
                    // Still pending at our deadline.
                    Counters::add(&counters.timeouts, 1);
                    if config.on_timeout == OnTimeout::Fail {
                        // Our followers joined later: each waits until its own deadline.
                        lead.hand_off();
                        return Err(Box::new(DedupeError::TimedOut {
                            waited: started.elapsed(),
                        }));
                    }
                    Counters::add(&counters.bypassed, 1);
                    return upstream(
                        config,
                        lead,
                        None,
                        inner,
                        request,
                        DedupeRole::Bypassed(BypassReason::TimedOut),
                    )
                    .await;
                }
                Err(error) => {
                    store_failed(state, &error);
                    break None;
                }
            },
            Err(error) => {
                store_failed(state, &error);
                break None;
            }
        }
    };
    let role = if lease.is_some() {
        Counters::add(&counters.leaders, 1);
        DedupeRole::Leader
    } else {
        Counters::add(&counters.bypassed, 1);
        DedupeRole::Bypassed(BypassReason::StoreFailed)
    };
    upstream(config, lead, lease, inner, request, role).await
}

fn store_failed(state: &State, error: &crate::store::StoreError) {
    Counters::add(&state.counters().store_errors, 1);
    crate::store::warn::store_warn!(&*state.store, %error, "dedupe store failed; the request goes upstream without cross-process coalescing");
}

/// The local leader found a result another process (or layer) published.
async fn joined<S, B>(
    state: &State,
    lead: LocalLead,
    inner: S,
    request: http::Request<B>,
    completion: Completion,
) -> Result<Response, BoxError>
where
    S: Service<http::Request<B>, Response = Response>,
    S::Error: Into<BoxError>,
{
    let counters = state.counters();
    match completion {
        Completion::Response(response) => {
            // Local followers check the response's `Vary` each for themselves.
            let key = lead.key.clone();
            lead.finish(Outcome::Response(response.clone()));
            if !may_follow(&key, &response.headers, request.headers()) {
                Counters::add(&counters.bypassed, 1);
                return own_request(inner, request, BypassReason::Varies).await;
            }
            Counters::add(&counters.cross_process_joins, 1);
            Ok(response.to_response(DedupeRole::CrossProcessFollower))
        }
        Completion::Failed(message) => {
            Counters::add(&counters.cross_process_joins, 1);
            let error = DedupeError::RemoteUpstream { message };
            lead.finish(Outcome::Failed(error.clone()));
            Err(Box::new(error))
        }
        Completion::TooLarge => {
            Counters::add(&counters.bypassed, 1);
            lead.finish(Outcome::OwnRequest(BypassReason::TooLarge));
            own_request(inner, request, BypassReason::TooLarge).await
        }
    }
}

/// Runs `call`, renewing `lease` every third of `duration` until it completes.
pub(super) async fn with_renewal<F: std::future::Future>(
    call: F,
    lease: &StoreLease,
    duration: Duration,
) -> F::Output {
    let renew = async {
        loop {
            tokio::time::sleep(duration / 3).await;
            match lease
                .state
                .store
                .renew(&lease.key, &lease.owner, duration)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(key = %lease.key, "dedupe lease was lost (taken over, or discarded by an unsafe request); finishing the request anyway");
                    std::future::pending::<()>().await;
                }
                Err(error) => {
                    Counters::add(&lease.state.counters().store_errors, 1);
                    crate::store::warn::store_warn!(&*lease.state.store, %error, "dedupe store could not renew a lease");
                }
            }
        }
    };
    tokio::select! {
        biased;
        output = call => output,
        () = renew => unreachable!("the renewal loop never ends"),
    }
}
