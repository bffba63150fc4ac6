//! The two small services the builder adds around the stock layers, so that settings given per
//! resource in [`Courteous::resource`](super::Courteous::resource) apply per request.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures_util::future::BoxFuture;
use tower::{Service, ServiceExt};

use crate::body::ReplayableBody;
use crate::cache::CacheMode;
use crate::context::RequestContext;
use crate::dedupe::Dedupe;
use crate::error::BoxError;
use crate::resource::Resource;

/// Sets the [`CacheMode`] configured for a request's resource on requests that carry none.
///
/// Sits between [`ContextLayer`](crate::ContextLayer), which resolves the resource, and the
/// cache. A request's own `CacheMode` extension wins. Built by
/// [`CourteousLayer`](super::CourteousLayer).
#[derive(Clone)]
pub struct ResourceDefaults<S> {
    pub(super) inner: S,
    pub(super) cache_modes: Arc<HashMap<Resource, CacheMode>>,
    /// Keeps the store the builder opened open while this service lives.
    #[cfg(feature = "sqlite")]
    pub(super) _closes: Option<Arc<super::shutdown::ClosesOnDrop>>,
}

impl<S: fmt::Debug> fmt::Debug for ResourceDefaults<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceDefaults")
            .field("inner", &self.inner)
            .field("cache_modes", &self.cache_modes)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<http::Request<B>> for ResourceDefaults<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !self.cache_modes.is_empty() && request.extensions().get::<CacheMode>().is_none() {
            let mode = RequestContext::of(&request)
                .and_then(|context| self.cache_modes.get(context.resource()))
                .copied();
            if let Some(mode) = mode {
                request.extensions_mut().insert(mode);
            }
        }
        self.inner.call(request)
    }
}

/// Sends each request through the dedupe layer, or around it for the resources configured with
/// `dedupe(false)`.
///
/// Both paths end in the same inner service (the rate limiter), so its state is shared.
/// Readiness is driven inside the response future, on a clone of the path taken (`oneshot`),
/// as the cache and dedupe layers do. Built by [`CourteousLayer`](super::CourteousLayer).
#[derive(Clone)]
pub struct DedupeSwitch<S> {
    pub(super) dedupe: Dedupe<S>,
    pub(super) plain: S,
    pub(super) skip: Arc<HashSet<Resource>>,
}

impl<S: fmt::Debug> fmt::Debug for DedupeSwitch<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupeSwitch")
            .field("dedupe", &self.dedupe)
            .field("skip", &self.skip)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<http::Request<B>> for DedupeSwitch<S>
where
    S: Service<http::Request<B>, Response = http::Response<reqwest::Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: ReplayableBody + Send + 'static,
{
    type Response = http::Response<reqwest::Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let around = !self.skip.is_empty()
            && RequestContext::of(&request)
                .is_some_and(|context| self.skip.contains(context.resource()));
        if around {
            let plain = self.plain.clone();
            Box::pin(async move { plain.oneshot(request).await.map_err(Into::into) })
        } else {
            Box::pin(self.dedupe.clone().oneshot(request))
        }
    }
}
