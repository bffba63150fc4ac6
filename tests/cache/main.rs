//! The cache layer and its stores, against a real local server that counts upstream calls.

#[path = "../support/mod.rs"]
mod support;

mod backend;
mod large;
mod layer;
mod proxy;
#[cfg(feature = "redis")]
mod redis;
mod revalidation;
mod rfc9111;
#[cfg(feature = "sqlite")]
mod sqlite;
mod stores;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use courteous::cache::{CacheLayer, CacheStatus};
use courteous::time::{Clock, SystemClock, Timestamp};
use courteous::{BoxError, ContextLayer, HttpClient, PathSegment, Report};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

pub type Client =
    BoxCloneService<http::Request<reqwest::Body>, http::Response<reqwest::Body>, BoxError>;

/// A clock the test moves by hand; the cache layer reads it as a [`Clock`] (milliseconds), the
/// origin and the tests as a [`SystemTime`]. It starts at a whole millisecond, so that both see
/// the same time.
#[derive(Debug, Clone)]
pub struct TestClock(Arc<Mutex<SystemTime>>);

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClock {
    pub fn new() -> Self {
        TestClock(Arc::new(Mutex::new(SystemClock.now().to_system_time())))
    }
    pub fn advance(&self, by: Duration) {
        *self.0.lock() += by;
    }
    pub fn now(&self) -> SystemTime {
        *self.0.lock()
    }
    /// `layer` reading this clock.
    pub fn on(&self, layer: CacheLayer) -> CacheLayer {
        layer.clock(self.clone())
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(TestClock::now(self))
    }
}

/// `ContextLayer` (resources after `/api/`) -> `layer` -> `HttpClient`.
pub fn client(layer: CacheLayer) -> Client {
    ServiceBuilder::new()
        .layer(ContextLayer::new().classifier(PathSegment::after("/api/")))
        .layer(layer)
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone()
}

/// A response, read.
#[derive(Debug)]
pub struct Got {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub cache: Option<CacheStatus>,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn get(url: &str) -> http::request::Builder {
    http::Request::get(url)
}

pub async fn send(client: &Client, request: http::request::Builder) -> Got {
    try_send(client, request).await.expect("request failed")
}

pub async fn try_send(client: &Client, request: http::request::Builder) -> Result<Got, BoxError> {
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
