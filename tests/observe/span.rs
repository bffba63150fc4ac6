//! The span of a request, recorded by a small subscriber that keeps every span's fields and every
//! event with the span it happened in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use courteous::RateLimited;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use crate::support::server::TestServer;
use crate::{full_stack, get};

type Fields = BTreeMap<String, String>;

#[derive(Default)]
struct Seen {
    /// By span id: its name and fields.
    spans: BTreeMap<u64, (String, Fields)>,
    /// Each event's fields, with the span it was in.
    events: Vec<(Option<u64>, Fields)>,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    next: Arc<AtomicU64>,
    stack: Arc<Mutex<Vec<u64>>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields::new();
        attributes.record(&mut Collect(&mut fields));
        let name = attributes.metadata().name().to_owned();
        self.seen.lock().unwrap().spans.insert(id, (name, fields));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut seen = self.seen.lock().unwrap();
        if let Some((_, fields)) = seen.spans.get_mut(&span.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        let current = self.stack.lock().unwrap().last().copied();
        self.seen.lock().unwrap().events.push((current, fields));
    }
    fn enter(&self, span: &Id) {
        self.stack.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut stack = self.stack.lock().unwrap();
        if let Some(at) = stack.iter().rposition(|s| *s == span.into_u64()) {
            stack.remove(at);
        }
    }
}

impl Recorder {
    /// The fields of the `courteous.request` spans, in the order they were opened.
    fn requests(&self) -> Vec<(u64, Fields)> {
        let seen = self.seen.lock().unwrap();
        seen.spans
            .iter()
            .filter(|(_, (name, _))| name == "courteous.request")
            .map(|(id, (_, fields))| (*id, fields.clone()))
            .collect()
    }
    /// The messages of the events inside span `id`.
    fn messages_in(&self, id: u64) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.events
            .iter()
            .filter(|(span, _)| *span == Some(id))
            .filter_map(|(_, fields)| fields.get("message").cloned())
            .collect()
    }
}

/// Runs `test` on a current-thread runtime with `recorder` as the default subscriber.
fn with_recorder<F: std::future::Future<Output = ()>>(
    recorder: &Recorder,
    test: impl FnOnce() -> F,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(recorder.clone(), || runtime.block_on(test()));
}

#[test]
fn one_span_per_request_with_what_each_layer_did() {
    let recorder = Recorder::default();
    with_recorder(&recorder, || async {
        let server = TestServer::start().await;
        let client = full_stack();
        let url = server.url("/api/issues/1");
        get(&client, &url).await.unwrap();
        get(&client, &url).await.unwrap();
        server.stop().await;
    });
    let spans = recorder.requests();
    assert_eq!(spans.len(), 2, "{spans:?}");

    let (miss, first) = &spans[0];
    assert_eq!(first.get("method").map(String::as_str), Some("GET"));
    assert_eq!(first.get("resource").map(String::as_str), Some("issues"));
    assert_eq!(first.get("priority").map(String::as_str), Some("user"));
    assert_eq!(first.get("cache").map(String::as_str), Some("MISS"));
    assert_eq!(first.get("dedupe").map(String::as_str), Some("leader"));
    assert!(first.contains_key("limiter_wait_ms"), "{first:?}");
    assert_eq!(
        first.get("upstream_status").map(String::as_str),
        Some("200")
    );
    assert!(first.contains_key("upstream_latency_ms"), "{first:?}");
    assert!(
        recorder
            .messages_in(*miss)
            .iter()
            .any(|m| m == "cache miss"),
        "{:?}",
        recorder.messages_in(*miss)
    );

    let (hit, second) = &spans[1];
    assert_eq!(second.get("cache").map(String::as_str), Some("HIT"));
    assert!(
        !second.contains_key("upstream_status"),
        "a hit never reaches the upstream: {second:?}"
    );
    assert!(!second.contains_key("limiter_wait_ms"), "{second:?}");
    assert!(recorder.messages_in(*hit).iter().any(|m| m == "cache hit"));
}

#[test]
fn a_refusal_is_an_event_inside_the_request_span() {
    let recorder = Recorder::default();
    with_recorder(&recorder, || async {
        let server = TestServer::start().await;
        let client = full_stack();
        get(&client, &server.url("/api/search/?q=1")).await.unwrap();
        let error = get(&client, &server.url("/api/search/?q=2"))
            .await
            .unwrap_err();
        assert!(error.downcast_ref::<RateLimited>().is_some(), "{error}");
        server.stop().await;
    });
    let spans = recorder.requests();
    assert_eq!(spans.len(), 2);
    let (refused, fields) = &spans[1];
    assert_eq!(fields.get("resource").map(String::as_str), Some("search"));
    assert!(!fields.contains_key("upstream_status"), "{fields:?}");
    assert!(
        recorder
            .messages_in(*refused)
            .iter()
            .any(|m| m == "refused by the rate limiter"),
        "{:?}",
        recorder.messages_in(*refused)
    );
}

#[test]
fn a_follower_span_says_follower_and_claims_no_upstream_call() {
    let recorder = Recorder::default();
    with_recorder(&recorder, || async {
        let server = TestServer::start().await;
        let client = full_stack();
        let url = server.url("/api/issues/1?delay_ms=200");
        let (a, b) = tokio::join!(get(&client, &url), get(&client, &url));
        a.unwrap();
        b.unwrap();
        assert_eq!(server.hits(), 1);
        server.stop().await;
    });
    let spans = recorder.requests();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let roles: Vec<_> = spans
        .iter()
        .map(|(_, f)| f.get("dedupe").cloned())
        .collect();
    let (follower, fields) = spans
        .iter()
        .find(|(_, f)| f.get("dedupe").map(String::as_str) == Some("follower"))
        .unwrap_or_else(|| panic!("a follower: {roles:?}"));
    for field in ["upstream_status", "upstream_latency_ms", "limiter_wait_ms"] {
        assert!(
            !fields.contains_key(field),
            "a follower made no upstream call and was not admitted: {fields:?}"
        );
    }
    assert!(
        recorder
            .messages_in(*follower)
            .iter()
            .any(|m| m == "served by another request's upstream call"),
        "{:?}",
        recorder.messages_in(*follower)
    );
}

#[test]
fn an_upstream_error_leaves_the_span_without_a_status() {
    let recorder = Recorder::default();
    with_recorder(&recorder, || async {
        let server = TestServer::start().await;
        let url = server.url("/api/issues/1");
        server.stop().await;
        let client = full_stack();
        assert!(get(&client, &url).await.is_err());
    });
    let spans = recorder.requests();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let (_, fields) = &spans[0];
    assert_eq!(fields.get("resource").map(String::as_str), Some("issues"));
    assert!(!fields.contains_key("upstream_status"), "{fields:?}");
}

/// An API that validates with an `ETag`: `/api/fresh/..` must be revalidated each time
/// (`no-cache`), `/api/stale/..` may be served stale while a refresh runs.
async fn validating_server() -> TestServer {
    use axum::extract::{Request, State};
    use axum::response::Response;
    TestServer::with_router(|log| {
        axum::Router::new()
            .fallback(
                |State(log): State<Arc<crate::support::server::Log>>, request: Request| async move {
                    log.record(&request);
                    let matches = request
                        .headers()
                        .get("if-none-match")
                        .is_some_and(|v| v == "\"v1\"");
                    let cache_control = if request.uri().path().starts_with("/api/stale") {
                        "max-age=0, stale-while-revalidate=60"
                    } else {
                        "no-cache"
                    };
                    Response::builder()
                        .status(if matches { 304 } else { 200 })
                        .header("etag", "\"v1\"")
                        .header("cache-control", cache_control)
                        .body(axum::body::Body::from(if matches { "" } else { "{}" }))
                        .unwrap()
                },
            )
            .with_state(log)
    })
    .await
}

#[cfg(feature = "sqlite")]
#[test]
fn revalidated_and_stale_requests_say_so_in_their_span() {
    let recorder = Recorder::default();
    with_recorder(&recorder, || async {
        let server = validating_server().await;
        let client = crate::client_over(courteous::CacheLayer::new(
            courteous::cache::MemoryCacheStore::new(),
        ));
        let fresh = server.url("/api/fresh/1");
        get(&client, &fresh).await.unwrap();
        get(&client, &fresh).await.unwrap();
        let stale = server.url("/api/stale/1");
        get(&client, &stale).await.unwrap();
        get(&client, &stale).await.unwrap();
        server.stop().await;
    });
    let spans = recorder.requests();
    assert_eq!(spans.len(), 4, "{spans:?}");
    let (revalidated, fields) = &spans[1];
    assert_eq!(
        fields.get("cache").map(String::as_str),
        Some("REVALIDATED"),
        "{fields:?}"
    );
    assert_eq!(
        fields.get("upstream_status").map(String::as_str),
        Some("304"),
        "{fields:?}"
    );
    assert!(
        recorder
            .messages_in(*revalidated)
            .iter()
            .any(|m| m == "revalidated with the upstream"),
        "{:?}",
        recorder.messages_in(*revalidated)
    );
    let (stale, fields) = &spans[3];
    assert_eq!(
        fields.get("cache").map(String::as_str),
        Some("STALE"),
        "{fields:?}"
    );
    assert!(!fields.contains_key("upstream_status"), "{fields:?}");
    assert!(
        recorder
            .messages_in(*stale)
            .iter()
            .any(|m| m == "stale response served"),
        "{:?}",
        recorder.messages_in(*stale)
    );
}
