//! Exact per-resource rate limits, shared by every process, with users served first.
//!
//! [`RateLimitLayer`] admits each request against the [`Limit`]s of its
//! [`Resource`](crate::Resource) before it goes out. Admission is a check and a record in one
//! atomic step of a [`RateLimitStore`] (one lock in [`MemoryRateLimitStore`], one
//! `BEGIN IMMEDIATE` transaction in [`SqliteRateLimitStore`], one Lua script in
//! `RedisRateLimitStore`, feature `redis`), so every process sharing a store sees every
//! admission:
//!
//! * **Exact sliding windows**: never more than `max` admissions in any interval of length
//!   `window`, counted across processes. A resource may have several limits at once.
//! * **Exact as the upstream counts** ([`Accounting::Exact`], the default): an admission is
//!   stamped when the store decides it and holds its slot, counted in every window, until the
//!   response head arrives (or the request fails, or its response future is dropped); then it is
//!   re-stamped at that moment, for every process. The upstream received the request in between,
//!   so no window of the upstream's own clock holds more than `max`, with no margin. A slot thus
//!   stays taken for one window plus the request's latency. An admission whose process died
//!   stops holding its slot after [`in_flight_timeout`](RateLimitLayer::in_flight_timeout).
//!   [`Accounting::OnSend`] stamps once, at the hand-off, for throughput (with a margin).
//! * **Failures count**: the admission is recorded before the request goes out, so an upstream
//!   error or a 500 spent the API's budget like any other call.
//! * **Waiting** (per layer with [`max_wait`](RateLimitLayer::max_wait), per request with the
//!   [`MaxWait`] extension): a refused request sleeps until a slot frees, asks again, and never
//!   goes out without an admission; past `max_wait` it fails with [`RateLimited`]. Waiters of one
//!   priority are served in arrival order (within a process). Dropping a waiting request records
//!   nothing.
//! * **Priorities**: [`Priority::User`](crate::Priority) requests may use all capacity that
//!   background work leaves idle; background work gets an adaptive share (see [`adaptive`]) and
//!   never the user reserve. User activity is read from the store, so one process's users hold
//!   back another's background jobs.
//! * **Server feedback**: a 429 or 503 with `Retry-After` blocks the resource in every process
//!   until then; `RateLimit-Remaining`/`-Reset` (and the `X-` forms) cap what is sent until the
//!   server's reset. No block or budget lasts longer than
//!   [`max_server_block`](RateLimitLayer::max_server_block) (one hour by default); values that
//!   are not finite, negative or unparsable are ignored with a warning, and `*-Reset` is read
//!   as epoch milliseconds, epoch seconds or delta seconds by its magnitude.
//!   [`unblock`](RateLimitLayer::unblock) lifts a server's block for every process.
//! * **Pacing** (optional, in process): a minimum spacing per host or resource, see [`Pacing`].
//!
//! The layer's error type is [`BoxError`](crate::BoxError); a refusal is a [`RateLimited`]
//! inside it. When the store fails (Redis unreachable or slow, a SQLite error) the layer fails
//! closed by default: the request is not sent and fails at once with [`RateLimitStoreFailed`];
//! [`on_store_error`](RateLimitLayer::on_store_error)`(`[`OnStoreError::FailOpen`]`)` sends it
//! uncounted instead. Requests whose bodies stream are counted like any other: they reach the
//! API too.
//!
//! # Example
//!
//! ```
//! use courteous::rate_limit::{Limit, Limits, MemoryRateLimitStore, RateLimitLayer, RateLimited};
//! use courteous::Report;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limits = Limits::new()
//!     .default_limit(Limit::per_hour(200))
//!     .resource("search", Limit::per_second(1));
//! let layer = RateLimitLayer::new(MemoryRateLimitStore::new(), limits)
//!     .unwrap()
//!     .max_wait(Duration::ZERO); // fail at once instead of waiting
//! let service = ServiceBuilder::new().layer(layer).service(service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, courteous::BoxError>(http::Response::new(String::new()))
//! }));
//!
//! let request = || http::Request::get("http://h/search/").body(String::new()).unwrap();
//! let response = service.clone().oneshot(request()).await.unwrap();
//! assert_eq!(Report::of(&response).unwrap().rate_limit.unwrap().remaining, 0);
//!
//! let err = service.oneshot(request()).await.unwrap_err();
//! let limited = err.downcast_ref::<RateLimited>().unwrap();
//! assert_eq!(limited.resource().as_str(), "search");
//! # }
//! ```
//!
//! # Statistics
//!
//! [`RateLimitLayer::stats`] answers what the layer decided and was told, per resource and in
//! this process ([`ResourceStats`]: admissions by priority, refusals, the server's blocks, store
//! failures), with what its store holds for every process sharing it ([`RateLimitStoreStats`]:
//! resources, admissions kept, in flight, blocked), read from the store at each call.
//!
//! # Layout
//!
//! `layer.rs` holds the [`RateLimitLayer`], its configuration and the admission loop;
//! `service.rs` and `future.rs` the [`RateLimit`] service and its response future; `limit.rs`
//! the limits per resource; `adaptive.rs` the user/background split; `feedback.rs` the reading of
//! a server's rate-limit headers; `pacing.rs` the minimum spacing; `stats.rs` the counters and
//! what [`RateLimitLayer::stats`] answers; `error.rs` the errors; `store/` the
//! [`RateLimitStore`] trait and its backends.
//!
//! # Note on clocks
//!
//! Admissions are stamped with the wall clock ([`SystemClock`]), which all processes on one
//! machine share, read by the store at the moment it decides (a request that waited for the store
//! is stamped when it is decided, not when it asked). Tests can use [`TokioClock`] with
//! `tokio::time::pause()`. The Redis store
//! (feature `redis`) stamps them with the Redis server's clock instead, so machines whose clocks
//! disagree still share one window.

pub mod adaptive;
mod error;
mod feedback;
pub mod future;
mod layer;
mod limit;
mod pacing;
mod service;
mod stats;
pub mod store;

pub use crate::time::{Clock, SystemClock, Timestamp, TokioClock};
pub use adaptive::{Activity, AdaptiveConfig, Split, Trend, allocate};
pub use error::{OnStoreError, RateLimitConfigError, RateLimitStoreFailed, RateLimited};
pub use layer::{Accounting, MaxWait, RateLimitLayer, RateLimitReport};
pub use limit::{InvalidLimit, Limit, Limits};
pub use pacing::{Pacing, PacingKey};
pub use service::RateLimit;
pub use stats::{RateLimitStats, RateLimitStoreStats, ResourceStats};
pub use store::memory::MemoryRateLimitStore;
#[cfg(feature = "redis")]
pub use store::redis::{RedisClock, RedisRateLimitStore};
#[cfg(feature = "sqlite")]
pub use store::sqlite::SqliteRateLimitStore;
pub use store::{
    AdmissionRequest, Decision, InFlight, LimitStatus, RateLimitStatus, RateLimitStore, Refusal,
    ServerFeedback,
};
