//! [`Courteous`], the builder, and [`ResourceSettings`], what it keeps per resource.

use std::collections::{HashMap, HashSet};
use std::fmt;
#[cfg(feature = "sqlite")]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::error::BuildError;
use super::layer::{CourteousLayer, CourteousService};
use crate::cache::{CacheLayer, CacheMode, CacheStore, CacheTtl, MemoryCacheStore};
use crate::context::{ContextLayer, Priority};
use crate::dedupe::{DedupeLayer, DedupeStore, MemoryDedupeStore};
use crate::key::KeyExtractor;
use crate::rate_limit::{Limit, Limits, MemoryRateLimitStore, RateLimitLayer, RateLimitStore};
use crate::resource::{DefaultResourceClassifier, Resource, ResourceClassifier};
use crate::transport::HttpClient;

/// What one resource gets: its rate limits, its cache lifetime and mode, and whether identical
/// concurrent requests are merged. Configured in [`Courteous::resource`].
///
/// # Example
///
/// ```
/// use courteous::{CacheMode, CacheTtl, Courteous, Limit};
/// use std::time::Duration;
///
/// let per_minute = Limit::per_minute(50);
/// let builder = Courteous::new(reqwest::Client::new()).resource("search", |r| {
///     r.limit(per_minute)
///         .ttl(CacheTtl::sliding(Duration::from_secs(300)))
///         .cache_mode(CacheMode::NoCache)
///         .dedupe(false)
/// });
/// # let _ = builder;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ResourceSettings {
    limits: Vec<Limit>,
    ttl: Option<CacheTtl>,
    cache_mode: Option<CacheMode>,
    dedupe: bool,
}

impl Default for ResourceSettings {
    fn default() -> Self {
        ResourceSettings {
            limits: Vec::new(),
            ttl: None,
            cache_mode: None,
            dedupe: true,
        }
    }
}

impl ResourceSettings {
    /// Adds a rate limit for this resource; call it again for several windows (200 per hour
    /// *and* 2 per second). A resource with limits of its own is not subject to
    /// [`Courteous::default_limit`].
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// How long this resource's `200` answers are served from the cache without asking the
    /// server, whatever their headers say (see [`CacheLayer::resource_ttl`]): a `Duration` is an
    /// absolute TTL, [`CacheTtl::sliding`] one that each hit renews. Zero means "never store".
    pub fn ttl(mut self, ttl: impl Into<CacheTtl>) -> Self {
        self.ttl = Some(ttl.into());
        self
    }

    /// The [`CacheMode`] of this resource's requests that set none themselves (a request's own
    /// `CacheMode` extension wins). [`CacheMode::NoStore`] keeps the resource out of the cache.
    pub fn cache_mode(mut self, mode: CacheMode) -> Self {
        self.cache_mode = Some(mode);
        self
    }

    /// Whether identical concurrent requests to this resource share one upstream call (default
    /// `true`). With `false` each goes upstream (still counted by the rate limiter).
    pub fn dedupe(mut self, dedupe: bool) -> Self {
        self.dedupe = dedupe;
        self
    }
}

impl From<Duration> for CacheTtl {
    /// An absolute TTL: [`CacheTtl::absolute`].
    fn from(ttl: Duration) -> Self {
        CacheTtl::absolute(ttl)
    }
}

/// Where the builder keeps its state.
#[derive(Debug, Clone)]
enum Backend {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite(PathBuf),
    #[cfg(feature = "sqlite")]
    SqliteStore(crate::store::sqlite::SqliteStore),
    #[cfg(feature = "redis")]
    Redis(String),
    #[cfg(feature = "redis")]
    RedisStore(crate::store::redis::RedisStore),
}

/// The front door: the whole courteous stack (context, cache, dedupe, rate limit) over your
/// `reqwest::Client`, configured in one place.
///
/// `Courteous::new(client)` starts it; choose a store ([`memory`](Self::memory), the default;
/// [`sqlite`](Self::sqlite); [`redis`](Self::redis)), say what each resource gets
/// ([`resource`](Self::resource)), and finish with [`build`](Self::build) for a
/// `reqwest_middleware::ClientWithMiddleware`, or [`layers`](Self::layers) for the stack as a
/// tower layer. One store per backend is opened and shared by the cache, dedupe and rate-limit
/// layers. Everything it builds can also be assembled by hand from the public layers
/// ([`ContextLayer`], [`CacheLayer`], [`DedupeLayer`], [`RateLimitLayer`]): that is the path for
/// settings the builder does not offer.
///
/// The name avoids `Client`, `Middleware` and `Context`, which `reqwest`,
/// `reqwest-middleware` and `std::task` already use.
///
/// # Example
///
/// ```
/// # #[cfg(all(feature = "sqlite", feature = "middleware"))]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use courteous::{CacheTtl, Courteous, Limit, PathSegment, Priority};
/// use std::time::Duration;
///
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("app.db");
/// let client = Courteous::new(reqwest::Client::new())
///     .sqlite(path)
///     .classifier(PathSegment::after("/api/"))
///     .default_priority(Priority::Background)
///     .resource("issue", |r| r.limit(Limit::per_hour(200)).ttl(Duration::from_secs(3600)))
///     .resource("search", |r| {
///         r.limit(Limit::per_minute(50))
///             .ttl(CacheTtl::sliding(Duration::from_secs(300)))
///             .dedupe(false)
///     })
///     .build()
///     .await?;
/// # let _ = client;
/// # Ok(()) }
/// # #[cfg(not(all(feature = "sqlite", feature = "middleware")))]
/// # fn main() {}
/// ```
#[must_use]
pub struct Courteous {
    client: reqwest::Client,
    backend: Backend,
    context: ContextLayer,
    /// Whether the classifier is still [`DefaultResourceClassifier`], whose names are known.
    stock_classifier: bool,
    default_limits: Vec<Limit>,
    default_ttl: Option<CacheTtl>,
    max_wait: Option<Duration>,
    /// `None`: the default (a journal on SQLite only).
    journal: Option<bool>,
    resources: Vec<(String, ResourceSettings)>,
}

impl fmt::Debug for Courteous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Courteous")
            .field("backend", &self.backend)
            .field("context", &self.context)
            .field("default_limits", &self.default_limits)
            .field("default_ttl", &self.default_ttl)
            .field("max_wait", &self.max_wait)
            .field("resources", &self.resources)
            .finish_non_exhaustive()
    }
}

impl Courteous {
    /// A builder over `client`, with the defaults: state in memory (this process only), the
    /// stock classifier and key extractor, requests [`Priority::User`] unless marked, no rate
    /// limits, caching as the response headers say (RFC 9111, private cache), dedupe on.
    pub fn new(client: reqwest::Client) -> Self {
        Courteous {
            client,
            backend: Backend::Memory,
            context: ContextLayer::new(),
            stock_classifier: true,
            default_limits: Vec::new(),
            default_ttl: None,
            max_wait: None,
            journal: None,
            resources: Vec::new(),
        }
    }

    /// Keeps the state in memory: shared by the clones of what [`build`](Self::build) returns,
    /// not by other builds or processes (the default).
    pub fn memory(mut self) -> Self {
        self.backend = Backend::Memory;
        self
    }

    /// Keeps the state in the SQLite file at `path` (created if absent), shared by every
    /// process on the machine that opens it. [`build`](Self::build) opens it with the defaults
    /// of [`SqliteStore::open`](crate::store::sqlite::SqliteStore::open).
    ///
    /// The store defers cache writes to a background thread. When the last clone of the client
    /// (or of the [`CourteousLayer`] and its services) is dropped, the store is closed and what
    /// is pending committed, waiting at most 5 s: a program that drops its client before it
    /// exits keeps everything it cached. That last drop blocks the thread it runs on while the
    /// store's own threads commit (usually milliseconds): drop the client at shutdown, not on a
    /// hot path. To close it yourself, without blocking, open it and pass it to
    /// [`sqlite_store`](Self::sqlite_store), then `close().await` it.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, path: impl Into<PathBuf>) -> Self {
        self.backend = Backend::Sqlite(path.into());
        self
    }

    /// Keeps the state in a SQLite store you opened (with options of
    /// [`SqliteStore::builder`](crate::store::sqlite::SqliteStore::builder), say) and keep a
    /// handle on, to [`close`](crate::store::sqlite::SqliteStore::close) it before the process
    /// exits so that deferred cache writes are committed.
    ///
    /// # Example
    ///
    /// ```
    /// # #[cfg(feature = "middleware")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use courteous::Courteous;
    /// use courteous::store::sqlite::SqliteStore;
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let store = SqliteStore::builder(dir.path().join("app.db")).page_size(65536).open().await?;
    /// let client = Courteous::new(reqwest::Client::new())
    ///     .sqlite_store(store.clone())
    ///     .build()
    ///     .await?;
    /// // ... use the client ...
    /// store.close().await?;
    /// # let _ = client;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "middleware"))]
    /// # fn main() {}
    /// ```
    #[cfg(feature = "sqlite")]
    pub fn sqlite_store(mut self, store: crate::store::sqlite::SqliteStore) -> Self {
        self.backend = Backend::SqliteStore(store);
        self
    }

    /// Keeps the state in a Redis store you made (with a key prefix or timeouts of
    /// [`RedisStore::builder`](crate::store::redis::RedisStore::builder), say).
    /// [`build`](Self::build) checks that it answers.
    #[cfg(feature = "redis")]
    pub fn redis_store(mut self, store: crate::store::redis::RedisStore) -> Self {
        self.backend = Backend::RedisStore(store);
        self
    }

    /// Keeps the state in the Redis server at `url` (`redis://host:port/db`), shared by every
    /// process on every machine that uses it. [`build`](Self::build) checks that it answers.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.backend = Backend::Redis(url.into());
        self
    }

    /// Configures the resource named `name` (as the [`classifier`](Self::classifier) names
    /// it): its limits, cache TTL and mode, dedupe. Calling it again for the same name adds to
    /// the same settings.
    ///
    /// Names are checked by [`build`](Self::build): an empty one is a
    /// [`BuildError::InvalidResource`]. With the stock classifier (no
    /// [`classifier`](Self::classifier) given), a name it never gives is a
    /// [`BuildError::UnclassifiedResource`]: it names resources by the first path segment that is
    /// not `api` or a version, in lower case, so `"Issue"`, `"api/search"` or `"v1"` would
    /// configure nothing.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::{Courteous, Limit};
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hourly = Limit::per_hour(200);
    /// let builder = Courteous::new(reqwest::Client::new())
    ///     .resource("issue", |r| r.limit(hourly))
    ///     .resource("issue", |r| r.ttl(Duration::from_secs(3600)));
    /// # let _ = builder;
    /// # Ok(()) }
    /// ```
    pub fn resource<F>(mut self, name: impl Into<String>, configure: F) -> Self
    where
        F: FnOnce(ResourceSettings) -> ResourceSettings,
    {
        let name = name.into();
        match self.resources.iter_mut().find(|(n, _)| *n == name) {
            Some((_, settings)) => *settings = configure(settings.clone()),
            None => self
                .resources
                .push((name, configure(ResourceSettings::default()))),
        }
        self
    }

    /// How requests map to resources (default
    /// [`DefaultResourceClassifier`](crate::DefaultResourceClassifier)): see
    /// [`ContextLayer::classifier`].
    pub fn classifier(mut self, classifier: impl ResourceClassifier) -> Self {
        self.context = self.context.classifier(classifier);
        self.stock_classifier = false;
        self
    }

    /// How identical requests are recognised (default
    /// [`DefaultKeyExtractor`](crate::DefaultKeyExtractor)): see
    /// [`ContextLayer::key_extractor`].
    pub fn key_extractor(mut self, keys: impl KeyExtractor) -> Self {
        self.context = self.context.key_extractor(keys);
        self
    }

    /// The priority of requests that set none (default [`Priority::User`]).
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.context = self.context.default_priority(priority);
        self
    }

    /// The default headers of the `reqwest::Client` (what was given to
    /// `reqwest::ClientBuilder::default_headers`), so that the cache and dedupe keys cover a
    /// default `Authorization`: see [`ContextLayer::default_headers`].
    pub fn default_headers(mut self, headers: http::HeaderMap) -> Self {
        self.context = self.context.default_headers(headers);
        self
    }

    /// Adds a rate limit for every resource without limits of its own.
    pub fn default_limit(mut self, limit: Limit) -> Self {
        self.default_limits.push(limit);
        self
    }

    /// A forced TTL for the `200` answers of every resource without a TTL of its own (see
    /// [`CacheLayer::default_ttl`]). Without it, the cache follows the response headers.
    pub fn default_ttl(mut self, ttl: impl Into<CacheTtl>) -> Self {
        self.default_ttl = Some(ttl.into());
        self
    }

    /// Whether to keep a [journal](crate::journal) of the calls that reached the upstream, in
    /// the store the stack uses (a bounded ring in memory, a table in the SQLite file, a capped
    /// stream in Redis). Default: on with [`sqlite`](Self::sqlite) and
    /// [`sqlite_store`](Self::sqlite_store), off otherwise. Read it from code with
    /// [`CourteousLayer::journal`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), courteous::BuildError> {
    /// let client = courteous::Courteous::new(reqwest::Client::new())
    ///     .sqlite("courteous.db")
    ///     .journal(false)
    ///     .build()
    ///     .await?;
    /// # let _ = client;
    /// # Ok(()) }
    /// ```
    pub fn journal(mut self, on: bool) -> Self {
        self.journal = Some(on);
        self
    }

    /// The longest a request waits for the rate limiter before failing with
    /// [`RateLimited`](crate::RateLimited) (default 60 s; zero fails at once); a request's
    /// [`MaxWait`](crate::rate_limit::MaxWait) extension overrides it.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Opens the store and returns a `reqwest-middleware` client running the whole stack over
    /// the `reqwest::Client` given to [`new`](Self::new).
    ///
    /// The client is cheap to clone; clones share everything. A SQLite file opened by
    /// [`sqlite`](Self::sqlite) is closed, its pending cache writes committed, when the last
    /// clone is dropped. To keep handles on the layers and the store (statistics, closing the
    /// store at a time of your choosing), use [`layers`](Self::layers) and
    /// [`CourteousLayer::client`].
    ///
    /// # Errors
    ///
    /// [`BuildError`]: a resource name that is empty or that the stock classifier never gives,
    /// a limit with a zero window, a SQLite file that cannot be opened, a Redis that does not
    /// answer.
    #[cfg(feature = "middleware")]
    pub async fn build(self) -> Result<reqwest_middleware::ClientWithMiddleware, BuildError> {
        let client = self.client.clone();
        Ok(self.layers().await?.client(client))
    }

    /// Opens the store and returns the stack as a tower service over the `reqwest::Client`
    /// given to [`new`](Self::new), for tower users who add nothing below it.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::Courteous;
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let service = Courteous::new(reqwest::Client::new()).service().await?;
    /// let request = http::Request::get("http://127.0.0.1:9/api/issues/").body(reqwest::Body::from(""))?;
    /// let _ = service.oneshot(request); // a future; .await it to send
    /// # Ok(()) }
    /// ```
    pub async fn service(self) -> Result<CourteousService<HttpClient>, BuildError> {
        let client = HttpClient::new(self.client.clone());
        Ok(tower::Layer::layer(&self.layers().await?, client))
    }

    /// Opens the store and returns the stack as one tower [`Layer`](tower::Layer), to put over
    /// [`HttpClient`] (or your own transport) in a `tower::ServiceBuilder`. The
    /// `reqwest::Client` given to [`new`](Self::new) is not used: the service below the layer
    /// sends.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::{Courteous, HttpClient};
    /// use tower::ServiceBuilder;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courteous::BuildError> {
    /// let client = ServiceBuilder::new()
    ///     .layer(Courteous::new(reqwest::Client::new()).layers().await?)
    ///     .service(HttpClient::new(reqwest::Client::new()));
    /// # let _ = client;
    /// # Ok(()) }
    /// ```
    pub async fn layers(self) -> Result<CourteousLayer, BuildError> {
        let mut resources = Vec::with_capacity(self.resources.len());
        for (name, settings) in self.resources {
            let Ok(resource) = Resource::new(&name) else {
                return Err(BuildError::InvalidResource { name });
            };
            if self.stock_classifier {
                let classified_as = stock_name(resource.as_str());
                if classified_as.as_ref() != Some(&resource) {
                    return Err(BuildError::UnclassifiedResource {
                        name,
                        classified_as: classified_as.map(|r| r.as_str().to_owned()),
                    });
                }
            }
            resources.push((resource, settings));
        }
        let mut limits = Limits::new();
        for limit in self.default_limits {
            limits = limits.default_limit(limit);
        }
        for (resource, settings) in &resources {
            for limit in &settings.limits {
                limits = limits.resource(resource.as_str(), *limit);
            }
        }
        // Checked before a store is opened: a configuration error leaves no file behind.
        RateLimitLayer::new(MemoryRateLimitStore::new(), limits.clone())?;

        let stores = Stores::open(self.backend).await?;
        let journal = stores.journal(self.journal);
        let context = match &journal {
            Some(journal) => self.context.journal(journal.clone()),
            None => self.context,
        };
        let mut cache = CacheLayer::new(stores.cache);
        if let Some(ttl) = self.default_ttl {
            cache = cache.default_ttl(ttl);
        }
        let mut cache_modes = HashMap::new();
        let mut no_dedupe = HashSet::new();
        for (resource, settings) in &resources {
            if let Some(ttl) = settings.ttl {
                cache = cache.resource_ttl(resource.as_str(), ttl);
            }
            if let Some(mode) = settings.cache_mode {
                cache_modes.insert(resource.clone(), mode);
            }
            if !settings.dedupe {
                no_dedupe.insert(resource.clone());
            }
        }
        let mut rate_limit = RateLimitLayer::new(stores.rate_limits, limits)?;
        if let Some(max_wait) = self.max_wait {
            rate_limit = rate_limit.max_wait(max_wait);
        }
        Ok(CourteousLayer {
            context,
            journal,
            cache_modes: Arc::new(cache_modes),
            cache,
            dedupe: DedupeLayer::new(stores.dedupe),
            no_dedupe: Arc::new(no_dedupe),
            rate_limit,
            #[cfg(feature = "sqlite")]
            sqlite: stores.sqlite,
            #[cfg(feature = "sqlite")]
            closes: stores.closes,
            #[cfg(feature = "redis")]
            redis: stores.redis,
        })
    }
}

/// The resource [`DefaultResourceClassifier`] gives a request to `/{name}/`, or `None` when
/// that is not a valid path (the name has characters a path segment cannot hold).
fn stock_name(name: &str) -> Option<Resource> {
    let uri = http::Uri::builder()
        .path_and_query(format!("/{name}/"))
        .build()
        .ok()?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.uri = uri;
    Some(DefaultResourceClassifier.classify(&parts))
}

/// The three stores of one backend, and the backend's handle.
struct Stores {
    cache: Arc<dyn CacheStore>,
    dedupe: Arc<dyn DedupeStore>,
    rate_limits: Arc<dyn RateLimitStore>,
    #[cfg(feature = "sqlite")]
    sqlite: Option<crate::store::sqlite::SqliteStore>,
    /// Set when the builder opened the SQLite store itself: nobody else can close it.
    #[cfg(feature = "sqlite")]
    closes: Option<Arc<super::shutdown::ClosesOnDrop>>,
    #[cfg(feature = "redis")]
    redis: Option<crate::store::redis::RedisStore>,
}

impl Stores {
    /// The journal `on` asks for (`None`: on for SQLite only), in this backend's store.
    fn journal(&self, on: Option<bool>) -> Option<crate::journal::Journal> {
        use crate::journal::Journal;
        #[cfg(feature = "sqlite")]
        if let Some(sqlite) = &self.sqlite {
            return on.unwrap_or(true).then(|| Journal::new(sqlite.journal()));
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return on.unwrap_or(false).then(|| Journal::new(redis.journal()));
        }
        on.unwrap_or(false)
            .then(|| Journal::new(crate::journal::MemoryJournalStore::new()))
    }

    async fn open(backend: Backend) -> Result<Stores, BuildError> {
        #[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(unused_mut))]
        let mut stores = Stores {
            cache: Arc::new(MemoryCacheStore::new()),
            dedupe: Arc::new(MemoryDedupeStore::new()),
            rate_limits: Arc::new(MemoryRateLimitStore::new()),
            #[cfg(feature = "sqlite")]
            sqlite: None,
            #[cfg(feature = "sqlite")]
            closes: None,
            #[cfg(feature = "redis")]
            redis: None,
        };
        match backend {
            Backend::Memory => {}
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(path) => {
                let store = crate::store::sqlite::SqliteStore::open(path).await?;
                stores.closes = Some(Arc::new(super::shutdown::ClosesOnDrop::new(store.clone())));
                stores.sqlite(store);
            }
            #[cfg(feature = "sqlite")]
            Backend::SqliteStore(store) => stores.sqlite(store),
            #[cfg(feature = "redis")]
            Backend::Redis(url) => {
                let store = crate::store::redis::RedisStore::connect(url)?;
                store.ping().await?;
                stores.redis(store);
            }
            #[cfg(feature = "redis")]
            Backend::RedisStore(store) => {
                store.ping().await?;
                stores.redis(store);
            }
        }
        Ok(stores)
    }

    #[cfg(feature = "sqlite")]
    fn sqlite(&mut self, store: crate::store::sqlite::SqliteStore) {
        self.cache = Arc::new(store.cache());
        self.dedupe = Arc::new(store.dedupe());
        self.rate_limits = Arc::new(store.rate_limits());
        self.sqlite = Some(store);
    }

    #[cfg(feature = "redis")]
    fn redis(&mut self, store: crate::store::redis::RedisStore) {
        self.cache = Arc::new(store.cache());
        self.dedupe = Arc::new(store.dedupe());
        self.rate_limits = Arc::new(store.rate_limits());
        self.redis = Some(store);
    }
}
