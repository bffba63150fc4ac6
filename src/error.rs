//! Errors at the tower boundary, and how to find a typed error in them.
//!
//! Layers return [`BoxError`], as tower's own middleware does, so that errors of the transport and
//! of every layer can travel through one stack. Each layer's own error type is public:
//!
//! | error | from | means |
//! |---|---|---|
//! | [`RateLimited`](crate::rate_limit::RateLimited) | rate limit | the limit was reached and no slot freed within the request's wait; not sent |
//! | [`RateLimitStoreFailed`](crate::rate_limit::RateLimitStoreFailed) | rate limit | its store failed and the layer fails closed; not sent |
//! | [`DedupeError`](crate::dedupe::DedupeError) | dedupe | the leader's upstream call failed (its error is the [`source`](std::error::Error::source)), or the follower timed out |
//! | [`StoreError`](crate::store::StoreError) | stores | a backend failed (usually handled inside the layers) |
//! | `reqwest::Error` | transport | the upstream call failed |
//!
//! # Finding a typed error
//!
//! A refusal is returned as it was made: the error the caller gets *is* the
//! [`RateLimited`](crate::rate_limit::RateLimited) (or other layer error), whatever layers it
//! passed on its way out, so `error.downcast_ref::<RateLimited>()` finds it. Errors that are
//! wrapped (a follower's [`DedupeError::Upstream`](crate::dedupe::DedupeError::Upstream)) keep
//! the original as their [`source`](std::error::Error::source); [`find`] walks the chain and
//! finds either.
//!
//! On the `reqwest-middleware` path ([`CourteousMiddleware`](crate::CourteousMiddleware), feature `middleware`),
//! a transport error comes back as `reqwest_middleware::Error::Reqwest`, and every other error
//! as `reqwest_middleware::Error::Middleware(anyhow::Error)` holding the typed error itself:
//! `anyhow::Error::downcast_ref::<RateLimited>()` finds it, and
//! `anyhow::Error::chain()` walks its sources.
//!
//! # Example
//!
//! ```
//! use courteous::error::find;
//! use courteous::rate_limit::{Limit, Limits, MaxWait, MemoryRateLimitStore, RateLimitLayer};
//! use courteous::{BoxError, RateLimited};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limits = Limits::new().default_limit(Limit::per_minute(1));
//! let client = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(MemoryRateLimitStore::new(), limits).unwrap())
//!     .service(service_fn(|_req: http::Request<reqwest::Body>| async {
//!         Ok::<_, BoxError>(http::Response::new(reqwest::Body::from("ok")))
//!     }));
//! let get = || {
//!     let mut request = http::Request::get("http://api.test/x").body(reqwest::Body::from("")).unwrap();
//!     request.extensions_mut().insert(MaxWait(Duration::ZERO));
//!     request
//! };
//! client.clone().oneshot(get()).await.unwrap();
//! let error: BoxError = client.oneshot(get()).await.unwrap_err();
//!
//! // The error is the refusal itself...
//! let refused = error.downcast_ref::<RateLimited>().unwrap();
//! assert!(refused.retry_after() > Duration::ZERO);
//! // ...and `find` also looks through wrappers (a dedupe follower's error, say).
//! assert!(find::<RateLimited>(&*error).is_some());
//! // The request never left this process: a dedupe layer does not share this outcome.
//! assert!(!courteous::error::was_sent(&*error));
//! # }
//! ```
//!
//! With `reqwest-middleware`:
//!
//! ```
//! # #[cfg(feature = "middleware")]
//! fn retry_after(error: &reqwest_middleware::Error) -> Option<std::time::Duration> {
//!     use courteous::RateLimited;
//!     match error {
//!         reqwest_middleware::Error::Middleware(error) => error
//!             .chain()
//!             .find_map(|e| e.downcast_ref::<RateLimited>())
//!             .map(RateLimited::retry_after),
//!         reqwest_middleware::Error::Reqwest(_) => None,
//!     }
//! }
//! ```

use std::error::Error;
use std::fmt;

/// The error type that crosses layer boundaries: any error, boxed.
///
/// # Example
///
/// ```
/// let err: courteous::BoxError = "upstream hung up".into();
/// assert_eq!(err.to_string(), "upstream hung up");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The first error of type `T` in `error`'s chain (`error` itself, then its
/// [`source`](Error::source)s).
///
/// # Example
///
/// ```
/// use courteous::dedupe::{DedupeError, SharedError};
/// use courteous::error::find;
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
/// let err = DedupeError::Upstream(SharedError::new(Box::new(io)));
/// assert_eq!(find::<std::io::Error>(&err).unwrap().kind(), std::io::ErrorKind::ConnectionReset);
/// ```
pub fn find<'a, T: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// Marks an error as a failure *before* the request left this process, so that a
/// [`DedupeLayer`](crate::dedupe::DedupeLayer) above does not share it with the requests waiting
/// for the same answer (each of them makes its own attempt instead).
///
/// The stack's own refusals need no marking: [`was_sent`] knows them. Wrap the errors of your
/// own layers below dedupe that refuse a request without sending it (a circuit breaker, a
/// local quota).
///
/// # Example
///
/// ```
/// use courteous::error::{NotSent, was_sent};
///
/// let err = NotSent::new("circuit open: upstream failing".into());
/// assert!(!was_sent(&err));
/// assert_eq!(err.to_string(), "circuit open: upstream failing");
/// ```
#[derive(Debug)]
pub struct NotSent(BoxError);

impl NotSent {
    /// Marks `error` as a failure before sending.
    pub fn new(error: BoxError) -> Self {
        NotSent(error)
    }

    /// The error.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for NotSent {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// Whether a failed request may have reached the upstream: `false` when the error says it never
/// left this process.
///
/// Not sent: a refusal of the rate limiter ([`RateLimited`](crate::rate_limit::RateLimited),
/// including a request that waited its whole `MaxWait` in the queue), a rate-limit store that
/// failed closed ([`RateLimitStoreFailed`](crate::rate_limit::RateLimitStoreFailed)), a request
/// reqwest could not build or connect for (`reqwest::Error::is_builder`, `is_connect`), a request
/// the `reqwest-middleware` hand-off could not pass on ([`HandoffError`](crate::HandoffError)),
/// and any error marked [`NotSent`], anywhere in the [`source`](Error::source) chain. Anything
/// else counts as sent (the upstream may have received the request): a timeout waiting for the
/// response, a connection reset, a body that broke off.
///
/// # Example
///
/// ```
/// use courteous::error::was_sent;
/// use courteous::rate_limit::RateLimited;
/// use courteous::Resource;
/// use std::time::Duration;
///
/// let refused = RateLimited::new(Resource::new("search").unwrap(), Duration::from_secs(1));
/// assert!(!was_sent(&refused));
/// assert!(was_sent(&std::io::Error::from(std::io::ErrorKind::TimedOut)));
/// ```
pub fn was_sent(error: &(dyn Error + 'static)) -> bool {
    use crate::rate_limit::{RateLimitStoreFailed, RateLimited};
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<RateLimited>() || error.is::<RateLimitStoreFailed>() || error.is::<NotSent>()
        {
            return false;
        }
        if let Some(error) = error.downcast_ref::<reqwest::Error>()
            && (error.is_builder() || error.is_connect())
        {
            return false;
        }
        #[cfg(feature = "middleware")]
        if error.is::<crate::HandoffError>() {
            return false;
        }
        next = error.source();
    }
    true
}

/// `error` as an `anyhow::Error` that holds the typed error itself, so that
/// `anyhow::Error::downcast_ref::<RateLimited>()` finds it (`anyhow::Error::from_boxed` would
/// hold the box, and only `downcast_ref::<BoxError>()` would). Errors of other types are held in
/// a wrapper whose source is the error, so that `anyhow::Error::chain()` meets them.
#[cfg(feature = "middleware")]
pub(crate) fn into_anyhow(error: BoxError) -> anyhow::Error {
    macro_rules! typed {
        ($error:ident, $($ty:ty),+) => {
            $(
                let $error = match $error.downcast::<$ty>() {
                    Ok(typed) => return anyhow::Error::new(*typed),
                    Err(other) => other,
                };
            )+
        };
    }
    typed!(
        error,
        crate::rate_limit::RateLimited,
        crate::rate_limit::RateLimitStoreFailed,
        crate::dedupe::DedupeError,
        crate::store::StoreError,
        crate::HandoffError,
        NotSent
    );
    anyhow::Error::new(Layered(error))
}

/// An error of a type [`into_anyhow`] does not know, shown as itself, with itself as its source.
#[cfg(feature = "middleware")]
#[derive(Debug)]
struct Layered(BoxError);

#[cfg(feature = "middleware")]
impl fmt::Display for Layered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(feature = "middleware")]
impl Error for Layered {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}
