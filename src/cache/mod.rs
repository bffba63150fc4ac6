//! An HTTP cache for API clients: RFC 9111 semantics by default, forced TTLs for APIs that send
//! no cache headers, in memory, in SQLite, or both.
//!
//! [`CacheLayer`] sits outermost in the stack (after [`ContextLayer`](crate::ContextLayer)): a
//! hit returns before dedupe or rate limiting, costs no upstream budget and never touches the
//! inner service (its readiness is driven inside the response future, on a clone, only when the
//! request goes upstream).
//!
//! * **What is looked up**: `GET` and `HEAD` requests with a [`RequestKey`](crate::RequestKey)
//!   (replayable bodies). The key includes the `Authorization` header, hashed, so one user never
//!   receives another user's response. Requests with `Range` or caller-supplied conditional
//!   headers pass through. A non-error answer (2xx, 3xx) to an unsafe request (every method but
//!   `GET`, `HEAD`, `OPTIONS` and `TRACE`, unknown ones included) invalidates the stored entries
//!   for its URL (any query) and for the same-origin URLs of its `Location` and
//!   `Content-Location` (RFC 9111 section 4.4).
//! * **What is stored**: what RFC 9111 allows: a response of any final status with explicit
//!   freshness (`max-age`, `s-maxage` in shared mode, `Expires`) or `public`, unless
//!   `must-understand` names a status the cache does not understand; without those, the
//!   heuristically cacheable statuses (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501).
//!   `206 Partial Content` is never stored: range requests pass through and partial responses
//!   are never combined.
//! * **Freshness**: by default from the response (`Cache-Control`, `Expires`), computed by
//!   [`http-cache-semantics`](http_cache_semantics) as a *private* cache ([`CacheLayer::shared`]
//!   switches to shared-cache rules), with headers normalised first (directive names in any
//!   case, `Age` lists, strict HTTP-dates, an invalid `Expires` is already expired). Without
//!   explicit freshness, heuristics from `Last-Modified`: 10 % of its age, at most a day
//!   ([`CacheLayer::heuristic_fraction`], [`CacheLayer::heuristic_cap`]). `Vary` is honoured with several
//!   variants of one URL stored side by side. Stale entries with `ETag`/`Last-Modified` are
//!   revalidated with a conditional request; a `304` refreshes the stored headers and freshness.
//!   `stale-if-error` serves the stale entry on a 5xx or a transport error;
//!   `stale-while-revalidate` serves it and refreshes once in the background. No path serves
//!   stale a response that says `must-revalidate` or `no-cache` (nor, in a shared cache,
//!   `proxy-revalidate` or `s-maxage`). A `304` whose `Vary` differs from the stored
//!   response's re-keys the entry under the new `Vary`; one that names another `ETag` is not
//!   applied (the resource is fetched again, unconditionally). The request
//!   directives `no-cache`, `no-store`, `max-age`, `max-stale`, `min-fresh` and `only-if-cached`
//!   (a `504` on a miss) are honoured. Served entries carry an `Age` header.
//! * **Forced TTLs**: [`CacheLayer::default_ttl`] and [`CacheLayer::resource_ttl`] give a fixed
//!   lifetime ([`CacheTtl::absolute`] or [`CacheTtl::sliding`]) whatever the response says
//!   (except `no-store`); a [`CacheTtl`] request extension overrides it per request. A zero TTL
//!   means "do not store", everywhere. Which statuses a forced TTL stores is configurable
//!   ([`CacheLayer::statuses`], default 200); no heuristic applies under a forced TTL.
//! * **Per request**: a [`CacheMode`] extension (`NoStore`, `Reload`, `NoCache`, `ForceCache`,
//!   `OnlyIfCached`).
//! * **What happened**: [`Report::cache`](crate::Report::cache) on the response says
//!   [`CacheStatus::Hit`], `Miss`, `Stale`, `Revalidated` or `Bypass`; optionally a header too
//!   ([`CacheLayer::status_header`]).
//! * **Bounded memory**: a body larger than [`CacheLayer::max_entry_size`] (5 MiB by default) is
//!   buffered only up to that size, then streamed to the caller uncached.
//! * **Failures**: a store that fails never fails the request: the layer passes the request
//!   through, logs the error with `tracing` and counts it ([`CacheLayer::stats`]).
//!
//! Stores: [`MemoryCacheStore`] (bounded by entries and bytes), [`SqliteCacheStore`] on the
//! shared SQLite file (survives restarts, shared by processes; `SqliteStore::cache()`),
//! `RedisCacheStore` on a Redis server (shared by machines; `RedisStore::cache()`, feature
//! `redis`), and [`TieredCacheStore`], a memory tier in front of another store (over Redis, kept
//! consistent with other processes through pub/sub).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use courteous::cache::{CacheLayer, CacheStatus, CacheTtl, MemoryCacheStore};
//! use courteous::Report;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courteous::BoxError> {
//! let upstream = service_fn(|_req: http::Request<reqwest::Body>| async {
//!     Ok::<_, courteous::BoxError>(http::Response::new(reqwest::Body::from("hello")))
//! });
//! let mut client = ServiceBuilder::new()
//!     .layer(
//!         CacheLayer::new(MemoryCacheStore::new())
//!             .default_ttl(CacheTtl::absolute(Duration::from_secs(60))),
//!     )
//!     .service(upstream);
//!
//! for expected in [CacheStatus::Miss, CacheStatus::Hit] {
//!     let request = http::Request::get("http://api.example/items/1")
//!         .body(reqwest::Body::from(""))?;
//!     let response = client.ready().await?.call(request).await?;
//!     assert_eq!(Report::of(&response).unwrap().cache, Some(expected));
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! * `mod.rs`: these docs and the per-request values ([`CacheMode`], [`CacheTtl`],
//!   [`CacheStatus`]).
//! * `layer.rs`: [`CacheLayer`] (configuration, clock, shared state) and [`CacheStats`].
//! * `service/`: [`Cache`], the service, and the per-request work behind it, one concern a
//!   file: the request flow, RFC 9111 policy, forced TTLs, revalidation, background refresh and
//!   invalidation (see its module docs).
//! * [`future`]: the response future. `entry.rs`: [`CacheEntry`], what stores hold.
//!   `saturating.rs`: arithmetic on server-supplied numbers that cannot overflow, and the
//!   headers `http-cache-semantics` is shown. (Buffering bodies is `crate::body`'s, shared with
//!   dedupe.)
//! * [`store`]: the [`CacheStore`] trait and its backends (memory, SQLite, Redis, tiered).
//!
//! # Note on bodies
//!
//! The layer buffers a storable response's body (up to `max_entry_size`) before it returns the
//! response, so that the entry is stored whether or not the caller reads the body; the response
//! body is a [`reqwest::Body`]. A hit shares the stored [`bytes::Bytes`] with the caller: no copy.
//! Trailers of buffered responses are not kept.

mod entry;
pub mod future;
mod layer;
mod saturating;
pub(crate) mod service;
pub mod store;

pub use entry::CacheEntry;
pub use layer::{CacheLayer, CacheStats};
pub use service::Cache;
pub use store::memory::{MemoryCacheStore, MemoryCacheStoreBuilder};
#[cfg(feature = "redis")]
pub use store::redis::RedisCacheStore;
#[cfg(feature = "sqlite")]
pub use store::sqlite::SqliteCacheStore;
pub use store::tiered::TieredCacheStore;
pub use store::{CacheChange, CacheStore, CacheStoreStats, ChangeFeed, Invalidation};

use std::time::Duration;

/// How one request uses the cache, set as a request extension (the `cache` option of the Fetch
/// standard).
///
/// # Example
///
/// ```
/// use courteous::cache::CacheMode;
///
/// let mut request = http::Request::get("http://api.example/items/1").body(()).unwrap();
/// request.extensions_mut().insert(CacheMode::Reload);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CacheMode {
    /// Use the cache as the response headers and layer configuration say.
    #[default]
    Default,
    /// Neither read nor write the cache.
    NoStore,
    /// Ignore the stored entry, go upstream and store the answer.
    Reload,
    /// Use a stored entry only after revalidating it with the server.
    NoCache,
    /// Use a stored entry however stale; go upstream only when there is none.
    ForceCache,
    /// Use a stored entry however stale; answer `504 Gateway Timeout` when there is none.
    OnlyIfCached,
}

/// A forced time to live: how long an entry is served without asking the server, whatever its
/// headers say. Used in [`CacheLayer::default_ttl`], [`CacheLayer::resource_ttl`] and as a
/// per-request extension. A zero TTL means "do not store".
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use courteous::cache::CacheTtl;
///
/// let mut request = http::Request::get("http://api.example/search?q=x").body(()).unwrap();
/// request.extensions_mut().insert(CacheTtl::sliding(Duration::from_secs(300)));
/// assert!(CacheTtl::absolute(Duration::ZERO).is_no_store());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheTtl {
    ttl: Duration,
    sliding: bool,
}

impl CacheTtl {
    /// Fresh for `ttl` after the response was stored.
    pub const fn absolute(ttl: Duration) -> Self {
        CacheTtl {
            ttl,
            sliding: false,
        }
    }

    /// Fresh for `ttl` after the entry was last served (each hit extends it).
    pub const fn sliding(ttl: Duration) -> Self {
        CacheTtl { ttl, sliding: true }
    }

    /// The lifetime.
    pub const fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether each hit extends the lifetime.
    pub const fn is_sliding(&self) -> bool {
        self.sliding
    }

    /// Whether this TTL means "do not store" (it is zero).
    pub const fn is_no_store(&self) -> bool {
        self.ttl.is_zero()
    }
}

/// What the cache did with a request, in [`Report::cache`](crate::Report::cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from the cache without asking the server.
    Hit,
    /// Not (usably) in the cache: the server answered.
    Miss,
    /// A stale entry was served (`stale-if-error`, `stale-while-revalidate`, `max-stale`,
    /// [`CacheMode::ForceCache`]).
    Stale,
    /// The stored entry was revalidated with the server (a `304`) and served.
    Revalidated,
    /// The cache was not used (method, streaming body, [`CacheMode::NoStore`], conditional or
    /// range request, a store failure).
    Bypass,
}

impl CacheStatus {
    /// `"HIT"`, `"MISS"`, `"STALE"`, `"REVALIDATED"` or `"BYPASS"`, as written in the status
    /// header.
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

impl std::fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
