//! What a request that reaches the upstream costs on top of the raw round trip: each layer alone
//! and the full stack, per store, at 1 KiB and 100 KiB.
//!
//! Every request asks for a URL never asked before (a counter in the query), so the cache misses,
//! dedupe leads and the limiter decides every time (the bench checks that each request reached
//! the server). The cases run interleaved request by request, in a new random order each time,
//! so that a burst of noise on the machine, or the background work one case leaves behind,
//! falls on every case alike;
//! the table gives each case's p50, p99 and p99.9, and the added cost: the case's percentile
//! minus the raw `reqwest` round trip's, both measured in the same rounds.
//!
//! Run: `cargo bench --bench miss_path` (all features). Environment: `MISS_ROUNDS` (default 20)
//! and `MISS_PER_ROUND` (requests per case per round, default 500). The load average is printed
//! with the table: compare runs only at similar loads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courteous::cache::MemoryCacheStore;
use courteous::store::sqlite::SqliteStore;
use courteous::{
    BoxError, CacheLayer, CacheTtl, ContextLayer, CourteousMiddleware, DedupeLayer, HttpClient,
    Limit, Limits, PathSegment, RateLimitLayer,
};
use http_body_util::BodyExt;
use reqwest_middleware::ClientWithMiddleware;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

type Stack = BoxCloneService<http::Request<reqwest::Body>, http::Response<reqwest::Body>, BoxError>;

/// How one case sends a request.
enum Sender {
    Raw(reqwest::Client),
    Tower(Stack),
    Middleware(ClientWithMiddleware),
}

impl Sender {
    async fn send(&self, url: &str) -> usize {
        match self {
            Sender::Raw(client) => client
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len(),
            Sender::Middleware(client) => client
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len(),
            Sender::Tower(stack) => {
                let request = http::Request::get(url)
                    .body(reqwest::Body::from(""))
                    .unwrap();
                let response = stack.clone().oneshot(request).await.unwrap();
                response
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .len()
            }
        }
    }
}

struct Case {
    name: String,
    sender: Sender,
    samples: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `ContextLayer` -> `layer` -> reqwest: one layer alone on the tower path.
fn alone<L>(layer: L, client: &reqwest::Client) -> Sender
where
    L: tower::Layer<HttpClient>,
    L::Service: tower::Service<
            http::Request<reqwest::Body>,
            Response = http::Response<reqwest::Body>,
            Error = BoxError,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<reqwest::Body>>>::Future: Send + 'static,
{
    Sender::Tower(
        ServiceBuilder::new()
            .layer(context())
            .layer(layer)
            .service(HttpClient::new(client.clone()))
            .boxed_clone(),
    )
}

/// A limit no bench run reaches: the limiter decides and records every request, uncontended.
fn limits() -> Limits {
    Limits::new().default_limit(Limit::per_second(1_000_000))
}

fn context() -> ContextLayer {
    ContextLayer::new().classifier(PathSegment::after("/api/"))
}

fn ttl() -> CacheTtl {
    CacheTtl::absolute(Duration::from_secs(3600))
}

async fn cases(client: &reqwest::Client, sqlite: &SqliteStore) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: &str, sender: Sender| {
        cases.push(Case {
            name: name.to_owned(),
            sender,
            samples: Vec::new(),
        })
    };
    add("raw reqwest", Sender::Raw(client.clone()));
    add(
        "middleware, context only",
        Sender::Middleware(
            reqwest_middleware::ClientBuilder::new(client.clone())
                .with(CourteousMiddleware::new(
                    ServiceBuilder::new().layer(context()),
                ))
                .build(),
        ),
    );
    add(
        "context + cache (memory)",
        alone(
            CacheLayer::new(MemoryCacheStore::new()).default_ttl(ttl()),
            client,
        ),
    );
    let (cache, dedupe, rate_limits) = (sqlite.cache(), sqlite.dedupe(), sqlite.rate_limits());
    add(
        "context + cache (sqlite)",
        alone(CacheLayer::new(cache.clone()).default_ttl(ttl()), client),
    );
    add(
        "context + rate limit (sqlite)",
        alone(
            RateLimitLayer::new(rate_limits.clone(), limits()).unwrap(),
            client,
        ),
    );
    add(
        "context + dedupe (sqlite)",
        alone(DedupeLayer::new(dedupe.clone()), client),
    );
    add(
        "full stack (memory), middleware",
        Sender::Middleware(
            reqwest_middleware::ClientBuilder::new(client.clone())
                .with(CourteousMiddleware::new(
                    ServiceBuilder::new()
                        .layer(context())
                        .layer(CacheLayer::new(MemoryCacheStore::new()).default_ttl(ttl()))
                        .layer(DedupeLayer::new(courteous::MemoryDedupeStore::new()))
                        .layer(
                            RateLimitLayer::new(
                                courteous::rate_limit::MemoryRateLimitStore::new(),
                                limits(),
                            )
                            .unwrap(),
                        ),
                ))
                .build(),
        ),
    );
    add(
        "full stack (sqlite), middleware",
        Sender::Middleware(
            reqwest_middleware::ClientBuilder::new(client.clone())
                .with(CourteousMiddleware::new(
                    ServiceBuilder::new()
                        .layer(context())
                        .layer(CacheLayer::new(cache).default_ttl(ttl()))
                        .layer(DedupeLayer::new(dedupe))
                        .layer(RateLimitLayer::new(rate_limits, limits()).unwrap()),
                ))
                .build(),
        ),
    );
    cases
}

fn main() {
    let rounds = env("MISS_ROUNDS", 20);
    let per_round = env("MISS_PER_ROUND", 500);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let small: Arc<[u8]> = vec![b'x'; 1024].into();
        let large: Arc<[u8]> = vec![b'y'; 100 * 1024].into();
        let hits = Arc::new(AtomicU64::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            counted.fetch_add(1, Ordering::Relaxed);
            let body = if request.uri().path().contains("/100k/") {
                large.clone()
            } else {
                small.clone()
            };
            async move { bytes::Bytes::copy_from_slice(&body) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });

        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open(dir.path().join("bench.db"))
            .await
            .unwrap();
        let client = reqwest::Client::new();
        let fresh = AtomicU64::new(0);
        println!(
            "miss path: {rounds} rounds x {per_round} requests per case, load average at start: {}",
            load_average()
        );
        for size in ["1k", "100k"] {
            let mut cases = cases(&client, &sqlite).await;
            // Warm up every case (connections, statements, pages).
            for case in &mut cases {
                for _ in 0..50 {
                    let n = fresh.fetch_add(1, Ordering::Relaxed);
                    case.sender
                        .send(&format!("{base}/api/{size}/x?n={n}"))
                        .await;
                }
            }
            // A fixed seed: the same orders every run.
            let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
            let mut order: Vec<usize> = (0..cases.len()).collect();
            for _ in 0..rounds {
                // One request of each case in turn, in a new random order every time, so that
                // what one case leaves behind (a store's deferred writes, a dedupe result
                // published after the caller has its answer) falls on every case alike.
                for _ in 0..per_round {
                    shuffle(&mut order, &mut seed);
                    for &i in &order {
                        let case = &mut cases[i];
                        let n = fresh.fetch_add(1, Ordering::Relaxed);
                        let url = format!("{base}/api/{size}/x?n={n}");
                        let before = hits.load(Ordering::Relaxed);
                        let started = Instant::now();
                        let len = case.sender.send(&url).await;
                        case.samples.push(started.elapsed());
                        assert!(len >= 1024, "{}: a body of {len} bytes", case.name);
                        // Every request must reach the server: a miss-path bench that hit a
                        // cache would measure something else.
                        let reached = hits.load(Ordering::Relaxed) - before;
                        assert_eq!(reached, 1, "{}: upstream calls", case.name);
                    }
                }
            }
            print_table(size, &mut cases);
        }
        println!("load average at end: {}", load_average());
        sqlite.close().await.unwrap();
    });
}

/// Fisher-Yates with xorshift64: enough randomness to spread neighbours evenly.
fn shuffle(order: &mut [usize], seed: &mut u64) {
    for i in (1..order.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        order.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

fn print_table(size: &str, cases: &mut [Case]) {
    for case in cases.iter_mut() {
        case.samples.sort_unstable();
    }
    let raw = &cases[0].samples;
    let base = [0.5, 0.99, 0.999].map(|p| percentile(raw, p));
    println!(
        "\n{size} body, µs        {:>9} {:>9} {:>9}   {:>10} {:>10} {:>10}",
        "p50", "p99", "p99.9", "added p50", "added p99", "added p99.9"
    );
    for case in cases.iter() {
        let p = [0.5, 0.99, 0.999].map(|q| percentile(&case.samples, q));
        println!(
            "{:<32} {:>9.0} {:>9.0} {:>9.0}   {:>+10.0} {:>+10.0} {:>+10.0}",
            case.name,
            micros(p[0]),
            micros(p[1]),
            micros(p[2]),
            micros(p[0]) - micros(base[0]),
            micros(p[1]) - micros(base[1]),
            micros(p[2]) - micros(base[2]),
        );
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}
