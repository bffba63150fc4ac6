use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::body::ReplayableBody;
use crate::context::{Priority, Report, RequestContext};
use crate::error::{BoxError, was_sent};
use crate::key::{DefaultKeyExtractor, KeyExtractor, RequestKey};
use crate::store::StoreError;

use super::future::ResponseFuture;
use super::layer::{Config, OnTimeout};
use super::store::{Completion, DedupeCounters, DedupeStore, KeyState, Lead, covers, url_of};
use super::{BypassReason, DedupeError, DedupeRole, SharedError, SharedResponse};

type Response = http::Response<reqwest::Body>;

/// The least time a published result is kept, whatever `result_ttl` says: followers already
/// waiting in other processes read the store every few milliseconds (at most every
/// `fallback_poll`, 50 ms by default, if a Redis announcement is missed), and must find the
/// result there rather than a vacant key they would lead again.
pub(crate) const MIN_RESULT_RETENTION: Duration = Duration::from_secs(1);

/// `started + timeout`, saturating: a configured `Duration::MAX` means "30 years" (as tokio's own
/// far future), not a panic on `Instant` overflow.
fn deadline_after(started: Instant, timeout: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    started.checked_add(timeout.min(FAR)).unwrap_or(started)
}

/// What a local leader leaves for its followers in this process.
#[derive(Clone)]
enum Outcome {
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
    local: Mutex<HashMap<RequestKey, Flight>>,
    next_id: AtomicU64,
}

impl State {
    pub(crate) fn new(store: Arc<dyn DedupeStore>) -> Self {
        State {
            store,
            local: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    fn counters(&self) -> &DedupeCounters {
        self.store.counters()
    }

    /// Discards what this layer and its store hold for `path` (scheme, host and path; any
    /// query): local flights stop taking followers (those already waiting still get their
    /// leader's answer), and the store drops the leases and results of every process for it.
    async fn invalidate(&self, path: &str) {
        {
            let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            local.retain(|key, _| !covers(path, url_of(key)));
        }
        DedupeCounters::add(&self.counters().invalidations, 1);
        match self.store.invalidate(path).await {
            Ok(n) => tracing::debug!(
                url = path,
                discarded = n,
                "unsafe request discarded dedupe results"
            ),
            Err(error) => {
                DedupeCounters::add(&self.counters().store_errors, 1);
                crate::store::warn::store_warn!(&*self.store, %error, url = path, "dedupe store could not discard the results for a URL an unsafe request changed");
            }
        }
    }

    /// Follows the local flight for `key`, or starts one and leads it.
    fn join_or_lead(self: &Arc<Self>, key: &RequestKey) -> Join {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
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
struct LocalLead {
    state: Arc<State>,
    key: RequestKey,
    id: u64,
    tx: Option<watch::Sender<Slot>>,
}

impl LocalLead {
    fn finish(self, outcome: Outcome) {
        if let Some(tx) = &self.tx {
            tx.send_replace(Slot::Done(outcome));
        }
    }

    /// Leaves the followers to their own deadlines: they join again and one of them leads.
    fn hand_off(mut self) {
        self.leave();
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Slot::HandedOff);
        }
    }

    fn leave(&self) {
        let mut local = self.state.local.lock().unwrap_or_else(|e| e.into_inner());
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

/// A lease held in the store. Dropped while armed (the leader was cancelled or panicked), it
/// releases the key in the background, if a runtime is there to do it; otherwise the lease
/// expires.
struct StoreLease {
    store: Arc<dyn DedupeStore>,
    key: RequestKey,
    owner: String,
    armed: bool,
}

impl StoreLease {
    /// Publishes `completion`; if that fails, the lease stays armed and is released on drop,
    /// so that followers in other processes lead at once instead of waiting for the lease.
    async fn publish(mut self, completion: Completion, ttl: Duration) {
        match self
            .store
            .publish(&self.key, &self.owner, completion, ttl)
            .await
        {
            Ok(()) => self.armed = false,
            Err(error) => {
                DedupeCounters::add(&self.store.counters().store_errors, 1);
                crate::store::warn::store_warn!(&*self.store, %error, key = %self.key, "dedupe store could not publish a result; releasing the lease so that followers in other processes lead");
            }
        }
    }

    /// Ends the lease leaving nothing, so that followers in other processes lead at once; if
    /// that fails, the lease stays armed and its drop tries again in the background.
    async fn release(mut self) {
        match self.store.release(&self.key, &self.owner).await {
            Ok(()) => self.armed = false,
            Err(error) => {
                DedupeCounters::add(&self.store.counters().store_errors, 1);
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
                self.store.clone(),
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
            if let Ok(Lead::Acquired { .. }) = future.await
                && let Err(error) = store.release(&key, &owner).await
            {
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
    static PROCESS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        use std::hash::BuildHasher;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos))
    });
    format!(
        "{}-{:016x}-{}",
        std::process::id(),
        *PROCESS,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The service made by [`DedupeLayer`](super::DedupeLayer).
///
/// `poll_ready` is always ready: only a request that turns out to lead (or to make its own call)
/// calls the inner service, and it drives the inner service's readiness inside its future
/// (`ServiceExt::oneshot` on a clone), so followers never reserve upstream capacity.
pub struct Dedupe<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
    pub(crate) state: Arc<State>,
}

impl<S: Clone> Clone for Dedupe<S> {
    fn clone(&self) -> Self {
        Dedupe {
            inner: self.inner.clone(),
            config: self.config.clone(),
            state: self.state.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Dedupe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedupe")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S> Dedupe<S> {
    /// The store, for [`poll`](DedupeStore::poll) and [`stats`](DedupeStore::stats).
    pub fn store(&self) -> &Arc<dyn DedupeStore> {
        &self.state.store
    }
}

impl<S, B> Service<http::Request<B>> for Dedupe<S>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: ReplayableBody + Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // An unsafe request changes the resource: once it succeeded, no result from before it
        // may serve a request made after it.
        let invalidates = if safe(request.method()) {
            None
        } else {
            invalidated_path(&mut request)
        };
        let key = if self.config.methods.contains(request.method()) {
            let context = RequestContext::resolve(&mut request);
            context.key().map(|key| class_key(key, context.priority()))
        } else {
            None
        };
        let call: ResponseFuture = ResponseFuture {
            inner: match key {
                // One budget of store time for the request, shared with the layers around it.
                Some(key) => Box::pin(
                    crate::store::budget::StoreBudget::of(request.extensions_mut()).scope(run(
                        self.config.clone(),
                        self.state.clone(),
                        inner,
                        request,
                        key,
                    )),
                ),
                None => Box::pin(async move { inner.oneshot(request).await.map_err(Into::into) }),
            },
        };
        let Some(path) = invalidates else {
            return call;
        };
        let state = self.state.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let response = call.await?;
                let status = response.status();
                if status.is_success() || status.is_redirection() {
                    state.invalidate(&path).await;
                }
                Ok(response)
            }),
        }
    }
}

/// Whether `method` is safe (RFC 9110): it changes nothing upstream, so it invalidates nothing.
fn safe(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

/// The URL (scheme, host and path, secret parameters masked) whose dedupe results an unsafe
/// request invalidates when it succeeds: from the request's key, as the cache layer does, or,
/// for a streaming body (no key), from the stock key of the request without its body.
fn invalidated_path<B: ReplayableBody>(request: &mut http::Request<B>) -> Option<String> {
    let key = match RequestContext::resolve(request).key() {
        Some(key) => key.clone(),
        None => {
            let mut parts = http::Request::new(()).into_parts().0;
            parts.method = request.method().clone();
            parts.uri = request.uri().clone();
            DefaultKeyExtractor::new().key(&parts, Some(b""))?
        }
    };
    let url = url_of(&key);
    Some(url.split_once('?').map_or(url, |(path, _)| path).to_owned())
}

/// The header a shared response carries (in every store, never to callers: see
/// [`SharedResponse::to_response`]) when it has a `Vary`: the digest of the leader's values of
/// the request headers it names, or `*` when it may be shared with nobody.
pub(crate) const VARY_DIGEST: http::HeaderName =
    http::HeaderName::from_static("courteous-dedupe-vary");

/// The digest of `asked`'s values of the request headers `response`'s `Vary` names (a
/// [`RequestKey::variant`] of `key`, so a hash, never the values), `*` for `Vary: *` or one that
/// cannot be read; `None` without `Vary`.
fn vary_digest(
    key: &RequestKey,
    response: &http::HeaderMap,
    asked: &http::HeaderMap,
) -> Option<http::HeaderValue> {
    let mut names: Vec<http::HeaderName> = Vec::new();
    for value in response.get_all(http::header::VARY) {
        let Ok(value) = value.to_str() else {
            return Some(http::HeaderValue::from_static("*"));
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Some(http::HeaderValue::from_static("*"));
            }
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) if !names.contains(&name) => names.push(name),
                Ok(_) => {}
                Err(_) => return Some(http::HeaderValue::from_static("*")),
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let digest = key.variant(&names, asked).to_hex();
    Some(http::HeaderValue::from_str(&digest).unwrap_or(http::HeaderValue::from_static("*")))
}

/// Whether a request whose headers are `asked` may receive a response shared under `key`: yes
/// unless the response varies on request headers whose values differ from its leader's.
fn may_follow(key: &RequestKey, response: &http::HeaderMap, asked: &http::HeaderMap) -> bool {
    match response.get(VARY_DIGEST) {
        None => true,
        Some(leader) => {
            leader != "*" && vary_digest(key, response, asked).is_some_and(|own| own == leader)
        }
    }
}

/// The key a request coalesces under: its request key and its priority class.
///
/// `User` and `Background` requests never share a flight. A `User` request that followed a
/// `Background` leader would wait as long as that leader waits for the rate limiter below (which
/// serves user requests first): the background request may wait minutes for its share, or be
/// refused, while the user reserve is free. Keying by class holds in every process without any
/// store knowing about priorities; it costs at most one more upstream call per key when both
/// classes ask for it at the same moment.
///
/// `User` requests keep the request key itself (no second hash on their path); `Background`
/// ones get a key derived from it, which no request key can equal short of a SHA-256 collision.
pub(super) fn class_key(key: &RequestKey, priority: Priority) -> RequestKey {
    use sha2::{Digest, Sha256};
    if priority == Priority::User {
        return key.clone();
    }
    let mut hash = Sha256::new();
    hash.update(b"courteous-dedupe-class-v1\0");
    hash.update(key.as_bytes());
    hash.update(priority.as_str().as_bytes());
    RequestKey::from_parts(hash.finalize().into(), key.display())
}

async fn run<S, B>(
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
                    DedupeCounters::add(&counters.bypassed, 1);
                    return own_request(inner, request, BypassReason::Varies).await;
                }
                DedupeCounters::add(&counters.followers, 1);
                return Ok(response.to_response(DedupeRole::Follower));
            }
            Ok(Ok(Slot::Done(Outcome::Failed(error)))) => {
                DedupeCounters::add(&counters.followers, 1);
                return Err(Box::new(error));
            }
            Ok(Ok(Slot::Done(Outcome::OwnRequest(reason)))) => {
                DedupeCounters::add(&counters.bypassed, 1);
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
                DedupeCounters::add(&counters.timeouts, 1);
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
            DedupeCounters::add(&state.counters().bypassed, 1);
            own_request(inner, request, BypassReason::TimedOut).await
        }
        OnTimeout::Fail => Err(Box::new(DedupeError::TimedOut {
            waited: started.elapsed(),
        })),
    }
}

async fn own_request<S, B>(
    inner: S,
    request: http::Request<B>,
    reason: BypassReason,
) -> Result<Response, BoxError>
where
    S: Service<http::Request<B>, Response = Response>,
    S::Error: Into<BoxError>,
{
    let mut response = inner.oneshot(request).await.map_err(Into::into)?;
    Report::record(response.extensions_mut()).dedupe = Some(DedupeRole::Bypassed(reason));
    Ok(response)
}

#[allow(clippy::too_many_arguments)]
async fn run_leader<S, B>(
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
                    DedupeCounters::add(&counters.takeovers, 1);
                }
                break Some(StoreLease {
                    store: store.clone(),
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
                    DedupeCounters::add(&counters.timeouts, 1);
                    if config.on_timeout == OnTimeout::Fail {
                        // Our followers joined later: each waits until its own deadline.
                        lead.hand_off();
                        return Err(Box::new(DedupeError::TimedOut {
                            waited: started.elapsed(),
                        }));
                    }
                    DedupeCounters::add(&counters.bypassed, 1);
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
        DedupeCounters::add(&counters.leaders, 1);
        DedupeRole::Leader
    } else {
        DedupeCounters::add(&counters.bypassed, 1);
        DedupeRole::Bypassed(BypassReason::StoreFailed)
    };
    upstream(config, lead, lease, inner, request, role).await
}

fn store_failed(state: &State, error: &crate::store::StoreError) {
    DedupeCounters::add(&state.counters().store_errors, 1);
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
                DedupeCounters::add(&counters.bypassed, 1);
                return own_request(inner, request, BypassReason::Varies).await;
            }
            DedupeCounters::add(&counters.cross_process_joins, 1);
            Ok(response.to_response(DedupeRole::CrossProcessFollower))
        }
        Completion::Failed(message) => {
            DedupeCounters::add(&counters.cross_process_joins, 1);
            let error = DedupeError::RemoteUpstream { message };
            lead.finish(Outcome::Failed(error.clone()));
            Err(Box::new(error))
        }
        Completion::TooLarge => {
            DedupeCounters::add(&counters.bypassed, 1);
            lead.finish(Outcome::OwnRequest(BypassReason::TooLarge));
            own_request(inner, request, BypassReason::TooLarge).await
        }
    }
}

/// Goes upstream for `lead`'s followers (and, with a lease, for other processes' too).
async fn upstream<S, B>(
    config: &Config,
    lead: LocalLead,
    lease: Option<StoreLease>,
    inner: S,
    request: http::Request<B>,
    role: DedupeRole,
) -> Result<Response, BoxError>
where
    S: Service<http::Request<B>, Response = Response>,
    S::Error: Into<BoxError>,
{
    // Masks what other processes receive of an error (issue 12 item 7).
    let context = crate::RequestContext::of(&request).cloned();
    // What a `Vary` of the response is checked against by followers.
    let asked = request.headers().clone();
    let call = async {
        let response = inner.oneshot(request).await.map_err(Into::into)?;
        let (parts, body) = response.into_parts();
        let body = buffer(body, config.max_body).await?;
        Ok::<_, BoxError>((parts, body))
    };
    let result = match &lease {
        Some(lease) => with_renewal(call, lease, config.lease_timeout).await,
        None => call.await,
    };
    // Kept at least `MIN_RESULT_RETENTION`, for the followers already waiting elsewhere. A
    // failure is kept only that long: a request arriving later tries upstream again rather than
    // receiving an error that may no longer hold.
    let ttl = config.result_ttl.max(MIN_RESULT_RETENTION);
    match result {
        // Refused or failed before it left (the rate limiter refused it, it waited its whole
        // `MaxWait` in the queue, it could not connect): not an upstream outcome, so nobody
        // else receives it. The lease is released and the local followers join again: one of
        // them leads with its own priority and `MaxWait`, in this process or another.
        Err(error) if !was_sent(&*error) => {
            DedupeCounters::add(&lead.state.counters().not_sent, 1);
            if let Some(lease) = lease {
                lease.release().await;
            }
            lead.hand_off();
            Err(error)
        }
        Err(error) => {
            let error = DedupeError::Upstream(SharedError::new(error));
            lead.finish(Outcome::Failed(error.clone()));
            if let Some(lease) = lease {
                let message = error
                    .upstream()
                    .map_or_else(|| error.to_string(), |e| error_chain(e));
                let message = match &context {
                    Some(context) => context.redact(&message),
                    None => {
                        crate::key::redact_secrets(&message, crate::key::is_default_secret_param)
                    }
                };
                lease
                    .publish(Completion::Failed(message.into()), MIN_RESULT_RETENTION)
                    .await;
            }
            Err(Box::new(error))
        }
        Ok((parts, Buffered::TooLarge(body))) => {
            lead.finish(Outcome::OwnRequest(BypassReason::TooLarge));
            if let Some(lease) = lease {
                lease.publish(Completion::TooLarge, ttl).await;
            }
            let mut response = http::Response::from_parts(parts, body);
            Report::record(response.extensions_mut()).dedupe = Some(role);
            Ok(response)
        }
        // `no-store` (RFC 9111 §5.2.2.5): no part of the response may be kept, so it is not
        // published to the store (a file or Redis) for other processes, nor handed to local
        // followers: each of those sends its own request. Followers elsewhere find the lease
        // released and lead or follow again.
        Ok((parts, Buffered::Whole(body))) if no_store(&parts.headers) => {
            lead.finish(Outcome::OwnRequest(BypassReason::NoStore));
            if let Some(lease) = lease {
                lease.release().await;
            }
            let mut response = http::Response::from_parts(parts, reqwest::Body::from(body));
            Report::record(response.extensions_mut()).dedupe = Some(role);
            Ok(response)
        }
        Ok((mut parts, Buffered::Whole(body))) => {
            parts.headers.remove(VARY_DIGEST);
            if let Some(digest) = vary_digest(&lead.key, &parts.headers, &asked) {
                parts.headers.insert(VARY_DIGEST, digest);
            }
            let shared = Arc::new(SharedResponse {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
                extensions: parts.extensions,
            });
            let failure = config.fail_on.as_ref().is_some_and(|f| f(shared.status));
            let (local, remote, keep) = if failure {
                let error = DedupeError::FailureStatus {
                    status: shared.status,
                };
                let message: Arc<str> = error.to_string().into();
                (
                    Outcome::Failed(error),
                    Completion::Failed(message),
                    MIN_RESULT_RETENTION,
                )
            } else {
                (
                    Outcome::Response(shared.clone()),
                    Completion::Response(shared.clone()),
                    ttl,
                )
            };
            // Followers in this process first; then the store, for the others.
            lead.finish(local);
            if let Some(lease) = lease {
                lease.publish(remote, keep).await;
            }
            Ok(shared.to_response(role))
        }
    }
}

/// Whether a response's `Cache-Control` says `no-store` (read as the cache layer reads it).
fn no_store(headers: &http::HeaderMap) -> bool {
    crate::cache::service::directives(headers).any(|(name, _)| name == "no-store")
}

/// `error: its source: its source's source`, for followers in other processes.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        message.push_str(": ");
        message.push_str(&next.to_string());
        source = next.source();
    }
    message
}

/// Runs `call`, renewing `lease` every third of `duration` until it completes.
async fn with_renewal<F: std::future::Future>(
    call: F,
    lease: &StoreLease,
    duration: Duration,
) -> F::Output {
    let renew = async {
        loop {
            tokio::time::sleep(duration / 3).await;
            match lease.store.renew(&lease.key, &lease.owner, duration).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(key = %lease.key, "dedupe lease was lost (taken over, or discarded by an unsafe request); finishing the request anyway");
                    std::future::pending::<()>().await;
                }
                Err(error) => {
                    DedupeCounters::add(&lease.store.counters().store_errors, 1);
                    crate::store::warn::store_warn!(&*lease.store, %error, "dedupe store could not renew a lease");
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

enum Buffered {
    Whole(Bytes),
    TooLarge(reqwest::Body),
}

/// Reads `body` to the end if it is at most `limit` bytes; otherwise gives back a body that
/// replays what was read and streams the rest.
async fn buffer(mut body: reqwest::Body, limit: usize) -> Result<Buffered, BoxError> {
    if body.size_hint().lower() > limit as u64 {
        return Ok(Buffered::TooLarge(body));
    }
    let mut chunks = VecDeque::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        // Trailers are not shared.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        len += data.len();
        chunks.push_back(data);
        if len > limit {
            return Ok(Buffered::TooLarge(reqwest::Body::wrap(Prefixed {
                chunks,
                rest: body,
            })));
        }
    }
    Ok(Buffered::Whole(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(len);
            for chunk in chunks {
                all.extend_from_slice(&chunk);
            }
            all.freeze()
        }
    }))
}

/// The chunks already read, then the rest of the body.
struct Prefixed {
    chunks: VecDeque<Bytes>,
    rest: reqwest::Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, reqwest::Error>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.chunks.iter().map(|c| c.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_varying_response_is_shared_only_with_the_leaders_values() {
        let (parts, ()) = http::Request::get("http://h/x")
            .body(())
            .unwrap()
            .into_parts();
        let key = crate::DefaultKeyExtractor::new()
            .key(&parts, Some(b""))
            .unwrap();
        use crate::KeyExtractor as _;
        let alice = headers(&[("x-user", "alice"), ("accept-language", "fr")]);
        let bob = headers(&[("x-user", "bob"), ("accept-language", "fr")]);
        let stamped = |vary: &str, asked: &http::HeaderMap| {
            let mut response = headers(&[("vary", vary)]);
            if let Some(digest) = vary_digest(&key, &response, asked) {
                response.insert(VARY_DIGEST, digest);
            }
            response
        };
        // Names in any case and order, repeated: one set.
        let response = stamped("X-User, accept-language, x-user", &alice);
        assert!(may_follow(&key, &response, &alice));
        assert!(!may_follow(&key, &response, &bob));
        assert!(!may_follow(&key, &response, &http::HeaderMap::new()));
        // On a header both lack or share: shared.
        let response = stamped("accept-language, x-other", &alice);
        assert!(may_follow(&key, &response, &bob));
        // `*` and unreadable names: nobody else.
        for vary in ["*", "x-user, *", "bad name"] {
            let response = stamped(vary, &alice);
            assert!(!may_follow(&key, &response, &alice), "{vary}");
        }
        // No Vary: no digest, shared.
        let response = stamped("", &alice);
        assert!(!response.contains_key(VARY_DIGEST));
        assert!(may_follow(&key, &response, &bob));
        // Never shown to callers.
        let shared = SharedResponse::new(
            http::StatusCode::OK,
            stamped("x-user", &alice),
            bytes::Bytes::new(),
        );
        let response = shared.to_response(DedupeRole::Follower);
        assert!(!response.headers().contains_key(VARY_DIGEST));
        assert!(response.headers().contains_key(http::header::VARY));
    }
}
