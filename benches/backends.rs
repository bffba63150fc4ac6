//! One operation at a time on each backend, side by side: the latency of a cache hit and of a
//! rate-limit decision on memory, SQLite and Redis (median, p99, p99.9, max).
//!
//! * **cache hit**: a GET through the [`CacheLayer`](courteous::cache::CacheLayer) as a tower
//!   service, answered from the store (the memory tier off for SQLite and Redis), 1 KiB and
//!   100 KiB bodies; the upstream is a local server the hits never reach.
//! * **rate-limit decision**: one [`RateLimitStore::acquire`] (check and record) at a time,
//!   round-robin over 100 resources limited to 1,000,000 per minute, so every decision admits and
//!   writes.
//!
//! * **sqlite thread hop**: an empty [`SqliteStore::call`], the hop to a store thread and back
//!   that every SQLite operation pays (it is what varies most with how idle the machine is: an
//!   idle virtual CPU wakes slowly).
//!
//! Run: `cargo bench --all-features --bench backends` (prints a table). `BACKENDS_BENCH_OPS`
//! sets the operations per case (default 20,000). The Redis rows need the server at
//! `COURTEOUS_REDIS_URL` (default `redis://127.0.0.1:6379/`); without one they are skipped with a
//! message. One caller at a time, so the figures are latencies, not throughput: see the
//! `rate_limit` bench for decisions per second under concurrency.

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/support/server.rs"]
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use courteous::cache::{CacheLayer, CacheStore, CacheTtl, MemoryCacheStore};
use courteous::rate_limit::{
    AdaptiveConfig, AdmissionRequest, Clock, Decision, Limit, MemoryRateLimitStore, RateLimitStore,
    SystemClock,
};
use courteous::store::sqlite::SqliteStore;
use courteous::{HttpClient, Priority, Resource};
use http_body_util::BodyExt;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

type Client = BoxCloneService<
    http::Request<reqwest::Body>,
    http::Response<reqwest::Body>,
    courteous::BoxError,
>;

const SIZES: [(usize, &str); 2] = [(1024, "1 KiB"), (100 * 1024, "100 KiB")];

fn ops() -> usize {
    std::env::var("BACKENDS_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Latencies in ns, sorted.
struct Sample(Vec<u64>);

impl Sample {
    fn at(&self, p: f64) -> f64 {
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i] as f64 / 1000.0
    }

    fn row(&self, case: &str) {
        println!(
            "{case:<36} | {:>9.1} | {:>9.1} | {:>9.1} | {:>9.1} | {:>7}",
            self.at(0.5),
            self.at(0.99),
            self.at(0.999),
            self.at(1.0),
            self.0.len()
        );
    }
}

/// Runs `op` `warmup` times unmeasured, then `n` times measured one by one.
async fn measure<F, Fut>(n: usize, mut op: F) -> Sample
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..(n / 10).max(100) {
        op(i).await;
    }
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        op(i).await;
        latencies.push(started.elapsed().as_nanos() as u64);
    }
    latencies.sort_unstable();
    Sample(latencies)
}

fn cache_client(store: impl CacheStore) -> Client {
    let layer = CacheLayer::new(store)
        .default_ttl(CacheTtl::absolute(Duration::from_secs(3600)))
        .cleanup_interval(None);
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(HttpClient::new(reqwest::Client::new())),
    )
}

async fn fetch(client: &Client, url: &str) -> usize {
    let request = http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

/// Cache hits on `client` for each size; the first request of each URL fills the store, and
/// `settle` commits it (so that SQLite hits read the file, not the write-behind queue).
async fn cache_rows<F: Future<Output = ()>>(
    backend: &str,
    client: &Client,
    settle: impl Fn() -> F,
    server: &server::TestServer,
    n: usize,
) {
    for (size, label) in SIZES {
        let url = server.url(&format!("/api/issues/1?size={size}"));
        assert_eq!(fetch(client, &url).await, size);
        settle().await;
        let hits_before = server.hits();
        let sample = measure(n, |_| async {
            assert_eq!(fetch(client, &url).await, size);
        })
        .await;
        assert_eq!(
            server.hits(),
            hits_before,
            "{backend}: a hit reached the server"
        );
        sample.row(&format!("cache hit, {backend}, {label}"));
    }
}

async fn decision_row(backend: &str, store: Arc<dyn RateLimitStore>, n: usize) {
    let resources: Vec<Resource> = (0..100)
        .map(|i| Resource::new(format!("bench{i}")).unwrap())
        .collect();
    let limits: Arc<[Limit]> = vec![Limit::per_minute(1_000_000)].into();
    let adaptive = Arc::new(AdaptiveConfig::default());
    let sample = measure(n, |i| {
        let request = AdmissionRequest::new(
            resources[i % resources.len()].clone(),
            Priority::User,
            limits.clone(),
            adaptive.clone(),
            SystemClock.now(),
        );
        let store = store.clone();
        async move {
            let decision = store.acquire(request).await.expect("no store error");
            assert!(
                matches!(decision, Decision::Admitted { .. }),
                "{decision:?}"
            );
        }
    })
    .await;
    sample.row(&format!("rate-limit decision, {backend}"));
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then run a short smoke.
    let n = if std::env::args().any(|a| a == "--bench") {
        ops()
    } else {
        200
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let server = server::TestServer::start().await;
        let sqlite = SqliteStore::open(dir.path().join("bench.db"))
            .await
            .unwrap();
        #[cfg(feature = "redis")]
        let redis = redis_store().await;

        println!(
            "{:<36} | {:>9} | {:>9} | {:>9} | {:>9} | {:>7}",
            "case", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "ops"
        );
        let memory = cache_client(MemoryCacheStore::new());
        cache_rows("memory", &memory, || async {}, &server, n).await;
        let flush = || async { sqlite.flush().await.unwrap() };
        cache_rows("sqlite", &cache_client(sqlite.cache()), flush, &server, n).await;
        #[cfg(feature = "redis")]
        if let Some(redis) = &redis {
            let store = redis.cache();
            cache_rows(
                "redis",
                &cache_client(store.clone()),
                || async {},
                &server,
                n,
            )
            .await;
            store.clear().await.unwrap();
        }
        // What every SQLite operation pays before any SQL: a hop to a store thread and back
        // (two cross-thread wake-ups, the cost that varies most with how idle the machine is).
        measure(n, |_| async { sqlite.call(|_| Ok(())).await.unwrap() })
            .await
            .row("sqlite thread hop (empty call)");
        decision_row("memory", Arc::new(MemoryRateLimitStore::new()), n).await;
        decision_row("sqlite", Arc::new(sqlite.rate_limits()), n).await;
        #[cfg(feature = "redis")]
        if let Some(redis) = &redis {
            decision_row("redis", Arc::new(redis.rate_limits()), n).await;
        }
        sqlite.close().await.unwrap();
    });
}

/// The local Redis under a prefix of this run's own, or `None` after saying why.
#[cfg(feature = "redis")]
async fn redis_store() -> Option<courteous::store::redis::RedisStore> {
    let url = std::env::var("COURTEOUS_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let store = courteous::store::redis::RedisStore::builder(&url)
        .prefix(format!("courteous-bench:{}", std::process::id()))
        .connect()
        .ok()?;
    match store.ping().await {
        Ok(()) => Some(store),
        Err(e) => {
            println!("redis rows skipped: no Redis at {url} ({e})");
            None
        }
    }
}
