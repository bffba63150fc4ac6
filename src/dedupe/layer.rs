use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use tower::Layer;

use super::flight::State;
use super::service::Dedupe;
use super::store::{DedupeStore, DedupeStoreStats};

/// What a [`DedupeLayer`] (and its clones and the services they made) did in this process, and
/// what its store holds: from [`DedupeLayer::stats`].
///
/// Two layers over one store count apart; what the store holds (`store`) is the same for both,
/// and for every process sharing it.
///
/// # Example
///
/// ```
/// use courteous::dedupe::{DedupeLayer, MemoryDedupeStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = DedupeLayer::new(MemoryDedupeStore::new());
/// let stats = layer.stats().await;
/// assert_eq!((stats.leaders, stats.followers), (0, 0));
/// assert_eq!(stats.store.pending, 0);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DedupeStats {
    /// Requests that went upstream for their key as leader (takeovers included).
    pub leaders: u64,
    /// Requests that received a leader's result in this process.
    pub followers: u64,
    /// Leaderships taken over from a cancelled, panicked or dead leader.
    pub takeovers: u64,
    /// Followers that gave up waiting.
    pub timeouts: u64,
    /// Results received from a leader in another process (or another layer sharing the store).
    pub cross_process_joins: u64,
    /// Requests that made their own call instead (body over the limit, timeout, store failure).
    pub bypassed: u64,
    /// Store operations of this layer that failed (the request went on without the store),
    /// and [`stats`](DedupeLayer::stats) calls whose store could not answer.
    pub store_errors: u64,
    /// Leaders that failed before sending (refused by the rate limiter, say): their error was
    /// not shared, and their followers started again.
    pub not_sent: u64,
    /// Unsafe requests that succeeded and discarded the dedupe results for their URL.
    pub invalidations: u64,
    /// What the store holds (leases, results; for every process sharing it) and what its
    /// cleanup removed; zeroes if it could not answer.
    pub store: DedupeStoreStats,
}

/// The counters behind [`DedupeStats`], in the layer's shared state: the layer's services count
/// into them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) leaders: AtomicU64,
    pub(crate) followers: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) cross_process_joins: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) not_sent: AtomicU64,
    pub(crate) invalidations: AtomicU64,
}

impl Counters {
    /// The layer's part of [`DedupeStats`], with `store` for the store's.
    fn snapshot(&self, store: DedupeStoreStats) -> DedupeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DedupeStats {
            leaders: get(&self.leaders),
            followers: get(&self.followers),
            takeovers: get(&self.takeovers),
            timeouts: get(&self.timeouts),
            cross_process_joins: get(&self.cross_process_joins),
            bypassed: get(&self.bypassed),
            store_errors: get(&self.store_errors),
            not_sent: get(&self.not_sent),
            invalidations: get(&self.invalidations),
            store,
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a follower does when its wait runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnTimeout {
    /// Make its own request upstream (the default).
    #[default]
    OwnRequest,
    /// Fail with [`DedupeError::TimedOut`](super::DedupeError::TimedOut).
    Fail,
}

type FailOn = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) methods: Vec<Method>,
    pub(crate) max_body: usize,
    pub(crate) lease_timeout: Duration,
    pub(crate) result_ttl: Duration,
    pub(crate) follower_timeout: Duration,
    pub(crate) on_timeout: OnTimeout,
    pub(crate) fail_on: Option<FailOn>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            methods: vec![Method::GET, Method::HEAD],
            max_body: 1 << 20,
            lease_timeout: Duration::from_secs(30),
            result_ttl: Duration::from_secs(3),
            follower_timeout: Duration::from_secs(60),
            on_timeout: OnTimeout::OwnRequest,
            fail_on: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("methods", &self.methods)
            .field("max_body", &self.max_body)
            .field("lease_timeout", &self.lease_timeout)
            .field("result_ttl", &self.result_ttl)
            .field("follower_timeout", &self.follower_timeout)
            .field("on_timeout", &self.on_timeout)
            .field("fail_on", &self.fail_on.is_some())
            .finish()
    }
}

/// Coalesces identical concurrent requests into one upstream call; builds [`Dedupe`].
///
/// Clones (and the services they make) share one in-flight map, one store and the counters of
/// [`stats`](Self::stats): build the layer once and reuse it. See the [module documentation](super) for the behaviour.
///
/// # Example
///
/// ```
/// use courteous::dedupe::{DedupeLayer, MemoryDedupeStore, OnTimeout};
/// use std::time::Duration;
///
/// let layer = DedupeLayer::new(MemoryDedupeStore::new())
///     .methods([http::Method::GET])
///     .max_body(4 << 20)
///     .lease_timeout(Duration::from_secs(10))
///     .result_ttl(Duration::from_secs(2))
///     .follower_timeout(Duration::from_secs(20), OnTimeout::Fail)
///     .fail_on(|status| status.is_server_error());
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct DedupeLayer {
    pub(crate) config: Arc<Config>,
    pub(crate) state: Arc<State>,
}

impl DedupeLayer {
    /// A layer coalescing through `store`, with the defaults: `GET` and `HEAD`, bodies up to
    /// 1 MiB, a 30 s lease, results kept 3 s, followers wait up to 60 s and then make their own
    /// request.
    pub fn new(store: impl DedupeStore) -> Self {
        DedupeLayer {
            config: Arc::new(Config::default()),
            state: Arc::new(State::new(Arc::new(store))),
        }
    }

    /// The methods coalesced (default `GET` and `HEAD`). Others pass through.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        Arc::make_mut(&mut self.config).methods = methods.into_iter().collect();
        self
    }

    /// The largest body shared (default 1 MiB). Followers of a leader with a larger body make
    /// their own request.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_body = bytes;
        self
    }

    /// How long a leader's claim lasts in the store without renewal (default 30 s; renewed every
    /// third of it while the request runs). A process that dies loses its claims after this.
    #[must_use]
    pub fn lease_timeout(mut self, lease: Duration) -> Self {
        Arc::make_mut(&mut self.config).lease_timeout = lease.max(Duration::from_millis(30));
        self
    }

    /// How long a published result stays readable for late followers in other processes
    /// (default 3 s). It is not a cache: keep it short.
    ///
    /// A result is kept at least 1 s whatever this says (`Duration::ZERO` included): followers
    /// already waiting in other processes read the store by polling (or on a Redis announcement
    /// followed by a read), and must find the result there, not a vacant key they would lead
    /// again with a second upstream call.
    #[must_use]
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        Arc::make_mut(&mut self.config).result_ttl = ttl;
        self
    }

    /// How long a follower waits for its leader (default 60 s), and what it does then.
    #[must_use]
    pub fn follower_timeout(mut self, timeout: Duration, then: OnTimeout) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.follower_timeout = timeout;
        config.on_timeout = then;
        self
    }

    /// Statuses that count as a failure of the leader: its followers get
    /// [`DedupeError::FailureStatus`](super::DedupeError::FailureStatus) instead of the response
    /// (default: none; every response is shared).
    #[must_use]
    pub fn fail_on(
        mut self,
        is_failure: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.config).fail_on = Some(Arc::new(is_failure));
        self
    }

    /// The store, for [`poll`](DedupeStore::poll), [`cleanup`](DedupeStore::cleanup) and
    /// [`stats`](DedupeStore::stats).
    pub fn store(&self) -> &Arc<dyn DedupeStore> {
        &self.state.store
    }

    /// What this layer (its clones and their services) did in this process, and what its store
    /// holds ([`DedupeStore::stats`]). When the store cannot answer, `store` is zeroes,
    /// `store_errors` counts the failure, and a warning is logged.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::dedupe::{DedupeLayer, MemoryDedupeStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = MemoryDedupeStore::new();
    /// let (one, two) = (DedupeLayer::new(store.clone()), DedupeLayer::new(store));
    /// // Each layer counts what it did; both see the one store.
    /// assert_eq!(one.stats().await, two.stats().await);
    /// # }
    /// ```
    pub async fn stats(&self) -> DedupeStats {
        let counters = self.state.counters();
        let store = match self.state.store.stats().await {
            Ok(stats) => stats,
            Err(error) => {
                Counters::add(&counters.store_errors, 1);
                tracing::warn!(%error, "dedupe store statistics unavailable");
                DedupeStoreStats::default()
            }
        };
        counters.snapshot(store)
    }
}

impl fmt::Debug for DedupeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupeLayer")
            .field("config", &self.config)
            .field("store", &self.state.store)
            .finish()
    }
}

impl<S> Layer<S> for DedupeLayer {
    type Service = Dedupe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Dedupe {
            inner,
            config: self.config.clone(),
            state: self.state.clone(),
        }
    }
}
