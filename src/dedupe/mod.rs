//! One upstream call for identical concurrent requests, in one process and across processes.
//!
//! [`DedupeLayer`] keys each request with its [`RequestKey`](crate::RequestKey) (method, URL,
//! the headers that change the answer, so `Authorization` separates users). The first request for
//! a key *leads*: it goes upstream. Identical requests that arrive while it is in flight *follow*:
//! they wait and receive the leader's status, headers and body, buffered once as [`Bytes`] and
//! shared. [`Report::dedupe`](crate::Report::dedupe) says which [`DedupeRole`] a response had.
//!
//! * **Which requests**: `GET` and `HEAD` by default ([`DedupeLayer::methods`]). Requests without a
//!   key (streaming bodies) and other methods pass through untouched.
//! * **In one process** followers wait on an in-process channel: no store round trip, no copy of
//!   the body.
//! * **Across processes** the local leader registers with a [`DedupeStore`]. Taking the lead is
//!   one atomic step (insert, or take over an expired lease), so two processes can never both lead
//!   a key. The leader renews its lease while it runs and publishes its result; followers in other
//!   processes poll for it with a 1–8 ms backoff. A result is kept only
//!   [`result_ttl`](DedupeLayer::result_ttl) (3 s by default, at least 1 s) for late followers:
//!   dedupe is never a second cache.
//! * **Only upstream outcomes are shared**: a response, or an error after the request left
//!   (a timeout waiting for the answer, a connection reset, a status marked with
//!   [`DedupeLayer::fail_on`]), reaches every follower, the error as a cloneable [`DedupeError`].
//!   A leader refused *before* sending (by the rate limiter, including a request that waited
//!   its whole `MaxWait` in its queue; a rate-limit store failing closed; a connection that
//!   could not be made; see [`was_sent`](crate::error::was_sent)) gets its own error back
//!   unchanged, and shares nothing: it releases its lease and its followers start again, the
//!   first of them leading with its own priority and `MaxWait`, the others following it, in
//!   this process and in others.
//! * **Unsafe requests invalidate**: a request with any method but `GET`, `HEAD`, `OPTIONS`
//!   and `TRACE` that succeeds (2xx or 3xx) discards the leases and results the store holds for
//!   its URL (scheme, host and path, any query), in every process, as the cache layer discards
//!   its entries; leaders in flight for that URL stop taking followers (the requests already
//!   waiting still get their answer). A request made after the change never receives a result
//!   from before it.
//! * **Handing over**: a leader that is dropped (cancelled) or panics
//!   hands over: one follower takes the lead and the others follow it; its lease in the store is
//!   released, even when it was cancelled while the store was still granting it. A process that
//!   dies holding a lease loses it after [`lease_timeout`](DedupeLayer::lease_timeout) and a
//!   follower takes over. A follower waits at most
//!   [`follower_timeout`](DedupeLayer::follower_timeout) from its own arrival, then makes its own
//!   request or fails ([`OnTimeout`]); with `OnTimeout::Fail`, a local leader that waited in vain
//!   for another process fails alone, and its followers wait until their own deadlines. Nobody
//!   hangs.
//! * **Stores**: [`MemoryDedupeStore`] for one process; `SqliteDedupeStore` (from
//!   `SqliteStore::dedupe()`) for every process that opens one file; `RedisDedupeStore` (from
//!   `RedisStore::dedupe()`, feature `redis`) for every process on every machine sharing a Redis
//!   server, with followers woken by pub/sub.
//!
//! # What lives where
//!
//! * `layer.rs`: [`DedupeLayer`], its settings, [`OnTimeout`], and [`DedupeStats`] with the
//!   layer's counters. `service.rs`: the [`Dedupe`]
//!   service, the glue (keying, pass-through, invalidation after an unsafe request).
//! * `flight.rs`: local flights, the in-process leader of a key and its followers.
//! * `lease.rs`: store leases, leading a key across processes (claim, renew, publish, poll).
//! * `share.rs`: body sharing, the leader's upstream call whose buffered outcome its followers
//!   receive, with the `Vary` check. The buffering itself is the crate's (`src/body.rs`).
//! * [`future`]: the response future. [`store`]: [`DedupeStore`] and its backends.
//! * Here: the types callers see ([`DedupeRole`], [`SharedResponse`], [`DedupeError`]).
//!
//! # Note on bodies
//!
//! The leader's body is read to the end before anyone gets the response (the leader too), up to
//! [`max_body`](DedupeLayer::max_body) (1 MiB by default). A larger body streams to the leader
//! unbuffered, and its followers make their own requests: memory stays bounded. Responses are
//! `http::Response<reqwest::Body>`, as [`HttpClient`](crate::HttpClient) returns them.
//!
//! # Note on priority
//!
//! Requests coalesce under their key *and their [`Priority`](crate::Priority) class*
//! ([`store_key`]): a `User` request never follows a `Background` leader, nor the reverse.
//! The rate limiter below serves user requests first (a reserve of the limit is theirs): a
//! background leader may wait minutes in its queue, or be refused, while a user request for the
//! same URL would go out at once. We chose keying by class over letting a user request take
//! the lead from a queued background one because it holds in every process without the store
//! knowing priorities or queue states, and it is simple to reason about; it costs at most one
//! more upstream call per key when both classes ask for it at the same moment.
//!
//! # Note on `result_ttl`
//!
//! A result is kept for late followers: a request for the key that reaches the store within
//! `result_ttl` of the leader's completion gets it ([`DedupeRole::CrossProcessFollower`]), in this
//! process too. It is kept at least 1 s whatever `result_ttl` says (`Duration::ZERO` included), so
//! that followers already waiting in other processes (they read the store every few
//! milliseconds) find it rather than a vacant key they would lead again. An unsafe request to
//! the URL that succeeds discards it at once. Use the cache layer for anything longer.
//!
//! # Note on errors
//!
//! A leader refused before sending returns its refusal as it is
//! ([`RateLimited`](crate::RateLimited), say: `error.downcast_ref::<RateLimited>()` finds it)
//! and shares nothing. A failure after sending is shared: the leader and its followers all get
//! a [`DedupeError::Upstream`], whose [`source`](std::error::Error::source) (and
//! [`upstream`](DedupeError::upstream)) is the original error (a `reqwest::Error`, say), so
//! [`courteous::error::find`](crate::error::find) finds it. Followers in other processes get
//! the message only ([`DedupeError::RemoteUpstream`]). A failure (an error, or a status marked with
//! [`fail_on`](DedupeLayer::fail_on)) is kept for 1 s only, whatever `result_ttl` says: long
//! enough for the followers already waiting in other processes, after which a new request goes
//! upstream again instead of receiving an old error.
//!
//! # Example
//!
//! ```
//! use courteous::dedupe::{DedupeLayer, DedupeRole, MemoryDedupeStore};
//! use courteous::Report;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let upstream = {
//!     let calls = calls.clone();
//!     service_fn(move |_req: http::Request<reqwest::Body>| {
//!         calls.fetch_add(1, Ordering::SeqCst);
//!         async {
//!             tokio::time::sleep(Duration::from_millis(50)).await;
//!             Ok::<_, courteous::BoxError>(http::Response::new(reqwest::Body::from("hello")))
//!         }
//!     })
//! };
//! let client = ServiceBuilder::new()
//!     .layer(DedupeLayer::new(MemoryDedupeStore::new()))
//!     .service(upstream);
//!
//! let get = || http::Request::get("http://api.test/x").body(reqwest::Body::from("")).unwrap();
//! let (a, b) = tokio::join!(client.clone().oneshot(get()), client.clone().oneshot(get()));
//! let (a, b) = (a.unwrap(), b.unwrap());
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! assert_eq!(Report::of(&a).unwrap().dedupe, Some(DedupeRole::Leader));
//! assert_eq!(Report::of(&b).unwrap().dedupe, Some(DedupeRole::Follower));
//! # }
//! ```

mod flight;
pub mod future;
mod layer;
mod lease;
mod service;
mod share;
pub mod store;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Extensions, HeaderMap, StatusCode, Version};

use crate::context::Report;
use crate::error::BoxError;

pub use layer::{DedupeLayer, DedupeStats, OnTimeout};
pub use service::Dedupe;
#[cfg(feature = "redis")]
pub use store::RedisDedupeStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteDedupeStore;
pub use store::{Completion, DedupeStore, DedupeStoreStats, KeyState, Lead, MemoryDedupeStore};

/// The key under which a [`DedupeLayer`] coalesces `request` and registers it in its
/// [`DedupeStore`]: the request's [`RequestKey`](crate::RequestKey) for `User` requests, a key
/// derived from it for `Background` ones, so that the two [`Priority`](crate::Priority) classes
/// never share (see "Note on priority" in the [module docs](self)).
/// `None` for a request without a key (a streaming body). For [`DedupeStore::poll`].
///
/// # Example
///
/// ```
/// use courteous::dedupe::store_key;
/// use courteous::{Priority, RequestContext};
///
/// let request = |priority| {
///     let mut r = http::Request::get("http://h/x").body(reqwest::Body::from("")).unwrap();
///     r.extensions_mut().insert(priority);
///     r
/// };
/// let user = store_key(&mut request(Priority::User)).unwrap();
/// let background = store_key(&mut request(Priority::Background)).unwrap();
/// assert_ne!(user, background);
/// assert_eq!(user.display(), "GET http://h/x");
/// // A user request is registered under its request key itself.
/// let mut plain = request(Priority::User);
/// assert_eq!(&user, RequestContext::resolve(&mut plain).key().unwrap());
/// ```
pub fn store_key<B: crate::ReplayableBody>(
    request: &mut http::Request<B>,
) -> Option<crate::RequestKey> {
    let context = crate::RequestContext::resolve(request);
    context
        .key()
        .map(|key| service::class_key(key, context.priority()))
}

/// What the dedupe layer did with a request, in [`Report::dedupe`].
///
/// # Example
///
/// ```
/// use courteous::dedupe::DedupeRole;
///
/// assert!(DedupeRole::CrossProcessFollower.is_follower());
/// assert!(!DedupeRole::Leader.is_follower());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DedupeRole {
    /// It went upstream for its key (first, or taking over from a cancelled or dead leader).
    Leader,
    /// It received the response of a leader in this process.
    Follower,
    /// It received the response a leader in another process (or another layer over the same
    /// store) published.
    CrossProcessFollower,
    /// It could not be coalesced and made its own request.
    Bypassed(BypassReason),
}

impl DedupeRole {
    /// Whether the response came from someone else's upstream call.
    pub fn is_follower(self) -> bool {
        matches!(
            self,
            DedupeRole::Follower | DedupeRole::CrossProcessFollower
        )
    }
}

/// Why a request made its own call although a leader existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BypassReason {
    /// The leader's body was larger than the dedupe limit.
    TooLarge,
    /// The follower waited longer than the follower timeout.
    TimedOut,
    /// The store failed; the request went on without it.
    StoreFailed,
    /// The leader's response varies (`Vary`) on request headers whose values differ in this
    /// request (or on `*`): it belongs to the leader's request only.
    Varies,
    /// The leader's response says `Cache-Control: no-store`: it is handed to nobody else and
    /// never written to the store (RFC 9111 §5.2.2.5).
    NoStore,
}

/// A leader's response as its followers receive it: status, headers and body, buffered once.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SharedResponse {
    /// The status.
    pub status: StatusCode,
    /// The HTTP version.
    pub version: Version,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The leader's response extensions (reports of the layers below, the final URL); empty for
    /// a response published by another process.
    pub extensions: Extensions,
}

impl SharedResponse {
    /// A response with these parts and no extensions.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        SharedResponse {
            status,
            version: Version::HTTP_11,
            headers,
            body,
            extensions: Extensions::new(),
        }
    }

    /// A fresh `http::Response` with these parts, its report saying `role`.
    pub fn to_response(&self, role: DedupeRole) -> http::Response<reqwest::Body> {
        let mut response = http::Response::new(reqwest::Body::from(self.body.clone()));
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers.clone();
        response.headers_mut().remove(share::VARY_DIGEST);
        *response.extensions_mut() = self.extensions.clone();
        Report::record(response.extensions_mut()).dedupe = Some(role);
        response
    }
}

/// A leader's error, shared by every caller waiting for it.
///
/// # Example
///
/// ```
/// use courteous::dedupe::SharedError;
///
/// let err = SharedError::new("connection reset".into());
/// let copy = err.clone();
/// assert_eq!(copy.to_string(), "connection reset");
/// assert!(copy.get_ref().downcast_ref::<std::io::Error>().is_none());
/// ```
#[derive(Clone)]
pub struct SharedError(Arc<BoxError>);

impl SharedError {
    /// Shares `error`.
    pub fn new(error: BoxError) -> Self {
        SharedError(Arc::new(error))
    }

    /// The original error, to downcast.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &**self.0
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Why a deduplicated request failed. Cloneable: one failure reaches every follower.
///
/// Its [`source`](std::error::Error::source) is the leader's original error for
/// [`Upstream`](DedupeError::Upstream) (a `reqwest::Error`, say), so
/// [`courteous::error::find`](crate::error::find) finds that through it.
///
/// # Example
///
/// ```
/// use courteous::dedupe::DedupeError;
///
/// let err = DedupeError::FailureStatus { status: http::StatusCode::BAD_GATEWAY };
/// assert_eq!(err.code(), "dedupe_failure_status");
/// assert!(err.to_string().contains("502"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DedupeError {
    /// The leading request failed in this process, after it was sent.
    Upstream(SharedError),
    /// The leading request failed in another process; only its message crossed over.
    RemoteUpstream {
        /// The leader's error message.
        message: Arc<str>,
    },
    /// The leader's response had a status the layer was told to treat as failure
    /// ([`DedupeLayer::fail_on`]); the leader itself gets the response.
    FailureStatus {
        /// The leader's status.
        status: StatusCode,
    },
    /// The follower waited longer than its timeout and [`OnTimeout::Fail`] is set.
    TimedOut {
        /// How long it waited.
        waited: Duration,
    },
}

impl fmt::Display for DedupeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DedupeError::Upstream(error) => {
                write!(f, "the leading request for this key failed: {error}")
            }
            DedupeError::RemoteUpstream { message } => write!(
                f,
                "the leading request for this key failed in another process: {message}"
            ),
            DedupeError::FailureStatus { status } => write!(
                f,
                "the leading request for this key answered {status}, which this dedupe layer treats as a failure"
            ),
            DedupeError::TimedOut { waited } => write!(
                f,
                "waited {waited:?} for the leading request for this key; raise follower_timeout or use OnTimeout::OwnRequest"
            ),
        }
    }
}

impl std::error::Error for DedupeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // The original error itself, not the `SharedError` around it (whose own `source`
            // is the original's source): walking the chain meets the original's type.
            DedupeError::Upstream(shared) => Some(shared.get_ref()),
            _ => None,
        }
    }
}

impl DedupeError {
    /// A short, stable code for logs.
    pub const fn code(&self) -> &'static str {
        match self {
            DedupeError::Upstream(_) => "dedupe_upstream",
            DedupeError::RemoteUpstream { .. } => "dedupe_remote_upstream",
            DedupeError::FailureStatus { .. } => "dedupe_failure_status",
            DedupeError::TimedOut { .. } => "dedupe_timed_out",
        }
    }

    /// The leader's original error, when it failed in this process.
    pub fn upstream(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            DedupeError::Upstream(shared) => Some(shared.get_ref()),
            _ => None,
        }
    }

    /// Whether the follower timed out.
    pub fn is_timed_out(&self) -> bool {
        matches!(self, DedupeError::TimedOut { .. })
    }
}
