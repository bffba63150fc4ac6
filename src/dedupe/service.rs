//! The service glue: [`Dedupe`] keys a request, sends it to a local flight ([`super::flight`])
//! or straight through, and invalidates the results an unsafe request changed.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use crate::body::ReplayableBody;
use crate::context::{Priority, Report, RequestContext};
use crate::error::BoxError;
use crate::key::{DefaultKeyExtractor, KeyExtractor, RequestKey};

use super::flight::{State, run};
use super::future::ResponseFuture;
use super::layer::Config;
use super::store::{DedupeStore, url_of};
use super::{BypassReason, DedupeRole};

/// What every service of the stack answers with.
pub(super) type Response = http::Response<reqwest::Body>;

/// The service made by [`DedupeLayer`](super::DedupeLayer).
///
/// `poll_ready` is always ready: only a request that turns out to lead (or to make its own call)
/// calls the inner service, and it drives the inner service's readiness inside its future
/// (`ServiceExt::oneshot` on a clone), so followers never reserve upstream capacity.
pub struct Dedupe<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
    pub(crate) state: Arc<State>,
}

impl<S: Clone> Clone for Dedupe<S> {
    fn clone(&self) -> Self {
        Dedupe {
            inner: self.inner.clone(),
            config: self.config.clone(),
            state: self.state.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Dedupe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedupe")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S> Dedupe<S> {
    /// The store, for [`poll`](DedupeStore::poll) and [`stats`](DedupeStore::stats).
    pub fn store(&self) -> &Arc<dyn DedupeStore> {
        &self.state.store
    }
}

impl<S, B> Service<http::Request<B>> for Dedupe<S>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: ReplayableBody + Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // An unsafe request changes the resource: once it succeeded, no result from before it
        // may serve a request made after it.
        let invalidates = if safe(request.method()) {
            None
        } else {
            invalidated_path(&mut request)
        };
        let key = if self.config.methods.contains(request.method()) {
            let context = RequestContext::resolve(&mut request);
            context.key().map(|key| class_key(key, context.priority()))
        } else {
            None
        };
        let call: ResponseFuture = ResponseFuture {
            inner: match key {
                // One budget of store time for the request, shared with the layers around it.
                Some(key) => Box::pin(
                    crate::store::budget::StoreBudget::of(request.extensions_mut()).scope(run(
                        self.config.clone(),
                        self.state.clone(),
                        inner,
                        request,
                        key,
                    )),
                ),
                None => Box::pin(async move { inner.oneshot(request).await.map_err(Into::into) }),
            },
        };
        let Some(path) = invalidates else {
            return call;
        };
        let state = self.state.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let response = call.await?;
                let status = response.status();
                if status.is_success() || status.is_redirection() {
                    state.invalidate(&path).await;
                }
                Ok(response)
            }),
        }
    }
}

/// Whether `method` is safe (RFC 9110): it changes nothing upstream, so it invalidates nothing.
fn safe(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

/// The URL (scheme, host and path, secret parameters masked) whose dedupe results an unsafe
/// request invalidates when it succeeds: from the request's key, as the cache layer does, or,
/// for a streaming body (no key), from the stock key of the request without its body.
fn invalidated_path<B: ReplayableBody>(request: &mut http::Request<B>) -> Option<String> {
    let key = match RequestContext::resolve(request).key() {
        Some(key) => key.clone(),
        None => {
            let mut parts = http::Request::new(()).into_parts().0;
            parts.method = request.method().clone();
            parts.uri = request.uri().clone();
            DefaultKeyExtractor::new().key(&parts, Some(b""))?
        }
    };
    let url = url_of(&key);
    Some(url.split_once('?').map_or(url, |(path, _)| path).to_owned())
}

/// The key a request coalesces under: its request key and its priority class.
///
/// `User` and `Background` requests never share a flight. A `User` request that followed a
/// `Background` leader would wait as long as that leader waits for the rate limiter below (which
/// serves user requests first): the background request may wait minutes for its share, or be
/// refused, while the user reserve is free. Keying by class holds in every process without any
/// store knowing about priorities; it costs at most one more upstream call per key when both
/// classes ask for it at the same moment.
///
/// `User` requests keep the request key itself (no second hash on their path); `Background`
/// ones get a key derived from it, which no request key can equal short of a SHA-256 collision.
pub(super) fn class_key(key: &RequestKey, priority: Priority) -> RequestKey {
    use sha2::{Digest, Sha256};
    if priority == Priority::User {
        return key.clone();
    }
    let mut hash = Sha256::new();
    hash.update(b"courteous-dedupe-class-v1\0");
    hash.update(key.as_bytes());
    hash.update(priority.as_str().as_bytes());
    RequestKey::from_parts(hash.finalize().into(), key.display())
}

/// Sends `request` upstream on its own, for the reason `reason`.
pub(super) async fn own_request<S, B>(
    inner: S,
    request: http::Request<B>,
    reason: BypassReason,
) -> Result<Response, BoxError>
where
    S: Service<http::Request<B>, Response = Response>,
    S::Error: Into<BoxError>,
{
    let mut response = inner.oneshot(request).await.map_err(Into::into)?;
    Report::record(response.extensions_mut()).dedupe = Some(DedupeRole::Bypassed(reason));
    Ok(response)
}
