//! The request flow of [`Cache`](super::Cache): lookup, hits, the upstream answer and storing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tower::{Service, ServiceExt};

use crate::body::ReplayableBody;
use crate::body::{Buffered, buffer};
use crate::cache::layer::{Config, State};
use crate::cache::{CacheEntry, CacheMode, CacheStatus, CacheTtl};
use crate::context::{Report, RequestContext};
use crate::error::BoxError;
use crate::key::RequestKey;
use crate::store::StoreError;

use super::invalidate::is_safe;
use super::policy::{
    BYPASS_HEADERS, RequestDirectives, directive_secs, has_validator, may_serve_stale, no_store,
    request_accepts, strip_proxy_fields,
};
use super::revalidate::selects;
use super::ttl::mode_of;

/// The request head, kept for storing, revalidating and refreshing after the request moved.
#[derive(Clone)]
pub(super) struct Head {
    pub(super) method: Method,
    pub(super) uri: http::Uri,
    pub(super) headers: HeaderMap,
}

impl Head {
    pub(super) fn parts(&self) -> http::request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.headers = self.headers.clone();
        parts
    }
}

/// The URL entries are stored and invalidated under: the key's display form without the method
/// (secret query parameters are redacted there).
pub(super) fn url_of(key: &RequestKey) -> &str {
    let display = key.display();
    display.split_once(' ').map_or(display, |(_, url)| url)
}

/// One request's work: the layer's configuration and shared state.
pub(super) struct Job {
    pub(super) config: Arc<Config>,
    pub(super) state: Arc<State>,
}

/// What a lookup found.
pub(super) struct Found {
    /// The request's own key.
    pub(super) base: RequestKey,
    /// The key the response is stored under (a variant key behind a `Vary` index).
    pub(super) key: RequestKey,
    pub(super) entry: Option<Arc<CacheEntry>>,
}

impl Job {
    pub(super) fn store_failed(&self, what: &str, error: &StoreError) {
        self.state
            .counters
            .store_errors
            .fetch_add(1, Ordering::Relaxed);
        crate::store::warn::store_warn!(&*self.state, %error, kind = ?error.kind(), "cache store {what} failed; passing the request through");
    }

    pub(super) fn finish(
        &self,
        mut response: Response<reqwest::Body>,
        status: CacheStatus,
    ) -> Response<reqwest::Body> {
        self.state.counters.count(status);
        Report::record(response.extensions_mut()).cache = Some(status);
        if let Some(name) = &self.config.status_header {
            response
                .headers_mut()
                .insert(name.clone(), HeaderValue::from_static(status.as_str()));
        }
        response
    }

    pub(super) fn serve(
        &self,
        entry: &CacheEntry,
        now: SystemTime,
        status: CacheStatus,
    ) -> Response<reqwest::Body> {
        let mut response = Response::new(reqwest::Body::from(entry.body.clone()));
        *response.status_mut() = entry.status;
        *response.version_mut() = entry.version;
        let mut headers = entry.headers.clone();
        headers.insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
        *response.headers_mut() = headers;
        self.finish(response, status)
    }

    pub(super) async fn pass<S, B>(
        &self,
        inner: S,
        request: Request<B>,
        status: CacheStatus,
    ) -> Result<Response<reqwest::Body>, BoxError>
    where
        S: Service<Request<B>, Response = Response<reqwest::Body>>,
        S::Error: Into<BoxError>,
    {
        let response = inner.oneshot(request).await.map_err(Into::into)?;
        Ok(self.finish(response, status))
    }

    pub(super) async fn run<S, B>(
        self,
        inner: S,
        mut request: Request<B>,
    ) -> Result<Response<reqwest::Body>, BoxError>
    where
        S: Service<Request<B>, Response = Response<reqwest::Body>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: ReplayableBody + From<Bytes> + Send + 'static,
    {
        let method = request.method().clone();
        let lookup = method == Method::GET || method == Method::HEAD;
        // Invalidation does not need a key: an unsafe request with a streaming body or an
        // uncovered credential still invalidates its URL.
        if !is_safe(&method) {
            return Box::pin(self.unsafe_request(inner, request)).await;
        }
        let context = RequestContext::resolve(&mut request);
        let Some(key) = context.key().cloned() else {
            return Box::pin(self.pass(inner, request, CacheStatus::Bypass)).await;
        };
        let mode = mode_of(&request);
        // reqwest adds its default headers after the middleware chain: often there are none.
        let headers = request.headers();
        let (directives, conditional) = if headers.is_empty() {
            (RequestDirectives::default(), false)
        } else {
            (
                RequestDirectives::of(headers),
                BYPASS_HEADERS.iter().any(|h| headers.contains_key(h)),
            )
        };
        if !lookup || mode == CacheMode::NoStore || directives.no_store || conditional {
            return Box::pin(self.pass(inner, request, CacheStatus::Bypass)).await;
        }

        let ttl = self.forced_ttl(&request, context.resource());

        // Look the request up.
        let mut store_ok = true;
        let found = if mode == CacheMode::Reload {
            Found {
                base: key.clone(),
                key,
                entry: None,
            }
        } else {
            match self.lookup(key, request.headers()).await {
                Ok(found) => found,
                Err((key, error)) => {
                    self.store_failed("read", &error);
                    store_ok = false;
                    Found {
                        base: key.clone(),
                        key,
                        entry: None,
                    }
                }
            }
        };
        let now = self.config.now();
        let only_if_cached = mode == CacheMode::OnlyIfCached || directives.only_if_cached;

        if let Some(entry) = &found.entry {
            let fresh = entry.is_fresh(now);
            let stale_ok = may_serve_stale(&entry.headers, self.config.shared);
            if matches!(mode, CacheMode::ForceCache | CacheMode::OnlyIfCached) {
                if fresh {
                    return Ok(self.serve(entry, now, CacheStatus::Hit));
                }
                // RFC 9111 section 4.2.4: even "however stale" stops where the stored response
                // forbids stale use; `ForceCache` then revalidates, `OnlyIfCached` answers 504
                // (section 5.2.2.2: a disconnected cache generates an error instead).
                if stale_ok {
                    return Ok(self.serve(entry, now, CacheStatus::Stale));
                }
            }
            if mode != CacheMode::NoCache
                && request_accepts(&request, entry, stale_ok, self.config.shared, now)
            {
                if fresh {
                    if let Some(window) = entry.sliding {
                        self.slide(&found.key, entry, now, window).await;
                    }
                    return Ok(self.serve(entry, now, CacheStatus::Hit));
                }
                return Ok(self.serve(entry, now, CacheStatus::Stale));
            }
            // RFC 5861 section 3, limited by RFC 9111 sections 5.2.1.4, 5.2.1.1 and 5.2.1.3:
            // a request that says `no-cache` wants a validated response, one with `max-age` or
            // `min-fresh` (already refused above) a fresh one; a stale-while-revalidate answer
            // is neither.
            if !fresh
                && stale_ok
                && mode != CacheMode::NoCache
                && !directives.no_cache
                && !directives.wants_fresh
                && directive_secs(&entry.headers, "stale-while-revalidate")
                    .is_some_and(|swr| entry.staleness(now).as_secs() <= swr)
                && !self.refresh_failed(&found.key)
            {
                self.refresh_in_background(inner, &request, &found, ttl);
                return Ok(self.serve(entry, now, CacheStatus::Stale));
            }
        }
        if only_if_cached {
            let response = Response::builder()
                .status(StatusCode::GATEWAY_TIMEOUT)
                .body(reqwest::Body::from(""))
                .map_err(BoxError::from)?;
            return Ok(self.finish(response, CacheStatus::Miss));
        }

        // The miss path is boxed so that the hit path's future stays small.
        Box::pin(self.fetch(inner, request, found, ttl, store_ok, directives)).await
    }

    /// Reads the entry for `key`, following a `Vary` index to the variant of these headers.
    pub(super) async fn lookup(
        &self,
        key: RequestKey,
        headers: &HeaderMap,
    ) -> Result<Found, (RequestKey, StoreError)> {
        let entry = match self.state.store.get_now(&key) {
            Some(found) => found,
            None => self.state.store.get(&key).await,
        };
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => return Err((key, error)),
        };
        match entry {
            Some(index) if !index.vary.is_empty() => {
                let variant = key.variant(&index.vary, headers);
                match self.state.store.get(&variant).await {
                    Ok(entry) => Ok(Found {
                        base: key,
                        key: variant,
                        entry,
                    }),
                    Err(error) => Err((key, error)),
                }
            }
            entry => Ok(Found {
                base: key.clone(),
                key,
                entry,
            }),
        }
    }

    /// Handles the upstream answer: revalidation, stale-if-error, storing.
    pub(super) async fn complete(
        &self,
        upstream: Upstream,
        outcome: Result<Response<reqwest::Body>, BoxError>,
    ) -> Result<Response<reqwest::Body>, BoxError> {
        let now = self.config.now();
        let response = match outcome {
            Ok(response) => response,
            Err(error) => {
                if let Some(entry) = upstream
                    .entry
                    .as_ref()
                    .filter(|e| self.stale_on_error(e, &upstream.directives, now))
                {
                    tracing::debug!(%error, "upstream failed; serving the stale entry");
                    return Ok(self.serve(entry, now, CacheStatus::Stale));
                }
                return Err(error);
            }
        };
        let status = response.status();
        if let Some(entry) = &upstream.entry {
            if status == StatusCode::NOT_MODIFIED
                && has_validator(&entry.headers)
                && !selects(&entry.headers, response.headers())
            {
                // Section 4.3.4: not applied. Only a background refresh gets here (`fetch`
                // resends the request); the entry it could not refresh is dropped.
                if let Err(error) = self.state.store.delete(&upstream.key).await {
                    self.store_failed("delete", &error);
                }
            } else if status == StatusCode::NOT_MODIFIED && has_validator(&entry.headers) {
                let (refreshed, vary) = self.revalidated(&upstream, entry, response.headers(), now);
                let served = self.serve(&refreshed, now, CacheStatus::Revalidated);
                let served = with_report_below(served, &response);
                // RFC 9111 section 4.3.4: a `304` whose `Vary` differs from the stored
                // response's is not applied to the old variant. The server validated the body
                // for *this* request, so it is served and stored again under the new `Vary`
                // (keyed by this request's headers); the old variant is dropped. With
                // `Vary: *` nothing is stored. Nor when the `304` says `no-store` (section 3):
                // then the old entry goes too, whatever TTL is forced. (One a shared cache may
                // not share, `private` or `Set-Cookie`, is served but not stored: the old entry
                // stays, to be revalidated.)
                let keep = vary.is_some() && !no_store(refreshed.status, &refreshed.headers);
                if !keep || vary.as_ref() != Some(&entry.vary) {
                    let mut stale_keys = vec![&upstream.key];
                    if !keep {
                        stale_keys.push(&upstream.base);
                    }
                    stale_keys.dedup();
                    for key in stale_keys {
                        if let Err(error) = self.state.store.delete(key).await {
                            self.store_failed("delete", &error);
                        }
                    }
                }
                if keep && upstream.store_ok && self.shareable(&refreshed.headers) {
                    self.put(&upstream, Arc::new(refreshed)).await;
                }
                return Ok(served);
            }
            if status.is_server_error() && self.stale_on_error(entry, &upstream.directives, now) {
                tracing::debug!(%status, "upstream answered with a server error; serving the stale entry");
                let served = self.serve(entry, now, CacheStatus::Stale);
                return Ok(with_report_below(served, &response));
            }
        }
        let Some(lifetime) = self.storable(&upstream, &response, now) else {
            return Ok(self.finish(response, CacheStatus::Miss));
        };
        if upstream.entry.is_some() && status == StatusCode::NOT_MODIFIED {
            return Ok(self.finish(response, CacheStatus::Miss));
        }
        if response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len > self.config.max_entry_size as u64)
        {
            tracing::debug!(
                url = url_of(&upstream.key),
                "body larger than max_entry_size; streaming it uncached"
            );
            return Ok(self.finish(response, CacheStatus::Miss));
        }
        let (parts, body) = response.into_parts();
        match buffer(body, self.config.max_entry_size).await {
            Buffered::Streaming(body) => {
                tracing::debug!(
                    url = url_of(&upstream.key),
                    "body larger than max_entry_size (or failed); streaming it uncached"
                );
                Ok(self.finish(Response::from_parts(parts, body), CacheStatus::Miss))
            }
            Buffered::Complete(bytes) => {
                if upstream.store_ok {
                    let mut entry =
                        CacheEntry::new(url_of(&upstream.key), parts.status, bytes.clone(), now);
                    entry.version = parts.version;
                    entry.headers = parts.headers.clone();
                    strip_proxy_fields(&mut entry.headers);
                    // An `Age` slot, overwritten on every serve, so that serving a hit replaces
                    // a value instead of growing the cloned header map.
                    if !entry.headers.contains_key(header::AGE) {
                        entry
                            .headers
                            .insert(header::AGE, HeaderValue::from_static("0"));
                    }
                    lifetime.apply(&mut entry, &self.config);
                    self.put(&upstream, Arc::new(entry)).await;
                }
                let response = Response::from_parts(parts, reqwest::Body::from(bytes));
                Ok(self.finish(response, CacheStatus::Miss))
            }
        }
    }

    /// Stores `entry` under the request's key, or under its `Vary` variant with an index at the
    /// base key.
    pub(super) async fn put(&self, upstream: &Upstream, entry: Arc<CacheEntry>) {
        let store = &self.state.store;
        let result = if entry.vary.is_empty() {
            store.put(&upstream.base, entry).await
        } else {
            let base = &upstream.base;
            let variant = base.variant(&entry.vary, &upstream.head.headers);
            let mut index = CacheEntry::new(
                entry.url.clone(),
                entry.status,
                Bytes::new(),
                entry.stored_at,
            );
            index.vary = entry.vary.clone();
            index.fresh_until = entry.fresh_until;
            index.expires_at = entry.expires_at;
            match store.put(base, Arc::new(index)).await {
                Ok(()) => store.put(&variant, entry).await,
                Err(error) => Err(error),
            }
        };
        if let Err(error) = result {
            self.store_failed("write", &error);
        }
    }
}

pub(super) struct Upstream {
    pub(super) head: Head,
    pub(super) base: RequestKey,
    pub(super) key: RequestKey,
    pub(super) entry: Option<Arc<CacheEntry>>,
    pub(super) ttl: Option<CacheTtl>,
    pub(super) store_ok: bool,
    pub(super) directives: RequestDirectives,
}

/// `served` (made from the stored entry) with what the layers below reported on the upstream's
/// answer it replaces (a `304`, a server error): the request did reach them, so its dedupe
/// role, limiter wait and upstream status belong in its [`Report`].
fn with_report_below(
    mut served: Response<reqwest::Body>,
    below: &Response<reqwest::Body>,
) -> Response<reqwest::Body> {
    if let Some(below) = Report::of(below) {
        let report = Report::record(served.extensions_mut());
        report.dedupe = below.dedupe;
        report.rate_limit.clone_from(&below.rate_limit);
        report.upstream = below.upstream;
    }
    served
}
