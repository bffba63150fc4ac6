//! Body plumbing, in one place.
//!
//! * Requests: [`ReplayableBody`] reads a request body's bytes without consuming them (to key
//!   the request), and [`copy`] makes a second request with the same head and body, to send
//!   again (a retry, a revalidation, a background refresh).
//! * Responses: [`buffer`] and [`buffer_or_fail`] read a body up to a limit; a larger one comes
//!   back as a [`Prefixed`] body, the chunks already read followed by the rest of the stream, so
//!   that memory stays bounded and the caller still receives every byte.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::error::BoxError;

/// A request body whose bytes are known up front, so that the request can be keyed and replayed.
///
/// Streaming bodies return `None`: such requests have no [`RequestKey`](crate::RequestKey) and
/// pass through the cache and dedupe layers untouched.
///
/// # Example
///
/// ```
/// use courteous::ReplayableBody;
///
/// assert_eq!(reqwest::Body::from("abc").replayable_bytes(), Some(&b"abc"[..]));
/// assert_eq!(String::new().replayable_bytes(), Some(&b""[..]));
/// ```
pub trait ReplayableBody {
    /// The complete body, or `None` when it is a stream that can be read only once.
    fn replayable_bytes(&self) -> Option<&[u8]>;

    /// A second body with the same bytes, to send the request again; `None` for a stream.
    fn replay(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

impl ReplayableBody for reqwest::Body {
    fn replayable_bytes(&self) -> Option<&[u8]> {
        self.as_bytes()
    }

    fn replay(&self) -> Option<Self> {
        self.as_bytes()
            .map(|b| reqwest::Body::from(Bytes::copy_from_slice(b)))
    }
}

impl ReplayableBody for Bytes {
    fn replayable_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }

    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayableBody for String {
    fn replayable_bytes(&self) -> Option<&[u8]> {
        Some(self.as_bytes())
    }

    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayableBody for Vec<u8> {
    fn replayable_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }

    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayableBody for &'static str {
    fn replayable_bytes(&self) -> Option<&[u8]> {
        Some(self.as_bytes())
    }

    fn replay(&self) -> Option<Self> {
        Some(*self)
    }
}

impl ReplayableBody for () {
    fn replayable_bytes(&self) -> Option<&[u8]> {
        Some(&[])
    }

    fn replay(&self) -> Option<Self> {
        Some(())
    }
}

impl ReplayableBody for http_body_util::Empty<Bytes> {
    fn replayable_bytes(&self) -> Option<&[u8]> {
        Some(&[])
    }

    fn replay(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

/// A copy of a request whose body can be replayed ([`ReplayableBody::replay`]): same method,
/// URI, version, headers and extensions. `None` for a body that can be sent only once.
pub(crate) fn copy<B: ReplayableBody>(request: &http::Request<B>) -> Option<http::Request<B>> {
    let body = request.body().replay()?;
    let mut copy = http::Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

/// What reading a body up to a limit gave.
pub(crate) enum Buffered {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// The body is larger than the limit (or, from [`buffer`], failed): what was read, then the
    /// rest, as a body that streams. At most `limit` bytes (plus one chunk) were held.
    Streaming(reqwest::Body),
}

/// Reads `body` until it ends or more than `limit` bytes arrived. A read that fails gives back
/// what was read, then the error, as a [`Buffered::Streaming`] body: the caller meets the error
/// where reading the body would have.
pub(crate) async fn buffer(body: reqwest::Body, limit: usize) -> Buffered {
    match read(body, limit).await {
        Ok(buffered) => buffered,
        Err((prefix, error)) => Buffered::Streaming(reqwest::Body::wrap(Prefixed {
            prefix,
            rest: None,
            error: Some(error),
        })),
    }
}

/// Reads `body` until it ends or more than `limit` bytes arrived, as [`buffer`] does; a read
/// that fails returns its error (what was read is dropped).
pub(crate) async fn buffer_or_fail(
    body: reqwest::Body,
    limit: usize,
) -> Result<Buffered, BoxError> {
    read(body, limit).await.map_err(|(_, error)| error)
}

/// The one reader behind [`buffer`] and [`buffer_or_fail`]. A body whose size hint already
/// says it is larger than `limit` is given back unread. On failure: the chunks read, and the
/// error.
async fn read(
    mut body: reqwest::Body,
    limit: usize,
) -> Result<Buffered, (VecDeque<Bytes>, BoxError)> {
    if body.size_hint().lower() > limit as u64 {
        return Ok(Buffered::Streaming(body));
    }
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => return Ok(Buffered::Complete(concat(chunks, len))),
            Some(Ok(frame)) => {
                // Trailers of a buffered body are not kept.
                if let Ok(data) = frame.into_data() {
                    len += data.len();
                    chunks.push_back(data);
                    if len > limit {
                        return Ok(Buffered::Streaming(reqwest::Body::wrap(Prefixed {
                            prefix: chunks,
                            rest: Some(body),
                            error: None,
                        })));
                    }
                }
            }
            Some(Err(error)) => return Err((chunks, error.into())),
        }
    }
}

fn concat(mut chunks: VecDeque<Bytes>, len: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(len);
            for chunk in chunks {
                out.extend_from_slice(&chunk);
            }
            out.freeze()
        }
    }
}

/// A prefixed body: the chunks already read, then the rest of the body (or the error that
/// stopped it).
struct Prefixed {
    prefix: VecDeque<Bytes>,
    rest: Option<reqwest::Body>,
    error: Option<BoxError>,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(error) = self.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let prefix: u64 = self.prefix.iter().map(|c| c.len() as u64).sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        // Saturating: the rest's hint is whatever its body says (`u64::MAX` for "unknown").
        let mut hint = SizeHint::new();
        hint.set_lower(prefix.saturating_add(rest.lower()));
        if let Some(upper) = rest.upper() {
            hint.set_upper(prefix.saturating_add(upper));
        }
        hint
    }
}

#[cfg(test)]
mod tests;
