//! Request bodies whose bytes can be read without consuming them.

use bytes::Bytes;

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
