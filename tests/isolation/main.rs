//! One user's data never reaches another: the request key covers every credential a request
//! carries (on the tower and the reqwest-middleware path), requests with credentials it cannot
//! see are never shared, a shared cache never stores one user's responses, and query bytes are
//! compared as bytes. Against a real local server, over memory and SQLite stores.

#[path = "../support/mod.rs"]
mod support;

mod tower_path;

#[cfg(feature = "middleware")]
mod middleware_path;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use courteous::cache::CacheStore;
use courteous::dedupe::DedupeStore;
use courteous::{CacheStatus, DedupeRole, MemoryCacheStore, MemoryDedupeStore, Report};

use support::TestServer;
use support::server::{Log, query_map};

/// One cache store and one dedupe store, shared by every client of a test.
pub struct Stores {
    pub cache: Arc<dyn CacheStore>,
    pub dedupe: Arc<dyn DedupeStore>,
    #[cfg(feature = "sqlite")]
    pub sqlite: Option<(tempfile::TempDir, courteous::store::sqlite::SqliteStore)>,
}

impl Stores {
    pub fn memory() -> Stores {
        Stores {
            cache: Arc::new(MemoryCacheStore::new()),
            dedupe: Arc::new(MemoryDedupeStore::new()),
            #[cfg(feature = "sqlite")]
            sqlite: None,
        }
    }

    #[cfg(feature = "sqlite")]
    pub async fn sqlite() -> Stores {
        let (dir, path) = support::temp_db();
        let store = courteous::store::sqlite::SqliteStore::open(&path)
            .await
            .unwrap();
        Stores {
            cache: Arc::new(store.cache()),
            dedupe: Arc::new(store.dedupe()),
            sqlite: Some((dir, store)),
        }
    }

    /// Every byte the stores hold at rest (the SQLite files after a flush; nothing for memory).
    pub async fn bytes_at_rest(&self) -> Vec<u8> {
        #[cfg(feature = "sqlite")]
        if let Some((dir, store)) = &self.sqlite {
            store.flush().await.unwrap();
            let mut bytes = Vec::new();
            for file in std::fs::read_dir(dir.path()).unwrap() {
                bytes.extend(std::fs::read(file.unwrap().path()).unwrap());
            }
            return bytes;
        }
        Vec::new()
    }
}

/// For each behaviour `name` (an `async fn name(stores: Stores)`), a module with one test per
/// store: `name::memory`, `name::sqlite`.
macro_rules! on_memory_and_sqlite {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(crate::Stores::memory()).await;
            }

            #[cfg(feature = "sqlite")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::Stores::sqlite().await).await;
            }
        }
    )*};
}
pub(crate) use on_memory_and_sqlite;

/// A server whose every answer is different (`call <n>`, n unique in this test binary), with
/// `cache_control`, `set_cookie` and `delay_ms` query parameters.
pub async fn server() -> TestServer {
    TestServer::with_router(|log| Router::new().fallback(answer).with_state(log)).await
}

async fn answer(State(log): State<Arc<Log>>, request: Request) -> Response {
    log.record(&request);
    // Taken atomically: reading `log.total` after recording gave two concurrent requests the
    // same number (both read the count after both had recorded), so "different users got
    // different answers" failed under load although both went upstream.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    let query = query_map(&request);
    if let Some(ms) = query.get("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let mut response = Response::builder().header("content-type", "text/plain");
    if let Some(cc) = query.get("cache_control") {
        response = response.header("cache-control", cc);
    }
    if query.contains_key("set_cookie") {
        response = response.header("set-cookie", format!("session=given-by-call-{n}"));
    }
    response.body(Body::from(format!("call {n}"))).unwrap()
}

/// What a response said and what the stack did.
#[derive(Debug, Clone, PartialEq)]
pub struct Got {
    pub body: String,
    pub set_cookie: Option<String>,
    pub cache: Option<CacheStatus>,
    pub dedupe: Option<DedupeRole>,
}

impl Got {
    pub fn new(report: Option<&Report>, headers: &http::HeaderMap, body: &[u8]) -> Got {
        Got {
            body: String::from_utf8_lossy(body).into_owned(),
            set_cookie: headers
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            cache: report.and_then(|r| r.cache),
            dedupe: report.and_then(|r| r.dedupe),
        }
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}
