//! The URL a row keeps: secrets masked, length capped.

/// The longest URL a row keeps, in bytes; a longer one is cut and ends with `...`.
///
/// A row is held in memory until written (up to 100,000 of them in the SQLite and memory
/// stores), so a URL as long as a server accepts would make the journal a way to fill memory.
///
/// ```
/// assert_eq!(courteous::journal::MAX_URL_LEN, 4_096);
/// ```
pub const MAX_URL_LEN: usize = 4_096;

/// What marks a cut URL.
const CUT: &str = "...";

/// What replaces a secret.
const MASK: &str = "REDACTED";

/// `uri` as a row keeps it: its userinfo and the values of its secret query parameters (per
/// `is_secret`, given the percent-decoded name) masked, at most [`MAX_URL_LEN`] bytes.
///
/// The query is split at `&` and `;` and a value runs to the next of them, whatever bytes it
/// holds: the free-text masking of error messages stops a value at quotes and brackets, which a
/// URL's query may hold. The path keeps that masking, for `;name=value` parameters in it.
pub(crate) fn mask_url(uri: &http::Uri, is_secret: impl Fn(&str) -> bool) -> String {
    let mut out = String::new();
    if let Some(scheme) = uri.scheme_str() {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(authority) = uri.authority() {
        match authority.as_str().rsplit_once('@') {
            Some((_, host)) => {
                out.push_str(MASK);
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority.as_str()),
        }
    }
    // Only what can be kept is masked: a cut drops bytes, and never leaves a secret's value
    // unmasked (the name is either whole, and the value after it masked, or gone with it).
    let budget = MAX_URL_LEN.saturating_sub(out.len()) + 1;
    let path = cut(uri.path(), budget);
    out.push_str(&crate::key::redact_secrets(path, &is_secret));
    if let Some(query) = uri.query() {
        out.push('?');
        mask_query(
            &mut out,
            cut(query, budget.saturating_sub(path.len())),
            &is_secret,
        );
    }
    cap(out)
}

/// `url`, cut at [`MAX_URL_LEN`] bytes (ending with `...`) if longer.
pub(crate) fn cap(mut url: String) -> String {
    if url.len() > MAX_URL_LEN {
        url.truncate(floor_char_boundary(&url, MAX_URL_LEN - CUT.len()));
        url.push_str(CUT);
    }
    url
}

/// Appends `query` with the values of its secret parameters masked.
fn mask_query(out: &mut String, query: &str, is_secret: &impl Fn(&str) -> bool) {
    let mut rest = query;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((name, _)) if is_secret(&decoded(name)) => {
                out.push_str(name);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(pair),
        }
        let Some(separator) = rest[end..].chars().next() else {
            return;
        };
        out.push(separator);
        rest = &rest[end + separator.len_utf8()..];
    }
}

/// A query parameter's name percent-decoded (and `+` as a space), as names are compared.
fn decoded(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b == b'%' || b == b'+') {
        form_urlencoded::parse(name.as_bytes())
            .next()
            .map(|(name, _)| std::borrow::Cow::Owned(name.into_owned()))
            .unwrap_or_default()
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// The first `len` bytes of `text` at most, cut at a character boundary.
fn cut(text: &str, len: usize) -> &str {
    &text[..floor_char_boundary(text, len)]
}

fn floor_char_boundary(text: &str, len: usize) -> usize {
    if len >= text.len() {
        return text.len();
    }
    (0..=len)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::is_default_secret_param;

    fn mask(url: &str) -> String {
        mask_url(&url.parse().unwrap(), is_default_secret_param)
    }

    #[test]
    fn a_secret_value_is_masked_whole_whatever_bytes_it_holds() {
        for (url, secret) in [
            ("http://h/x?token=abc)def&n=1", "def"),
            ("http://h/x?token=abc'def", "def"),
            ("http://h/x?token=abc\"def", "def"),
            ("http://h/x?token=abc}def", "def"),
            ("http://h/x?api_key=abc]def", "def"),
            ("http://h/x?api_key=abc>def", "def"),
        ] {
            let Ok(uri) = url.parse::<http::Uri>() else {
                eprintln!("not a URI: {url}");
                continue;
            };
            let masked = mask_url(&uri, is_default_secret_param);
            assert!(!masked.contains(secret), "{secret} in {masked}");
            assert!(masked.contains("=REDACTED"), "{masked}");
        }
    }

    #[test]
    fn bracketed_and_encoded_secret_names_are_masked() {
        assert_eq!(
            mask("http://h/x?token[]=s3cret&api_key[0]=k3y&page=2"),
            "http://h/x?token[]=REDACTED&api_key[0]=REDACTED&page=2"
        );
        assert_eq!(
            mask("http://h/x?a=1;api%5Fkey=s3cret;b=2"),
            "http://h/x?a=1;api%5Fkey=REDACTED;b=2"
        );
    }

    #[test]
    fn userinfo_and_path_parameters_are_masked() {
        assert_eq!(
            mask("http://u:p%40ss@h:8080/a;token=abc/b?page=2"),
            "http://REDACTED@h:8080/a;token=REDACTED?page=2"
        );
        assert_eq!(mask("/relative?token=x"), "/relative?token=REDACTED");
        assert_eq!(mask("http://h/"), "http://h/");
    }

    #[test]
    fn a_huge_url_is_cut_and_a_secret_never_surfaces_at_the_cut() {
        // `http::Uri` holds up to 64 KiB.
        let huge = format!("http://h/{}?token=s3cret", "a".repeat(60_000));
        let masked = mask(&huge);
        assert_eq!(masked.len(), MAX_URL_LEN);
        assert!(masked.ends_with(CUT));
        for prefix in [4_080, 4_090, 4_095, 4_096, 4_100] {
            let url = format!("http://h/{}?token=s3cretvalue", "a".repeat(prefix - 20));
            let masked = mask(&url);
            assert!(masked.len() <= MAX_URL_LEN, "{}", masked.len());
            assert!(!masked.contains("s3cr"), "{prefix}: {}", &masked[4_000..]);
        }
        let long_query = format!("http://h/x?token={}&page=2", "s".repeat(60_000));
        let masked = mask(&long_query);
        assert!(!masked.contains("ss"), "{}", &masked[..64]);
    }

    #[test]
    fn bytes_past_ascii_are_cut_at_a_character_boundary_or_refused_by_the_uri() {
        for raw in [
            format!("http://h/{}?token=s3cret", "\u{e9}".repeat(3_000)),
            format!("http://h/x?q={}&token=s3cret", "\u{1f600}".repeat(2_000)),
        ] {
            // `http::Uri` may refuse them; what it takes is masked without a panic.
            if let Ok(uri) = http::Uri::from_maybe_shared(raw.into_bytes()) {
                let masked = mask_url(&uri, is_default_secret_param);
                assert!(masked.len() <= MAX_URL_LEN);
                assert!(!masked.contains("s3cret"));
            }
        }
        assert!(http::Uri::from_maybe_shared(&b"http://h/\xff\xfe?token=x"[..]).is_err());
    }
}
