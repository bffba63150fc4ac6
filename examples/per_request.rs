//! Per-request context: priority, cache mode and maximum wait, set as extensions on each
//! request: `cargo run --example per_request`.
//!
//! One client built with [`Courteous`] (in memory), a local API (no network), `search` limited
//! to 2 requests per second, answers cached for a minute. Each step sets one extension and the
//! table shows what the stack did with it:
//!
//! * [`Priority`]: a person's request (`User`) goes before a queue of background work;
//! * [`CacheMode`]: `Reload` goes upstream despite a stored answer, `OnlyIfCached` never goes
//!   upstream (`504` when nothing is stored), `NoStore` neither reads nor writes the cache;
//! * [`MaxWait`]: how long this request may wait for the rate limiter (`MaxWait::FAIL_FAST`:
//!   not at all).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use courteous::rate_limit::MaxWait;
use courteous::{CacheMode, Courteous, Limit, Priority, RateLimited, Report};
use reqwest_middleware::RequestBuilder;

async fn api(State(calls): State<Arc<AtomicU64>>, request: Request) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    format!(r#"{{"path":"{}"}}"#, request.uri())
}

/// Sends `request` and describes the outcome: status, cache status, time waited.
async fn outcome(request: RequestBuilder) -> String {
    let started = Instant::now();
    match request.send().await {
        Ok(response) => {
            let report = response
                .extensions()
                .get::<Report>()
                .cloned()
                .unwrap_or_default();
            format!(
                "{} cache={} after {} ms",
                response.status().as_u16(),
                report.cache.map_or("-".to_owned(), |c| c.to_string()),
                started.elapsed().as_millis()
            )
        }
        Err(reqwest_middleware::Error::Middleware(error))
            if error.downcast_ref::<RateLimited>().is_some() =>
        {
            format!(
                "refused by the limiter after {} ms",
                started.elapsed().as_millis()
            )
        }
        Err(error) => format!("error: {error}"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = Router::new().fallback(api).with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let per_second = Limit::per_second(2);
    let client = Courteous::new(reqwest::Client::new())
        .default_ttl(Duration::from_secs(60))
        .resource("search", |r| r.limit(per_second))
        .build()
        .await?;
    let search = |q: &str| client.get(format!("{base}/api/search/?q={q}"));
    let mut rows: Vec<(String, String)> = Vec::new();

    // Priority: four background searches and one person's, sent at once. With 2 per second the
    // background ones queue; the person's goes first.
    let background = (0..4).map(|i| {
        let request = search(&format!("bulk{i}")).with_extension(Priority::Background);
        async move { (format!("Background bulk{i}"), outcome(request).await) }
    });
    let user = async {
        let request = search("batman").with_extension(Priority::User);
        ("User batman".to_owned(), outcome(request).await)
    };
    let (mut queued, person) = tokio::join!(futures_util::future::join_all(background), user);
    rows.push(person);
    rows.append(&mut queued);

    // MaxWait: after a quiet second, two searches at once spend the limit; the next fails at
    // once rather than wait, and the one after may wait up to 5 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (one, two) = tokio::join!(outcome(search("spend1")), outcome(search("spend2")));
    rows.push(("(none) spend1".to_owned(), one));
    rows.push(("(none) spend2".to_owned(), two));
    rows.push((
        "MaxWait::FAIL_FAST".to_owned(),
        outcome(search("now").with_extension(MaxWait::FAIL_FAST)).await,
    ));
    rows.push((
        "MaxWait(5 s)".to_owned(),
        outcome(search("soon").with_extension(MaxWait(Duration::from_secs(5)))).await,
    ));

    // CacheMode: "batman" is stored.
    for (name, mode) in [
        ("CacheMode::Default", CacheMode::Default),
        ("CacheMode::Reload", CacheMode::Reload),
        ("CacheMode::NoStore", CacheMode::NoStore),
    ] {
        let request = search("batman")
            .with_extension(mode)
            .with_extension(MaxWait(Duration::from_secs(5)));
        rows.push((format!("{name} (stored)"), outcome(request).await));
    }
    rows.push((
        "CacheMode::OnlyIfCached (absent)".to_owned(),
        outcome(search("superman").with_extension(CacheMode::OnlyIfCached)).await,
    ));

    println!("{:<34} outcome", "extension");
    for (extension, outcome) in rows {
        println!("{extension:<34} {outcome}");
    }
    println!("\nupstream calls: {}", calls.load(Ordering::SeqCst));
    Ok(())
}
