//! Buffering a response body up to a limit, and giving the rest back as a stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::error::BoxError;

/// What reading a body up to a limit gave.
pub(crate) enum Buffered {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// The body is larger than the limit (or failed): what was read, then the rest, as a body
    /// that streams. At most `limit` bytes (plus one chunk) were held.
    Streaming(reqwest::Body),
}

/// Reads `body` until it ends or more than `limit` bytes arrived.
pub(crate) async fn buffer(mut body: reqwest::Body, limit: usize) -> Buffered {
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => return Buffered::Complete(concat(chunks, len)),
            Some(Ok(frame)) => {
                // Trailers of a buffered body are not kept.
                if let Ok(data) = frame.into_data() {
                    len += data.len();
                    chunks.push_back(data);
                    if len > limit {
                        return Buffered::Streaming(reqwest::Body::wrap(Prefixed {
                            prefix: chunks,
                            rest: Some(body),
                            error: None,
                        }));
                    }
                }
            }
            Some(Err(error)) => {
                return Buffered::Streaming(reqwest::Body::wrap(Prefixed {
                    prefix: chunks,
                    rest: None,
                    error: Some(error.into()),
                }));
            }
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

/// Chunks already read, then the rest of the body (or the error that stopped it).
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
        let mut hint = SizeHint::new();
        hint.set_lower(prefix + rest.lower());
        if let Some(upper) = rest.upper() {
            hint.set_upper(prefix + upper);
        }
        hint
    }
}
