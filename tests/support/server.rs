//! A real HTTP server on 127.0.0.1, started inside the test, that counts and logs every request.
//!
//! The default routes answer any path. Query parameters steer the answer:
//! `delay_ms` (sleep before answering), `status`, `size` (body of that many bytes),
//! `cache_control`, `etag`, `retry_after`. The body is
//! `{"path":..,"n":<count of hits on this path>,"priority":<x-priority header>}` unless `size` is set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub at: Instant,
    pub wall: SystemTime,
}

#[derive(Default)]
pub struct Log {
    pub total: AtomicU64,
    pub per_path: Mutex<HashMap<String, u64>>,
    pub seen: Mutex<Vec<Seen>>,
}

/// A running test server; it stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub log: Arc<Log>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// The default routes (see the module docs).
    pub async fn start() -> TestServer {
        Self::with_router(|log| Router::new().fallback(default_handler).with_state(log)).await
    }

    /// Custom routes; the router gets the log as state and should record with [`Log::record`].
    pub async fn with_router(make: impl FnOnce(Arc<Log>) -> Router) -> TestServer {
        let log = Arc::new(Log::default());
        let router = make(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            addr,
            log,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server and returns once it is gone: its listener closed and every connection
    /// (pooled keep-alive ones included) ended, so that the next request to it fails. Dropping
    /// it only asks it to stop, which takes effect a moment later.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.log.total.load(Ordering::SeqCst)
    }

    /// Requests received so far for this path (without query).
    pub fn hits_on(&self, path: &str) -> u64 {
        *self.log.per_path.lock().unwrap().get(path).unwrap_or(&0)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.seen.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Log {
    /// Records a request; returns the count of hits on its path, this one included.
    pub fn record(&self, request: &Request) -> u64 {
        self.total.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(Seen {
            method: request.method().to_string(),
            path_and_query: request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: request.headers().clone(),
            at: Instant::now(),
            wall: SystemTime::now(),
        });
        let mut per_path = self.per_path.lock().unwrap();
        let n = per_path.entry(request.uri().path().to_owned()).or_default();
        *n += 1;
        *n
    }
}

pub fn query_map(request: &Request) -> HashMap<String, String> {
    form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub async fn default_handler(State(log): State<Arc<Log>>, request: Request) -> Response {
    let n = log.record(&request);
    let query = query_map(&request);
    if let Some(ms) = query.get("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status: u16 = query
        .get("status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut builder = Response::builder().status(status);
    if let Some(cc) = query.get("cache_control") {
        builder = builder.header("cache-control", cc);
    }
    if let Some(etag) = query.get("etag") {
        builder = builder.header("etag", etag);
    }
    if let Some(ra) = query.get("retry_after") {
        builder = builder.header("retry-after", ra);
    }
    let body = match query.get("size").and_then(|v| v.parse::<usize>().ok()) {
        Some(size) => Body::from(vec![b'x'; size]),
        None => {
            let priority = request
                .headers()
                .get("x-priority")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Body::from(format!(
                r#"{{"path":"{}","n":{n},"priority":"{priority}"}}"#,
                request.uri().path()
            ))
        }
    };
    builder
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}
