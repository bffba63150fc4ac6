//! [`DefaultKeyExtractor`], the stock [`KeyExtractor`].

use http::HeaderName;
use http::request::Parts;
use sha2::{Digest, Sha256};

use super::canonical::{Canonical, lower, query_pairs};
use super::credentials::looks_like_credential;
use super::secrets::{DEFAULT_SECRET_PARAMS, looks_like_secret_param, redact_secrets};
use super::{KeyExtractor, RequestKey};

/// The stock [`KeyExtractor`]: see the [module documentation](crate::key) for the canonical form.
///
/// # Example
///
/// ```
/// use courteous::{DefaultKeyExtractor, KeyExtractor};
/// use http::HeaderName;
///
/// let keys = DefaultKeyExtractor::new()
///     .header(http::header::ACCEPT_LANGUAGE)
///     .key_headers([HeaderName::from_static("x-api-key")])
///     .secret_param("session");
/// let request = |api_key: &str| {
///     let request = http::Request::get("http://h/x?session=abc").header("x-api-key", api_key);
///     request.body(()).unwrap().into_parts().0
/// };
/// let alice = keys.key(&request("alice-key"), Some(b"")).unwrap();
/// let bob = keys.key(&request("bob-key"), Some(b"")).unwrap();
/// assert_ne!(alice, bob);
/// assert_eq!(alice.display(), "GET http://h/x?session=REDACTED");
///
/// // A credential-looking header the key does not cover: no key, so no sharing.
/// let (parts, _) = http::Request::get("http://h/x")
///     .header("x-auth-token", "t0k")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert!(keys.key(&parts, Some(b"")).is_none());
/// ```
#[derive(Debug, Clone)]
pub struct DefaultKeyExtractor {
    headers: Vec<HeaderName>,
    not_credentials: Vec<HeaderName>,
    secret_params: Vec<String>,
}

impl DefaultKeyExtractor {
    /// Keys on `Accept` and the standard credential headers (`Authorization`, `Cookie`,
    /// `Proxy-Authorization`), masking [`DEFAULT_SECRET_PARAMS`].
    pub fn new() -> Self {
        DefaultKeyExtractor {
            // Sorted by name.
            headers: vec![
                http::header::ACCEPT,
                http::header::AUTHORIZATION,
                http::header::COOKIE,
                http::header::PROXY_AUTHORIZATION,
            ],
            not_credentials: Vec::new(),
            secret_params: DEFAULT_SECRET_PARAMS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }

    /// Also key on this request header.
    #[must_use]
    pub fn header(mut self, name: HeaderName) -> Self {
        if !self.headers.contains(&name) {
            self.headers.push(name);
            // Kept sorted so that keying a request needs no sort.
            self.headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        }
        self
    }

    /// Key on exactly these request headers (replacing the defaults).
    ///
    /// A credential-looking header left out (`Authorization` included) makes the requests that
    /// carry it bypass the cache and dedupe: see [`CREDENTIAL_HEADER_PATTERNS`](super::CREDENTIAL_HEADER_PATTERNS).
    #[must_use]
    pub fn headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.headers = Vec::new();
        for name in names {
            self = self.header(name);
        }
        self
    }

    /// Also key on these API-specific credential headers (`X-Api-Key` and the like), so that
    /// requests carrying them are cached and merged per credential instead of bypassing.
    ///
    /// Like every keyed header, their values are hashed, never stored in clear.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::{ContextLayer, DefaultKeyExtractor};
    /// use http::HeaderName;
    ///
    /// let keys = DefaultKeyExtractor::new().key_headers([
    ///     HeaderName::from_static("x-api-key"),
    ///     HeaderName::from_static("x-tenant"),
    /// ]);
    /// let layer = ContextLayer::new().key_extractor(keys);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn key_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        for name in names {
            self = self.header(name);
        }
        self
    }

    /// Declares that this header, although its name looks like a credential (see
    /// [`CREDENTIAL_HEADER_PATTERNS`](super::CREDENTIAL_HEADER_PATTERNS)), never identifies a user: requests carrying it are
    /// shared as if it were absent. Use it only for headers that cannot change the response
    /// per user (a tracing token, an author name).
    #[must_use]
    pub fn not_credential(mut self, name: HeaderName) -> Self {
        if !self.not_credentials.contains(&name) {
            self.not_credentials.push(name);
        }
        self
    }

    /// Also mask this query parameter (compared case-insensitively) in the display form.
    #[must_use]
    pub fn secret_param(mut self, name: impl Into<String>) -> Self {
        self.secret_params.push(name.into().to_ascii_lowercase());
        self
    }

    fn is_secret(&self, name: &[u8]) -> bool {
        self.secret_params
            .iter()
            .any(|s| s.as_bytes().eq_ignore_ascii_case(name))
            || looks_like_secret_param(name)
    }

    /// The first header of `headers` that looks like a credential the key does not cover.
    fn uncovered_credential<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a HeaderName> {
        headers.keys().find(|name| {
            looks_like_credential(name)
                && !self.headers.contains(name)
                && !self.not_credentials.contains(name)
        })
    }
}

impl DefaultKeyExtractor {
    /// Masks the secret query parameters this extractor knows (and userinfo) in `text`: see
    /// [`redact_secrets`].
    ///
    /// ```
    /// use courteous::DefaultKeyExtractor;
    ///
    /// let keys = DefaultKeyExtractor::new().secret_param("sig");
    /// assert_eq!(keys.redact("GET /x?sig=abc&n=1"), "GET /x?sig=REDACTED&n=1");
    /// ```
    pub fn redact(&self, text: &str) -> String {
        redact_secrets(text, |name| self.is_secret(name.as_bytes()))
    }
}

impl Default for DefaultKeyExtractor {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyExtractor for DefaultKeyExtractor {
    fn is_secret_param(&self, name: &str) -> bool {
        self.is_secret(name.as_bytes())
    }

    fn key(&self, parts: &Parts, body: Option<&[u8]>) -> Option<RequestKey> {
        let body = body?;
        if let Some(name) = self.uncovered_credential(&parts.headers) {
            tracing::debug!(
                header = name.as_str(),
                "request carries a credential-looking header the key does not cover; \
                 it bypasses the cache and dedupe (add it with DefaultKeyExtractor::key_headers)"
            );
            return None;
        }
        let uri = &parts.uri;
        let scheme = lower(uri.scheme_str().unwrap_or("http"));
        let host = lower(uri.host().unwrap_or(""));
        // `user:password@`: hashed, never displayed.
        let userinfo = uri
            .authority()
            .and_then(|authority| authority.as_str().rsplit_once('@'))
            .map(|(userinfo, _)| userinfo);
        let port = uri
            .port_u16()
            .filter(|port| !matches!((&*scheme, port), ("http", 80) | ("https", 443)));
        let path = match uri.path() {
            "" => "/",
            path => path,
        };
        let mut params = query_pairs(uri.query().unwrap_or(""));
        // Stable: values of one name keep their order.
        params.sort_by(|a, b| a.0.cmp(&b.0));

        let mut h = Canonical(Sha256::new());
        h.field(b"courteous-request-key-v2");
        h.field(parts.method.as_str().as_bytes());
        h.field(scheme.as_bytes());
        match userinfo {
            None => h.field(&[0]),
            Some(userinfo) => {
                h.field(&[1]);
                h.field(userinfo.as_bytes());
            }
        }
        h.field(host.as_bytes());
        h.field(&port.unwrap_or(0).to_le_bytes());
        h.field(path.as_bytes());
        h.field(&(params.len() as u64).to_le_bytes());
        for (k, v) in &params {
            h.field(k);
            h.field(v);
        }
        h.headers(&self.headers, &parts.headers);
        if body.is_empty() {
            // The digest of no bytes, computed once.
            static EMPTY: std::sync::LazyLock<[u8; 32]> =
                std::sync::LazyLock::new(|| Sha256::digest(b"").into());
            h.field(&*EMPTY);
        } else {
            h.field(&Sha256::digest(body));
        }
        // A `Host` header names the virtual host the request reaches: the client sends it
        // instead of the URL's authority, so two of them are two resources. Hashed (in lower
        // case) only when present, so keys of requests without one are unchanged.
        let hosts = parts.headers.get_all(http::header::HOST);
        if hosts.iter().next().is_some() {
            h.field(b"host");
            for value in hosts {
                h.field(&value.as_bytes().to_ascii_lowercase());
            }
        }

        let method = parts.method.as_str();
        let mut display =
            String::with_capacity(method.len() + scheme.len() + host.len() + path.len() + 16);
        display.push_str(method);
        display.push(' ');
        display.push_str(&scheme);
        display.push_str("://");
        display.push_str(&host);
        if let Some(port) = port {
            use std::fmt::Write as _;
            let _ = write!(display, ":{port}");
        }
        display.push_str(path);
        for (i, (k, v)) in params.iter().enumerate() {
            display.push(if i == 0 { '?' } else { '&' });
            display.extend(form_urlencoded::byte_serialize(k));
            display.push('=');
            if self.is_secret(k) {
                display.push_str("REDACTED");
            } else {
                display.extend(form_urlencoded::byte_serialize(v));
            }
        }
        Some(RequestKey {
            hash: h.0.finalize().into(),
            display: display.into(),
        })
    }
}
