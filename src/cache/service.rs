//! [`Cache`]: the service made by [`CacheLayer`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy};
use tower::{Service, ServiceExt};

use crate::body::{Buffered, ReplayableBody, buffer};
use crate::context::{Report, RequestContext};
use crate::error::BoxError;
use crate::key::RequestKey;
use crate::store::StoreError;

use super::future::ResponseFuture;
use super::layer::{CacheLayer, Config, State};
use super::saturating;
use super::store::Invalidation;
use super::{CacheEntry, CacheMode, CacheStatus, CacheTtl};

/// The service made by [`CacheLayer`]: see the [module documentation](super).
///
/// Its inner service must answer with `http::Response<reqwest::Body>` (as
/// [`HttpClient`](crate::HttpClient) and [`Handoff`](crate::Handoff) do); request bodies must be
/// replayable and buildable from [`Bytes`] (`reqwest::Body`, `Bytes`) so that a background
/// refresh can resend them.
///
/// `poll_ready` is always ready: the inner service's readiness is driven inside the response
/// future, on a clone, only when the request goes upstream, so a hit never reserves it.
#[derive(Clone)]
pub struct Cache<S> {
    inner: S,
    layer: CacheLayer,
}

impl<S> Cache<S> {
    pub(crate) fn new(inner: S, layer: CacheLayer) -> Self {
        Cache { inner, layer }
    }

    /// The layer's configuration and store handle (for [`CacheLayer::stats`]).
    pub fn layer(&self) -> &CacheLayer {
        &self.layer
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, B> Service<Request<B>> for Cache<S>
where
    S: Service<Request<B>, Response = Response<reqwest::Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: ReplayableBody + From<Bytes> + Send + 'static,
{
    type Response = Response<reqwest::Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // One budget of store time for the request, shared with the layers below.
        let budget = crate::store::budget::StoreBudget::of(request.extensions_mut());
        self.layer
            .state
            .start_cleanup(self.layer.config.cleanup_interval);
        let job = Job {
            config: self.layer.config.clone(),
            state: self.layer.state.clone(),
        };
        ResponseFuture {
            inner: Box::pin(budget.scope(job.run(self.inner.clone(), request))),
        }
    }
}

/// The request head, kept for storing, revalidating and refreshing after the request moved.
#[derive(Clone)]
struct Head {
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
}

impl Head {
    fn parts(&self) -> http::request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.headers = self.headers.clone();
        parts
    }
}

/// The request directives `http-cache-semantics` does not evaluate for us: its
/// [`CachePolicy::before_request`] decides whether a stored response satisfies `no-cache`,
/// `max-age`, `min-fresh` and `max-stale` (see [`request_accepts`]), but it has no answer for
/// these.
#[derive(Debug, Default)]
struct RequestDirectives {
    /// RFC 9111 section 5.2.1.4 (and Pragma, section 5.4): kept to refuse a
    /// stale-while-revalidate answer, which `before_request`'s "stale" does not tell apart.
    no_cache: bool,
    /// Sections 5.2.1.1 and 5.2.1.3: `max-age` or `min-fresh`, whose client "does not wish to
    /// receive a stale response"; kept for the same reason as `no_cache`.
    wants_fresh: bool,
    /// Section 5.2.1.5: the cache neither reads nor writes (the crate only refuses to store).
    no_store: bool,
    /// Section 5.2.1.7: the crate leaves the `504` to the cache.
    only_if_cached: bool,
    /// RFC 5861 section 4: unknown to the crate.
    stale_if_error: Option<u64>,
}

/// The `Cache-Control` directives of `headers`, names in lower case. A field line with
/// non-ASCII bytes (obs-text) is read too, lossily: its `no-store` or `private` still counts.
pub(crate) fn directives(
    headers: &HeaderMap,
) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    headers.get_all(header::CACHE_CONTROL).iter().flat_map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .filter_map(|part| {
                let mut kv = part.splitn(2, '=');
                let name = kv.next()?.trim().to_ascii_lowercase();
                if name.is_empty() {
                    return None;
                }
                let value = kv.next().map(|v| v.trim().trim_matches('"').to_owned());
                Some((name, value))
            })
            .collect::<Vec<_>>()
    })
}

/// The delta-seconds value of directive `name`, clamped to 2^31 s (RFC 9111 section 1.2.2).
fn directive_secs(headers: &HeaderMap, name: &str) -> Option<u64> {
    directives(headers)
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| saturating::delta_seconds(&v?))
}

fn has_directive(headers: &HeaderMap, name: &str) -> bool {
    directives(headers).any(|(n, _)| n == name)
}

impl RequestDirectives {
    fn of(headers: &HeaderMap) -> Self {
        let mut d = RequestDirectives::default();
        if !headers.contains_key(header::CACHE_CONTROL) {
            if headers
                .get(header::PRAGMA)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache"))
            {
                d.no_cache = true;
            }
            return d;
        }
        for (name, value) in directives(headers) {
            match name.as_str() {
                "no-cache" => d.no_cache = true,
                "max-age" | "min-fresh" => d.wants_fresh = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                "stale-if-error" => {
                    d.stale_if_error = value.as_deref().and_then(saturating::delta_seconds);
                }
                _ => {}
            }
        }
        d
    }
}

/// Whether the stored response lets a stale copy of it be served at all (RFC 9111 section
/// 4.2.4): not when it says `must-revalidate` (section 5.2.2.2) or `no-cache` (section 5.2.2.4:
/// only after a successful revalidation), nor, in a shared cache, `proxy-revalidate` (section
/// 5.2.2.8) or `s-maxage` (section 5.2.2.10, which implies it). This holds for every stale path:
/// `max-stale`, stale-if-error, stale-while-revalidate, [`CacheMode::ForceCache`] and
/// [`CacheMode::OnlyIfCached`], forced TTLs and [`CacheLayer::stale_if_error`].
fn may_serve_stale(headers: &HeaderMap, shared: bool) -> bool {
    let mut ok = true;
    for (name, _) in directives(headers) {
        match name.as_str() {
            "must-revalidate" | "no-cache" => ok = false,
            "proxy-revalidate" | "s-maxage" if shared => ok = false,
            _ => {}
        }
    }
    ok
}

/// Drops `max-stale=VALUE` members whose value is not delta-seconds (`-1`, `1.5`, `"`) from the
/// request's `Cache-Control`: the crate reads them as a bare `max-stale`, "any staleness", so a
/// garbage value would widen what is served stale; RFC 9111 section 5.2.1.2 gives a value
/// meaning only as delta-seconds, and a cache may always refuse a stale response.
fn drop_invalid_max_stale(headers: &mut HeaderMap) {
    let invalid = |part: &str| {
        let mut kv = part.splitn(2, '=');
        let name = kv.next().unwrap_or_default().trim();
        name.eq_ignore_ascii_case("max-stale")
            && kv
                .next()
                .is_some_and(|value| saturating::delta_seconds(value).is_none())
    };
    let values: Vec<HeaderValue> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .cloned()
        .collect();
    if !values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(invalid))
    {
        return;
    }
    headers.remove(header::CACHE_CONTROL);
    for value in values {
        let kept = match value.to_str() {
            Ok(text) => text
                .split(',')
                .filter(|part| !invalid(part))
                .collect::<Vec<_>>()
                .join(","),
            Err(_) => {
                headers.append(header::CACHE_CONTROL, value);
                continue;
            }
        };
        if let Ok(kept) = HeaderValue::from_str(&kept) {
            headers.append(header::CACHE_CONTROL, kept);
        }
    }
}

/// Whether the request's own directives (`no-cache`, `max-age`, `min-fresh`, `max-stale`, and
/// `Pragma: no-cache`) let it be answered with `entry` without going upstream, fresh or (with
/// `max-stale`, when `stale_ok`) stale, as `http-cache-semantics` evaluates them
/// ([`CachePolicy::before_request`], RFC 9111 section 4 and 5.2.1).
///
/// The entry's freshness is the cache's, not the crate's (forced and sliding TTLs, heuristics),
/// so the crate sees a policy made from it: `max-age` equal to the entry's lifetime in whole
/// seconds, rounded up, received that long before the entry turns stale, and `must-revalidate`
/// when stale use is forbidden. Its stale instant is then exactly the entry's; its age is at
/// most a second above the entry's (a request `max-age` errs on the side of going upstream).
///
/// Where the crate falls short, the request is prepared first:
/// * directive names in lower case and delta-seconds clamped to 2^31 (RFC 9111 sections 5.2
///   and 1.2.2; the crate is case-sensitive and reads a too-large `min-fresh` as absent);
/// * `Pragma` dropped when `Cache-Control` is present (section 5.4; the crate honours
///   `Pragma: no-cache` always), and in lower case otherwise (the crate is case-sensitive);
/// * a `max-stale` with an invalid value dropped ([`drop_invalid_max_stale`]);
/// * `Authorization` dropped (the crate would call the policy unstorable, so stale, in a
///   shared cache; the key already holds the credentials, and storing was decided when the
///   entry was written).
///
/// The crate serves `max-stale=N` only while the staleness is below N seconds, not at N
/// exactly (section 5.2.1.1 allows N); the cache may always refuse a stale response, so this is
/// kept.
fn request_accepts<B>(
    request: &Request<B>,
    entry: &CacheEntry,
    stale_ok: bool,
    shared: bool,
    now: SystemTime,
) -> bool {
    let headers = request.headers();
    // Without request directives the answer is the entry's freshness: no policy on a plain hit.
    if !headers.contains_key(header::CACHE_CONTROL) && !headers.contains_key(header::PRAGMA) {
        return entry.is_fresh(now);
    }
    let lifetime = entry
        .fresh_until
        .duration_since(entry.stored_at)
        .unwrap_or_default()
        .saturating_add(entry.age_at_store);
    let secs = lifetime
        .as_secs()
        .saturating_add(u64::from(lifetime.subsec_nanos() > 0));
    let received = entry
        .fresh_until
        .checked_sub(Duration::from_secs(secs))
        .unwrap_or(std::time::UNIX_EPOCH);
    let mut cache_control = format!("max-age={secs}");
    if !stale_ok {
        cache_control.push_str(", must-revalidate");
    }
    let (mut stored, ()) = Response::new(()).into_parts();
    if let Ok(value) = HeaderValue::from_str(&cache_control) {
        stored.headers.insert(header::CACHE_CONTROL, value);
    }
    let mut presented = Head {
        method: request.method().clone(),
        uri: request.uri().clone(),
        headers: saturating::for_policy(headers).into_owned(),
    }
    .parts();
    presented.headers.remove(header::AUTHORIZATION);
    if presented.headers.contains_key(header::CACHE_CONTROL) {
        presented.headers.remove(header::PRAGMA);
        drop_invalid_max_stale(&mut presented.headers);
    } else if let Some(lower) = presented
        .headers
        .get(header::PRAGMA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        // Section 5.4: `No-Cache` is `no-cache` (the crate looks for the lower-case spelling).
        presented.headers.insert(header::PRAGMA, lower);
    }
    let options = CacheOptions {
        shared,
        ..CacheOptions::default()
    };
    let policy = CachePolicy::new_options(&presented, &stored, received, options);
    matches!(
        policy.before_request(&presented, now),
        BeforeRequest::Fresh(_)
    )
}

/// Request headers that make the cache step aside: the caller revalidates or asks for a range
/// itself.
const BYPASS_HEADERS: &[HeaderName] = &[
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Response headers a `304` does not replace in the stored entry.
const NOT_UPDATED_BY_304: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
    header::CONNECTION,
];

/// The URL entries are stored and invalidated under: the key's display form without the method
/// (secret query parameters are redacted there).
fn url_of(key: &RequestKey) -> &str {
    let display = key.display();
    display.split_once(' ').map_or(display, |(_, url)| url)
}

/// The key of one `Vary` variant: the base key and the values of the varying request headers.
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        for name in value.to_str().ok()?.split(',') {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// The statuses RFC 9110 section 15.1 defines as heuristically cacheable (206 is among them,
/// but never stored here).
const HEURISTICALLY_CACHEABLE: &[u16] =
    &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// The statuses whose caching requirements the cache implements, for `must-understand`
/// (RFC 9111 section 5.2.2.3): those `http-cache-semantics` understands (not `206`).
const UNDERSTOOD_STATUSES: &[u16] = &[
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// Whether the response's `no-store` applies: it does unless `must-understand` is present
/// and the status understood (RFC 9111 section 5.2.2.3: the cache then ignores `no-store`).
fn no_store(status: StatusCode, headers: &HeaderMap) -> bool {
    has_directive(headers, "no-store")
        && !(has_directive(headers, "must-understand")
            && UNDERSTOOD_STATUSES.contains(&status.as_u16()))
}

/// Whether RFC 9111 forbids storing a response of `status` whatever its freshness, a forced
/// TTL included: only final statuses, and 206 and 304 only when the cache understands them,
/// which it does not (range requests pass through, partial responses are never stored or
/// combined); nor a status `must-understand` names that the cache does not understand
/// (section 5.2.2.3).
fn never_stored(status: StatusCode, headers: &HeaderMap) -> bool {
    let code = status.as_u16();
    status.is_informational()
        || code == 206
        || code == 304
        || (has_directive(headers, "must-understand") && !UNDERSTOOD_STATUSES.contains(&code))
}

/// One `Cache-Control` value without directive `name` (compared case-insensitively); `None`
/// when nothing is left.
fn without_directive(value: &HeaderValue, name: &str) -> Option<HeaderValue> {
    let Ok(text) = value.to_str() else {
        return Some(value.clone());
    };
    let kept: Vec<&str> = text
        .split(',')
        .filter(|part| {
            let directive = part.split('=').next().unwrap_or_default().trim();
            !directive.is_empty() && !directive.eq_ignore_ascii_case(name)
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(",")).ok()
}

/// Removes the fields specific to the proxy the request went through, which RFC 9111 §3.1
/// forbids storing unless the proxy is part of the key (it is not: clients with different
/// proxies may share a store).
fn strip_proxy_fields(headers: &mut HeaderMap) {
    for name in [
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
        "proxy-connection",
    ] {
        headers.remove(name);
    }
}

/// Whether `method` is known to be safe (RFC 9110 section 9.2.1). Every other method, those
/// the cache has never heard of included, is unsafe and invalidates (RFC 9111 section 4.4).
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// A URI's origin and path as the request key's display form writes them (lower-case scheme and
/// host, no default port, no userinfo, `/` for an empty path): `(origin, path)`.
fn origin_and_path(uri: &http::Uri) -> Option<(String, String)> {
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
fn invalidated_urls(target: &http::Uri, headers: &HeaderMap) -> Vec<String> {
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
fn resolve_reference(origin: &str, path: &str, reference: &str) -> Option<http::Uri> {
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
fn remove_dot_segments(path: &str) -> String {
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

struct Job {
    config: Arc<Config>,
    state: Arc<State>,
}

/// What a lookup found.
struct Found {
    /// The request's own key.
    base: RequestKey,
    /// The key the response is stored under (a variant key behind a `Vary` index).
    key: RequestKey,
    entry: Option<Arc<CacheEntry>>,
}

impl Job {
    fn store_failed(&self, what: &str, error: &StoreError) {
        self.state
            .counters
            .store_errors
            .fetch_add(1, Ordering::Relaxed);
        crate::store::warn::store_warn!(&*self.state, %error, kind = ?error.kind(), "cache store {what} failed; passing the request through");
    }

    fn finish(
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

    fn serve(
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

    async fn pass<S, B>(
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

    async fn run<S, B>(
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
        let mode = request
            .extensions()
            .get::<CacheMode>()
            .copied()
            .unwrap_or_default();
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

        let ttl = request
            .extensions()
            .get::<CacheTtl>()
            .copied()
            .or_else(|| {
                if self.config.resource_ttls.is_empty() {
                    return None;
                }
                self.config.resource_ttls.get(context.resource()).copied()
            })
            .or(self.config.default_ttl);

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

    /// Sends an unsafe request; when the answer is not an error (2xx, 3xx), invalidates the
    /// stored entries of its URL (any query) and of the same-origin URLs its `Location` and
    /// `Content-Location` name (RFC 9111 section 4.4).
    async fn unsafe_request<S, B>(
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

    /// Goes upstream, conditionally when the stored entry can be revalidated; again without
    /// validators when the `304` does not describe the stored response (RFC 9111 section
    /// 4.3.4: it then MUST NOT update it, and the caller, who sent no condition, needs a body).
    async fn fetch<S, B>(
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

    /// Reads the entry for `key`, following a `Vary` index to the variant of these headers.
    async fn lookup(
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

    async fn slide(&self, key: &RequestKey, entry: &CacheEntry, now: SystemTime, window: Duration) {
        let fresh_until = saturating::add(now, window);
        // Touch at most once a second of movement, so that hot entries do not write per hit.
        if fresh_until
            .duration_since(entry.fresh_until)
            .is_ok_and(|moved| moved >= Duration::from_secs(1))
        {
            let expires_at = saturating::add(
                entry.expires_at,
                fresh_until
                    .duration_since(entry.fresh_until)
                    .unwrap_or_default(),
            );
            if let Err(error) = self.state.store.touch(key, fresh_until, expires_at).await {
                self.store_failed("touch", &error);
            }
        }
    }

    /// Whether the last background refresh of `key` failed (and forgets it): then this request
    /// refreshes in the foreground instead of being served stale again. Through
    /// [`Middleware`](crate::Middleware) a background refresh always fails (the request's
    /// middleware chain has finished), so there stale-while-revalidate serves one stale response
    /// and the next request revalidates.
    fn refresh_failed(&self, key: &RequestKey) -> bool {
        self.state
            .foreground
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
    }

    fn refresh_in_background<S, B>(
        &self,
        inner: S,
        request: &Request<B>,
        found: &Found,
        ttl: Option<CacheTtl>,
    ) where
        S: Service<Request<B>, Response = Response<reqwest::Body>> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: ReplayableBody + From<Bytes> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // A body that cannot be sent twice is not refreshed in the background.
        let Some(mut copy) = crate::body::copy(request) else {
            return;
        };
        {
            let mut refreshing = self
                .state
                .refreshing
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !refreshing.insert(found.key.clone()) {
                return;
            }
        }
        let head = Head {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
        };
        if let Some(entry) = &found.entry {
            add_validators(copy.headers_mut(), &entry.headers);
        }
        let upstream = Upstream {
            head,
            base: found.base.clone(),
            key: found.key.clone(),
            entry: found.entry.clone(),
            ttl,
            store_ok: true,
            directives: RequestDirectives::default(),
        };
        let job = Job {
            config: self.config.clone(),
            state: self.state.clone(),
        };
        let span = tracing::debug_span!("cache_refresh", url = url_of(&found.key));
        runtime.spawn(tracing::Instrument::instrument(
            async move {
                let key = upstream.key.clone();
                let outcome = inner.oneshot(copy).await.map_err(Into::into);
                let failed = match &outcome {
                    Err(error) => {
                        tracing::debug!(%error, "background refresh failed; the next request refreshes in the foreground");
                        true
                    }
                    Ok(response) => response.status().is_server_error(),
                };
                if failed {
                    job.state
                        .foreground
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone());
                }
                // The response is dropped; only the store matters here.
                let _ = job.complete(upstream, outcome).await;
                job.state
                    .refreshing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            },
            span,
        ));
    }

    /// Handles the upstream answer: revalidation, stale-if-error, storing.
    async fn complete(
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
                return Ok(self.serve(entry, now, CacheStatus::Stale));
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

    fn stale_on_error(
        &self,
        entry: &CacheEntry,
        directives: &RequestDirectives,
        now: SystemTime,
    ) -> bool {
        if !may_serve_stale(&entry.headers, self.config.shared) {
            return false;
        }
        let staleness = entry.staleness(now).as_secs();
        let window = directive_secs(&entry.headers, "stale-if-error")
            .into_iter()
            .chain(directives.stale_if_error)
            .chain(self.config.stale_if_error.map(|d| d.as_secs()))
            .max();
        window.is_some_and(|w| staleness <= w)
    }

    /// Whether a shared cache may store a response with these headers: never one marked
    /// `private`, nor (unless allowed) one that sets a cookie, whatever TTL is forced. A private
    /// cache may store both.
    fn shareable(&self, headers: &HeaderMap) -> bool {
        !self.config.shared
            || !(has_directive(headers, "private")
                || (!self.config.share_set_cookie && headers.contains_key(header::SET_COOKIE)))
    }

    /// Whether and how long to store this response.
    fn storable(
        &self,
        upstream: &Upstream,
        response: &Response<reqwest::Body>,
        now: SystemTime,
    ) -> Option<Lifetime> {
        let status = response.status();
        let headers = response.headers();
        let vary = vary_names(headers)?;
        if !self.shareable(headers) || no_store(status, headers) || never_stored(status, headers) {
            return None;
        }
        if let Some(ttl) = upstream.ttl {
            if ttl.is_no_store() {
                return None;
            }
            if self.config.statuses.contains(&status) {
                return Some(Lifetime {
                    fresh: ttl.ttl(),
                    age: Duration::ZERO,
                    sliding: ttl.is_sliding().then_some(ttl.ttl()),
                    vary,
                });
            }
            // Other statuses: as RFC 9111 allows, without heuristics (the forced TTL wins).
        }
        let (fresh, age) =
            self.rfc_lifetime(&upstream.head, status, headers, now, upstream.ttl.is_none())?;
        if fresh.is_zero() && !has_validator(headers) {
            return None;
        }
        Some(Lifetime {
            fresh,
            age,
            sliding: None,
            vary,
        })
    }

    /// Whether RFC 9111 section 3 lets a cache store a response of `status` with `headers`,
    /// and if so its freshness (time to live) and age. `heuristic`: whether heuristic freshness
    /// may apply (no forced TTL for the request).
    fn rfc_lifetime(
        &self,
        head: &Head,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
        heuristic: bool,
    ) -> Option<(Duration, Duration)> {
        let code = status.as_u16();
        if never_stored(status, headers) {
            return None;
        }
        let explicit = has_directive(headers, "max-age")
            || (self.config.shared && has_directive(headers, "s-maxage"))
            || headers.contains_key(header::EXPIRES);
        let heuristically = HEURISTICALLY_CACHEABLE.contains(&code);
        if !(explicit || heuristically || has_directive(headers, "public")) {
            return None;
        }
        let policy = if heuristic {
            self.policy(head, status, headers, now)
        } else {
            self.policy_with(head, status, headers, now, false)
        };
        if !policy.is_storable() {
            return None;
        }
        let age = policy.age(now);
        let mut fresh = policy.time_to_live(now);
        if !explicit {
            // Inferred freshness (heuristic, `immutable`) is capped.
            fresh = fresh.min(self.config.heuristic_cap.saturating_sub(age));
        }
        Some((fresh, age))
    }

    /// The `http-cache-semantics` policy of a response, heuristics allowed where RFC 9111
    /// allows them.
    fn policy(
        &self,
        head: &Head,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> CachePolicy {
        let heuristic = HEURISTICALLY_CACHEABLE.contains(&status.as_u16())
            && self.config.heuristic_fraction > 0.0;
        self.policy_with(head, status, headers, now, heuristic)
    }

    /// The policy, with what the crate sees adjusted (see [`saturating::for_policy`]):
    /// * headers normalised (directive case, huge numbers, `Age` lists, strict HTTP-dates);
    /// * `Last-Modified` hidden unless `heuristic`: the crate applies heuristics to every
    ///   storable status, RFC 9111 only to the heuristically cacheable ones;
    /// * `no-store` hidden when `must-understand` is present and the status understood
    ///   (RFC 9111 section 5.2.2.3); the crate does not know `must-understand`;
    /// * a status the crate does not list as understood (it knows 14) stands in as `200`,
    ///   once [`Job::rfc_lifetime`] has decided that RFC 9111 lets it be stored: the crate
    ///   refuses every other status, even with explicit freshness.
    fn policy_with(
        &self,
        head: &Head,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
        heuristic: bool,
    ) -> CachePolicy {
        let (mut response, ()) = Response::new(()).into_parts();
        response.status = if UNDERSTOOD_STATUSES.contains(&status.as_u16()) {
            status
        } else {
            StatusCode::OK
        };
        let mut seen = saturating::for_policy(headers);
        if !heuristic && seen.contains_key(header::LAST_MODIFIED) {
            seen.to_mut().remove(header::LAST_MODIFIED);
        }
        if has_directive(headers, "no-store") && !no_store(status, headers) {
            let kept: Vec<HeaderValue> = seen
                .get_all(header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| without_directive(v, "no-store"))
                .collect();
            let seen = seen.to_mut();
            seen.remove(header::CACHE_CONTROL);
            for value in kept {
                seen.append(header::CACHE_CONTROL, value);
            }
        }
        response.headers = seen.into_owned();
        let options = CacheOptions {
            shared: self.config.shared,
            cache_heuristic: self.config.heuristic_fraction as f32,
            ..CacheOptions::default()
        };
        CachePolicy::new_options(&head.parts(), &response, now, options)
    }

    /// The stored entry with the headers of a `304` and a new lifetime, and the `Vary` names of
    /// the merged headers (`None` for `Vary: *`).
    ///
    /// The headers are merged by hand (RFC 9111 section 4.3.4: every field the `304` carries
    /// replaces all instances of it in the stored response, and fields new in the `304` are
    /// added): `CachePolicy::after_response` keeps only the first value of a repeated field and
    /// drops fields the stored response did not have (a new `Vary` among them).
    fn revalidated(
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

    /// Stores `entry` under the request's key, or under its `Vary` variant with an index at the
    /// base key.
    async fn put(&self, upstream: &Upstream, entry: Arc<CacheEntry>) {
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

struct Upstream {
    head: Head,
    base: RequestKey,
    key: RequestKey,
    entry: Option<Arc<CacheEntry>>,
    ttl: Option<CacheTtl>,
    store_ok: bool,
    directives: RequestDirectives,
}

struct Lifetime {
    fresh: Duration,
    age: Duration,
    sliding: Option<Duration>,
    vary: Vec<HeaderName>,
}

impl Lifetime {
    fn apply(self, entry: &mut CacheEntry, config: &Config) {
        entry.age_at_store = self.age;
        entry.fresh_until = saturating::add(entry.stored_at, self.fresh);
        entry.sliding = self.sliding;
        entry.vary = self.vary;
        let h = &entry.headers;
        // A response that may never be served stale is kept past its freshness only to be
        // revalidated.
        let mut keep = [
            directive_secs(h, "stale-if-error"),
            directive_secs(h, "stale-while-revalidate"),
            config.stale_if_error.map(|d| d.as_secs()),
        ]
        .into_iter()
        .flatten()
        .max()
        .filter(|_| may_serve_stale(h, config.shared))
        .map_or(Duration::ZERO, Duration::from_secs);
        if has_validator(h) {
            keep = keep.max(config.keep_stale);
        }
        entry.expires_at = saturating::add(entry.fresh_until, keep);
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
fn selects(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
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
fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

#[cfg(test)]
mod tests {
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
