//! Statistics and the journal on an application's own admin endpoint, as JSON:
//! `cargo run --example admin`.
//!
//! Starts a local API (no network), sends a few requests through the courteous stack on SQLite,
//! then serves on 127.0.0.1 what the layers and stores report:
//!
//! * `GET /admin/stats`: what each layer did in this process and what its store holds
//!   (`stats().await` on the cache, dedupe and rate-limit layers);
//! * `GET /admin/journal?since_s=3600&by=resource`: the calls that reached the upstream in that
//!   window and the quota they spent, grouped by resource, status or priority.
//!
//! It fetches both once, prints them and exits. In an application, mount the same handlers on
//! your admin router.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use courteous::journal::{GroupBy, JournalGroup, JournalQuery};
use courteous::{Courteous, CourteousLayer, Limit, PathSegment};
use serde_json::{Value, json};

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `value` as an `application/json` response.
fn json_response(value: &Value) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("\"{e}\""));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn stats(State(layers): State<Arc<CourteousLayer>>) -> Response {
    let (cache, dedupe, rate_limit) = (
        layers.cache().stats().await,
        layers.dedupe().stats().await,
        layers.rate_limit().stats().await,
    );
    let resources: serde_json::Map<String, Value> = rate_limit
        .resources
        .iter()
        .map(|(name, r)| {
            let counts = json!({
                "admitted_user": r.admitted_user,
                "admitted_background": r.admitted_background,
                "refused": r.refused,
                "server_blocks": r.server_blocks,
                "store_errors": r.store_errors,
            });
            (name.clone(), counts)
        })
        .collect();
    json_response(&json!({
        "cache": {
            "hits": cache.hits, "misses": cache.misses, "stale": cache.stale,
            "revalidated": cache.revalidated, "hit_ratio": cache.hit_ratio(),
            "store": { "entries": cache.store.entries, "bytes": cache.store.bytes },
        },
        "dedupe": {
            "leaders": dedupe.leaders, "followers": dedupe.followers,
            "store": { "pending": dedupe.store.pending, "completed": dedupe.store.completed },
        },
        "rate_limit": {
            "resources": resources,
            "store": {
                "admissions": rate_limit.store.admissions,
                "in_flight": rate_limit.store.in_flight,
                "blocked": rate_limit.store.blocked,
            },
        },
    }))
}

fn group(g: &JournalGroup) -> Value {
    json!({
        "key": g.key, "calls": g.calls, "quota_spent": g.quota_spent, "bytes": g.bytes,
        "latency_p50_ms": millis(g.latency_p50), "latency_max_ms": millis(g.latency_max),
        "limiter_wait_ms": millis(g.limiter_wait), "followers": g.followers,
    })
}

async fn journal(State(layers): State<Arc<CourteousLayer>>, uri: Uri) -> Response {
    let Some(journal) = layers.journal() else {
        return (StatusCode::NOT_FOUND, "no journal").into_response();
    };
    let (mut since_s, mut by) = (3600, GroupBy::Resource);
    for (name, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match (&*name, &*value) {
            ("since_s", value) => since_s = value.parse().unwrap_or(since_s),
            ("by", "status") => by = GroupBy::Status,
            ("by", "priority") => by = GroupBy::Priority,
            _ => {}
        }
    }
    let query = JournalQuery::since(Duration::from_secs(since_s));
    match journal.summary(&query, by).await {
        Ok(summary) => json_response(&json!({
            "groups": summary.groups.iter().map(group).collect::<Vec<_>>(),
            "total": group(&summary.total),
        })),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A local stand-in for the API.
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", api.local_addr()?);
    let app = Router::new().fallback(|| async { r#"{"ok":true}"# });
    tokio::spawn(async move { axum::serve(api, app).await });

    // The stack on SQLite (the journal is on by default there).
    let dir = tempfile::tempdir()?;
    let layers = Arc::new(
        Courteous::new(reqwest::Client::new())
            .sqlite(dir.path().join("courteous.db"))
            .classifier(PathSegment::after("/api/"))
            .resource("issue", |r| {
                r.limit(Limit::per_minute(60)).ttl(Duration::from_secs(300))
            })
            .layers()
            .await?,
    );
    let client = layers.client(reqwest::Client::new());
    for path in ["issue/1", "issue/2", "issue/1", "volume/7"] {
        client.get(format!("{base}/api/{path}/")).send().await?;
    }
    if let Some(sqlite) = layers.sqlite() {
        sqlite.flush().await?; // the journal is written behind: make it visible now
    }

    // The admin endpoint.
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin_url = format!("http://{}", admin.local_addr()?);
    let router = Router::new()
        .route("/admin/stats", get(stats))
        .route("/admin/journal", get(journal))
        .with_state(layers.clone());
    tokio::spawn(async move { axum::serve(admin, router).await });

    let http = reqwest::Client::new();
    for path in ["/admin/stats", "/admin/journal?since_s=3600&by=resource"] {
        let body = http
            .get(format!("{admin_url}{path}"))
            .send()
            .await?
            .text()
            .await?;
        println!("GET {path}\n{body}\n");
    }
    Ok(())
}
