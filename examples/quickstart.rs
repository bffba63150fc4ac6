//! The first thing to run: `cargo run --example quickstart`.
//!
//! Starts a small API on 127.0.0.1 inside this process (no network, no services), wraps a
//! `reqwest` client with the whole courteous stack built by [`Courteous`] on the embedded SQLite
//! store, and sends three
//! rounds of requests:
//!
//! 1. people open three issues, each twice at the same moment: dedupe merges the pairs;
//! 2. they open them again: the cache answers, the API is not asked;
//! 3. a background job walks eight pages of volumes, limited to 4 per second: the limiter paces it,
//!    while a person's request in the middle goes straight through.
//!
//! and prints what each layer did. With `-- --keep` it keeps the SQLite file, for the
//! `courteous` command (feature `cli`) to look into.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use courteous::store::sqlite::SqliteStore;
use courteous::{CacheStatus, Courteous, DedupeRole, Limit, PathSegment, Priority, Report};
use reqwest_middleware::ClientWithMiddleware;

/// The upstream API: answers after 50 ms and counts the calls it gets. It sends no cache headers,
/// like many APIs, so the cache uses the TTLs set in code.
async fn api(State(calls): State<Arc<AtomicU64>>, request: Request) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    format!(r#"{{"path":"{}"}}"#, request.uri())
}

/// One row of the table: what happened to one group of requests.
#[derive(Default)]
struct Row {
    requests: u32,
    cache_hits: u32,
    dedupe_followers: u32,
    waited: Duration,
}

async fn send_all(
    client: &ClientWithMiddleware,
    round: &str,
    requests: Vec<(String, Priority)>,
    table: &mut BTreeMap<(String, String, String), Row>,
) -> Result<(), Box<dyn std::error::Error>> {
    let sends = requests.into_iter().map(|(url, priority)| {
        let request = client.get(url).with_extension(priority);
        async move { (priority, request.send().await) }
    });
    for (priority, result) in futures_util::future::join_all(sends).await {
        let response = result?.error_for_status()?;
        let report = response
            .extensions()
            .get::<Report>()
            .cloned()
            .unwrap_or_default();
        let resource = report.resource.map(|r| r.to_string()).unwrap_or_default();
        let row = table
            .entry((round.to_owned(), resource, priority.to_string()))
            .or_default();
        row.requests += 1;
        row.cache_hits += u32::from(report.cache == Some(CacheStatus::Hit));
        row.dedupe_followers += u32::from(matches!(
            report.dedupe,
            Some(DedupeRole::Follower | DedupeRole::CrossProcessFollower)
        ));
        if let Some(rate_limit) = report.rate_limit {
            row.waited = row.waited.max(rate_limit.waited);
        }
    }
    Ok(())
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
    //    We keep a handle on it to close it at the end (committing deferred cache writes).
    let dir = std::env::temp_dir().join(format!("courteous-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = SqliteStore::open(dir.join("courteous.db")).await?;

    // 3. The whole stack (context, cache, dedupe, rate limit) over a reqwest client, in one
    //    builder: 20 requests per second for every resource, 4 for `volumes`; answers kept 5 min.
    let client = Courteous::new(reqwest::Client::new())
        .sqlite_store(store.clone())
        .classifier(PathSegment::after("/api/"))
        .default_limit(Limit::per_second(20))
        .default_ttl(Duration::from_secs(300))
        .resource("volumes", |r| r.limit(Limit::per_second(4)))
        .build()
        .await?;

    let started = Instant::now();
    let mut table = BTreeMap::new();
    let issue = |i: u32| (format!("{base}/api/issue/4000-{i}/"), Priority::User);

    // Round 1: each of three issues requested twice at once.
    let round1 = (0..6).map(|i| issue(i % 3)).collect();
    send_all(&client, "1 dedupe", round1, &mut table).await?;
    // Round 2: the same issues again.
    let round2 = (0..3).map(issue).collect();
    send_all(&client, "2 cache", round2, &mut table).await?;
    // Round 3: a background crawl over 8 pages of volumes, and one person.
    let mut round3: Vec<_> = (0..8)
        .map(|page| {
            (
                format!("{base}/api/volumes/?offset={}", page * 100),
                Priority::Background,
            )
        })
        .collect();
    round3.push((
        format!("{base}/api/volumes/?filter=name:batman"),
        Priority::User,
    ));
    send_all(&client, "3 rate limit", round3, &mut table).await?;

    println!(
        "{:<13} {:<9} {:<11} {:>8} {:>10} {:>17} {:>11}",
        "round", "resource", "priority", "requests", "cache hits", "dedupe followers", "max wait"
    );
    for ((round, resource, priority), row) in &table {
        println!(
            "{round:<13} {resource:<9} {priority:<11} {:>8} {:>10} {:>17} {:>9}ms",
            row.requests,
            row.cache_hits,
            row.dedupe_followers,
            row.waited.as_millis()
        );
    }
    let requests: u32 = table.values().map(|row| row.requests).sum();
    println!(
        "\n{requests} requests, {} upstream calls, {:.1} s; state in {}",
        calls.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64(),
        store.path().display()
    );
    store.close().await?;
    if std::env::args().any(|arg| arg == "--keep") {
        println!(
            "kept; look inside with `cargo run --features cli --bin courteous -- --db {} status` \
             (or stats, journal, check)",
            store.path().display()
        );
    } else {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
