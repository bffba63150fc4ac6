//! [`CacheLayer`]: configuration and shared state.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderName, StatusCode};
use parking_lot::Mutex;
use tower::Layer;

use crate::key::RequestKey;
use crate::resource::Resource;
use crate::time::{Clock, SystemClock};

use super::service::Cache;
use super::store::{CacheStore, CacheStoreStats};
use super::{CacheStatus, CacheTtl};

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) shared: bool,
    pub(crate) share_set_cookie: bool,
    pub(crate) default_ttl: Option<CacheTtl>,
    pub(crate) resource_ttls: HashMap<Resource, CacheTtl>,
    /// The statuses a forced TTL stores (default `200`).
    pub(crate) statuses: Vec<StatusCode>,
    /// Heuristic freshness (RFC 9111 section 4.2.2): this fraction of the time since
    /// `Last-Modified`, at most `heuristic_cap`; `0.0` turns it off.
    pub(crate) heuristic_fraction: f64,
    pub(crate) heuristic_cap: Duration,
    pub(crate) max_entry_size: usize,
    pub(crate) status_header: Option<HeaderName>,
    pub(crate) keep_stale: Duration,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) cleanup_interval: Option<Duration>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Config {
    /// Now, from the layer's clock (millisecond precision).
    pub(crate) fn now(&self) -> SystemTime {
        self.clock.system_time()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) revalidated: AtomicU64,
    pub(crate) bypass: AtomicU64,
    pub(crate) store_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn count(&self, status: CacheStatus) {
        let counter = match status {
            CacheStatus::Hit => &self.hits,
            CacheStatus::Miss => &self.misses,
            CacheStatus::Stale => &self.stale,
            CacheStatus::Revalidated => &self.revalidated,
            CacheStatus::Bypass => &self.bypass,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared by every clone of a layer and its services.
pub(crate) struct State {
    pub(crate) store: Arc<dyn CacheStore>,
    pub(crate) counters: Counters,
    /// Keys with a background refresh in flight (stale-while-revalidate refreshes once).
    pub(crate) refreshing: Mutex<HashSet<RequestKey>>,
    /// Keys whose background refresh failed: their next request refreshes in the foreground.
    pub(crate) foreground: Mutex<HashSet<RequestKey>>,
    cleanup_started: AtomicBool,
}

/// The default [`CacheLayer::heuristic_fraction`]: 10 %, as RFC 9111 section 4.2.2 suggests.
const DEFAULT_HEURISTIC_FRACTION: f64 = 0.1;

/// The default [`CacheLayer::heuristic_cap`]: one day. A resource unchanged for a year would
/// otherwise be served unchecked for over a month on a guess; API data changes more often than
/// static files, and a day is also where RFC 7234 asked caches to warn (`113 Heuristic
/// Expiration`) that the guess had grown large.
const DEFAULT_HEURISTIC_CAP: Duration = Duration::from_secs(24 * 3600);

/// The shortest [`CacheLayer::cleanup_interval`].
const MIN_CLEANUP_INTERVAL: Duration = Duration::from_millis(10);

impl State {
    /// Starts the periodic cleanup of expired entries, once per layer, if a runtime is there.
    pub(crate) fn start_cleanup(self: &Arc<Self>, interval: Option<Duration>) {
        let Some(interval) = interval else { return };
        if self.cleanup_started.load(Ordering::Relaxed)
            || self.cleanup_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = Arc::downgrade(self);
        // `tokio::time::interval` panics on a zero period.
        let interval = interval.max(MIN_CLEANUP_INTERVAL);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(state) = state.upgrade() else { return };
                match state.store.purge_expired().await {
                    Ok(n) if n > 0 => tracing::debug!(purged = n, "removed expired cache entries"),
                    Ok(_) => {}
                    Err(error) => {
                        state.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, "cache cleanup failed; it will be retried");
                    }
                }
            }
        });
    }
}

/// What a [`CacheLayer`] did, and what its store holds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct CacheStats {
    /// Requests served fresh from the cache.
    pub hits: u64,
    /// Requests the server answered (not usably cached).
    pub misses: u64,
    /// Requests served stale.
    pub stale: u64,
    /// Requests served after a `304` revalidation.
    pub revalidated: u64,
    /// Requests that did not use the cache.
    pub bypass: u64,
    /// Store operations of this layer that failed (the requests passed through). The store's
    /// own count, which includes failures of operations called outside the layer, is
    /// `store.errors`.
    pub store_errors: u64,
    /// The store's own counts (entries, bytes, expired...); zeroes if it could not answer.
    pub store: CacheStoreStats,
}

impl CacheStats {
    /// Served from the cache (fresh, stale or revalidated) over requests that looked it up.
    pub fn hit_ratio(&self) -> f64 {
        let served = self.hits + self.stale + self.revalidated;
        let total = served + self.misses;
        if total == 0 {
            0.0
        } else {
            served as f64 / total as f64
        }
    }
}

/// Caches responses in a [`CacheStore`]: see the [module documentation](super).
///
/// Cloning the layer (or the services it makes) shares the store and the statistics.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use courteous::cache::{CacheLayer, CacheTtl, MemoryCacheStore};
///
/// let layer = CacheLayer::new(MemoryCacheStore::new())
///     .resource_ttl("issue", CacheTtl::absolute(Duration::from_secs(3600)))
///     .resource_ttl("search", CacheTtl::sliding(Duration::from_secs(300)))
///     .status_header(http::HeaderName::from_static("x-cache"));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    pub(crate) config: Arc<Config>,
    pub(crate) state: Arc<State>,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("store", &self.state.store)
            .field("shared", &self.config.shared)
            .field("default_ttl", &self.config.default_ttl)
            .field("max_entry_size", &self.config.max_entry_size)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A private RFC 9111 cache over `store`, storing what RFC 9111 allows (any final status
    /// with explicit freshness or `public`; heuristic freshness for the heuristically cacheable
    /// statuses), bodies up to 5 MiB.
    pub fn new(store: impl CacheStore) -> Self {
        CacheLayer {
            config: Arc::new(Config {
                shared: false,
                share_set_cookie: false,
                default_ttl: None,
                resource_ttls: HashMap::new(),
                statuses: vec![StatusCode::OK],
                heuristic_fraction: DEFAULT_HEURISTIC_FRACTION,
                heuristic_cap: DEFAULT_HEURISTIC_CAP,
                max_entry_size: 5 * 1024 * 1024,
                status_header: None,
                keep_stale: Duration::from_secs(24 * 3600),
                stale_if_error: None,
                cleanup_interval: Some(Duration::from_secs(60)),
                clock: Arc::new(SystemClock),
            }),
            state: Arc::new(State {
                store: Arc::new(store),
                counters: Counters::default(),
                refreshing: Mutex::new(HashSet::new()),
                foreground: Mutex::new(HashSet::new()),
                cleanup_started: AtomicBool::new(false),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Apply shared-cache rules (`s-maxage` counts; without a forced TTL, responses to requests
    /// with `Authorization` are stored only when the response allows it). Default: private.
    /// Either way every credential a request carries is part of its key (see
    /// [`RequestKey`]), so one user's entry is never another's.
    ///
    /// A shared cache never stores a response marked `Cache-Control: private`, nor one that sets
    /// a cookie (`Set-Cookie`) unless [`share_set_cookie`](Self::share_set_cookie) allows it, even
    /// when a forced TTL ([`default_ttl`](Self::default_ttl), [`resource_ttl`](Self::resource_ttl),
    /// a request's [`CacheTtl`]) applies: such responses belong to one user.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use courteous::cache::{CacheLayer, CacheTtl, MemoryCacheStore};
    ///
    /// let layer = CacheLayer::new(MemoryCacheStore::new())
    ///     .shared(true)
    ///     .default_ttl(CacheTtl::absolute(Duration::from_secs(60)));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn shared(mut self, shared: bool) -> Self {
        self.config().shared = shared;
        self
    }

    /// In shared mode, also store responses that carry `Set-Cookie` (default: no, they are
    /// never stored, since the cookie is usually one user's session). Turn it on only when the
    /// API's cookies are the same for everyone (a load balancer's affinity cookie). No effect on
    /// a private cache.
    #[must_use]
    pub fn share_set_cookie(mut self, share: bool) -> Self {
        self.config().share_set_cookie = share;
        self
    }

    /// A forced TTL for every request (unless a resource or request TTL is set): the response's
    /// own cache headers are then ignored, except `no-store`.
    #[must_use]
    pub fn default_ttl(mut self, ttl: CacheTtl) -> Self {
        self.config().default_ttl = Some(ttl);
        self
    }

    /// A forced TTL for the requests of one resource (see [`Resource`]). A zero TTL means "do
    /// not store" for that resource. Names that are not valid resources are ignored.
    #[must_use]
    pub fn resource_ttl(mut self, resource: &str, ttl: CacheTtl) -> Self {
        if let Ok(resource) = Resource::new(resource) {
            self.config().resource_ttls.insert(resource, ttl);
        }
        self
    }

    /// Which response statuses a forced TTL ([`default_ttl`](Self::default_ttl),
    /// [`resource_ttl`](Self::resource_ttl), a request's [`CacheTtl`]) stores (default: only
    /// `200 OK`). Responses of other statuses, and every response without a forced TTL, are
    /// stored as RFC 9111 allows: any final status with explicit freshness (`max-age`,
    /// `s-maxage` in shared mode, `Expires`) or `public`, unless `must-understand` names a
    /// status the cache does not understand; heuristic freshness (see
    /// [`heuristic_fraction`](Self::heuristic_fraction)) only for 200, 203, 204, 300, 301, 308,
    /// 404, 405, 410, 414 and 501. `206 Partial Content` is never stored: range requests pass
    /// through and partial responses are never combined.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use courteous::cache::{CacheLayer, CacheTtl, MemoryCacheStore};
    /// use http::StatusCode;
    ///
    /// // An API that sends no cache headers: keep its answers, "not found" included, a minute.
    /// let layer = CacheLayer::new(MemoryCacheStore::new())
    ///     .default_ttl(CacheTtl::absolute(Duration::from_secs(60)))
    ///     .statuses([StatusCode::OK, StatusCode::NOT_FOUND]);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config().statuses = statuses.into_iter().collect();
        self
    }

    /// Heuristic freshness (RFC 9111 section 4.2.2): a response without explicit freshness
    /// (`max-age`, `s-maxage`, `Expires`) whose status is heuristically cacheable and that
    /// carries `Last-Modified` is fresh for this fraction of the time between `Last-Modified`
    /// and its `Date`, at most [`heuristic_cap`](Self::heuristic_cap). Default `0.1` (10 %);
    /// `0.0` (or a negative or NaN value) turns heuristics off; values above `1.0` count as
    /// `1.0`. A forced TTL for the request's resource wins: no heuristic applies under it.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::cache::{CacheLayer, MemoryCacheStore};
    ///
    /// // Never guess: store only what the server gives a lifetime (or can revalidate).
    /// let strict = CacheLayer::new(MemoryCacheStore::new()).heuristic_fraction(0.0);
    /// // Guess more boldly than the default 10 %.
    /// let bold = CacheLayer::new(MemoryCacheStore::new()).heuristic_fraction(0.25);
    /// # let _ = (strict, bold);
    /// ```
    #[must_use]
    pub fn heuristic_fraction(mut self, fraction: f64) -> Self {
        self.config().heuristic_fraction = if fraction > 0.0 {
            fraction.min(1.0)
        } else {
            0.0
        };
        self
    }

    /// The longest heuristic freshness (default one day: a guess from `Last-Modified` is
    /// still a guess, and a resource unchanged for a year should not be served unchecked for
    /// a month). It bounds every freshness the cache infers without explicit freshness.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use courteous::cache::{CacheLayer, MemoryCacheStore};
    ///
    /// let layer = CacheLayer::new(MemoryCacheStore::new())
    ///     .heuristic_cap(Duration::from_secs(3600));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn heuristic_cap(mut self, cap: Duration) -> Self {
        self.config().heuristic_cap = cap;
        self
    }

    /// Bodies larger than this stream through uncached (default 5 MiB).
    #[must_use]
    pub fn max_entry_size(mut self, bytes: usize) -> Self {
        self.config().max_entry_size = bytes;
        self
    }

    /// Also say what the cache did in this response header (`HIT`, `MISS`, `STALE`,
    /// `REVALIDATED`, `BYPASS`), e.g. `x-cache`. Default: no header.
    #[must_use]
    pub fn status_header(mut self, name: HeaderName) -> Self {
        self.config().status_header = Some(name);
        self
    }

    /// How long a stale entry with a validator (`ETag`, `Last-Modified`) is kept for
    /// revalidation (default 24 h).
    #[must_use]
    pub fn keep_stale(mut self, keep: Duration) -> Self {
        self.config().keep_stale = keep;
        self
    }

    /// Serve a stale entry for up to `window` past its freshness when the server fails (5xx or
    /// transport error), as if every response said `stale-if-error`. Default: only when the
    /// response says so. A response that forbids stale use (`must-revalidate`, `no-cache`, and
    /// in a shared cache `proxy-revalidate` or `s-maxage`) is never served stale.
    #[must_use]
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.config().stale_if_error = Some(window);
        self
    }

    /// How often expired entries are removed, in the background (default 60 s, at least 10 ms;
    /// `None` turns it off). One cleanup runs at a time per layer.
    #[must_use]
    pub fn cleanup_interval(mut self, interval: Option<Duration>) -> Self {
        self.config().cleanup_interval = interval;
        self
    }

    /// Where the layer reads the time that freshness, ages and lifetimes are computed with
    /// (default [`SystemClock`]), at millisecond precision. Tests pass a clock they move by hand
    /// (a [`Timestamp`](crate::time::Timestamp) is a clock standing still) or a
    /// [`TokioClock`](crate::time::TokioClock).
    ///
    /// The clock decides what the layer stores and serves; a store decides on its own clock
    /// when it may drop an entry (see
    /// [`MemoryCacheStoreBuilder::clock`](super::MemoryCacheStoreBuilder::clock)).
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::cache::{CacheLayer, MemoryCacheStore};
    /// use courteous::time::Timestamp;
    ///
    /// // Always 2001-09-09T01:46:40Z.
    /// let layer = CacheLayer::new(MemoryCacheStore::new())
    ///     .clock(Timestamp::from_millis(1_000_000_000_000));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config().clock = Arc::new(clock);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CacheStore> {
        &self.state.store
    }

    /// What the layer did and what its store holds.
    pub async fn stats(&self) -> CacheStats {
        let c = &self.state.counters;
        let store = match self.state.store.stats().await {
            Ok(stats) => stats,
            Err(error) => {
                c.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "cache store statistics unavailable");
                CacheStoreStats::default()
            }
        };
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            revalidated: c.revalidated.load(Ordering::Relaxed),
            bypass: c.bypass.load(Ordering::Relaxed),
            store_errors: c.store_errors.load(Ordering::Relaxed),
            store,
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::new(inner, self.clone())
    }
}
