//! Unsafe methods: the entries a non-error answer to one invalidates (RFC 9111 section 4.4).

use http::header::{self, HeaderMap};
use http::{Method, Request, Response};
use tower::{Service, ServiceExt};

use crate::cache::CacheStatus;
use crate::cache::store::Invalidation;
use crate::error::BoxError;

use super::job::Job;

/// Whether `method` is known to be safe (RFC 9110 section 9.2.1). Every other method, those
/// the cache has never heard of included, is unsafe and invalidates (RFC 9111 section 4.4).
pub(super) fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// A URI's origin and path as the request key's display form writes them (lower-case scheme and
/// host, no default port, no userinfo, `/` for an empty path): `(origin, path)`.
pub(super) fn origin_and_path(uri: &http::Uri) -> Option<(String, String)> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    let origin = match uri
        .port_u16()
        .filter(|port| !matches!((&*scheme, port), ("http", 80) | ("https", 443)))
    {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    };
    let path = match uri.path() {
        "" => "/",
        path => path,
    };
    Some((origin, path.to_owned()))
}

/// The URLs (origin and path, any query) that a non-error response to an unsafe request to
/// `target` invalidates: the target itself, and the URIs of `Location` and `Content-Location`
/// when they have the target's origin (RFC 9111 section 4.4: never another origin's, so a
/// server cannot evict entries of a host it does not serve). Values that are not valid URI
/// references are ignored.
pub(super) fn invalidated_urls(target: &http::Uri, headers: &HeaderMap) -> Vec<String> {
    let Some((origin, path)) = origin_and_path(target) else {
        return Vec::new();
    };
    let mut urls = vec![format!("{origin}{path}")];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Some(resolved) = resolve_reference(&origin, &path, value) else {
            continue;
        };
        if let Some((other, other_path)) = origin_and_path(&resolved) {
            let url = format!("{other}{other_path}");
            if other == origin && !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    urls
}

/// `reference` resolved against the base `origin` + `path` (RFC 3986 section 5.2, without the
/// fragment); `None` when it is not a valid `http`/`https` URI reference.
pub(super) fn resolve_reference(origin: &str, path: &str, reference: &str) -> Option<http::Uri> {
    let reference = reference.trim();
    let reference = reference.split_once('#').map_or(reference, |(r, _)| r);
    let has_scheme = reference.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let absolute = if has_scheme {
        reference.to_owned()
    } else if let Some(rest) = reference.strip_prefix("//") {
        let scheme = origin.split_once("://")?.0;
        format!("{scheme}://{rest}")
    } else if reference.starts_with('/') {
        format!("{origin}{reference}")
    } else if reference.is_empty() || reference.starts_with('?') {
        format!("{origin}{path}{reference}")
    } else {
        let directory = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{origin}{directory}/{reference}")
    };
    let uri = http::Uri::try_from(absolute).ok()?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return None;
    }
    let clean = remove_dot_segments(uri.path());
    if clean == uri.path() {
        return Some(uri);
    }
    let mut parts = uri.into_parts();
    let query = parts
        .path_and_query
        .as_ref()
        .and_then(|pq| pq.query())
        .map_or(String::new(), |q| format!("?{q}"));
    parts.path_and_query = Some(format!("{clean}{query}").parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// RFC 3986 section 5.2.4.
pub(super) fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            segment => out.push(segment),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

impl Job {
    /// Sends an unsafe request; when the answer is not an error (2xx, 3xx), invalidates the
    /// stored entries of its URL (any query) and of the same-origin URLs its `Location` and
    /// `Content-Location` name (RFC 9111 section 4.4).
    pub(super) async fn unsafe_request<S, B>(
        &self,
        inner: S,
        request: Request<B>,
    ) -> Result<Response<reqwest::Body>, BoxError>
    where
        S: Service<Request<B>, Response = Response<reqwest::Body>>,
        S::Error: Into<BoxError>,
    {
        let target = request.uri().clone();
        let response = inner.oneshot(request).await.map_err(Into::into)?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            let urls = invalidated_urls(&target, response.headers());
            let job = Job {
                config: self.config.clone(),
                state: self.state.clone(),
            };
            let invalidate = async move {
                for url in urls {
                    let target = Invalidation::Path(url);
                    match job.state.store.invalidate(&target).await {
                        Ok(n) => tracing::debug!(
                            ?target,
                            invalidated = n,
                            "unsafe request invalidated cache entries"
                        ),
                        Err(error) => job.store_failed("invalidation", &error),
                    }
                }
            };
            // The origin has applied the change: the invalidation runs to its end even when
            // the caller gives up (drops this future) meanwhile, within the request's budget.
            let invalidate = match crate::store::budget::StoreBudget::current() {
                Some(budget) => futures_util::future::Either::Left(budget.scope(invalidate)),
                None => futures_util::future::Either::Right(invalidate),
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let _ = runtime.spawn(invalidate).await;
                }
                Err(_) => invalidate.await,
            }
        }
        Ok(self.finish(response, CacheStatus::Bypass))
    }
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderName, HeaderValue};

    use super::*;

    fn urls(target: &str, headers: &[(&str, &str)]) -> Vec<String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        invalidated_urls(&target.parse().unwrap(), &map)
    }

    #[test]
    fn location_and_content_location_resolve_and_stay_on_the_origin() {
        let t = "http://H:80/a/b/c?x=1";
        assert_eq!(urls(t, &[]), ["http://h/a/b/c"]);
        assert_eq!(
            urls(t, &[("location", "d"), ("content-location", "../e?q#f")]),
            ["http://h/a/b/c", "http://h/a/b/d", "http://h/a/e"]
        );
        assert_eq!(
            urls(
                t,
                &[("location", "/x/./y/../z"), ("content-location", "?only")]
            ),
            ["http://h/a/b/c", "http://h/x/z"]
        );
        assert_eq!(
            urls(
                t,
                &[("location", "//h/s"), ("content-location", "HTTP://h:80/t")]
            ),
            ["http://h/a/b/c", "http://h/s", "http://h/t"]
        );
        // Other origins (host, port, scheme), other schemes and garbage are ignored.
        for other in [
            "http://evil/a/b/c",
            "http://h:8080/x",
            "https://h/x",
            "//evil/x",
            "mailto:x@h",
            "http://h/a b",
            "http://[::1/x",
        ] {
            assert_eq!(
                urls(t, &[("location", other)]),
                ["http://h/a/b/c"],
                "{other}"
            );
        }
        assert_eq!(
            urls(t, &[("location", "/../../..")]),
            ["http://h/a/b/c", "http://h/"]
        );
    }

    #[test]
    fn only_get_head_options_and_trace_are_safe() {
        for safe in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(is_safe(&Method::from_bytes(safe.as_bytes()).unwrap()));
        }
        for unsafe_method in ["POST", "PUT", "PATCH", "DELETE", "CONNECT", "PURGE", "get"] {
            assert!(!is_safe(
                &Method::from_bytes(unsafe_method.as_bytes()).unwrap()
            ));
        }
    }
}
