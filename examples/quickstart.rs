//! The first thing to run: `cargo run --example quickstart`.
//!
//! Starts a small API on 127.0.0.1 inside this process (no network, no services), wraps a
//! `reqwest` client with the courteous stack on the embedded SQLite default, sends a burst of
//! requests on behalf of users and of a background job, and prints what happened.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use courteous::store::sqlite::SqliteStore;
use courteous::{ContextLayer, Middleware, PathSegment, Priority, Report};
use reqwest_middleware::ClientBuilder;
use tower::ServiceBuilder;

/// The upstream API: counts the calls it gets.
async fn api(State(calls): State<Arc<AtomicU64>>, request: Request) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    format!(r#"{{"path":"{}"}}"#, request.uri().path())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A local stand-in for a rate-limited API.
    let calls = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = Router::new().fallback(api).with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // 2. One SQLite file holds the state of every store, shared by every process on the machine.
    let dir = std::env::temp_dir().join(format!("courteous-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = SqliteStore::open(dir.join("courteous.db")).await?;

    // 3. The stack, plugged into reqwest-middleware.
    let stack = ServiceBuilder::new().layer(
        ContextLayer::new()
            .classifier(PathSegment::after("/api/"))
            .default_priority(Priority::Background),
    );
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(Middleware::new(stack))
        .build();

    // 4. A burst: people looking at issues, and a background job walking the volumes.
    let mut requests = Vec::new();
    for i in 0..6 {
        requests.push((format!("{base}/api/issue/4000-{}/", i % 3), Priority::User));
    }
    for i in 0..6 {
        requests.push((
            format!("{base}/api/volumes/?offset={}", (i % 2) * 100),
            Priority::Background,
        ));
    }
    let sends = requests.iter().map(|(url, priority)| {
        let request = client.get(url).with_extension(*priority);
        async move { (*priority, request.send().await) }
    });
    let results = futures_util::future::join_all(sends).await;

    // 5. What happened.
    let mut table: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (priority, result) in results {
        let response = result?;
        let report = response
            .extensions()
            .get::<Report>()
            .cloned()
            .unwrap_or_default();
        let resource = report.resource.map(|r| r.to_string()).unwrap_or_default();
        *table.entry((resource, priority.to_string())).or_default() += 1;
    }
    println!("{:<10} {:<11} {:>8}", "resource", "priority", "requests");
    for ((resource, priority), n) in &table {
        println!("{resource:<10} {priority:<11} {n:>8}");
    }
    println!(
        "\n{} requests, {} upstream calls; state in {}",
        requests.len(),
        calls.load(Ordering::SeqCst),
        store.path().display()
    );
    store.close().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
