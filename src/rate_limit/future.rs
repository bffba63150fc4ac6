//! The response future of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::BoxError;

type Inner<ResB> = Pin<Box<dyn Future<Output = Result<http::Response<ResB>, BoxError>> + Send>>;

/// Waits for an admission, then for the inner service's response.
///
/// Dropping it while it waits records nothing: the admission is taken in one atomic step just
/// before the request goes out. Dropping it while the request is in flight settles the admission
/// at that moment (in the background, on the current tokio runtime), as if the response had
/// arrived.
pub struct ResponseFuture<ResB> {
    inner: Inner<ResB>,
}

impl<ResB> ResponseFuture<ResB> {
    pub(crate) fn new(inner: Inner<ResB>) -> Self {
        ResponseFuture { inner }
    }
}

impl<ResB> fmt::Debug for ResponseFuture<ResB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<ResB> Future for ResponseFuture<ResB> {
    type Output = Result<http::Response<ResB>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
