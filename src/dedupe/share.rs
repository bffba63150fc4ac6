//! Body sharing: what a leader's upstream call leaves for its followers.
//!
//! [`upstream`] makes the call, buffers the body up to `max_body` and hands the outcome to the
//! local followers and, through the store lease, to other processes. A response with `Vary` is
//! stamped with a digest of the leader's header values ([`VARY_DIGEST`]), so that only requests
//! with the same values follow it.

use std::sync::Arc;
use std::time::Duration;

use tower::{Service, ServiceExt};

use crate::body::{Buffered, buffer_or_fail};
use crate::context::Report;
use crate::error::{BoxError, was_sent};
use crate::key::RequestKey;

use super::flight::{LocalLead, Outcome};
use super::layer::Config;
use super::layer::Counters;
use super::lease::{StoreLease, with_renewal};
use super::service::Response;
use super::store::Completion;
use super::{BypassReason, DedupeError, DedupeRole, SharedError, SharedResponse};

/// The least time a published result is kept, whatever `result_ttl` says: followers already
/// waiting in other processes read the store every few milliseconds (at most every
/// `fallback_poll`, 50 ms by default, if a Redis announcement is missed), and must find the
/// result there rather than a vacant key they would lead again.
pub(crate) const MIN_RESULT_RETENTION: Duration = Duration::from_secs(1);

/// The header a shared response carries (in every store, never to callers: see
/// [`SharedResponse::to_response`]) when it has a `Vary`: the digest of the leader's values of
/// the request headers it names, or `*` when it may be shared with nobody.
pub(crate) const VARY_DIGEST: http::HeaderName =
    http::HeaderName::from_static("courteous-dedupe-vary");

/// The digest of `asked`'s values of the request headers `response`'s `Vary` names (a
/// [`RequestKey::variant`] of `key`, so a hash, never the values), `*` for `Vary: *` or one that
/// cannot be read; `None` without `Vary`.
fn vary_digest(
    key: &RequestKey,
    response: &http::HeaderMap,
    asked: &http::HeaderMap,
) -> Option<http::HeaderValue> {
    let mut names: Vec<http::HeaderName> = Vec::new();
    for value in response.get_all(http::header::VARY) {
        let Ok(value) = value.to_str() else {
            return Some(http::HeaderValue::from_static("*"));
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Some(http::HeaderValue::from_static("*"));
            }
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) if !names.contains(&name) => names.push(name),
                Ok(_) => {}
                Err(_) => return Some(http::HeaderValue::from_static("*")),
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let digest = key.variant(&names, asked).to_hex();
    Some(http::HeaderValue::from_str(&digest).unwrap_or(http::HeaderValue::from_static("*")))
}

/// Whether a request whose headers are `asked` may receive a response shared under `key`: yes
/// unless the response varies on request headers whose values differ from its leader's.
pub(super) fn may_follow(
    key: &RequestKey,
    response: &http::HeaderMap,
    asked: &http::HeaderMap,
) -> bool {
    match response.get(VARY_DIGEST) {
        None => true,
        Some(leader) => {
            leader != "*" && vary_digest(key, response, asked).is_some_and(|own| own == leader)
        }
    }
}

/// Goes upstream for `lead`'s followers (and, with a lease, for other processes' too).
pub(super) async fn upstream<S, B>(
    config: &Config,
    lead: LocalLead,
    lease: Option<StoreLease>,
    inner: S,
    request: http::Request<B>,
    role: DedupeRole,
) -> Result<Response, BoxError>
where
    S: Service<http::Request<B>, Response = Response>,
    S::Error: Into<BoxError>,
{
    // Masks what other processes receive of an error (issue 12 item 7).
    let context = crate::RequestContext::of(&request).cloned();
    // What a `Vary` of the response is checked against by followers.
    let asked = request.headers().clone();
    let call = async {
        let response = inner.oneshot(request).await.map_err(Into::into)?;
        let (parts, body) = response.into_parts();
        let body = buffer_or_fail(body, config.max_body).await?;
        Ok::<_, BoxError>((parts, body))
    };
    let result = match &lease {
        Some(lease) => with_renewal(call, lease, config.lease_timeout).await,
        None => call.await,
    };
    // Kept at least `MIN_RESULT_RETENTION`, for the followers already waiting elsewhere. A
    // failure is kept only that long: a request arriving later tries upstream again rather than
    // receiving an error that may no longer hold.
    let ttl = config.result_ttl.max(MIN_RESULT_RETENTION);
    match result {
        // Refused or failed before it left (the rate limiter refused it, it waited its whole
        // `MaxWait` in the queue, it could not connect): not an upstream outcome, so nobody
        // else receives it. The lease is released and the local followers join again: one of
        // them leads with its own priority and `MaxWait`, in this process or another.
        Err(error) if !was_sent(&*error) => {
            Counters::add(&lead.state.counters().not_sent, 1);
            if let Some(lease) = lease {
                lease.release().await;
            }
            lead.hand_off();
            Err(error)
        }
        Err(error) => {
            let error = DedupeError::Upstream(SharedError::new(error));
            lead.finish(Outcome::Failed(error.clone()));
            if let Some(lease) = lease {
                let message = error
                    .upstream()
                    .map_or_else(|| error.to_string(), |e| error_chain(e));
                let message = match &context {
                    Some(context) => context.redact(&message),
                    None => {
                        crate::key::redact_secrets(&message, crate::key::is_default_secret_param)
                    }
                };
                lease
                    .publish(Completion::Failed(message.into()), MIN_RESULT_RETENTION)
                    .await;
            }
            Err(Box::new(error))
        }
        Ok((parts, Buffered::Streaming(body))) => {
            lead.finish(Outcome::OwnRequest(BypassReason::TooLarge));
            if let Some(lease) = lease {
                lease.publish(Completion::TooLarge, ttl).await;
            }
            let mut response = http::Response::from_parts(parts, body);
            Report::record(response.extensions_mut()).dedupe = Some(role);
            Ok(response)
        }
        // `no-store` (RFC 9111 §5.2.2.5): no part of the response may be kept, so it is not
        // published to the store (a file or Redis) for other processes, nor handed to local
        // followers: each of those sends its own request. Followers elsewhere find the lease
        // released and lead or follow again.
        Ok((parts, Buffered::Complete(body))) if no_store(&parts.headers) => {
            lead.finish(Outcome::OwnRequest(BypassReason::NoStore));
            if let Some(lease) = lease {
                lease.release().await;
            }
            let mut response = http::Response::from_parts(parts, reqwest::Body::from(body));
            Report::record(response.extensions_mut()).dedupe = Some(role);
            Ok(response)
        }
        Ok((mut parts, Buffered::Complete(body))) => {
            parts.headers.remove(VARY_DIGEST);
            if let Some(digest) = vary_digest(&lead.key, &parts.headers, &asked) {
                parts.headers.insert(VARY_DIGEST, digest);
            }
            let shared = Arc::new(SharedResponse {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
                extensions: parts.extensions,
            });
            let failure = config.fail_on.as_ref().is_some_and(|f| f(shared.status));
            let (local, remote, keep) = if failure {
                let error = DedupeError::FailureStatus {
                    status: shared.status,
                };
                let message: Arc<str> = error.to_string().into();
                (
                    Outcome::Failed(error),
                    Completion::Failed(message),
                    MIN_RESULT_RETENTION,
                )
            } else {
                (
                    Outcome::Response(shared.clone()),
                    Completion::Response(shared.clone()),
                    ttl,
                )
            };
            // Followers in this process first; then the store, for the others.
            let followers = lead.finish(local);
            if let Some(lease) = lease {
                lease.publish(remote, keep).await;
            }
            let mut response = shared.to_response(role);
            // For the journal: how many requests this call answered besides its own.
            if let Some(upstream) = &mut Report::record(response.extensions_mut()).upstream {
                upstream.followers = followers;
            }
            Ok(response)
        }
    }
}

/// Whether a response's `Cache-Control` says `no-store` (read as the cache layer reads it).
fn no_store(headers: &http::HeaderMap) -> bool {
    crate::cache::service::directives(headers).any(|(name, _)| name == "no-store")
}

/// `error: its source: its source's source`, for followers in other processes.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        message.push_str(": ");
        message.push_str(&next.to_string());
        source = next.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_varying_response_is_shared_only_with_the_leaders_values() {
        let (parts, ()) = http::Request::get("http://h/x")
            .body(())
            .unwrap()
            .into_parts();
        let key = crate::DefaultKeyExtractor::new()
            .key(&parts, Some(b""))
            .unwrap();
        use crate::KeyExtractor as _;
        let alice = headers(&[("x-user", "alice"), ("accept-language", "fr")]);
        let bob = headers(&[("x-user", "bob"), ("accept-language", "fr")]);
        let stamped = |vary: &str, asked: &http::HeaderMap| {
            let mut response = headers(&[("vary", vary)]);
            if let Some(digest) = vary_digest(&key, &response, asked) {
                response.insert(VARY_DIGEST, digest);
            }
            response
        };
        // Names in any case and order, repeated: one set.
        let response = stamped("X-User, accept-language, x-user", &alice);
        assert!(may_follow(&key, &response, &alice));
        assert!(!may_follow(&key, &response, &bob));
        assert!(!may_follow(&key, &response, &http::HeaderMap::new()));
        // On a header both lack or share: shared.
        let response = stamped("accept-language, x-other", &alice);
        assert!(may_follow(&key, &response, &bob));
        // `*` and unreadable names: nobody else.
        for vary in ["*", "x-user, *", "bad name"] {
            let response = stamped(vary, &alice);
            assert!(!may_follow(&key, &response, &alice), "{vary}");
        }
        // No Vary: no digest, shared.
        let response = stamped("", &alice);
        assert!(!response.contains_key(VARY_DIGEST));
        assert!(may_follow(&key, &response, &bob));
        // Never shown to callers.
        let shared = SharedResponse::new(
            http::StatusCode::OK,
            stamped("x-user", &alice),
            bytes::Bytes::new(),
        );
        let response = shared.to_response(DedupeRole::Follower);
        assert!(!response.headers().contains_key(VARY_DIGEST));
        assert!(response.headers().contains_key(http::header::VARY));
    }
}
