//! Hostile upstream responses through the whole stack (`Cache -> Dedupe -> RateLimit ->
//! HttpClient`) on memory and SQLite stores: no header value crashes the caller.
//!
//! `regressions` pins each panic found by hand; `property` drives random and extreme header
//! values through the stack with proptest.

#[path = "../support/mod.rs"]
mod support;

mod property;
mod regressions;
mod server;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use courteous::cache::{CacheLayer, CacheStatus, MemoryCacheStore};
use courteous::dedupe::{DedupeLayer, MemoryDedupeStore};
use courteous::rate_limit::{Limit, Limits, MemoryRateLimitStore, RateLimitLayer};
use courteous::time::{Clock, SystemClock, Timestamp};
use courteous::{BoxError, ContextLayer, HttpClient, PathSegment, Report};
use http_body_util::BodyExt;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

pub type Client =
    BoxCloneService<http::Request<reqwest::Body>, http::Response<reqwest::Body>, BoxError>;

/// Where the stack keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite,
}

pub const BACKENDS: [Backend; 2] = [Backend::Memory, Backend::Sqlite];

/// A whole stack and what it needs to stay alive (the SQLite file's directory).
pub struct Stack {
    pub client: Client,
    pub cache: CacheLayer,
    _dir: Option<tempfile::TempDir>,
}

/// `ContextLayer` (resources after `/api/`) -> `cache` -> dedupe -> rate limit (fail fast, so
/// a server-imposed block is a typed error, not a wait) -> `HttpClient`, on `backend`.
pub async fn stack(backend: Backend, configure: impl FnOnce(CacheLayer) -> CacheLayer) -> Stack {
    stack_with(backend, configure, |d| d).await
}

/// [`stack`], with the dedupe layer configured too.
pub async fn stack_with(
    backend: Backend,
    configure: impl FnOnce(CacheLayer) -> CacheLayer,
    configure_dedupe: impl FnOnce(DedupeLayer) -> DedupeLayer,
) -> Stack {
    let limits = Limits::new().default_limit(Limit::per_minute(10_000));
    let (cache, dedupe, rate, dir) = match backend {
        Backend::Memory => (
            CacheLayer::new(MemoryCacheStore::new()),
            DedupeLayer::new(MemoryDedupeStore::new()),
            RateLimitLayer::new(MemoryRateLimitStore::new(), limits).unwrap(),
            None,
        ),
        Backend::Sqlite => {
            let (dir, path) = support::temp_db();
            let store = courteous::store::sqlite::SqliteStore::open(&path)
                .await
                .unwrap();
            (
                CacheLayer::new(store.cache()),
                DedupeLayer::new(store.dedupe()),
                RateLimitLayer::new(store.rate_limits(), limits).unwrap(),
                Some(dir),
            )
        }
    };
    let cache = configure(cache);
    let client = ServiceBuilder::new()
        .layer(ContextLayer::new().classifier(PathSegment::after("/api/")))
        .layer(cache.clone())
        .layer(configure_dedupe(dedupe))
        .layer(rate.fail_fast())
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone();
    Stack {
        client,
        cache,
        _dir: dir,
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Got {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub cache: Option<CacheStatus>,
}

/// Sends a GET for `url`, with `headers`, and reads the body. A body error is an `Err`.
pub async fn send(client: &Client, url: &str, headers: &[(&str, &str)]) -> Result<Got, BoxError> {
    let mut request = http::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(reqwest::Body::from("")).unwrap();
    let response = client.clone().oneshot(request).await?;
    let cache = Report::of(&response).and_then(|r| r.cache);
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body,
        cache,
    })
}

/// Panics on threads that are not test threads: runtime workers, SQLite store threads.
static ELSEWHERE: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

thread_local! {
    /// Panics on this thread, and whether it is a test thread (one that called [`panics`]).
    static HERE: Cell<(usize, bool)> = const { Cell::new((0, false)) };
}

/// The cache layer's clock in these tests: the wall clock, moved forward by as many seconds as
/// the test sets.
#[derive(Debug, Clone, Default)]
pub struct AheadClock(Arc<AtomicU64>);

impl AheadClock {
    /// From now on, `secs` seconds ahead of the wall clock.
    pub fn set_ahead(&self, secs: u64) {
        self.0.store(secs, Ordering::SeqCst);
    }
}

impl Clock for AheadClock {
    fn now(&self) -> Timestamp {
        SystemClock.now() + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }
}

/// Panics so far on this test's thread (where a `#[tokio::test]` runs its spawned tasks too) and
/// on any thread that is not a test's: tokio and the SQLite threads catch panics, so a test would
/// not see them otherwise. Panics of other tests on their own threads do not count, so tests
/// running in parallel do not disturb each other's counts.
pub fn panics() -> usize {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let test_thread = HERE.with(|here| {
                let (n, test) = here.get();
                here.set((n + 1, test));
                test
            });
            if !test_thread {
                ELSEWHERE.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
    let here = HERE.with(|here| {
        let (n, _) = here.get();
        here.set((n, true));
        n
    });
    here + ELSEWHERE.load(Ordering::SeqCst)
}
