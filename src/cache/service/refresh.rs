//! Background refreshes: `stale-while-revalidate` serves the stale entry and refreshes it once,
//! in a spawned task.

use bytes::Bytes;
use http::{Request, Response};
use tower::{Service, ServiceExt};

use crate::body::ReplayableBody;
use crate::cache::CacheTtl;
use crate::error::BoxError;
use crate::key::RequestKey;

use super::job::{Found, Head, Job, Upstream, url_of};
use super::policy::RequestDirectives;
use super::revalidate::add_validators;

impl Job {
    /// Whether the last background refresh of `key` failed (and forgets it): then this request
    /// refreshes in the foreground instead of being served stale again. Through
    /// [`CourteousMiddleware`](crate::CourteousMiddleware) a background refresh always fails (the request's
    /// middleware chain has finished), so there stale-while-revalidate serves one stale response
    /// and the next request revalidates.
    pub(super) fn refresh_failed(&self, key: &RequestKey) -> bool {
        self.state.foreground.lock().remove(key)
    }

    pub(super) fn refresh_in_background<S, B>(
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
        let Some(mut copy) = detached_copy(request) else {
            return;
        };
        {
            let mut refreshing = self.state.refreshing.lock();
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
                        .insert(key.clone());
                }
                // The response is dropped; only the store matters here.
                let _ = job.complete(upstream, outcome).await;
                job.state
                    .refreshing
                    .lock()
                    .remove(&key);
            },
            span,
        ));
    }
}

/// A copy of `request` for a background refresh (`None` for a body that cannot be sent twice),
/// without the foreground request's store-time budget: the refresh runs after the foreground
/// answered, and a budget the foreground spent on a slow store must not fail its every store
/// call at once.
fn detached_copy<B: ReplayableBody>(request: &Request<B>) -> Option<Request<B>> {
    let mut copy = crate::body::copy(request)?;
    copy.extensions_mut()
        .remove::<crate::store::budget::StoreBudget>();
    Some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_does_not_inherit_the_foreground_store_budget() {
        let mut request = Request::get("http://h/a")
            .body(reqwest::Body::from(""))
            .unwrap();
        let budget = crate::store::budget::StoreBudget::of(request.extensions_mut());
        budget.charge(std::time::Duration::from_secs(60));
        request.extensions_mut().insert(crate::Priority::Background);
        let copy = detached_copy(&request).expect("an empty body is replayable");
        assert!(
            copy.extensions()
                .get::<crate::store::budget::StoreBudget>()
                .is_none()
        );
        assert_eq!(
            copy.extensions().get::<crate::Priority>(),
            Some(&crate::Priority::Background),
            "the rest of the context goes with it"
        );
    }
}
