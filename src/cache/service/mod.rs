//! [`Cache`]: the service made by [`CacheLayer`], and the per-request work behind it.
//!
//! The service itself is short: each call hands a [`Job`] (the layer's configuration
//! and shared state) the request, and returns its boxed future. The job's work is split by
//! concern:
//!
//! * `job.rs`: the request flow: lookup (following `Vary` indexes), serving hits, the upstream
//!   answer (stale-if-error, storing) and the store writes.
//! * `policy.rs`: RFC 9111 decisions: request and response directives, whether a stored response
//!   answers a request, whether and how long a response is stored (`http-cache-semantics`).
//! * `ttl.rs`: a request's [`CacheMode`](super::CacheMode) and forced TTL
//!   ([`CacheTtl`](super::CacheTtl)), sliding windows, and an entry's lifetime.
//! * `revalidate.rs`: conditional requests and the merge of a `304` into the stored entry.
//! * `refresh.rs`: background refreshes (`stale-while-revalidate`).
//! * `invalidate.rs`: unsafe methods and the entries they invalidate (RFC 9111 section 4.4).

use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower::Service;

use crate::body::ReplayableBody;
use crate::error::BoxError;

use super::future::ResponseFuture;
use super::layer::CacheLayer;

mod invalidate;
mod job;
mod policy;
mod refresh;
mod revalidate;
mod ttl;

pub(crate) use policy::directives;

use job::Job;

/// The service made by [`CacheLayer`]: see the [module documentation](super).
///
/// Its inner service must answer with `http::Response<reqwest::Body>` (as
/// [`HttpClient`](crate::HttpClient) and [`Handoff`](crate::Handoff) do); request bodies must be
/// replayable and buildable from [`Bytes`] (`reqwest::Body`, `Bytes`) so that a background
/// refresh can resend them.
///
/// `poll_ready` is always ready: the inner service's readiness is driven inside the response
/// future, on a clone, only when the request goes upstream, so a hit never reserves it.
#[derive(Clone)]
pub struct Cache<S> {
    inner: S,
    layer: CacheLayer,
}

impl<S> Cache<S> {
    pub(crate) fn new(inner: S, layer: CacheLayer) -> Self {
        Cache { inner, layer }
    }

    /// The layer's configuration and store handle (for [`CacheLayer::stats`]).
    pub fn layer(&self) -> &CacheLayer {
        &self.layer
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, B> Service<Request<B>> for Cache<S>
where
    S: Service<Request<B>, Response = Response<reqwest::Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: ReplayableBody + From<Bytes> + Send + 'static,
{
    type Response = Response<reqwest::Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // One budget of store time for the request, shared with the layers below.
        let budget = crate::store::budget::StoreBudget::of(request.extensions_mut());
        self.layer
            .state
            .start_cleanup(self.layer.config.cleanup_interval);
        let job = Job {
            config: self.layer.config.clone(),
            state: self.layer.state.clone(),
        };
        ResponseFuture {
            inner: Box::pin(budget.scope(job.run(self.inner.clone(), request))),
        }
    }
}
