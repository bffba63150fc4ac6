//! [`RequestKey`] and the [`KeyExtractor`] trait.

use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;
use sha2::{Digest, Sha256};

use super::canonical::Canonical;
use super::secrets::is_default_secret_param;

/// The identity of a request for caching and de-duplication: a SHA-256 hash, with a display form
/// whose secret query parameters are masked.
///
/// Two keys are equal when their hashes are; the display form is informational.
///
/// # Example
///
/// ```
/// use courteous::{DefaultKeyExtractor, KeyExtractor};
///
/// let (parts, _) = http::Request::get("http://h/x?b=2&a=1").body(()).unwrap().into_parts();
/// let key = DefaultKeyExtractor::new().key(&parts, Some(b"")).unwrap();
/// assert_eq!(key.to_hex().len(), 64);
/// assert_eq!(key.display(), "GET http://h/x?a=1&b=2");
/// ```
#[derive(Clone)]
pub struct RequestKey {
    pub(super) hash: [u8; 32],
    pub(super) display: Arc<str>,
}

impl RequestKey {
    /// The 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The hash as 64 lower-case hexadecimal digits.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        self.hash
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }

    /// The readable form: method and canonical URL, with secret query parameters masked.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The key of one variant of this request: this key together with the values of `names` in
    /// `headers` (the request headers a response's `Vary` names). `names` must be sorted, so
    /// that one `Vary` list gives one key whatever its order.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::{DefaultKeyExtractor, KeyExtractor};
    /// use http::header::ACCEPT_LANGUAGE;
    ///
    /// let (parts, _) = http::Request::get("http://h/x").body(()).unwrap().into_parts();
    /// let key = DefaultKeyExtractor::new().key(&parts, Some(b"")).unwrap();
    /// let mut fr = http::HeaderMap::new();
    /// fr.insert(ACCEPT_LANGUAGE, "fr".parse().unwrap());
    /// let mut de = http::HeaderMap::new();
    /// de.insert(ACCEPT_LANGUAGE, "de".parse().unwrap());
    /// let names = [ACCEPT_LANGUAGE];
    /// assert_ne!(key.variant(&names, &fr), key.variant(&names, &de));
    /// assert_eq!(key.variant(&names, &fr).display(), key.display());
    /// ```
    pub fn variant(&self, names: &[HeaderName], headers: &http::HeaderMap) -> RequestKey {
        let mut h = Canonical(Sha256::new());
        h.field(b"courteous-variant-key-v1");
        h.field(&self.hash);
        h.headers(names, headers);
        RequestKey {
            hash: h.0.finalize().into(),
            display: self.display.clone(),
        }
    }

    /// A key from a hash and a display form, for stores that read keys back.
    pub fn from_parts(hash: [u8; 32], display: impl Into<Arc<str>>) -> Self {
        RequestKey {
            hash,
            display: display.into(),
        }
    }
}

impl PartialEq for RequestKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
    }
}

impl Eq for RequestKey {}

impl std::hash::Hash for RequestKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.hash.hash(state);
    }
}

impl fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestKey")
            .field("hash", &&self.to_hex()[..16])
            .field("display", &self.display)
            .finish()
    }
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// Derives the [`RequestKey`] of a request.
///
/// `body` is the complete request body, or `None` when it is a stream; a request whose body cannot
/// be replayed must get no key.
///
/// # Example
///
/// ```
/// use courteous::{DefaultKeyExtractor, KeyExtractor, RequestKey};
/// use http::request::Parts;
///
/// /// Ignores a cache-busting `_` parameter.
/// struct IgnoreCacheBuster(DefaultKeyExtractor);
///
/// impl KeyExtractor for IgnoreCacheBuster {
///     fn key(&self, parts: &Parts, body: Option<&[u8]>) -> Option<RequestKey> {
///         let mut parts = parts.clone();
///         let query: String = form_urlencoded::Serializer::new(String::new())
///             .extend_pairs(
///                 form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
///                     .filter(|(k, _)| k != "_"),
///             )
///             .finish();
///         parts.uri = format!("{}?{query}", parts.uri.path()).parse().ok()?;
///         self.0.key(&parts, body)
///     }
/// }
/// # let _ = IgnoreCacheBuster(DefaultKeyExtractor::new());
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key, or `None` when the request must not be cached or merged.
    fn key(&self, parts: &Parts, body: Option<&[u8]>) -> Option<RequestKey>;

    /// Whether the query parameter `name` (percent-decoded) holds a secret: its value is masked
    /// in error messages, in what the dedupe stores publish to other processes, and in logs.
    /// The default masks [`DEFAULT_SECRET_PARAMS`](super::DEFAULT_SECRET_PARAMS) (compared case-insensitively) and every name
    /// that matches [`SECRET_PARAM_PATTERNS`](super::SECRET_PARAM_PATTERNS).
    ///
    /// ```
    /// use courteous::{DefaultKeyExtractor, KeyExtractor};
    ///
    /// let keys = DefaultKeyExtractor::new().secret_param("sig");
    /// assert!(keys.is_secret_param("SIG") && keys.is_secret_param("token"));
    /// assert!(!keys.is_secret_param("page"));
    /// ```
    fn is_secret_param(&self, name: &str) -> bool {
        is_default_secret_param(name)
    }
}

impl<K: KeyExtractor + ?Sized> KeyExtractor for Arc<K> {
    fn key(&self, parts: &Parts, body: Option<&[u8]>) -> Option<RequestKey> {
        (**self).key(parts, body)
    }

    fn is_secret_param(&self, name: &str) -> bool {
        (**self).is_secret_param(name)
    }
}
