//! The response future of [`Dedupe`](super::Dedupe).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::BoxError;

pub(crate) type BoxedResponse =
    Pin<Box<dyn Future<Output = Result<http::Response<reqwest::Body>, BoxError>> + Send>>;

/// The response future of [`Dedupe`](super::Dedupe): a leader's upstream call, a follower's wait,
/// or a request passing through.
///
/// Dropping it is safe at any point: a dropped leader hands its key to one of its followers and
/// gives up its lease in the store.
pub struct ResponseFuture {
    pub(crate) inner: BoxedResponse,
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
