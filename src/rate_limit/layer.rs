//! [`RateLimitLayer`]: configuration and the state its services share.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tower::Layer;

use super::adaptive::AdaptiveConfig;
use super::error::{OnStoreError, RateLimitConfigError, RateLimitStoreFailed, RateLimited};
use super::feedback;
use super::limit::{Limit, Limits, ResolvedLimits};
use super::pacing::{Pacer, Pacing};
use super::service::{RateLimit, deadline_after};
use super::stats::{Counters, RateLimitStats, RateLimitStoreStats};
use super::store::{
    AdmissionRequest, Decision, InFlight, RateLimitStatus, RateLimitStore, ServerFeedback,
};
use crate::context::Priority;
use crate::error::BoxError;
use crate::resource::Resource;
use crate::store::StoreError;
use crate::time::{Clock, SystemClock, Timestamp};

/// How long a refusal whose `retry_at` is not in the future waits before asking again (the
/// stores answer a `retry_at` at least 1 ms ahead; this bounds a misbehaving one to 100 calls
/// a second rather than a busy loop).
const STALE_REFUSAL_WAIT: Duration = Duration::from_millis(10);

/// How long a request may wait for the limiter, set per request as an extension (overrides the
/// layer's [`max_wait`](RateLimitLayer::max_wait)).
///
/// # Example
///
/// ```
/// use courteous::rate_limit::MaxWait;
/// use std::time::Duration;
///
/// let mut request = http::Request::get("http://h/api/search/").body(()).unwrap();
/// request.extensions_mut().insert(MaxWait::FAIL_FAST);
/// request.extensions_mut().insert(MaxWait(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxWait(pub Duration);

impl MaxWait {
    /// Do not wait: fail with [`RateLimited`] at once when the limit is reached.
    pub const FAIL_FAST: MaxWait = MaxWait(Duration::ZERO);
}

/// What the rate limiter did for a request, in [`Report::rate_limit`](crate::Report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitReport {
    /// How long the request waited for the limiter (and pacing).
    pub waited: Duration,
    /// Admissions left in the resource's tightest limit after this one.
    pub remaining: u32,
    /// When the server answered 429 or 503 with `Retry-After`: the time until which every
    /// process holds the resource's requests back.
    pub blocked_until: Option<Timestamp>,
    /// Whether the request was sent a second time after the server's `Retry-After` (see
    /// [`RateLimitLayer::retry_once`]).
    pub retried: bool,
    /// Whether the request was sent without a decision because the store failed and the layer
    /// fails open ([`OnStoreError::FailOpen`]); `remaining` is then 0.
    pub unchecked: bool,
}

/// When an admission is stamped: the layer's accounting mode.
///
/// # Example
///
/// ```
/// use courteous::rate_limit::{Accounting, Limits, MemoryRateLimitStore, RateLimitLayer};
/// use std::time::Duration;
///
/// // Throughput first: stamp at the hand-off, and absorb the send jitter with a margin.
/// let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), Limits::new())
///     .unwrap()
///     .accounting(Accounting::OnSend)
///     .safety_margin(Duration::from_millis(100));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Accounting {
    /// Exact as the upstream counts (the default): an admission occupies its slot from its
    /// decision until the response head arrives (or the failure is known), and is then
    /// re-stamped at that moment (see [`InFlight`](super::InFlight)). The upstream received
    /// the request in between, so no window of the upstream's own clock holds more than the
    /// limit, whatever the network, the scheduler or a slow request does, with no margin. Each
    /// admission costs one more store write (the re-stamp, batched where the store can; the
    /// response waits for it), and each slot stays taken for one window plus the request's
    /// latency: a saturated limit admits about `max / (window + latency)` per second (20 per
    /// 2 s with 200 ms responses: about 9.1 a second instead of 10).
    #[default]
    Exact,
    /// Stamped once, at the decision, immediately before the request is handed to the
    /// transport: cheaper (no re-stamp) and a slot frees one window after the hand-off, but a
    /// request that reaches the upstream later than its stamp (send jitter, a slow connection)
    /// can land in the next upstream window: set a [`safety_margin`](RateLimitLayer::safety_margin)
    /// as long as that delay can be. A saturated limit admits `max / (window + margin)` per
    /// second, whatever the latency.
    OnSend,
}

/// An admission, as the layer got it.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    pub(crate) waited: Duration,
    pub(crate) remaining: u32,
    pub(crate) unchecked: bool,
    /// To settle when the response head arrives.
    pub(crate) in_flight: Option<InFlight>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) limits: ResolvedLimits,
    pub(crate) adaptive: Arc<AdaptiveConfig>,
    pub(crate) max_wait: Duration,
    pub(crate) margin: Duration,
    pub(crate) retry_once: bool,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) pacing: Option<Arc<Pacer>>,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) max_server_block: Duration,
    pub(crate) accounting: Accounting,
    pub(crate) in_flight_timeout: Duration,
}

/// The default [`RateLimitLayer::in_flight_timeout`].
const DEFAULT_IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(60);

/// One FIFO line of waiters (tokio's mutex is fair).
type Queue = Arc<tokio::sync::Mutex<()>>;

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn RateLimitStore>,
    queues: Mutex<HashMap<(Resource, Priority), Queue>>,
    /// What the layer decided and was told, per resource.
    counters: Counters,
}

/// Admits every request against its resource's limits before it goes out, across every process
/// that shares the store.
///
/// Cloning the layer (or the services it makes) shares the store, the configuration and the
/// waiting queues. See the [module documentation](super) for the behaviour and an example.
#[derive(Clone)]
pub struct RateLimitLayer {
    pub(crate) config: Arc<Config>,
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("max_wait", &self.config.max_wait)
            .field("adaptive", &self.config.adaptive)
            .field("clock", &self.config.clock)
            .field("accounting", &self.config.accounting)
            .field("in_flight_timeout", &self.config.in_flight_timeout)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A layer over `store` with these limits; requests wait up to 60 s for a slot.
    ///
    /// # Errors
    ///
    /// [`RateLimitConfigError`] when a limit has a zero window or names an empty resource.
    pub fn new(store: impl RateLimitStore, limits: Limits) -> Result<Self, RateLimitConfigError> {
        Ok(RateLimitLayer {
            config: Arc::new(Config {
                limits: limits.resolve()?,
                adaptive: Arc::new(AdaptiveConfig::default()),
                max_wait: Duration::from_secs(60),
                margin: Duration::ZERO,
                retry_once: false,
                clock: Arc::new(SystemClock),
                pacing: None,
                on_store_error: OnStoreError::FailClosed,
                max_server_block: feedback::DEFAULT_MAX_SERVER_BLOCK,
                accounting: Accounting::Exact,
                in_flight_timeout: DEFAULT_IN_FLIGHT_TIMEOUT,
            }),
            shared: Arc::new(Shared {
                store: Arc::new(store),
                queues: Mutex::default(),
                counters: Counters::default(),
            }),
        })
    }

    /// The longest a request waits for a slot before failing with [`RateLimited`] (default
    /// 60 s; zero fails at once). A request's [`MaxWait`] extension overrides it.
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        Arc::make_mut(&mut self.config).max_wait = max_wait;
        self
    }

    /// Fail at once when the limit is reached (`max_wait(Duration::ZERO)`).
    #[must_use]
    pub fn fail_fast(self) -> Self {
        self.max_wait(Duration::ZERO)
    }

    /// The adaptive user/background split's configuration.
    #[must_use]
    pub fn adaptive(mut self, adaptive: AdaptiveConfig) -> Self {
        Arc::make_mut(&mut self.config).adaptive = Arc::new(adaptive);
        self
    }

    /// Counts every window this much longer (default zero).
    ///
    /// With [`Accounting::Exact`] (the default) no margin is needed: the admission holds its
    /// slot until the response head arrives. With [`Accounting::OnSend`], the admission is
    /// stamped just before the request goes out; the server sees it a little later, and not
    /// always by the same delay. A margin of a few tens of milliseconds keeps the server's own
    /// count within the limit despite that jitter.
    #[must_use]
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        Arc::make_mut(&mut self.config).margin = margin;
        self
    }

    /// After a 429 or 503 whose `Retry-After` falls within the request's remaining `max_wait`,
    /// send an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) once more when the
    /// time comes, through the limiter again (default off). Only requests whose body is known up
    /// front (see [`ReplayableBody`](crate::ReplayableBody)) can be sent again; the first
    /// response is dropped.
    #[must_use]
    pub fn retry_once(mut self, retry: bool) -> Self {
        Arc::make_mut(&mut self.config).retry_once = retry;
        self
    }

    /// When admissions are stamped (default [`Accounting::Exact`]; see [`Accounting`] for what
    /// each mode costs).
    #[must_use]
    pub fn accounting(mut self, accounting: Accounting) -> Self {
        Arc::make_mut(&mut self.config).accounting = accounting;
        self
    }

    /// With [`Accounting::Exact`], how long an admission whose request is in flight holds its
    /// slot at most if it is never settled (default 60 s): its process died, or its response
    /// future was dropped where no async runtime could write the settlement. After that it
    /// counts as if its request had reached the upstream at that moment, the latest the bound
    /// allows (the safe reading). A request still running past the bound is re-stamped when
    /// it ends, later.
    ///
    /// Set it to your request timeout (reqwest's `timeout`) plus a little: a request cannot
    /// reach the upstream after it timed out, so the expiry is then never early. The default,
    /// one minute, is longer than most clients' timeouts and bounds what a crash costs: the
    /// crashed process's in-flight slots for at most a minute (plus the window).
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::rate_limit::{Limits, MemoryRateLimitStore, RateLimitLayer};
    /// use std::time::Duration;
    ///
    /// let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), Limits::new())
    ///     .unwrap()
    ///     .in_flight_timeout(Duration::from_secs(35)); // requests time out after 30 s
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn in_flight_timeout(mut self, bound: Duration) -> Self {
        Arc::make_mut(&mut self.config).in_flight_timeout = bound;
        self
    }

    /// Where the time comes from (default [`SystemClock`]).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        Arc::make_mut(&mut self.config).clock = Arc::new(clock);
        self
    }

    /// A minimum spacing between calls (see [`Pacing`]).
    #[must_use]
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        Arc::make_mut(&mut self.config).pacing = Some(Arc::new(Pacer::new(pacing)));
        self
    }

    /// What to do with a request when the store fails to decide it (default
    /// [`OnStoreError::FailClosed`]: the request fails at once with [`RateLimitStoreFailed`]
    /// and is not sent). A store that is merely slow fails within its own timeout (Redis's
    /// operation timeout, SQLite's busy timeout), so no request waits longer than that for it.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::rate_limit::{Limits, MemoryRateLimitStore, OnStoreError, RateLimitLayer};
    ///
    /// // Prefer availability: send requests uncounted while the store is down.
    /// let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), Limits::new())
    ///     .unwrap()
    ///     .on_store_error(OnStoreError::FailOpen);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn on_store_error(mut self, policy: OnStoreError) -> Self {
        Arc::make_mut(&mut self.config).on_store_error = policy;
        self
    }

    /// The longest a server's feedback may hold a resource back (default one hour): a
    /// `Retry-After`, or the reset of a `RateLimit-Remaining` budget, further away than this
    /// from now is cut to it, with a warning that shows the value received. Without it a
    /// hostile or broken server (`X-RateLimit-Reset: 1900000000000`, `Retry-After: 1e300`)
    /// could refuse the resource for centuries, in every process.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::rate_limit::{Limits, MemoryRateLimitStore, RateLimitLayer};
    /// use std::time::Duration;
    ///
    /// let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), Limits::new())
    ///     .unwrap()
    ///     .max_server_block(Duration::from_secs(10 * 60));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn max_server_block(mut self, max: Duration) -> Self {
        Arc::make_mut(&mut self.config).max_server_block = max;
        self
    }

    /// Lifts the block a server imposed on `resource` (`Retry-After`) and its
    /// `RateLimit-Remaining` budget, for every process that shares the store: the next
    /// request is decided by the resource's own limits alone.
    ///
    /// # Errors
    ///
    /// The store's error (nothing was lifted).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use courteous::rate_limit::{Limits, MemoryRateLimitStore, RateLimitLayer};
    /// use courteous::Resource;
    ///
    /// let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), Limits::new()).unwrap();
    /// let issues = Resource::new("issues").unwrap();
    /// layer.unblock(&issues).await.unwrap();
    /// assert_eq!(layer.status(&issues).await.unwrap().blocked_until, None);
    /// # }
    /// ```
    pub async fn unblock(&self, resource: &Resource) -> Result<(), StoreError> {
        self.shared.store.unblock(resource).await?;
        tracing::info!(resource = %resource, "server block lifted");
        Ok(())
    }

    /// The limits that apply to `resource`.
    pub fn limits_of(&self, resource: &Resource) -> Arc<[Limit]> {
        self.config.limits.of(resource)
    }

    /// The resource's usage, remaining capacity, adaptive split and the reason for it.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn status(&self, resource: &Resource) -> Result<RateLimitStatus, StoreError> {
        let limits = self.limits_of(resource);
        self.shared
            .store
            .status(
                resource,
                &limits,
                &self.config.adaptive,
                self.config.clock.now(),
            )
            .await
    }

    /// What the layer decided and was told per resource, in this process (admissions by
    /// priority, refusals, the server's blocks, store failures), and what its store holds
    /// for every process ([`RateLimitStats::store`]: zeroes when the store could not answer,
    /// the failure counted in [`RateLimitStats::store_errors`] with a warning).
    ///
    /// Reading the store's part reads the whole store (see
    /// [`RateLimitStore::stats`](super::RateLimitStore::stats)).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use courteous::rate_limit::{Limits, MemoryRateLimitStore, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), Limits::new()).unwrap();
    /// let stats = layer.stats().await;
    /// assert!(stats.resources.is_empty());
    /// assert_eq!(stats.store.admissions, 0);
    /// # }
    /// ```
    pub async fn stats(&self) -> RateLimitStats {
        let store = match self.shared.store.stats().await {
            Ok(stats) => stats,
            Err(error) => {
                self.shared.counters.store_error();
                tracing::warn!(%error, "rate-limit store statistics unavailable");
                RateLimitStoreStats::default()
            }
        };
        self.shared.counters.snapshot(store)
    }

    /// Waits for an admission (or fails); a refusal is logged and counted.
    pub(crate) async fn admit(
        &self,
        resource: &Resource,
        priority: Priority,
        host: Option<&str>,
        max_wait: Duration,
    ) -> Result<Admission, BoxError> {
        let result = self.decide(resource, priority, host, max_wait).await;
        if let Err(error) = &result
            && error.is::<RateLimited>()
        {
            crate::observe::refusal(resource, priority);
        }
        result
    }

    async fn decide(
        &self,
        resource: &Resource,
        priority: Priority,
        host: Option<&str>,
        max_wait: Duration,
    ) -> Result<Admission, BoxError> {
        let config = &self.config;
        let started = tokio::time::Instant::now();
        let deadline = deadline_after(started, max_wait);
        let limits: Arc<[Limit]> = if config.margin.is_zero() {
            config.limits.of(resource)
        } else {
            config
                .limits
                .of(resource)
                .iter()
                .map(|l| l.with_window(l.window().saturating_add(config.margin)))
                .collect()
        };
        // Waiters of one priority take turns in arrival order (tokio's mutex is fair).
        let queue = self.shared.queue(resource, priority);
        let _turn = if max_wait.is_zero() {
            None
        } else {
            match tokio::time::timeout_at(deadline, queue.lock_owned()).await {
                Ok(guard) => Some(guard),
                Err(_) => {
                    return Err(Box::new(RateLimited::new(resource.clone(), max_wait)));
                }
            }
        };
        let in_flight = match config.accounting {
            Accounting::Exact => Some(config.in_flight_timeout),
            Accounting::OnSend => None,
        };
        loop {
            if let Some(pacer) = &config.pacing {
                pacer.wait(resource, host, deadline).await.map_err(|wait| {
                    Box::new(RateLimited::new(resource.clone(), wait)) as BoxError
                })?;
            }
            // The store reads the clock when it decides, not now: the request may wait for
            // the store (its queue, another process's turn) before that.
            let request = AdmissionRequest {
                resource: resource.clone(),
                priority,
                limits: limits.clone(),
                adaptive: config.adaptive.clone(),
                clock: config.clock.clone(),
                in_flight,
            };
            let decision = match self.shared.store.acquire(request).await {
                Ok(decision) => decision,
                Err(error) => return self.store_failed(resource, started, error),
            };
            self.shared
                .counters
                .count(resource, |stats| match (&decision, priority) {
                    (Decision::Refused { .. }, _) => stats.refused += 1,
                    (_, Priority::User) => stats.admitted_user += 1,
                    (_, Priority::Background) => stats.admitted_background += 1,
                });
            match decision {
                Decision::Admitted {
                    remaining,
                    in_flight,
                    ..
                } => {
                    return Ok(Admission {
                        waited: started.elapsed(),
                        remaining,
                        unchecked: false,
                        in_flight,
                    });
                }
                Decision::Refused { retry_at, reason } => {
                    // A refusal always waits: a store answering a `retry_at` that is not in
                    // the future (a clock stepping back, a bad value) must not make this loop
                    // ask it again and again without pause until the deadline.
                    let wait = match retry_at.saturating_since(config.clock.now()) {
                        Duration::ZERO => STALE_REFUSAL_WAIT,
                        wait => wait,
                    };
                    let wake = deadline_after(tokio::time::Instant::now(), wait);
                    if wake > deadline {
                        tracing::debug!(resource = %resource, ?reason, ?wait, "no slot before the deadline");
                        return Err(Box::new(RateLimited::new(resource.clone(), wait)));
                    }
                    tracing::trace!(resource = %resource, ?reason, ?wait, "waiting for the limiter");
                    tokio::time::sleep_until(wake).await;
                }
            }
        }
    }

    /// The time to re-stamp an admission settled now with: the clock's time rounded up to the
    /// next millisecond (timestamps are whole milliseconds, read rounded down), so that the
    /// stamp is never before the moment the response head arrived.
    fn settle_time(&self) -> Timestamp {
        self.config.clock.now() + Duration::from_millis(1)
    }

    /// Re-stamps an in-flight admission at `at`; a failure is logged (the admission then holds
    /// its slot until its expiry).
    async fn settle_at(shared: &Shared, admission: &InFlight, at: Timestamp) {
        if let Err(error) = shared.store.settle(admission, at).await {
            shared.counters.store_error();
            crate::store::warn::store_warn!(&*shared.store, resource = %admission.resource, %error, "could not settle an in-flight admission; it holds its slot until its expiry");
        }
    }

    /// Fails closed or open after the store failed to decide.
    fn store_failed(
        &self,
        resource: &Resource,
        started: tokio::time::Instant,
        error: StoreError,
    ) -> Result<Admission, BoxError> {
        let open = self.config.on_store_error == OnStoreError::FailOpen;
        self.shared.counters.store_error();
        self.shared.counters.count(resource, |stats| {
            stats.store_errors += 1;
            stats.admitted_unchecked += u64::from(open);
        });
        if open {
            crate::store::warn::store_warn!(&*self.shared.store, resource = %resource, %error, "rate-limit store failed; sending the request unchecked (fail open)");
            Ok(Admission {
                waited: started.elapsed(),
                remaining: 0,
                unchecked: true,
                in_flight: None,
            })
        } else {
            crate::store::warn::store_warn!(&*self.shared.store, resource = %resource, %error, "rate-limit store failed; the request is not sent (fail closed)");
            Err(Box::new(RateLimitStoreFailed::new(resource.clone(), error)))
        }
    }

    /// Records what a response says about the server's limits, and returns until when the
    /// server blocks (its `Retry-After`). `settled` is the stamp of the response's own admission,
    /// if it was just settled: the server's count includes that request, so its budget is taken
    /// as observed no earlier than that stamp (which is rounded up past the clock).
    ///
    /// The items are written concurrently, so a response waits for at most one store call
    /// (each bounded by the store's own timeout); after an `unchecked` admission (the store
    /// just failed) nothing is written, so a failing store does not delay every response.
    pub(crate) async fn observe(
        &self,
        resource: &Resource,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        unchecked: bool,
        settled: Option<Timestamp>,
    ) -> Option<Timestamp> {
        let now = self.config.clock.now().max(settled.unwrap_or_default());
        let items = feedback::parse(status, headers, now, self.config.max_server_block);
        let blocked = items.iter().rev().find_map(|item| match item {
            ServerFeedback::Block { until } => Some(*until),
            ServerFeedback::Remaining { .. } => None,
        });
        if unchecked {
            if !items.is_empty() {
                tracing::debug!(resource = %resource, "the rate-limit store is failing; the server's feedback is not recorded");
            }
            return blocked;
        }
        let writes = items.into_iter().map(|item| async move {
            let result = self.shared.store.feedback(resource, item, now).await;
            (item, result)
        });
        for (item, result) in futures_util::future::join_all(writes).await {
            match result {
                Ok(()) => {
                    if let ServerFeedback::Block { .. } = item {
                        self.shared
                            .counters
                            .count(resource, |stats| stats.server_blocks += 1);
                    }
                }
                Err(error) => {
                    self.shared.counters.store_error();
                    crate::store::warn::store_warn!(&*self.shared.store, resource = %resource, %error, "could not record the server's rate-limit feedback");
                }
            }
        }
        blocked
    }
}

/// Settles an in-flight admission: when the response head arrived or the request failed
/// ([`finish`](Self::finish)), or when the response future is dropped mid-flight (in the
/// background, so that the slot does not stay taken until the in-flight bound).
pub(crate) struct SettleOnDrop {
    layer: RateLimitLayer,
    admission: Option<InFlight>,
}

impl SettleOnDrop {
    pub(crate) fn new(layer: &RateLimitLayer, admission: Option<InFlight>) -> Self {
        SettleOnDrop {
            layer: layer.clone(),
            admission,
        }
    }

    /// Re-stamps the admission now and waits until the store recorded it (one store call,
    /// bounded by the store's own timeout), so that the feedback read from the response, and
    /// whoever reads the store next, see it settled. Returns the stamp, if there was an
    /// admission to settle.
    pub(crate) async fn finish(mut self) -> Option<Timestamp> {
        let admission = self.admission.take()?;
        let at = self.layer.settle_time();
        RateLimitLayer::settle_at(&self.layer.shared, &admission, at).await;
        Some(at)
    }
}

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        let Some(admission) = self.admission.take() else {
            return;
        };
        let at = self.layer.settle_time();
        let shared = self.layer.shared.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn(async move {
                RateLimitLayer::settle_at(&shared, &admission, at).await;
            })),
            Err(_) => tracing::debug!(
                resource = %admission.resource,
                "no async runtime to settle a dropped in-flight admission on; it holds its slot until its expiry"
            ),
        }
    }
}

impl Shared {
    fn queue(&self, resource: &Resource, priority: Priority) -> Queue {
        let mut queues = self.queues.lock();
        if queues.len() > 1024 {
            // Forget queues nobody waits in, so keyed state stays bounded.
            queues.retain(|_, q| Arc::strong_count(q) > 1);
        }
        queues
            .entry((resource.clone(), priority))
            .or_default()
            .clone()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.clone())
    }
}
