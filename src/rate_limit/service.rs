//! [`RateLimit`]: the service made by [`RateLimitLayer`].

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Service, ServiceExt};

use super::future::ResponseFuture;
use super::layer::{MaxWait, RateLimitLayer, RateLimitReport, SettleOnDrop};
use crate::body::ReplayableBody;
use crate::context::{Report, RequestContext};
use crate::error::BoxError;

/// Admits each request against its resource's limits, then calls the inner service.
///
/// Readiness of the inner service is driven inside the response future (with `oneshot`), after
/// the admission: a request that waits for the limiter, or is refused, reserves nothing
/// downstream. Cloning shares the layer's state.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, layer: RateLimitLayer) -> Self {
        RateLimit { inner, layer }
    }

    /// The layer this service belongs to (for `status()` and `stats()`).
    pub fn layer(&self) -> &RateLimitLayer {
        &self.layer
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, B, ResB> Service<http::Request<B>> for RateLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: ReplayableBody + Send + 'static,
    ResB: Send + 'static,
{
    type Response = http::Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<ResB>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner service's readiness is awaited in the future, once the request is admitted.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let context = RequestContext::resolve(&mut request);
        let max_wait = request
            .extensions()
            .get::<MaxWait>()
            .map_or(self.layer.config.max_wait, |m| m.0);
        let host = request.uri().host().map(str::to_owned);
        let again = if self.layer.config.retry_once && idempotent(request.method()) {
            crate::body::copy(&request)
        } else {
            None
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        // One budget of store time for the request, shared with the layers around it.
        let budget = crate::store::budget::StoreBudget::of(request.extensions_mut());
        ResponseFuture::new(Box::pin(budget.scope(async move {
            let deadline = deadline_after(tokio::time::Instant::now(), max_wait);
            let resource = context.resource();
            let priority = context.priority();
            let mut admission = layer
                .admit(resource, priority, host.as_deref(), max_wait)
                .await?;
            let mut waited = admission.waited;
            // Admitted and recorded: from here on the call counts, whatever the upstream does.
            let second = again.as_ref().map(|_| inner.clone());
            // In flight until the response head arrives or the request fails (or this future
            // is dropped): then re-stamped.
            let settle = SettleOnDrop::new(&layer, admission.in_flight.take());
            let sent = inner.oneshot(request).await.map_err(Into::into);
            let settled = settle.finish().await;
            let mut response = sent?;
            let mut blocked_until = layer
                .observe(
                    resource,
                    response.status(),
                    response.headers(),
                    admission.unchecked,
                    settled,
                )
                .await;
            let mut report = RateLimitReport {
                waited,
                remaining: admission.remaining,
                blocked_until,
                retried: false,
                unchecked: admission.unchecked,
            };
            if let (Some(until), Some(again), Some(inner)) = (blocked_until, again, second) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let wait = until.saturating_since(layer.config.clock.now());
                if wait <= left {
                    tracing::debug!(resource = %resource, ?wait, "retrying once after retry-after");
                    let second_admission = layer
                        .admit(resource, priority, host.as_deref(), left)
                        .await?;
                    let mut second_admission = second_admission;
                    waited += second_admission.waited;
                    let settle = SettleOnDrop::new(&layer, second_admission.in_flight.take());
                    let sent = inner.oneshot(again).await.map_err(Into::into);
                    let settled = settle.finish().await;
                    response = sent?;
                    blocked_until = layer
                        .observe(
                            resource,
                            response.status(),
                            response.headers(),
                            second_admission.unchecked,
                            settled,
                        )
                        .await;
                    report = RateLimitReport {
                        waited,
                        remaining: second_admission.remaining,
                        blocked_until,
                        retried: true,
                        unchecked: second_admission.unchecked,
                    };
                }
            }
            Report::record(response.extensions_mut()).rate_limit = Some(report);
            Ok(response)
        })))
    }
}

/// `start + wait`, saturating: a `max_wait` of `Duration::MAX` ("as long as it takes") means 30
/// years, as tokio's own far future, not a panic on `Instant` overflow.
pub(crate) fn deadline_after(start: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    start.checked_add(wait.min(FAR)).unwrap_or(start)
}

fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}
