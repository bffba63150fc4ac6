//! The journal of upstream calls: rows written by a real stack against a local server, the
//! query and summary contract on every backend, SQLite retention and sharing, the Redis cap.

#[path = "../support/mod.rs"]
mod support;

mod layer;
#[cfg(feature = "sqlite")]
mod processes;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
mod stores;

use std::time::Duration;

use courteous::cache::{CacheLayer, CacheTtl, MemoryCacheStore};
use courteous::dedupe::{DedupeLayer, MemoryDedupeStore};
use courteous::journal::{Journal, JournalEntry};
use courteous::time::Timestamp;
use courteous::{BoxError, ContextLayer, HttpClient, PathSegment, Priority, Report, Resource};
use http_body_util::BodyExt;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

pub type Client =
    BoxCloneService<http::Request<reqwest::Body>, http::Response<reqwest::Body>, BoxError>;

/// Context (with `journal`), a cache with a 5-minute forced TTL, dedupe, the real client.
pub fn stack(context: ContextLayer) -> Client {
    ServiceBuilder::new()
        .layer(context.classifier(PathSegment::after("/api/")))
        .layer(
            CacheLayer::new(MemoryCacheStore::new())
                .default_ttl(CacheTtl::absolute(Duration::from_secs(300))),
        )
        .layer(DedupeLayer::new(MemoryDedupeStore::new()))
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone()
}

/// `stack` writing to `journal`.
pub fn journaled(journal: &Journal) -> Client {
    stack(ContextLayer::new().journal(journal.clone()))
}

/// Sends a GET to `url`, reads the body, returns the report.
pub async fn fetch(client: &Client, url: &str) -> Report {
    let request = http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap();
    let response = client
        .clone()
        .oneshot(request)
        .await
        .expect("request failed");
    let report = Report::of(&response).cloned().unwrap_or_default();
    response.into_body().collect().await.unwrap();
    report
}

/// A row at `time`, for the store tests.
pub fn row(time: Timestamp, resource: &str, status: u16, latency_ms: u64) -> JournalEntry {
    let mut entry = JournalEntry::new(
        time,
        Resource::new(resource).unwrap(),
        http::Method::GET,
        format!("http://h/api/{resource}/"),
        http::StatusCode::from_u16(status).unwrap(),
    );
    entry.latency = Duration::from_millis(latency_ms);
    entry.priority = if status == 200 {
        Priority::User
    } else {
        Priority::Background
    };
    entry
}
