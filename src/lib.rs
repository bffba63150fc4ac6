//! Courteous, fast HTTP API clients.
//!
//! `courteous` wraps the `reqwest` client you already have in a stack of [`tower`] layers that make
//! it a good citizen of the rate-limited APIs it calls: repeated requests are served from a cache,
//! identical concurrent requests share one upstream call, and every call is admitted against the
//! API's per-resource limits, shared by all processes that use the same store.
//!
//! ```text
//! request ─► ContextLayer ─► CacheLayer ─► DedupeLayer ─► RateLimitLayer ─► HttpClient ─► the API
//! ```
//!
//! This crate is built in steps; the layers present in this version are listed in the README's
//! feature table. Every layer works on `http::Request`/`http::Response` and reads its per-request
//! context from [`http::Extensions`]:
//!
//! * [`Priority`] says whether a person is waiting ([`Priority::User`]) or the request is bulk work
//!   ([`Priority::Background`]);
//! * [`Resource`] names the rate-limit bucket, derived by a [`ResourceClassifier`];
//! * [`RequestKey`] identifies identical requests, derived by a [`KeyExtractor`];
//! * [`Report`] comes back on the response and says what the stack did.
//!
//! # The short path
//!
//! [`Courteous`] builds the whole stack over your `reqwest::Client`, with one store for all
//! of it:
//!
//! ```
//! # #[cfg(all(feature = "sqlite", feature = "middleware"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use courteous::{CacheTtl, Courteous, Limit};
//! use std::time::Duration;
//!
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("courteous.db");
//! let client = Courteous::new(reqwest::Client::new())
//!     .sqlite(path) // or .memory(), .redis(url)
//!     .resource("issue", |r| r.limit(Limit::per_hour(200)).ttl(Duration::from_secs(3600)))
//!     .resource("search", |r| r.limit(Limit::per_minute(50)).ttl(CacheTtl::sliding(Duration::from_secs(300))))
//!     .build()
//!     .await?; // a reqwest_middleware::ClientWithMiddleware
//! # let _ = client;
//! # Ok(()) }
//! # #[cfg(not(all(feature = "sqlite", feature = "middleware")))]
//! # fn main() {}
//! ```
//!
//! [`Courteous::layers`] returns the same stack as one tower layer ([`CourteousLayer`]). The
//! [`client`] module says what the builder offers; for anything else, assemble the layers
//! yourself.
//!
//! # The layers by hand: two ways in
//!
//! Plain tower, over the [`HttpClient`] adapter:
//!
//! ```
//! use courteous::{ContextLayer, HttpClient, Priority};
//! use tower::ServiceBuilder;
//!
//! let client = ServiceBuilder::new()
//!     .layer(ContextLayer::new().default_priority(Priority::Background))
//!     .service(HttpClient::new(reqwest::Client::new()));
//! # let _ = client;
//! ```
//!
//! `reqwest-middleware`, with [`CourteousMiddleware`] running the same stack inside the middleware chain:
//!
//! ```
//! # #[cfg(feature = "middleware")] {
//! use courteous::{ContextLayer, CourteousMiddleware, Priority};
//!
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(CourteousMiddleware::new(ContextLayer::new()))
//!     .build();
//! // Per-request context travels as an extension:
//! let request = client
//!     .get("http://127.0.0.1:9/api/issues/")
//!     .with_extension(Priority::User);
//! # let _ = request;
//! # }
//! ```
//!
//! # Persistence
//!
//! With the default `sqlite` feature, [`store::sqlite::SqliteStore`] opens one SQLite file that every
//! store and every process shares. All SQLite work runs on the store's own threads, never on the
//! async runtime.
//!
//! # Where things live
//!
//! * [`client`]: [`Courteous`], the builder of the whole stack.
//! * [`context`], [`cache`], [`dedupe`], [`rate_limit`]: the layers, outermost first; each
//!   folder holds its layer, its service and its store trait with the backends.
//! * [`store`]: the storage engines (SQLite, Redis) the stores share, their errors, and the one
//!   byte form of cached entries and headers.
//! * [`key`]: request keys; [`resource`]: resources and their classifiers; [`time`]: the clock
//!   and time conversions; [`transport`]: the `reqwest` adapter; [`error`]: the error types.
//! * Private: `body` (buffering bodies, copying requests), `middleware` (the
//!   `reqwest-middleware` integration), `observe` (tracing spans and metrics).
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
pub mod cache;
pub mod client;
pub mod context;
pub mod dedupe;
pub mod error;
pub mod journal;
pub mod key;
#[cfg(feature = "middleware")]
mod middleware;
pub mod observe;
pub mod rate_limit;
pub mod resource;
pub mod store;
pub mod time;
pub mod transport;

pub use body::ReplayableBody;
#[cfg(feature = "sqlite")]
pub use cache::SqliteCacheStore;
pub use cache::{
    CacheLayer, CacheMode, CacheStatus, CacheStore, CacheTtl, MemoryCacheStore, TieredCacheStore,
};
pub use client::{BuildError, Courteous, CourteousLayer, ResourceSettings};
pub use context::{ContextLayer, Priority, Report, RequestContext, UpstreamReport};
#[cfg(feature = "redis")]
pub use dedupe::RedisDedupeStore;
#[cfg(feature = "sqlite")]
pub use dedupe::SqliteDedupeStore;
pub use dedupe::{DedupeLayer, DedupeRole, MemoryDedupeStore};
pub use error::BoxError;
pub use key::{DefaultKeyExtractor, KeyExtractor, RequestKey};
#[cfg(feature = "middleware")]
pub use middleware::{CourteousMiddleware, Handoff, HandoffError, HandoffFuture};
pub use rate_limit::{Limit, Limits, RateLimitLayer, RateLimited};
pub use resource::{
    DefaultResourceClassifier, InvalidResource, PathSegment, PrefixTable, Resource,
    ResourceClassifier, classify_fn,
};
pub use transport::HttpClient;

/// The README's examples, compiled as doctests so they stay true (with every feature, as CI
/// builds: `cargo test --all-features`).
#[cfg(all(doctest, feature = "sqlite", feature = "middleware", feature = "redis"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
