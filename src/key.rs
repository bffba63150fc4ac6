//! Request keys: what makes two requests "identical" for the cache and for dedupe.
//!
//! A [`RequestKey`] is the SHA-256 of a canonical form of the request: method, scheme, URL
//! userinfo (`user:password@`), host, port (default ports dropped), path, query parameters in a
//! canonical order, the configured request headers (`Accept` and every credential header:
//! `Authorization`, `Proxy-Authorization`, `Cookie` by default, plus any
//! [`DefaultKeyExtractor::key_headers`]), the body, when there is one, and a `Host` header,
//! when the request sets one (it names the virtual host the request reaches). Because it is a hash,
//! secrets in URLs (`api_key=...`), userinfo or headers are never stored in clear;
//! [`RequestKey::display`] is a readable form without userinfo and headers and with secret query
//! parameters masked, for logs and status pages.
//!
//! Query parameters are sorted by name; values of a repeated name keep their relative order, since
//! `ids=2&ids=1` may mean something else than `ids=1&ids=2` to an API. Percent-encoding is
//! normalised (`a%20b`, `a+b` and `a b` are one value) on raw bytes: `q=%FF`, `q=%FE` and
//! `q=%EF%BF%BD` are three different keys (decoding them as UTF-8 would make all three `U+FFFD`).
//!
//! # Note on credentials the key cannot see
//!
//! A request that carries a header that *looks like* a credential (its name contains one of
//! [`CREDENTIAL_HEADER_PATTERNS`], such as `X-Api-Key` or `X-Auth-Token`) but that the key does
//! not cover gets **no key**: it bypasses the cache and dedupe rather than risk serving one
//! user's response to another. Add such headers with [`DefaultKeyExtractor::key_headers`] to
//! cache them per credential, or declare a look-alike harmless with
//! [`DefaultKeyExtractor::not_credential`].
//!
//! Headers added *after* the stack cannot be seen at all: `reqwest::ClientBuilder::default_headers`
//! and a reqwest cookie store are applied by `reqwest::Client` itself, below every layer. Tell
//! the stack about default headers with [`ContextLayer::default_headers`](crate::ContextLayer::default_headers)
//! (tower) or `CourteousMiddleware::default_headers` (reqwest-middleware), and don't share one cache or
//! dedupe store between clients whose cookie stores hold different users.
//!
//! Requests whose body is a stream cannot be replayed and have no key: they pass through the cache
//! and dedupe layers untouched.
//!
//! # Example
//!
//! ```
//! use courteous::{DefaultKeyExtractor, KeyExtractor};
//!
//! let keys = DefaultKeyExtractor::new();
//! let key = |uri: &str| {
//!     let (parts, _) = http::Request::get(uri).body(()).unwrap().into_parts();
//!     keys.key(&parts, Some(b"")).unwrap()
//! };
//! let a = key("https://api.example/api/issues/?api_key=s3cret&limit=10&offset=0");
//! let b = key("https://API.example:443/api/issues/?offset=0&limit=10&api_key=s3cret");
//! assert_eq!(a, b);
//! assert_eq!(
//!     a.display(),
//!     "GET https://api.example/api/issues/?api_key=REDACTED&limit=10&offset=0"
//! );
//! ```

use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;
use sha2::{Digest, Sha256};

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
    hash: [u8; 32],
    display: Arc<str>,
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
    /// The default masks [`DEFAULT_SECRET_PARAMS`] (compared case-insensitively) and every name
    /// that matches [`SECRET_PARAM_PATTERNS`].
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

/// Whether `name` is one of [`DEFAULT_SECRET_PARAMS`], in any case, or matches
/// [`SECRET_PARAM_PATTERNS`].
///
/// ```
/// use courteous::key::is_default_secret_param;
///
/// assert!(is_default_secret_param("API_KEY"));
/// assert!(is_default_secret_param("X-Amz-Signature") && is_default_secret_param("refresh_token"));
/// assert!(!is_default_secret_param("page"));
/// ```
pub fn is_default_secret_param(name: &str) -> bool {
    DEFAULT_SECRET_PARAMS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
        || looks_like_secret_param(name.as_bytes())
}

/// A query parameter whose name, in lower case and without `-`, `_` and `.`, contains one of
/// these is secret too, whatever list it is compared with: `refresh_token`, `X-Amz-Signature`,
/// `X-Amz-Credential`, `clientSecret`, `private-token` are masked by default.
///
/// ```
/// use courteous::{DefaultKeyExtractor, KeyExtractor};
///
/// let (parts, _) = http::Request::get("https://b.s3.example/o?X-Amz-Signature=abc&page=2")
///     .body(())
///     .unwrap()
///     .into_parts();
/// let key = DefaultKeyExtractor::new().key(&parts, Some(b"")).unwrap();
/// assert_eq!(key.display(), "GET https://b.s3.example/o?X-Amz-Signature=REDACTED&page=2");
/// ```
pub const SECRET_PARAM_PATTERNS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "signature",
    "credential",
    "apikey",
    "accesskey",
    "sessionid",
];

/// Whether a (decoded) query parameter name contains one of [`SECRET_PARAM_PATTERNS`], or is
/// `sig` or `auth` (Azure SAS signatures, Firebase tokens).
fn looks_like_secret_param(name: &[u8]) -> bool {
    let folded: Vec<u8> = name
        .iter()
        .filter(|b| !matches!(b, b'-' | b'_' | b'.'))
        .map(u8::to_ascii_lowercase)
        .collect();
    matches!(&*folded, b"sig" | b"auth")
        || SECRET_PARAM_PATTERNS.iter().any(|pattern| {
            folded
                .windows(pattern.len())
                .any(|window| window == pattern.as_bytes())
        })
}

/// What replaces a secret.
const MASK: &str = "REDACTED";

/// `name` percent-decoded (and `+` as a space), as query parameter names are compared.
fn decoded_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b == b'%' || b == b'+') {
        let decoded: String = form_urlencoded::parse(name.as_bytes())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default();
        std::borrow::Cow::Owned(decoded)
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Masks `url` in place: the values of its secret query parameters (per `is_secret`, given the
/// percent-decoded name) and its userinfo become `REDACTED`. Other parameters keep their bytes.
///
/// ```
/// use courteous::key::{is_default_secret_param, redact_url};
///
/// let mut url = reqwest::Url::parse("https://u:pw@h/x?api_key=s3cret&page=2&Token=t").unwrap();
/// redact_url(&mut url, is_default_secret_param);
/// assert_eq!(url.as_str(), "https://REDACTED@h/x?api_key=REDACTED&page=2&Token=REDACTED");
/// ```
pub fn redact_url(url: &mut reqwest::Url, is_secret: impl Fn(&str) -> bool) {
    if !url.username().is_empty() || url.password().is_some() {
        // Fails only for URLs that cannot have userinfo, which then have none.
        let _ = url.set_password(None);
        let _ = url.set_username(MASK);
    }
    if let Some(query) = url.query() {
        let mut masked = String::with_capacity(query.len());
        let mut changed = false;
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                masked.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if is_secret(&decoded_name(name)) => {
                    masked.push_str(name);
                    masked.push('=');
                    masked.push_str(MASK);
                    changed = true;
                }
                _ => masked.push_str(pair),
            }
        }
        if changed {
            url.set_query(Some(&masked));
        }
    }
}

/// Masks every URL-like secret in free text (an error message and its sources): the value of
/// each query parameter `name=value` that follows `?`, `&` or `;` and whose (percent-decoded)
/// name `is_secret`, and the userinfo of `scheme://user:password@host`. A value ends at `&`,
/// `#`, `;`, white space, a quote, or a closing bracket.
///
/// ```
/// use courteous::key::{is_default_secret_param, redact_secrets};
///
/// let text = "error sending request for url (http://u:pw@h/x?page=1&API_KEY=s3cret): refused";
/// assert_eq!(
///     redact_secrets(text, is_default_secret_param),
///     "error sending request for url (http://REDACTED@h/x?page=1&API_KEY=REDACTED): refused"
/// );
/// ```
pub fn redact_secrets(text: &str, is_secret: impl Fn(&str) -> bool) -> String {
    const VALUE_END: &[u8] = b"&#; \t\r\n\"'<>)]}";
    const NAME_END: &[u8] = b"&#;=?/ \t\r\n\"'<>()[]{}";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'?' | b'&' | b';' => {
                let start = i + 1;
                let name_end = bytes[start..]
                    .iter()
                    .position(|b| NAME_END.contains(b))
                    .map_or(bytes.len(), |n| start + n);
                if name_end > start
                    && bytes.get(name_end) == Some(&b'=')
                    && is_secret(&decoded_name(&text[start..name_end]))
                {
                    let value = name_end + 1;
                    let value_end = bytes[value..]
                        .iter()
                        .position(|b| VALUE_END.contains(b) || b.is_ascii_whitespace())
                        .map_or(bytes.len(), |n| value + n);
                    out.push_str(&text[copied..value]);
                    out.push_str(MASK);
                    copied = value_end;
                    i = value_end;
                    continue;
                }
                i += 1;
            }
            b':' if bytes[i + 1..].starts_with(b"//") => {
                let start = i + 3;
                let authority_end = bytes[start..]
                    .iter()
                    .position(|b| b"/?#".contains(b) || b.is_ascii_whitespace())
                    .map_or(bytes.len(), |n| start + n);
                if let Some(at) = bytes[start..authority_end].iter().rposition(|&b| b == b'@') {
                    out.push_str(&text[copied..start]);
                    out.push_str(MASK);
                    copied = start + at;
                    i = start + at;
                    continue;
                }
                i += 3;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// The stock [`KeyExtractor`]: see the [module documentation](self) for the canonical form.
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

/// Query parameters masked in [`RequestKey::display`] by default, besides every name that
/// matches [`SECRET_PARAM_PATTERNS`].
pub const DEFAULT_SECRET_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "key",
    "token",
    "access_token",
    "client_secret",
    "password",
    "signature",
];

/// A request header whose (lower-case) name contains one of these is taken for a credential:
/// unless the key covers it ([`DefaultKeyExtractor::key_headers`]) or it is declared harmless
/// ([`DefaultKeyExtractor::not_credential`]), the request gets no key and bypasses the cache and
/// dedupe.
///
/// The list is deliberately narrow (names, never values): `authorization`, `x-api-key`,
/// `x-auth-token`, `x-session-id`, `x-client-secret`, `cookie` match; `accept`, `user-agent`,
/// `x-request-id` do not.
pub const CREDENTIAL_HEADER_PATTERNS: &[&str] = &[
    "auth",
    "token",
    "secret",
    "session",
    "cookie",
    "password",
    "credential",
    "api-key",
    "apikey",
    "api_key",
];

/// Whether a header name looks like it carries a credential (see [`CREDENTIAL_HEADER_PATTERNS`]).
///
/// # Example
///
/// ```
/// use courteous::key::looks_like_credential;
/// use http::HeaderName;
///
/// assert!(looks_like_credential(&HeaderName::from_static("x-api-key")));
/// assert!(!looks_like_credential(&HeaderName::from_static("accept-language")));
/// ```
pub fn looks_like_credential(name: &HeaderName) -> bool {
    // `HeaderName`s are lower case.
    let name = name.as_str();
    CREDENTIAL_HEADER_PATTERNS
        .iter()
        .any(|pattern| name.contains(pattern))
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
    /// carry it bypass the cache and dedupe: see [`CREDENTIAL_HEADER_PATTERNS`].
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
    /// [`CREDENTIAL_HEADER_PATTERNS`]), never identifies a user: requests carrying it are
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

/// Feeds length-prefixed fields to the hash, so that no two different field lists hash alike.
struct Canonical(Sha256);

impl Canonical {
    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// Each of `names` (in the given order) with all its values in `headers`.
    fn headers(&mut self, names: &[HeaderName], headers: &http::HeaderMap) {
        for name in names {
            self.field(name.as_str().as_bytes());
            let values = headers.get_all(name);
            self.field(&(values.iter().count() as u64).to_le_bytes());
            for value in values {
                self.field(value.as_bytes());
            }
        }
    }
}

/// `s` in lower case, allocating only when it has upper-case letters.
fn lower(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The `application/x-www-form-urlencoded` decoding of `input` as raw bytes: `+` is a space,
/// `%XY` the byte `0xXY`; a `%` not followed by two hexadecimal digits stays as it is. Unlike a
/// decoding to `str`, bytes that are not UTF-8 are kept, so `%FF` and `%FE` stay different.
fn decode(input: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let pair = input
                    .get(i + 1)
                    .copied()
                    .and_then(hex)
                    .zip(input.get(i + 2).copied().and_then(hex));
                if let Some((high, low)) = pair {
                    out.push(high << 4 | low);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The query's `name=value` pairs, decoded to raw bytes (empty pairs skipped, as
/// `form_urlencoded` does).
fn query_pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .as_bytes()
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            (decode(name), decode(value))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(req: http::Request<()>) -> RequestKey {
        let (parts, _) = req.into_parts();
        DefaultKeyExtractor::new().key(&parts, Some(b"")).unwrap()
    }

    #[test]
    fn the_order_headers_are_configured_in_does_not_change_keys() {
        use http::header::{ACCEPT, ACCEPT_LANGUAGE, AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
        let (parts, _) = http::Request::get("http://h/x")
            .header("accept", "a/b")
            .header("accept-language", "fr")
            .header("authorization", "t")
            .body(())
            .unwrap()
            .into_parts();
        let one = DefaultKeyExtractor::new().headers([
            PROXY_AUTHORIZATION,
            AUTHORIZATION,
            ACCEPT_LANGUAGE,
            COOKIE,
            ACCEPT,
        ]);
        let two = DefaultKeyExtractor::new().headers([
            ACCEPT,
            COOKIE,
            AUTHORIZATION,
            ACCEPT_LANGUAGE,
            PROXY_AUTHORIZATION,
        ]);
        let three = DefaultKeyExtractor::new().header(ACCEPT_LANGUAGE);
        let key = |k: &DefaultKeyExtractor| k.key(&parts, Some(b"")).unwrap();
        assert_eq!(key(&one), key(&two));
        assert_eq!(key(&one), key(&three));
    }

    #[test]
    fn streaming_body_has_no_key() {
        let (parts, _) = http::Request::get("http://h/")
            .body(())
            .unwrap()
            .into_parts();
        assert!(DefaultKeyExtractor::new().key(&parts, None).is_none());
    }

    #[test]
    fn default_port_and_case_are_normalised() {
        let a = key(http::Request::get("https://API.example:443/x")
            .body(())
            .unwrap());
        let b = key(http::Request::get("https://api.example/x")
            .body(())
            .unwrap());
        let c = key(http::Request::get("https://api.example:8443/x")
            .body(())
            .unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(c.display(), "GET https://api.example:8443/x");
    }

    #[test]
    fn percent_encoding_is_normalised() {
        let a = key(http::Request::get("http://h/x?q=a%20b").body(()).unwrap());
        let b = key(http::Request::get("http://h/x?q=a+b").body(()).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn repeated_parameters_keep_their_order() {
        let a = key(http::Request::get("http://h/x?id=1&id=2").body(()).unwrap());
        let b = key(http::Request::get("http://h/x?id=2&id=1").body(()).unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn method_body_and_headers_matter() {
        let get = key(http::Request::get("http://h/x").body(()).unwrap());
        let head = key(http::Request::head("http://h/x").body(()).unwrap());
        assert_ne!(get, head);
        let json = key(http::Request::get("http://h/x")
            .header("accept", "application/json")
            .body(())
            .unwrap());
        assert_ne!(get, json);
        // A header that is not configured does not matter.
        let ua = key(http::Request::get("http://h/x")
            .header("user-agent", "x")
            .body(())
            .unwrap());
        assert_eq!(get, ua);
        let (parts, _) = http::Request::post("http://h/x")
            .body(())
            .unwrap()
            .into_parts();
        let keys = DefaultKeyExtractor::new();
        assert_ne!(keys.key(&parts, Some(b"a")), keys.key(&parts, Some(b"b")));
    }

    #[test]
    fn secrets_never_appear_in_display() {
        let k = key(http::Request::get("http://h/x?token=t0k&API_KEY=abc&q=1")
            .header("authorization", "Bearer zzz")
            .body(())
            .unwrap());
        assert!(!k.display().contains("t0k"));
        assert!(!k.display().contains("abc"));
        assert!(!k.display().contains("zzz"));
        assert!(!format!("{k:?}").contains("abc"));
    }
    fn key_of(keys: &DefaultKeyExtractor, req: http::Request<()>) -> Option<RequestKey> {
        let (parts, _) = req.into_parts();
        keys.key(&parts, Some(b""))
    }

    #[test]
    fn query_bytes_that_are_not_utf8_give_distinct_keys() {
        let ff = key(http::Request::get("http://h/x?q=%FF").body(()).unwrap());
        let fe = key(http::Request::get("http://h/x?q=%FE").body(()).unwrap());
        let replacement = key(http::Request::get("http://h/x?q=%EF%BF%BD")
            .body(())
            .unwrap());
        assert_ne!(ff, fe);
        assert_ne!(ff, replacement);
        assert_ne!(fe, replacement);
        assert_eq!(ff.display(), "GET http://h/x?q=%FF");
        // Names too, and the encoding of one byte does not matter.
        let lower = key(http::Request::get("http://h/x?%ff=1").body(()).unwrap());
        let upper = key(http::Request::get("http://h/x?%FF=1").body(()).unwrap());
        let fe_name = key(http::Request::get("http://h/x?%FE=1").body(()).unwrap());
        assert_eq!(lower, upper);
        assert_ne!(lower, fe_name);
        // A lone `%` stays literal.
        let lone = key(http::Request::get("http://h/x?q=%zz%").body(()).unwrap());
        assert_eq!(lone.display(), "GET http://h/x?q=%25zz%25");
    }

    #[test]
    fn url_userinfo_is_keyed_but_never_displayed() {
        let alice = key(http::Request::get("http://alice:pw1@h/x").body(()).unwrap());
        let bob = key(http::Request::get("http://bob:pw2@h/x").body(()).unwrap());
        let nobody = key(http::Request::get("http://h/x").body(()).unwrap());
        let empty = key(http::Request::get("http://@h/x").body(()).unwrap());
        assert_ne!(alice, bob);
        assert_ne!(alice, nobody);
        assert_ne!(empty, nobody);
        assert_eq!(alice.display(), "GET http://h/x");
        assert!(!format!("{alice:?}").contains("pw1"));
    }

    #[test]
    fn every_standard_credential_header_is_keyed() {
        for name in ["authorization", "proxy-authorization", "cookie"] {
            let with = |value: &str| {
                key(http::Request::get("http://h/x")
                    .header(name, value)
                    .body(())
                    .unwrap())
            };
            let (a, b) = (with("user-a"), with("user-b"));
            assert_ne!(a, b, "{name}");
            assert_eq!(a.display(), "GET http://h/x", "{name}");
        }
    }

    #[test]
    fn secret_looking_query_parameters_are_masked_by_default() {
        // Common secret parameters outside the exact list: OAuth refresh and id tokens, S3
        // pre-signed URLs, Azure SAS signatures, GitLab tokens, Firebase `auth`.
        let secret = "http://h/x?refresh_token=S1&X-Amz-Signature=S2&X-Amz-Credential=S3\
                      &X-Amz-Security-Token=S4&sig=S5&private-token=S6&auth=S7&clientSecret=S8\
                      &page=2";
        let k = key(http::Request::get(secret).body(()).unwrap());
        for n in 1..=8 {
            assert!(
                !k.display().contains(&format!("S{n}")),
                "S{n}: {}",
                k.display()
            );
        }
        assert!(k.display().contains("&page=2&"), "{}", k.display());
        let mut url = reqwest::Url::parse(secret).unwrap();
        redact_url(&mut url, is_default_secret_param);
        let text = redact_secrets(
            &format!("error for url ({secret})"),
            is_default_secret_param,
        );
        for shown in [url.as_str(), &*text] {
            for n in 1..=8 {
                assert!(!shown.contains(&format!("S{n}")), "S{n}: {shown}");
            }
            assert!(shown.contains("page=2"), "{shown}");
        }
        // Ordinary names stay readable.
        for name in ["page", "limit", "q", "keyword", "author", "monkey"] {
            assert!(!is_default_secret_param(name), "{name}");
        }
    }

    #[test]
    fn a_host_header_is_keyed_in_any_case() {
        let on = |host: &str| {
            key(http::Request::get("http://10.0.0.1/x")
                .header("host", host)
                .body(())
                .unwrap())
        };
        let none = key(http::Request::get("http://10.0.0.1/x").body(()).unwrap());
        assert_ne!(on("a.example"), on("b.example"));
        assert_ne!(on("a.example"), none);
        assert_eq!(on("a.example"), on("A.Example"));
        assert_eq!(on("a.example").display(), none.display());
    }

    #[test]
    fn uncovered_credential_headers_give_no_key() {
        let keys = DefaultKeyExtractor::new();
        for name in [
            "x-api-key",
            "X-Auth-Token",
            "x-session-id",
            "apikey",
            "x-client-secret",
        ] {
            let request = http::Request::get("http://h/x").header(name, "s3cret");
            assert!(key_of(&keys, request.body(()).unwrap()).is_none(), "{name}");
        }
        let harmless = http::Request::get("http://h/x")
            .header("x-request-id", "1")
            .header("user-agent", "u");
        assert!(key_of(&keys, harmless.body(()).unwrap()).is_some());

        // Covered with key_headers: keyed per value.
        let keys = keys.key_headers([HeaderName::from_static("x-api-key")]);
        let with = |value: &str| {
            key_of(
                &keys,
                http::Request::get("http://h/x")
                    .header("x-api-key", value)
                    .body(())
                    .unwrap(),
            )
            .unwrap()
        };
        assert_ne!(with("a"), with("b"));

        // Declared harmless: shared as if absent.
        let keys =
            DefaultKeyExtractor::new().not_credential(HeaderName::from_static("x-trace-token"));
        let traced = key_of(
            &keys,
            http::Request::get("http://h/x")
                .header("x-trace-token", "1")
                .body(())
                .unwrap(),
        );
        assert_eq!(
            traced,
            key_of(&keys, http::Request::get("http://h/x").body(()).unwrap())
        );

        // Replacing the keyed headers leaves Authorization uncovered: no key rather than sharing.
        let keys = DefaultKeyExtractor::new().headers([http::header::ACCEPT]);
        let request = http::Request::get("http://h/x").header("authorization", "Bearer a");
        assert!(key_of(&keys, request.body(()).unwrap()).is_none());
    }
}
