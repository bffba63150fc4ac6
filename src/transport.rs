//! The transport adapter: a `tower::Service<http::Request<_>>` over any `reqwest::Client`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::Service;

use crate::context::RequestContext;

/// The URL a response finally came from (after redirects), kept so that the
/// `reqwest-middleware` path can hand it back on `reqwest::Response::url`.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "middleware"), allow(dead_code))]
pub(crate) struct FinalUrl(pub(crate) reqwest::Url);

/// A [`tower::Service`] that sends `http::Request`s with a `reqwest::Client`.
///
/// The request is converted to a `reqwest::Request` at the edge, keeping its extensions, and the
/// `reqwest::Response` back to an `http::Response<reqwest::Body>` whose body streams. The client is
/// always ready, so the adapter never applies back-pressure of its own; clones share the client's
/// connection pool.
///
/// Its errors are `reqwest::Error`s. Those raised before the request left (it could not be built,
/// or no connection could be made: `is_builder()`, `is_connect()`) count as not sent for
/// [`was_sent`](crate::error::was_sent), so a dedupe layer above lets each waiting request try
/// for itself; every other error may have reached the upstream and is shared.
///
/// # Example
///
/// ```
/// use courteous::{ContextLayer, HttpClient};
/// use tower::ServiceBuilder;
///
/// let client = reqwest::Client::builder()
///     .timeout(std::time::Duration::from_secs(30))
///     .build()
///     .unwrap();
/// let service = ServiceBuilder::new()
///     .layer(ContextLayer::new())
///     .service(HttpClient::new(client));
/// # let _ = service;
/// ```
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl HttpClient {
    /// Sends requests with `client`.
    pub const fn new(client: reqwest::Client) -> Self {
        HttpClient { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl<B> Service<http::Request<B>> for HttpClient
where
    B: Into<reqwest::Body>,
{
    type Response = http::Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let client = self.client.clone();
        let context = RequestContext::of(&request).cloned();
        let request = reqwest::Request::try_from(request);
        ResponseFuture {
            inner: Box::pin(async move {
                let request = request.map_err(|e| redact(e, context.as_ref()))?;
                let started = std::time::Instant::now();
                let response = client.execute(request).await.map_err(|e| {
                    crate::observe::upstream_failed(context.as_ref(), started);
                    redact(e, context.as_ref())
                })?;
                let url = FinalUrl(response.url().clone());
                let mut response = http::Response::from(response);
                response.extensions_mut().insert(url);
                crate::observe::upstream_answered(&mut response, context.as_ref(), started);
                Ok(response)
            }),
        }
    }
}

/// `error` with the secrets of its URL masked: reqwest's errors print the full URL, query
/// string and userinfo included. The request's [`KeyExtractor`](crate::KeyExtractor) says which
/// query parameters are secret ([`DEFAULT_SECRET_PARAMS`](crate::key::DEFAULT_SECRET_PARAMS)
/// without a context).
pub(crate) fn redact(
    mut error: reqwest::Error,
    context: Option<&RequestContext>,
) -> reqwest::Error {
    if let Some(url) = error.url_mut() {
        match context {
            Some(context) => context.redact_url(url),
            None => crate::key::redact_url(url, crate::key::is_default_secret_param),
        }
    }
    error
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The response future of [`HttpClient`].
pub struct ResponseFuture {
    inner: BoxFuture<Result<http::Response<reqwest::Body>, reqwest::Error>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<reqwest::Body>, reqwest::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
