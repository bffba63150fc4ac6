//! Revalidation: conditional requests, and the merge of a `304` into the stored entry.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use tower::{Service, ServiceExt};

use crate::body::ReplayableBody;
use crate::cache::{CacheEntry, CacheTtl};
use crate::error::BoxError;

use super::job::{Found, Head, Job, Upstream, url_of};
use super::policy::{RequestDirectives, has_validator, strip_proxy_fields, vary_names};
use super::ttl::Lifetime;

/// Response headers a `304` does not replace in the stored entry.
pub(super) const NOT_UPDATED_BY_304: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
    header::CONNECTION,
];

impl Job {
    /// Goes upstream, conditionally when the stored entry can be revalidated; again without
    /// validators when the `304` does not describe the stored response (RFC 9111 section
    /// 4.3.4: it then MUST NOT update it, and the caller, who sent no condition, needs a body).
    pub(super) async fn fetch<S, B>(
        &self,
        inner: S,
        mut request: Request<B>,
        found: Found,
        ttl: Option<CacheTtl>,
        store_ok: bool,
        directives: RequestDirectives,
    ) -> Result<Response<reqwest::Body>, BoxError>
    where
        S: Service<Request<B>, Response = Response<reqwest::Body>> + Clone,
        S::Error: Into<BoxError>,
        B: ReplayableBody + From<Bytes>,
    {
        let head = Head {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
        };
        let mut entry = found.entry.clone();
        let mut retry = None;
        if let Some(entry) = &entry {
            if has_validator(&entry.headers) {
                retry = crate::body::copy(&request).map(|copy| (inner.clone(), copy));
            }
            add_validators(request.headers_mut(), &entry.headers);
        }
        let mut outcome = inner.oneshot(request).await.map_err(Into::into);
        let unselected = match (&entry, &outcome) {
            (Some(entry), Ok(response)) => {
                response.status() == StatusCode::NOT_MODIFIED
                    && !selects(&entry.headers, response.headers())
            }
            _ => false,
        };
        if let (true, Some((inner, request))) = (unselected, retry) {
            tracing::debug!(
                url = url_of(&found.key),
                "the 304 names another entity-tag than the stored response; fetching it whole"
            );
            if let Err(error) = self.state.store.delete(&found.key).await {
                self.store_failed("delete", &error);
            }
            entry = None;
            outcome = inner.oneshot(request).await.map_err(Into::into);
        }
        let upstream = Upstream {
            head,
            base: found.base,
            key: found.key,
            entry,
            ttl,
            store_ok,
            directives,
        };
        self.complete(upstream, outcome).await
    }

    /// The stored entry with the headers of a `304` and a new lifetime, and the `Vary` names of
    /// the merged headers (`None` for `Vary: *`).
    ///
    /// The headers are merged by hand (RFC 9111 section 4.3.4: every field the `304` carries
    /// replaces all instances of it in the stored response, and fields new in the `304` are
    /// added): `CachePolicy::after_response` keeps only the first value of a repeated field and
    /// drops fields the stored response did not have (a new `Vary` among them).
    pub(super) fn revalidated(
        &self,
        upstream: &Upstream,
        entry: &CacheEntry,
        not_modified: &HeaderMap,
        now: SystemTime,
    ) -> (CacheEntry, Option<Vec<HeaderName>>) {
        let mut headers = entry.headers.clone();
        for name in not_modified.keys() {
            if NOT_UPDATED_BY_304.contains(name) {
                continue;
            }
            headers.remove(name);
            for value in not_modified.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        strip_proxy_fields(&mut headers);
        let mut refreshed =
            CacheEntry::new(entry.url.clone(), entry.status, entry.body.clone(), now);
        refreshed.version = entry.version;
        let vary_now = vary_names(&headers);
        let vary = vary_now.clone().unwrap_or_default();
        let lifetime = match upstream
            .ttl
            .filter(|t| !t.is_no_store() && self.config.statuses.contains(&entry.status))
        {
            Some(ttl) => Lifetime {
                fresh: ttl.ttl(),
                age: Duration::ZERO,
                sliding: ttl.is_sliding().then_some(ttl.ttl()),
                vary,
            },
            None => {
                let (fresh, age) = self
                    .rfc_lifetime(
                        &upstream.head,
                        entry.status,
                        &headers,
                        now,
                        upstream.ttl.is_none(),
                    )
                    .unwrap_or_default();
                Lifetime {
                    fresh,
                    age,
                    sliding: None,
                    vary,
                }
            }
        };
        refreshed.headers = headers;
        lifetime.apply(&mut refreshed, &self.config);
        (refreshed, vary_now)
    }
}

/// Whether a `304` describes the stored response (RFC 9111 section 4.3.4): one that carries an
/// `ETag` selects it only when the stored response has the same entity-tag, compared weakly
/// (the cache sent it in `If-None-Match`, where weak comparison applies, RFC 9110 section
/// 13.1.2). One without an `ETag` is taken as answering the validators the cache sent: RFC 9110
/// section 15.4.5 requires the `ETag` in a `304`, but servers that omit it (or answer
/// `If-Modified-Since` without repeating `Last-Modified`) are common, and
/// `CachePolicy::after_response`, which refuses those, would turn every such revalidation into
/// a full download.
pub(super) fn selects(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    let Some(new) = not_modified.get(header::ETAG) else {
        return true;
    };
    let opaque = |value: &HeaderValue| {
        let tag = value.as_bytes().trim_ascii();
        tag.strip_prefix(b"W/").unwrap_or(tag).to_vec()
    };
    stored
        .get(header::ETAG)
        .is_some_and(|old| opaque(old) == opaque(new))
}

/// Adds `If-None-Match` / `If-Modified-Since` from the stored response.
pub(super) fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}
