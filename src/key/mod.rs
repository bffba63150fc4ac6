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
//! # Where things live
//!
//! * `request_key.rs`: [`RequestKey`] and the [`KeyExtractor`] trait;
//! * `extractor.rs`: [`DefaultKeyExtractor`], the stock extractor;
//! * `canonical.rs`: the canonical form that is hashed (length-prefixed fields, raw-byte
//!   percent-decoding of the query);
//! * `credentials.rs`: which request headers look like credentials;
//! * `secrets.rs`: which query parameters are secret, and masking them in URLs and free text.
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

mod canonical;
mod credentials;
mod extractor;
mod request_key;
mod secrets;
#[cfg(test)]
mod tests;

pub use credentials::{CREDENTIAL_HEADER_PATTERNS, looks_like_credential};
pub use extractor::DefaultKeyExtractor;
pub use request_key::{KeyExtractor, RequestKey};
pub use secrets::{
    DEFAULT_SECRET_PARAMS, SECRET_PARAM_PATTERNS, is_default_secret_param, redact_secrets,
    redact_url,
};
