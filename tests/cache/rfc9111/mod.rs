//! RFC 9111 conformance: one file per RFC section, each test named for the clause it covers
//! (`s4_4_...` for section 4.4), run against a scripted local origin that counts its requests,
//! for the memory and SQLite stores, in private and in shared mode.
//!
//! A test is an `async fn name(case: Case)`, registered with [`rfc9111!`] (four tests:
//! `name::memory_private`, `name::memory_shared`, `name::sqlite_private`, `name::sqlite_shared`)
//! or [`rfc9111_mode!`] (two, for a rule of one mode only). The [`Case`] holds a fresh
//! [`Origin`], a fresh store, the mode and a [`TestClock`] that both the cache and the origin's
//! `Date` header read, so a test moves time without sleeping.
//!
//! ```ignore
//! async fn s4_4_post_invalidates(case: Case) {
//!     case.origin.reply("/r", Reply::ok().header("cache-control", "max-age=600"));
//!     let client = case.client();
//!     case.get(&client, "/r").await;
//!     case.send(&client, http::Request::post(case.url("/r"))).await;
//!     case.get(&client, "/r").await;
//!     assert_eq!(case.origin.hits_by("GET", "/r"), 2);
//! }
//! rfc9111!(s4_4_post_invalidates);
//! ```

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use courteous::cache::CacheLayer;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::backend::{Backend, Kind};
use crate::support::TestServer;
use crate::support::server::{Log, Seen};
use crate::{Client, Got, TestClock, client, send};

/// One scripted answer of the origin.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// Sent in this order; a name may repeat (`Age`, `Cache-Control` sent twice).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `None`: `"{path} {n}"`, where `n` counts the requests on the path, this one included,
    /// so a test can tell which upstream response it was served.
    pub body: Option<Bytes>,
}

impl Reply {
    /// `200 OK` with no headers (the origin adds `Date` from the case's clock).
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// Any status.
    pub fn status(code: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(code).expect("a valid status code"),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Adds a header (appended, so calling twice sends it twice). The value may be any bytes a
    /// header value can hold, non-UTF-8 included.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Reply {
        self.headers.push((
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_bytes(value.as_ref()).expect("a valid header value"),
        ));
        self
    }

    /// A fixed body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = Some(body.into());
        self
    }
}

/// One request as a script sees it.
#[derive(Debug)]
pub struct Asked {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// Requests on this path so far (all methods), this one included.
    pub n: u64,
    /// The case's clock at the time of the request.
    pub now: SystemTime,
}

type Script = Arc<dyn Fn(&Asked) -> Reply + Send + Sync>;

#[derive(Clone)]
struct Scripts {
    log: Arc<Log>,
    clock: TestClock,
    by_path: Arc<Mutex<HashMap<String, Script>>>,
}

/// The local origin: answers each path as scripted ([`Origin::reply`], [`Origin::script`]);
/// unscripted paths get `200` with no cache headers. Every response carries a `Date` from the
/// case's clock unless the script sets one.
pub struct Origin {
    server: TestServer,
    scripts: Scripts,
}

async fn scripted(State(scripts): State<Scripts>, request: Request) -> Response {
    let n = scripts.log.record(&request);
    let path = request.uri().path().to_owned();
    let asked = Asked {
        method: request.method().clone(),
        path: path.clone(),
        query: request.uri().query().map(str::to_owned),
        headers: request.headers().clone(),
        n,
        now: scripts.clock.now(),
    };
    let script = scripts.by_path.lock().unwrap().get(&path).cloned();
    let reply = match script {
        Some(script) => script(&asked),
        None => Reply::ok(),
    };
    let mut response = Response::builder().status(reply.status);
    let headers = response.headers_mut().unwrap();
    for (name, value) in &reply.headers {
        headers.append(name.clone(), value.clone());
    }
    if !headers.contains_key(http::header::DATE) {
        headers.insert(
            http::header::DATE,
            HeaderValue::from_str(&httpdate::fmt_http_date(asked.now)).unwrap(),
        );
    }
    let body = reply
        .body
        .unwrap_or_else(|| Bytes::from(format!("{path} {n}")));
    response.body(Body::from(body)).unwrap()
}

impl Origin {
    /// Stops the origin; returns once it is gone (see [`TestServer::stop`]).
    pub async fn stop(self) {
        self.server.stop().await;
    }

    /// A running origin whose `Date` headers read `clock`.
    pub async fn start(clock: TestClock) -> Origin {
        let scripts = Scripts {
            log: Arc::new(Log::default()),
            clock,
            by_path: Arc::default(),
        };
        let state = scripts.clone();
        let server =
            TestServer::with_router(move |_| Router::new().fallback(scripted).with_state(state))
                .await;
        // `with_router` made its own log; the router records into ours.
        Origin { server, scripts }
    }

    /// Answers `path` (without query) with `reply` every time.
    pub fn reply(&self, path: &str, reply: Reply) {
        self.script(path, move |_| reply.clone());
    }

    /// Answers `path` (without query) with what `script` returns for each request.
    pub fn script(&self, path: &str, script: impl Fn(&Asked) -> Reply + Send + Sync + 'static) {
        self.scripts
            .by_path
            .lock()
            .unwrap()
            .insert(path.to_owned(), Arc::new(script));
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Requests received on `path` (without query), any method.
    pub fn hits(&self, path: &str) -> u64 {
        *self
            .scripts
            .log
            .per_path
            .lock()
            .unwrap()
            .get(path)
            .unwrap_or(&0)
    }

    /// Requests received on `path` (without query) with `method`.
    pub fn hits_by(&self, method: &str, path: &str) -> u64 {
        self.seen()
            .iter()
            .filter(|s| {
                s.method == method && s.path_and_query.split('?').next().unwrap_or_default() == path
            })
            .count() as u64
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.scripts.log.seen.lock().unwrap().clone()
    }
}

/// Which store a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite,
}

/// One run of a test: a fresh origin and store, the mode, and the clock.
pub struct Case {
    pub store: Store,
    /// Shared-cache rules (`CacheLayer::shared(true)`).
    pub shared: bool,
    pub origin: Origin,
    pub clock: TestClock,
    backend: Backend,
}

impl Case {
    /// `"memory/private"` etc., for assertion messages.
    pub fn label(&self) -> String {
        format!(
            "{}/{}",
            match self.store {
                Store::Memory => "memory",
                #[cfg(feature = "sqlite")]
                Store::Sqlite => "sqlite",
            },
            if self.shared { "shared" } else { "private" }
        )
    }

    /// A layer over the case's store, in its mode, on its clock, without background cleanup.
    /// Every layer of a case shares the store (as two processes would).
    pub fn layer(&self) -> CacheLayer {
        self.clock.on(CacheLayer::new(self.backend.handle())
            .shared(self.shared)
            .cleanup_interval(None))
    }

    /// A client over [`Case::layer`] (resources are the path segment after `/api/`).
    pub fn client(&self) -> Client {
        client(self.layer())
    }

    /// A client over [`Case::layer`] configured further.
    pub fn client_with(&self, configure: impl FnOnce(CacheLayer) -> CacheLayer) -> Client {
        client(configure(self.layer()))
    }

    /// The origin's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        self.origin.url(path)
    }

    /// `GET path` through `client`.
    pub async fn get(&self, client: &Client, path: &str) -> Got {
        send(client, http::Request::get(self.url(path))).await
    }

    /// Any request through `client` (build it with [`Case::url`]).
    pub async fn send(&self, client: &Client, request: http::request::Builder) -> Got {
        send(client, request).await
    }

    /// Moves the clock (the cache's and the origin's `Date`).
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Commits what the store writes behind (SQLite).
    pub async fn flush(&self) {
        self.backend.flush().await;
    }
}

/// Runs `test` on a fresh [`Case`].
pub async fn run<F, Fut>(store: Store, shared: bool, name: &str, test: F)
where
    F: FnOnce(Case) -> Fut,
    Fut: Future<Output = ()>,
{
    let kind = match store {
        Store::Memory => Kind::Memory,
        #[cfg(feature = "sqlite")]
        Store::Sqlite => Kind::Sqlite,
    };
    let backend = Backend::new(kind, name)
        .await
        .expect("memory and SQLite are always available");
    let clock = TestClock::new();
    let origin = Origin::start(clock.clone()).await;
    test(Case {
        store,
        shared,
        origin,
        clock,
        backend,
    })
    .await;
}

/// For each `name` (an `async fn name(case: Case)` in the calling module), a module `name`
/// with four tests: `memory_private`, `memory_shared`, `sqlite_private`, `sqlite_shared`.
#[allow(unused_macros)]
macro_rules! rfc9111 {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[allow(unused_imports)]
            use crate::rfc9111::{Store, run};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory_private() {
                run(Store::Memory, false, stringify!($name), super::$name).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory_shared() {
                run(Store::Memory, true, stringify!($name), super::$name).await;
            }

            #[cfg(feature = "sqlite")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_private() {
                run(Store::Sqlite, false, stringify!($name), super::$name).await;
            }

            #[cfg(feature = "sqlite")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_shared() {
                run(Store::Sqlite, true, stringify!($name), super::$name).await;
            }
        }
    )*};
}

/// The same for a rule of one mode: `rfc9111_mode!(shared: a, b)` or
/// `rfc9111_mode!(private: a, b)` makes `name::memory` and `name::sqlite`.
#[allow(unused_macros)]
macro_rules! rfc9111_mode {
    (shared: $($name:ident),* $(,)?) => { rfc9111_mode!(@ true, $($name),*); };
    (private: $($name:ident),* $(,)?) => { rfc9111_mode!(@ false, $($name),*); };
    (@ $shared:literal, $($name:ident),*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use crate::rfc9111::{Store, run};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                run(Store::Memory, $shared, stringify!($name), super::$name).await;
            }

            #[cfg(feature = "sqlite")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(Store::Sqlite, $shared, stringify!($name), super::$name).await;
            }
        }
    )*};
}

// One file per RFC section (see the module docs). The macros above are in scope in them
// (textually: declare the files below this line; no `use` needed).
mod freshening;
mod harness;
mod heuristic;
mod invalidation;
mod parsing;
mod request;
mod stale;
mod storing;
