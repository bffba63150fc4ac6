//! Observability: one `tracing` span per request, and the crate's metrics.
//!
//! # The span
//!
//! [`ContextLayer`](crate::ContextLayer) opens one span per request, named `courteous.request`
//! (level `INFO`, target `courteous`), and every layer below runs inside it. Its fields are filled
//! in as the request goes (a field nobody filled is left empty):
//!
//! | field | what |
//! |---|---|
//! | `method` | the request method |
//! | `resource` | the [`Resource`] the request was classified as |
//! | `priority` | `user` or `background` |
//! | `cache` | `HIT`, `MISS`, `STALE`, `REVALIDATED` or `BYPASS` ([`CacheStatus`](crate::CacheStatus)) |
//! | `dedupe` | `leader`, `follower`, `cross_process_follower` or `bypassed` |
//! | `limiter_wait_ms` | how long the rate limiter held the request (not for dedupe followers) |
//! | `upstream_status` | the status of the upstream's answer, when the request's own call reached it (not for cache hits or dedupe followers) |
//! | `upstream_latency_ms` | from sending to the upstream's response head (as `upstream_status`) |
//!
//! Inside it, `DEBUG` events say what happened: a cache hit, miss, stale response served or
//! revalidation, a dedupe follower served by its leader, a rate-limit refusal. Store failures
//! are `WARN` events, at most one per store every 10 seconds (the others at `DEBUG`, counted in
//! the next warning's `suppressed` field).
//!
//! The span comes from `ContextLayer`, which [`Courteous`](crate::Courteous) always puts on top;
//! a stack built by hand without it has the layers' events but no span.
//!
//! # Metrics
//!
//! With the cargo feature `metrics`, the crate records these through the
//! [`metrics`](https://docs.rs/metrics) facade (install any recorder, e.g. a Prometheus
//! exporter; without one they cost next to nothing). Without the feature the calls compile away.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `courteous_requests_total` | counter | `resource`, `cache` | requests through [`ContextLayer`](crate::ContextLayer); `cache` is `hit`, `miss`, `stale`, `revalidated`, `bypass`, `none` without a cache layer, or `error` when the stack returned an error |
//! | `courteous_upstream_requests_total` | counter | `resource`, `status` | calls that reached the upstream, by its status code (`error` when no response came) |
//! | `courteous_upstream_latency_seconds` | histogram | `resource` | from sending to the upstream's response head |
//! | `courteous_dedupe_followers_total` | counter | `resource` | requests served by another request's upstream call |
//! | `courteous_rate_limit_waits_total` | counter | `resource`, `priority` | admissions that had to wait |
//! | `courteous_rate_limit_wait_seconds` | histogram | `resource`, `priority` | how long each admission waited (zero included; once per admission, not again for the dedupe followers it served) |
//! | `courteous_rate_limit_refusals_total` | counter | `resource`, `priority` | requests refused by the limiter ([`RateLimited`](crate::RateLimited)) |
//! | `courteous_store_errors_total` | counter | `layer` | failed store operations, by layer (`cache`, `dedupe`, `rate_limit`) |
//!
//! `resource` takes the values of your [`ResourceClassifier`](crate::ResourceClassifier): keep
//! their number bounded, as with any metric label.
//!
//! # Example
//!
//! Any `tracing` subscriber shows the spans; any `metrics` recorder receives the metrics:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // e.g. tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).init();
//! // e.g. metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
//! let client = courteous::Courteous::new(reqwest::Client::new()).build().await?;
//! let response = client.get("http://127.0.0.1:8080/api/issues/").send().await?;
//! let response = http::Response::from(response);
//! println!("{:?}", courteous::Report::of(&response).and_then(|r| r.upstream));
//! # Ok(()) }
//! ```

use tracing::Span;
use tracing::field::Empty;

use crate::context::{Priority, Report};
use crate::resource::Resource;
use crate::time::duration_ms;

/// Opens the span of one request.
pub(crate) fn request_span(method: &http::Method, priority: Priority, resource: &Resource) -> Span {
    tracing::info_span!(
        target: "courteous",
        "courteous.request",
        method = %method,
        resource = %resource,
        priority = priority.as_str(),
        cache = Empty,
        dedupe = Empty,
        limiter_wait_ms = Empty,
        upstream_status = Empty,
        upstream_latency_ms = Empty,
    )
}

fn dedupe_label(role: crate::DedupeRole) -> &'static str {
    match role {
        crate::DedupeRole::Leader => "leader",
        crate::DedupeRole::Follower => "follower",
        crate::DedupeRole::CrossProcessFollower => "cross_process_follower",
        crate::DedupeRole::Bypassed(_) => "bypassed",
    }
}

/// Fills in the span from a finished request's report, logs what happened at `DEBUG` and counts
/// it.
///
/// A dedupe follower's response is a copy of its leader's, extensions included: the leader's
/// [`UpstreamReport`](crate::UpstreamReport) is dropped from it here (the follower made no call,
/// as [`Report::upstream`] says), and the leader's limiter wait is neither put in the follower's
/// span nor counted a second time.
pub(crate) fn finish(span: &Span, report: &mut Report) {
    let follower = report.dedupe.is_some_and(crate::DedupeRole::is_follower);
    if follower {
        report.upstream = None;
    }
    use crate::CacheStatus;
    if let Some(cache) = report.cache {
        span.record("cache", cache.as_str());
        let _entered = span.enter();
        match cache {
            CacheStatus::Hit => tracing::debug!(target: "courteous", "cache hit"),
            CacheStatus::Miss => tracing::debug!(target: "courteous", "cache miss"),
            CacheStatus::Stale => tracing::debug!(target: "courteous", "stale response served"),
            CacheStatus::Revalidated => {
                tracing::debug!(target: "courteous", "revalidated with the upstream")
            }
            CacheStatus::Bypass => {}
        }
    }
    if let Some(role) = report.dedupe {
        span.record("dedupe", dedupe_label(role));
        if role.is_follower() {
            let _entered = span.enter();
            tracing::debug!(target: "courteous", role = dedupe_label(role), "served by another request's upstream call");
        }
    }
    if let Some(rate_limit) = report.rate_limit.as_ref().filter(|_| !follower) {
        span.record("limiter_wait_ms", duration_ms(rate_limit.waited));
    }
    if let Some(upstream) = &report.upstream {
        span.record("upstream_status", upstream.status.as_u16());
        span.record("upstream_latency_ms", duration_ms(upstream.latency));
    }
    metrics::request(report);
}

/// A request that ended in an error (the span keeps what the layers filled in).
pub(crate) fn failed(report: (Priority, &Resource)) {
    metrics::failed(report.1);
}

/// A call that reached the upstream and was answered: the answer's [`Report`] gets its
/// [`UpstreamReport`](crate::UpstreamReport), and it is counted.
pub(crate) fn upstream_answered<B: http_body::Body>(
    response: &mut http::Response<B>,
    context: Option<&crate::RequestContext>,
    started: std::time::Instant,
) {
    let latency = started.elapsed();
    metrics::upstream(
        context.map(|c| c.resource()),
        Some(response.status()),
        latency,
    );
    let mut upstream = crate::UpstreamReport::new(response.status(), latency);
    upstream.bytes = response.body().size_hint().exact();
    Report::record(response.extensions_mut()).upstream = Some(upstream);
}

/// A call to the upstream that failed without an answer (connection refused, timeout...).
pub(crate) fn upstream_failed(
    context: Option<&crate::RequestContext>,
    started: std::time::Instant,
) {
    metrics::upstream(context.map(|c| c.resource()), None, started.elapsed());
}

/// A request the rate limiter refused.
pub(crate) fn refusal(resource: &Resource, priority: Priority) {
    tracing::debug!(target: "courteous", %resource, priority = priority.as_str(), "refused by the rate limiter");
    metrics::refusal(resource, priority);
}

/// A failed store operation of `layer`.
pub(crate) fn store_error(layer: &'static str) {
    metrics::store_error(layer);
}

#[cfg(feature = "metrics")]
mod metrics {
    use std::time::Duration;

    use metrics::{counter, histogram};

    use crate::context::{Priority, Report};
    use crate::resource::Resource;

    fn resource_label(resource: Option<&Resource>) -> String {
        resource.map_or_else(String::new, |r| r.as_str().to_owned())
    }

    pub(super) fn request(report: &Report) {
        let resource = resource_label(report.resource.as_ref());
        let cache = match report.cache {
            Some(status) => status.as_str().to_ascii_lowercase(),
            None => "none".to_owned(),
        };
        counter!("courteous_requests_total", "resource" => resource.clone(), "cache" => cache)
            .increment(1);
        let follower = report.dedupe.is_some_and(crate::DedupeRole::is_follower);
        if follower {
            counter!("courteous_dedupe_followers_total", "resource" => resource.clone())
                .increment(1);
        }
        // A follower's rate-limit report is its leader's: that admission is counted once.
        if let Some(rate_limit) = report.rate_limit.as_ref().filter(|_| !follower) {
            let priority = report.priority.map_or("", Priority::as_str);
            histogram!("courteous_rate_limit_wait_seconds", "resource" => resource.clone(), "priority" => priority)
                .record(rate_limit.waited.as_secs_f64());
            if !rate_limit.waited.is_zero() {
                counter!("courteous_rate_limit_waits_total", "resource" => resource, "priority" => priority)
                    .increment(1);
            }
        }
    }

    pub(super) fn failed(resource: &Resource) {
        counter!("courteous_requests_total", "resource" => resource.as_str().to_owned(), "cache" => "error")
            .increment(1);
    }

    pub(super) fn upstream(
        resource: Option<&Resource>,
        status: Option<http::StatusCode>,
        latency: Duration,
    ) {
        let resource = resource_label(resource);
        let status = status.map_or_else(|| "error".to_owned(), |s| s.as_u16().to_string());
        counter!("courteous_upstream_requests_total", "resource" => resource.clone(), "status" => status)
            .increment(1);
        histogram!("courteous_upstream_latency_seconds", "resource" => resource)
            .record(latency.as_secs_f64());
    }

    pub(super) fn refusal(resource: &Resource, priority: Priority) {
        counter!("courteous_rate_limit_refusals_total", "resource" => resource.as_str().to_owned(), "priority" => priority.as_str())
            .increment(1);
    }

    pub(super) fn store_error(layer: &'static str) {
        counter!("courteous_store_errors_total", "layer" => layer).increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod metrics {
    use std::time::Duration;

    use crate::context::{Priority, Report};
    use crate::resource::Resource;

    pub(super) fn request(_: &Report) {}
    pub(super) fn failed(_: &Resource) {}
    pub(super) fn upstream(_: Option<&Resource>, _: Option<http::StatusCode>, _: Duration) {}
    pub(super) fn refusal(_: &Resource, _: Priority) {}
    pub(super) fn store_error(_: &'static str) {}
}
