use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tower::Layer;

use super::flight::State;
use super::service::Dedupe;
use super::store::{DedupeStats, DedupeStore};

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
/// Clones (and the services they make) share one in-flight map and one store: build the layer
/// once and reuse it. See the [module documentation](super) for the behaviour.
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
/// assert_eq!(layer.stats().leaders, 0);
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

    /// The store, for [`poll`](DedupeStore::poll) and [`cleanup`](DedupeStore::cleanup).
    pub fn store(&self) -> &Arc<dyn DedupeStore> {
        &self.state.store
    }

    /// What this layer (and others sharing its store) did in this process.
    pub fn stats(&self) -> DedupeStats {
        self.state.store.stats()
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
