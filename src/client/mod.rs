//! The front door: [`Courteous`] builds the whole stack in one place.
//!
//! * `builder.rs`: [`Courteous`], the builder (store, classifier, default priority, limits,
//!   TTLs), and [`ResourceSettings`], what it keeps per resource;
//! * `layer.rs`: [`CourteousLayer`], the assembled stack as one tower layer with handles on its
//!   layers and store, and [`CourteousService`], the service it makes;
//! * `service.rs`: [`ResourceDefaults`] and [`DedupeSwitch`], which apply the per-resource cache
//!   mode and dedupe switch to each request;
//! * `shutdown.rs`: the guard that closes a SQLite store the builder opened itself when the
//!   last clone of the stack is dropped (feature `sqlite`);
//! * `error.rs`: [`BuildError`].
//!
//! The stack is the one the layers' documentation describes, in the same order:
//! `ContextLayer` → `CacheLayer` → `DedupeLayer` → `RateLimitLayer` → the transport, with one
//! store per backend shared by the three. Settings the builder does not offer are on the layers
//! themselves: build the stack by hand from them (the advanced path).
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "middleware")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use courteous::{Courteous, Limit};
//! use std::time::Duration;
//!
//! let client = Courteous::new(reqwest::Client::new())
//!     .memory()
//!     .default_limit(Limit::per_second(10))
//!     .resource("issue", |r| r.ttl(Duration::from_secs(3600)))
//!     .build()
//!     .await?;
//! # let _ = client;
//! # Ok(()) }
//! # #[cfg(not(feature = "middleware"))]
//! # fn main() {}
//! ```

mod builder;
mod error;
mod layer;
mod service;
#[cfg(feature = "sqlite")]
mod shutdown;

pub use builder::{Courteous, ResourceSettings};
pub use error::BuildError;
pub use layer::{CourteousLayer, CourteousService};
pub use service::{DedupeSwitch, ResourceDefaults};
