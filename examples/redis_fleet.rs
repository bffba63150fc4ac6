//! A fleet sharing one Redis: `cargo run --all-features --example redis_fleet`.
//!
//! Two "machines" (two clients built with [`Courteous`] over the same Redis and key prefix, as
//! two processes on two hosts would be) call a local API (no network):
//!
//! 1. both ask for the same issue at the same moment: one upstream call, the other machine
//!    follows it across processes;
//! 2. the second machine asks again: the first one's answer is in the shared cache;
//! 3. both search, 3 each, against a limit of 2 per second *for the fleet*: the shared limiter
//!    paces them.
//!
//! Redis is read from `COURTEOUS_REDIS_URL` (default `redis://127.0.0.1:6379/`). When no Redis
//! answers, the example says so and exits successfully.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use courteous::store::redis::RedisStore;
use courteous::{BuildError, Courteous, Limit, Report};
use reqwest_middleware::ClientWithMiddleware;

async fn api(State(calls): State<Arc<AtomicU64>>, request: Request) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    format!(r#"{{"path":"{}"}}"#, request.uri())
}

/// One machine of the fleet: 2 searches per second for all machines together.
async fn machine(
    url: &str,
    prefix: &str,
    fleet_limit: Limit,
) -> Result<ClientWithMiddleware, BuildError> {
    let store = RedisStore::builder(url)
        .prefix(prefix)
        .connect_timeout(Duration::from_millis(500))
        .connect()?;
    Courteous::new(reqwest::Client::new())
        .redis_store(store)
        .default_ttl(Duration::from_secs(60))
        .resource("search", |r| r.limit(fleet_limit))
        .build()
        .await
}

async fn send(
    name: &str,
    client: &ClientWithMiddleware,
    url: String,
) -> Result<String, Box<dyn std::error::Error>> {
    let response = client.get(&url).send().await?;
    let report = response
        .extensions()
        .get::<Report>()
        .cloned()
        .unwrap_or_default();
    let path = url.split_once("/api/").map_or(url.as_str(), |(_, p)| p);
    Ok(format!(
        "{name:<10} {path:<18} {:>6} {:>7} {:>22} {:>7}ms",
        response.status().as_u16(),
        report.cache.map_or("-".to_owned(), |c| c.to_string()),
        report.dedupe.map_or("-".to_owned(), |d| format!("{d:?}")),
        report.rate_limit.map_or(0, |r| r.waited.as_millis()),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("COURTEOUS_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    // A prefix of this run's own, so that runs do not see each other's state.
    let prefix = format!("courteous-example:{}", std::process::id());
    let fleet_limit = Limit::per_second(2);
    let a = match machine(&url, &prefix, fleet_limit).await {
        Ok(client) => client,
        Err(error @ BuildError::Redis(_)) => {
            println!("skipped: {error} (at {url}; set COURTEOUS_REDIS_URL for another server)");
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    let b = machine(&url, &prefix, fleet_limit).await?;

    let calls = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = Router::new().fallback(api).with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!(
        "{:<10} {:<18} {:>6} {:>7} {:>22} {:>9}",
        "machine", "request", "status", "cache", "dedupe", "waited"
    );
    let issue = format!("{base}/api/issue/1/");
    let (first, second) = tokio::join!(send("a", &a, issue.clone()), send("b", &b, issue.clone()));
    println!("{}\n{}", first?, second?);
    println!("{}", send("b", &b, issue).await?);
    let searches = (0..6).map(|i| {
        let (name, client) = if i % 2 == 0 { ("a", &a) } else { ("b", &b) };
        send(name, client, format!("{base}/api/search/?q={i}"))
    });
    for line in futures_util::future::join_all(searches).await {
        println!("{}", line?);
    }
    println!("\nupstream calls: {}", calls.load(Ordering::SeqCst));
    Ok(())
}
