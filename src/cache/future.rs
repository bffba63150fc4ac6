//! The response future of [`Cache`](super::Cache).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::BoxError;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The response future of [`Cache`](super::Cache).
///
/// The cache's work is a sequence of awaits (store lookup, the inner call, body buffering, the
/// store write), so the future is one boxed `async` block rather than a hand-written state
/// machine generic over the inner future; the box is one allocation per request.
pub struct ResponseFuture {
    pub(crate) inner: BoxFuture<Result<http::Response<reqwest::Body>, BoxError>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<reqwest::Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
