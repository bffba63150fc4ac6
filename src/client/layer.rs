//! [`CourteousLayer`]: the whole stack as one tower layer, with handles on its parts.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use tower::Layer;

use super::service::{DedupeSwitch, ResourceDefaults};
use crate::cache::{Cache, CacheLayer, CacheMode};
use crate::context::{ContextLayer, ContextService};
use crate::dedupe::DedupeLayer;
use crate::rate_limit::{RateLimit, RateLimitLayer};
use crate::resource::Resource;

/// The service a [`CourteousLayer`] makes over `S`: context, per-resource defaults, cache,
/// dedupe (skipped for the resources configured without it), rate limit, then `S`.
pub type CourteousService<S> = ContextService<ResourceDefaults<Cache<DedupeSwitch<RateLimit<S>>>>>;

/// The stack [`Courteous`](super::Courteous) assembles, as one [`Layer`]: put it in a
/// `tower::ServiceBuilder` over [`HttpClient`](crate::HttpClient), or turn it into a
/// `reqwest-middleware` client with `client` (feature `middleware`).
///
/// Cloning it (and every service it makes) shares the stores and the layers' state. Its
/// accessors hand back the layers, for `stats()` and `status()`, and the store handles, to
/// flush or close them.
///
/// # Example
///
/// ```
/// use courteous::{Courteous, HttpClient, Limit};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let stack = Courteous::new(reqwest::Client::new())
///     .memory()
///     .default_limit(Limit::per_second(5))
///     .layers()
///     .await?;
/// let service = ServiceBuilder::new()
///     .layer(stack.clone())
///     .service(HttpClient::new(reqwest::Client::new()));
/// assert_eq!(stack.dedupe().stats().await.leaders, 0);
/// # let _ = service;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CourteousLayer {
    pub(super) context: ContextLayer,
    pub(super) journal: Option<crate::journal::Journal>,
    pub(super) cache_modes: Arc<HashMap<Resource, CacheMode>>,
    pub(super) cache: CacheLayer,
    pub(super) dedupe: DedupeLayer,
    pub(super) no_dedupe: Arc<HashSet<Resource>>,
    pub(super) rate_limit: RateLimitLayer,
    #[cfg(feature = "sqlite")]
    pub(super) sqlite: Option<crate::store::sqlite::SqliteStore>,
    /// Closes the SQLite store [`Courteous::sqlite`](super::Courteous::sqlite) opened when the
    /// last clone of this layer and of its services is dropped.
    #[cfg(feature = "sqlite")]
    pub(super) closes: Option<Arc<super::shutdown::ClosesOnDrop>>,
    #[cfg(feature = "redis")]
    pub(super) redis: Option<crate::store::redis::RedisStore>,
}

impl CourteousLayer {
    /// The context layer (outermost): classifier, default priority, key extractor.
    pub fn context(&self) -> &ContextLayer {
        &self.context
    }

    /// The cache layer, for [`stats`](CacheLayer::stats) and its store.
    pub fn cache(&self) -> &CacheLayer {
        &self.cache
    }

    /// The dedupe layer, for [`stats`](DedupeLayer::stats) and its store.
    pub fn dedupe(&self) -> &DedupeLayer {
        &self.dedupe
    }

    /// The rate-limit layer, for [`status`](RateLimitLayer::status),
    /// [`stats`](RateLimitLayer::stats) and [`unblock`](RateLimitLayer::unblock).
    pub fn rate_limit(&self) -> &RateLimitLayer {
        &self.rate_limit
    }

    /// The SQLite store, when the stack was built with [`Courteous::sqlite`](super::Courteous::sqlite)
    /// or [`Courteous::sqlite_store`](super::Courteous::sqlite_store): call
    /// [`close`](crate::store::sqlite::SqliteStore::close) before the process exits to commit
    /// the deferred writes (cache entries) still pending.
    ///
    /// A store opened by [`Courteous::sqlite`](super::Courteous::sqlite) is also closed, with
    /// the same effect, when the last clone of this layer and of every service and client made
    /// from it is dropped (waiting at most 5 s): a clone of the store kept beyond that is
    /// closed too.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(&self) -> Option<&crate::store::sqlite::SqliteStore> {
        self.sqlite.as_ref()
    }

    /// The journal of upstream calls, when the stack keeps one ([`Courteous::journal`](super::Courteous::journal)):
    /// query it for what spent the quota.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use courteous::journal::{GroupBy, JournalQuery};
    /// use std::time::Duration;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let layers = courteous::Courteous::new(reqwest::Client::new())
    ///     .sqlite("courteous.db")
    ///     .layers()
    ///     .await?;
    /// if let Some(journal) = layers.journal() {
    ///     let hour = JournalQuery::since(Duration::from_secs(3600));
    ///     let by_resource = journal.summary(&hour, GroupBy::Resource).await?;
    ///     println!("{by_resource:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn journal(&self) -> Option<&crate::journal::Journal> {
        self.journal.as_ref()
    }

    /// The Redis store, when the stack was built with [`Courteous::redis`](super::Courteous::redis).
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> Option<&crate::store::redis::RedisStore> {
        self.redis.as_ref()
    }

    /// A `reqwest-middleware` client that runs this stack over `client`, as
    /// [`Courteous::build`](super::Courteous::build) returns it. Middlewares added after
    /// courteous (retries, tracing) run once per upstream call.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::Courteous;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courteous::BuildError> {
    /// let stack = Courteous::new(reqwest::Client::new()).layers().await?;
    /// let client = stack.client(reqwest::Client::new());
    /// # let _ = client;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "middleware")]
    pub fn client(&self, client: reqwest::Client) -> reqwest_middleware::ClientWithMiddleware {
        self.middleware_builder(client).build()
    }

    /// Like [`client`](Self::client), but returns the `reqwest_middleware::ClientBuilder` with
    /// courteous in it, to add middlewares after it.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::Courteous;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courteous::BuildError> {
    /// let stack = Courteous::new(reqwest::Client::new()).layers().await?;
    /// let client = stack
    ///     .middleware_builder(reqwest::Client::new())
    ///     // .with(a retry middleware)
    ///     .build();
    /// # let _ = client;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "middleware")]
    pub fn middleware_builder(&self, client: reqwest::Client) -> reqwest_middleware::ClientBuilder {
        reqwest_middleware::ClientBuilder::new(client)
            .with(crate::CourteousMiddleware::new(self.clone()))
    }
}

impl fmt::Debug for CourteousLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CourteousLayer")
            .field("context", &self.context)
            .field("cache_modes", &self.cache_modes)
            .field("cache", &self.cache)
            .field("dedupe", &self.dedupe)
            .field("no_dedupe", &self.no_dedupe)
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Layer<S> for CourteousLayer {
    type Service = CourteousService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let limited = self.rate_limit.layer(inner);
        let switch = DedupeSwitch {
            dedupe: self.dedupe.layer(limited.clone()),
            plain: limited,
            skip: self.no_dedupe.clone(),
        };
        let defaults = ResourceDefaults {
            inner: self.cache.layer(switch),
            cache_modes: self.cache_modes.clone(),
            #[cfg(feature = "sqlite")]
            _closes: self.closes.clone(),
        };
        self.context.layer(defaults)
    }
}
