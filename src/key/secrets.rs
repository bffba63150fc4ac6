//! Secret query parameters, and masking them (and URL userinfo) in URLs and free text.

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
pub(super) fn looks_like_secret_param(name: &[u8]) -> bool {
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
pub(super) const MASK: &str = "REDACTED";

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

/// Query parameters masked in [`RequestKey::display`](super::RequestKey::display) by default, besides every name that
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
