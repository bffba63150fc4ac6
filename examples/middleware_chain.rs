//! courteous in a `reqwest-middleware` chain with a retry middleware:
//! `cargo run --example middleware_chain`.
//!
//! A local API (no network) fails each path twice with `503` before answering. Two clients
//! send the same requests; both retry with `reqwest-retry`, in the two possible orders:
//!
//! * **retry after courteous** (`middleware_builder(..).with(retry)`): courteous hands each
//!   upstream call down the chain, and the retry middleware repeats it until it succeeds. The
//!   cache stores the final answer; the limiter counted one admission for the three attempts.
//! * **retry before courteous** (`.with(retry).with(courteous)`): each attempt runs the whole
//!   stack again, so each is admitted by the limiter; but dedupe keeps a result for late
//!   followers (`DedupeLayer::result_ttl`, 3 s), so the retries may receive the first `503`
//!   again instead of asking the server.
//!
//! The table shows what each order did.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use courteous::{CacheStatus, Courteous, CourteousLayer, CourteousMiddleware, Report};
use reqwest_middleware::ClientWithMiddleware;
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;

/// Calls per path; each path fails twice, then answers.
type Calls = Arc<parking_lot::Mutex<HashMap<String, u32>>>;

async fn flaky(State(calls): State<Calls>, request: Request) -> (StatusCode, String) {
    let n = {
        let mut calls = calls.lock();
        let n = calls.entry(request.uri().path().to_owned()).or_default();
        *n += 1;
        *n
    };
    if n <= 2 {
        (StatusCode::SERVICE_UNAVAILABLE, "try again".to_owned())
    } else {
        (StatusCode::OK, format!(r#"{{"path":"{}"}}"#, request.uri()))
    }
}

fn retry() -> RetryTransientMiddleware<ExponentialBackoff> {
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(10), Duration::from_millis(50))
        .build_with_max_retries(3);
    RetryTransientMiddleware::new_with_policy(policy)
}

async fn stack() -> Result<CourteousLayer, courteous::BuildError> {
    Courteous::new(reqwest::Client::new())
        .default_ttl(Duration::from_secs(300))
        .layers()
        .await
}

/// Sends two GETs of `url`; returns the first status and the second one's cache status.
async fn twice(
    client: &ClientWithMiddleware,
    url: &str,
) -> Result<(u16, Option<CacheStatus>), Box<dyn std::error::Error>> {
    let first = client.get(url).send().await?.status().as_u16();
    let second = client.get(url).send().await?;
    let cache = second.extensions().get::<Report>().and_then(|r| r.cache);
    Ok((first, cache))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls = Calls::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = Router::new().fallback(flaky).with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Retry after courteous: one admission, the retries inside it.
    let after = stack().await?;
    let after_client = after
        .middleware_builder(reqwest::Client::new())
        .with(retry())
        .build();
    // Retry before courteous: each attempt goes through the whole stack.
    let before = stack().await?;
    let before_client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(retry())
        .with(CourteousMiddleware::new(before.clone()))
        .build();

    println!(
        "{:<24} {:>12} {:>15} {:>20} {:>17}",
        "order", "first status", "upstream calls", "limiter admissions", "second request"
    );
    for (order, client, stack, path) in [
        (
            "retry after courteous",
            &after_client,
            &after,
            "/api/issue/1/",
        ),
        (
            "retry before courteous",
            &before_client,
            &before,
            "/api/issue/2/",
        ),
    ] {
        let (status, cache) = twice(client, &format!("{base}{path}")).await?;
        let upstream = calls.lock().get(path).copied().unwrap_or(0);
        let admitted = stack
            .rate_limit()
            .stats()
            .await
            .resources
            .get("issue")
            .map_or(0, |r| r.admitted_user + r.admitted_background);
        let cache = cache.map_or("-".to_owned(), |c| c.to_string());
        println!("{order:<24} {status:>12} {upstream:>15} {admitted:>20} {cache:>17}");
    }
    Ok(())
}
