//! `reqwest-middleware` integration: run a tower stack inside a `ClientWithMiddleware`.
//!
//! [`CourteousMiddleware`] converts the `reqwest::Request` to an `http::Request`, moves the middleware
//! chain's extensions onto it (so `RequestBuilder::with_extension(Priority::User)` reaches every
//! layer) and runs the stack. The innermost service of that stack is [`Handoff`]: when a layer lets
//! a request go upstream, `Handoff` hands it back to the middleware chain, which continues with
//! the middlewares after this one and finally the `reqwest::Client`. Middlewares added after
//! `courteous` (retries, tracing) therefore still run, once per real upstream call, and cache
//! hits never reach them.
//!
//! A request that a layer sends on its own after the caller's request finished (a background
//! refresh) has no chain to return to; `Handoff` then fails it with [`HandoffError`], which such
//! layers treat like any transport error.
//!
//! # Note on `reqwest::ClientBuilder::default_headers`
//!
//! **The middleware cannot see the `reqwest::Client`'s default headers.** reqwest adds them
//! when the client sends, after the whole middleware chain has run, so the cache and dedupe
//! would key a request without its default `Authorization` (or `X-Api-Key`, `Cookie`...): two
//! clients with different default credentials over one store would share cache entries and
//! dedupe results. Give the same headers to [`CourteousMiddleware::default_headers`]; the middleware then
//! adds each one the request lacks, as reqwest would, before any layer runs. The same holds for
//! a reqwest cookie store: its cookies are added after the chain, so don't share one store
//! between clients whose cookie stores hold different users.

use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::Extensions;
use reqwest::ResponseBuilderExt;
use reqwest_middleware::Next;
use tokio::sync::{Notify, oneshot};
use tower::{Layer, Service, ServiceExt};

use crate::error::BoxError;
use crate::transport::FinalUrl;

type Reply = Result<http::Response<reqwest::Body>, BoxError>;

struct Call {
    request: http::Request<reqwest::Body>,
    reply: oneshot::Sender<Reply>,
}

/// Calls waiting for the middleware chain, and whether it still takes them.
///
/// A plain mutex and a `Notify` rather than an mpsc channel: the slot is made for every request,
/// and most requests (cache hits) never use it, so it must be cheap to make (one small
/// allocation; a tokio channel allocates a block of 32 slots up front).
#[derive(Default)]
struct Slot {
    calls: parking_lot::Mutex<SlotState>,
    arrived: Notify,
}

#[derive(Default)]
struct SlotState {
    calls: Vec<Call>,
    closed: bool,
}

impl Slot {
    fn state(&self) -> parking_lot::MutexGuard<'_, SlotState> {
        self.calls.lock()
    }

    /// Queues a call; `false` (and the call dropped) when the chain has finished.
    fn send(&self, call: Call) -> bool {
        let mut state = self.state();
        if state.closed {
            return false;
        }
        state.calls.push(call);
        drop(state);
        self.arrived.notify_one();
        true
    }

    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut self.state().calls)
    }
}

/// Closes the slot when the middleware's `handle` returns or is dropped: later calls fail with
/// [`HandoffError::ChainFinished`], and queued ones are answered with it (their reply is dropped).
struct CloseOnDrop(std::sync::Arc<Slot>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.0.state();
            state.closed = true;
            std::mem::take(&mut state.calls)
        };
        drop(queued);
    }
}

/// The way back to the middleware chain, carried in the request's extensions.
#[derive(Clone)]
struct HandoffSlot(std::sync::Arc<Slot>);

/// Runs a tower stack as a `reqwest_middleware::Middleware`.
///
/// Build it from the layers of the stack (a single layer or a `ServiceBuilder`); it puts
/// [`Handoff`] innermost. Cloning the stack shares its state, as every courteous layer does.
///
/// **If the `reqwest::Client` has default headers, give them to
/// [`CourteousMiddleware::default_headers`] too**: reqwest adds them after the middleware chain, so
/// without it the cache and dedupe cannot tell apart requests that differ only in those headers
/// (two clients with different default `Authorization` would share responses).
///
/// # Example
///
/// ```
/// use courteous::{ContextLayer, CourteousMiddleware, Priority};
/// use tower::ServiceBuilder;
///
/// let stack = ServiceBuilder::new().layer(ContextLayer::new().default_priority(Priority::Background));
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(CourteousMiddleware::new(stack))
///     .build();
/// # let _ = client;
/// ```
#[derive(Clone)]
pub struct CourteousMiddleware<S> {
    stack: S,
    default_headers: Option<std::sync::Arc<http::HeaderMap>>,
}

impl<S> CourteousMiddleware<S> {
    /// The middleware for the stack `layer` builds over [`Handoff`].
    pub fn new<L>(layer: L) -> Self
    where
        L: Layer<Handoff, Service = S>,
    {
        CourteousMiddleware {
            stack: layer.layer(Handoff::new()),
            default_headers: None,
        }
    }

    /// The middleware for a stack already built over [`Handoff`].
    pub fn from_service(stack: S) -> Self {
        CourteousMiddleware {
            stack,
            default_headers: None,
        }
    }

    /// The default headers of the `reqwest::Client` this middleware runs in (what was given to
    /// `reqwest::ClientBuilder::default_headers`).
    ///
    /// reqwest adds a client's default headers after the middleware chain, so the stack never
    /// sees them: requests that differ only in a default `Authorization` would share cache
    /// entries and dedupe results. With this, the middleware adds each default header the
    /// request lacks before the stack runs (the first value of a name, never replacing the
    /// request's own, exactly as reqwest does), so the key covers them.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::{ContextLayer, CourteousMiddleware};
    /// use http::{HeaderMap, header::AUTHORIZATION};
    ///
    /// let mut defaults = HeaderMap::new();
    /// defaults.insert(AUTHORIZATION, "Bearer s3cret".parse().unwrap());
    /// let reqwest = reqwest::Client::builder().default_headers(defaults.clone()).build().unwrap();
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest)
    ///     .with(CourteousMiddleware::new(ContextLayer::new()).default_headers(defaults))
    ///     .build();
    /// # let _ = client;
    /// ```
    #[must_use]
    pub fn default_headers(mut self, headers: http::HeaderMap) -> Self {
        self.default_headers = (!headers.is_empty()).then(|| std::sync::Arc::new(headers));
        self
    }

    /// The stack, for its handles (stores, statistics).
    pub fn stack(&self) -> &S {
        &self.stack
    }
}

impl<S> fmt::Debug for CourteousMiddleware<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CourteousMiddleware")
            .finish_non_exhaustive()
    }
}

fn into_middleware_error(error: BoxError) -> reqwest_middleware::Error {
    match error.downcast::<reqwest::Error>() {
        Ok(error) => reqwest_middleware::Error::Reqwest(*error),
        Err(error) => reqwest_middleware::Error::Middleware(crate::error::into_anyhow(error)),
    }
}

fn into_reqwest_response(
    response: http::Response<reqwest::Body>,
    request_url: reqwest::Url,
) -> reqwest::Response {
    let (mut parts, body) = response.into_parts();
    let url = parts
        .extensions
        .remove::<FinalUrl>()
        .map_or(request_url, |FinalUrl(url)| url);
    // reqwest reads the URL from an extension only its response builder can make; the
    // response's own extensions go on top, as they did when the builder made the response.
    let mut extensions = http::Extensions::new();
    if let Some(with_url) = http::Response::builder().url(url).extensions_mut() {
        extensions = std::mem::take(with_url);
    }
    extensions.extend(std::mem::take(&mut parts.extensions));
    parts.extensions = extensions;
    reqwest::Response::from(http::Response::from_parts(parts, body))
}

async fn serve(call: Call, next: Next<'_>) {
    let Call { request, reply } = call;
    let (mut parts, body) = request.into_parts();
    let mut extensions = std::mem::take(&mut parts.extensions);
    let context = extensions.get::<crate::RequestContext>().cloned();
    let started = std::time::Instant::now();
    let result = match reqwest::Request::try_from(http::Request::from_parts(parts, body)) {
        Ok(request) => match next.run(request, &mut extensions).await {
            Ok(response) => {
                let url = FinalUrl(response.url().clone());
                let mut response = http::Response::from(response);
                response.extensions_mut().insert(url);
                crate::observe::upstream_answered(&mut response, context.as_ref(), started);
                Ok(response)
            }
            // Its URL masked (issue 12 item 7).
            Err(reqwest_middleware::Error::Reqwest(error)) => {
                crate::observe::upstream_failed(context.as_ref(), started);
                Err(crate::transport::redact(error, context.as_ref()).into())
            }
            Err(reqwest_middleware::Error::Middleware(error)) => Err(error.into()),
        },
        Err(error) => Err(error.into()),
    };
    // The stack may have given up on this call (a timeout): nobody to tell then.
    let _ = reply.send(result);
}

#[async_trait::async_trait]
impl<S> reqwest_middleware::Middleware for CourteousMiddleware<S>
where
    S: Service<http::Request<reqwest::Body>, Response = http::Response<reqwest::Body>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let url = request.url().clone();
        let mut request = http::Request::<reqwest::Body>::try_from(request)?;
        if let Some(defaults) = &self.default_headers {
            crate::context::add_default_headers(defaults, request.headers_mut());
        }
        request.extensions_mut().extend(extensions.clone());
        let slot = std::sync::Arc::new(Slot::default());
        let _close = CloseOnDrop(slot.clone());
        request.extensions_mut().insert(HandoffSlot(slot.clone()));

        let mut response = pin!(self.stack.clone().oneshot(request));
        let mut upstream = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                result = &mut response => {
                    return result
                        .map(|response| into_reqwest_response(response, url))
                        .map_err(|error| into_middleware_error(error.into()));
                }
                () = slot.arrived.notified() => {
                    for call in slot.take() {
                        upstream.push(serve(call, next.clone()));
                    }
                }
                Some(()) = upstream.next(), if !upstream.is_empty() => {}
            }
        }
    }
}

/// Why [`Handoff`] could not send a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// The request did not come through [`CourteousMiddleware`]: `Handoff` has nowhere to send it.
    #[error(
        "courteous::Handoff only sends requests that came through courteous::CourteousMiddleware"
    )]
    NotInMiddleware,
    /// The request that carried the middleware chain finished before this call was made (for
    /// example a background refresh after the response was returned).
    #[error("the reqwest-middleware chain of this request has finished; the call was not sent")]
    ChainFinished,
}

impl HandoffError {
    /// A short, stable code for logs.
    pub const fn code(&self) -> &'static str {
        match self {
            HandoffError::NotInMiddleware => "handoff_not_in_middleware",
            HandoffError::ChainFinished => "handoff_chain_finished",
        }
    }
}

/// The innermost service of a [`CourteousMiddleware`] stack: hands requests back to the
/// `reqwest-middleware` chain.
///
/// # Example
///
/// ```
/// use courteous::{ContextLayer, Handoff, CourteousMiddleware};
/// use tower::Layer;
///
/// let stack = ContextLayer::new().layer(Handoff::new());
/// let middleware = CourteousMiddleware::from_service(stack);
/// # let _ = middleware;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Handoff {
    _private: (),
}

impl Handoff {
    /// The hand-off service.
    pub const fn new() -> Self {
        Handoff { _private: () }
    }
}

impl Service<http::Request<reqwest::Body>> for Handoff {
    type Response = http::Response<reqwest::Body>;
    type Error = BoxError;
    type Future = HandoffFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<reqwest::Body>) -> Self::Future {
        let state = match request.extensions_mut().remove::<HandoffSlot>() {
            None => HandoffState::Failed(Some(HandoffError::NotInMiddleware)),
            Some(HandoffSlot(slot)) => {
                let (reply, response) = oneshot::channel();
                if slot.send(Call { request, reply }) {
                    HandoffState::Waiting(response)
                } else {
                    HandoffState::Failed(Some(HandoffError::ChainFinished))
                }
            }
        };
        HandoffFuture { state }
    }
}

enum HandoffState {
    Waiting(oneshot::Receiver<Reply>),
    Failed(Option<HandoffError>),
}

/// The response future of [`Handoff`].
pub struct HandoffFuture {
    state: HandoffState,
}

impl fmt::Debug for HandoffFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoffFuture").finish_non_exhaustive()
    }
}

impl Future for HandoffFuture {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            HandoffState::Waiting(response) => Pin::new(response)
                .poll(cx)
                .map(|reply| reply.unwrap_or_else(|_| Err(HandoffError::ChainFinished.into()))),
            HandoffState::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or(HandoffError::ChainFinished)
                .into())),
        }
    }
}
