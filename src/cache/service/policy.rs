//! RFC 9111 decisions: the directives of requests and responses, whether a stored response
//! answers a request, and whether and how long a response is stored.

use std::time::{Duration, SystemTime};

use crate::cache::CacheEntry;
use crate::cache::saturating;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy};

use super::job::{Head, Job, Upstream};
use super::ttl::Lifetime;

/// The request directives `http-cache-semantics` does not evaluate for us: its
/// [`CachePolicy::before_request`] decides whether a stored response satisfies `no-cache`,
/// `max-age`, `min-fresh` and `max-stale` (see [`request_accepts`]), but it has no answer for
/// these.
#[derive(Debug, Default)]
pub(super) struct RequestDirectives {
    /// RFC 9111 section 5.2.1.4 (and Pragma, section 5.4): kept to refuse a
    /// stale-while-revalidate answer, which `before_request`'s "stale" does not tell apart.
    pub(super) no_cache: bool,
    /// Sections 5.2.1.1 and 5.2.1.3: `max-age` or `min-fresh`, whose client "does not wish to
    /// receive a stale response"; kept for the same reason as `no_cache`.
    pub(super) wants_fresh: bool,
    /// Section 5.2.1.5: the cache neither reads nor writes (the crate only refuses to store).
    pub(super) no_store: bool,
    /// Section 5.2.1.7: the crate leaves the `504` to the cache.
    pub(super) only_if_cached: bool,
    /// RFC 5861 section 4: unknown to the crate.
    pub(super) stale_if_error: Option<u64>,
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
pub(super) fn directive_secs(headers: &HeaderMap, name: &str) -> Option<u64> {
    directives(headers)
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| saturating::delta_seconds(&v?))
}

pub(super) fn has_directive(headers: &HeaderMap, name: &str) -> bool {
    directives(headers).any(|(n, _)| n == name)
}

impl RequestDirectives {
    pub(super) fn of(headers: &HeaderMap) -> Self {
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
///
/// [`CacheMode::ForceCache`]: crate::cache::CacheMode::ForceCache
/// [`CacheMode::OnlyIfCached`]: crate::cache::CacheMode::OnlyIfCached
/// [`CacheLayer::stale_if_error`]: crate::cache::CacheLayer::stale_if_error
pub(super) fn may_serve_stale(headers: &HeaderMap, shared: bool) -> bool {
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
pub(super) fn drop_invalid_max_stale(headers: &mut HeaderMap) {
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
pub(super) fn request_accepts<B>(
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
pub(super) const BYPASS_HEADERS: &[HeaderName] = &[
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// The key of one `Vary` variant: the base key and the values of the varying request headers.
pub(super) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
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

pub(super) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// The statuses RFC 9110 section 15.1 defines as heuristically cacheable (206 is among them,
/// but never stored here).
pub(super) const HEURISTICALLY_CACHEABLE: &[u16] =
    &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// The statuses whose caching requirements the cache implements, for `must-understand`
/// (RFC 9111 section 5.2.2.3): those `http-cache-semantics` understands (not `206`).
pub(super) const UNDERSTOOD_STATUSES: &[u16] = &[
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// Whether the response's `no-store` applies: it does unless `must-understand` is present
/// and the status understood (RFC 9111 section 5.2.2.3: the cache then ignores `no-store`).
pub(super) fn no_store(status: StatusCode, headers: &HeaderMap) -> bool {
    has_directive(headers, "no-store")
        && !(has_directive(headers, "must-understand")
            && UNDERSTOOD_STATUSES.contains(&status.as_u16()))
}

/// Whether RFC 9111 forbids storing a response of `status` whatever its freshness, a forced
/// TTL included: only final statuses, and 206 and 304 only when the cache understands them,
/// which it does not (range requests pass through, partial responses are never stored or
/// combined); nor a status `must-understand` names that the cache does not understand
/// (section 5.2.2.3).
pub(super) fn never_stored(status: StatusCode, headers: &HeaderMap) -> bool {
    let code = status.as_u16();
    status.is_informational()
        || code == 206
        || code == 304
        || (has_directive(headers, "must-understand") && !UNDERSTOOD_STATUSES.contains(&code))
}

/// One `Cache-Control` value without directive `name` (compared case-insensitively); `None`
/// when nothing is left.
pub(super) fn without_directive(value: &HeaderValue, name: &str) -> Option<HeaderValue> {
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
pub(super) fn strip_proxy_fields(headers: &mut HeaderMap) {
    for name in [
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
        "proxy-connection",
    ] {
        headers.remove(name);
    }
}

impl Job {
    pub(super) fn stale_on_error(
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
    pub(super) fn shareable(&self, headers: &HeaderMap) -> bool {
        !self.config.shared
            || !(has_directive(headers, "private")
                || (!self.config.share_set_cookie && headers.contains_key(header::SET_COOKIE)))
    }

    /// Whether and how long to store this response.
    pub(super) fn storable(
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
    pub(super) fn rfc_lifetime(
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
    pub(super) fn policy(
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
    pub(super) fn policy_with(
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
}
