//! Which request headers look like credentials.

use http::HeaderName;

/// A request header whose (lower-case) name contains one of these is taken for a credential:
/// unless the key covers it ([`DefaultKeyExtractor::key_headers`](super::DefaultKeyExtractor::key_headers)) or it is declared harmless
/// ([`DefaultKeyExtractor::not_credential`](super::DefaultKeyExtractor::not_credential)), the request gets no key and bypasses the cache and
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
