//! The cache layer through reqwest-middleware, as a user calls it: a memory-tier hit, a
//! SQLite-tier hit (memory tier off) and a miss, at 1 KiB and 100 KiB, each against the same
//! request sent without the cache; with `--features redis`, a Redis-tier hit too.
//!
//! `cargo bench --bench cache -- --warm-up-time 1 --measurement-time 3`
//! `cargo bench --features redis --bench cache -- cache_redis --warm-up-time 1 --measurement-time 3`

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/support/server.rs"]
mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courteous::CourteousMiddleware;
use courteous::cache::{CacheLayer, CacheTtl, MemoryCacheStore};
use courteous::store::sqlite::SqliteStore;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower::{Service, ServiceExt};

const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (100 * 1024, "100KiB")];

fn with_cache(layer: CacheLayer) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(CourteousMiddleware::new(layer))
        .build()
}

fn layer(store: impl courteous::cache::CacheStore) -> CacheLayer {
    CacheLayer::new(store)
        .default_ttl(CacheTtl::absolute(Duration::from_secs(3600)))
        .cleanup_interval(None)
}

async fn fetch(client: &ClientWithMiddleware, url: &str) -> usize {
    let response = client.get(url).send().await.unwrap();
    response.bytes().await.unwrap().len()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, sqlite) = rt.block_on(async {
        let server = server::TestServer::start().await;
        let sqlite = SqliteStore::builder(dir.path().join("bench.db"))
            .page_size(65536)
            .open()
            .await
            .unwrap();
        (server, sqlite)
    });

    let direct = ClientBuilder::new(reqwest::Client::new()).build();
    // The same reqwest-middleware path with an empty courteous stack: what the hand-off costs.
    let passthrough = ClientBuilder::new(reqwest::Client::new())
        .with(CourteousMiddleware::new(tower::layer::util::Identity::new()))
        .build();
    let memory = with_cache(layer(MemoryCacheStore::new()));
    let on_sqlite = with_cache(layer(sqlite.cache()));
    let missing = with_cache(layer(MemoryCacheStore::builder().max_entries(1000).build()));

    let mut group = c.benchmark_group("cache");
    for (size, label) in SIZES {
        let url = server.url(&format!("/api/issues/1?size={size}"));
        rt.block_on(async {
            assert_eq!(fetch(&memory, &url).await, size);
            assert_eq!(fetch(&on_sqlite, &url).await, size);
            sqlite.flush().await.unwrap();
        });
        group.bench_with_input(
            BenchmarkId::new("direct_round_trip", label),
            &url,
            |b, url| {
                b.to_async(&rt).iter(|| fetch(&direct, url));
            },
        );
        group.bench_with_input(BenchmarkId::new("memory_hit", label), &url, |b, url| {
            b.to_async(&rt).iter(|| fetch(&memory, url));
        });
        group.bench_with_input(BenchmarkId::new("sqlite_hit", label), &url, |b, url| {
            b.to_async(&rt).iter(|| fetch(&on_sqlite, url));
        });
        // A miss: a new URL each time (looked up, fetched, buffered and stored), against the
        // same fresh URLs sent directly.
        let n = AtomicU64::new(0);
        let base = server.url(&format!("/api/issues/2?size={size}"));
        group.bench_with_input(
            BenchmarkId::new("direct_fresh_url", label),
            &base,
            |b, base| {
                b.to_async(&rt).iter(|| {
                    let url = format!("{base}&n={}", n.fetch_add(1, Ordering::Relaxed));
                    let client = &direct;
                    async move { fetch(client, &url).await }
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("passthrough_fresh_url", label),
            &base,
            |b, base| {
                b.to_async(&rt).iter(|| {
                    let url = format!("{base}&n={}", n.fetch_add(1, Ordering::Relaxed));
                    let client = &passthrough;
                    async move { fetch(client, &url).await }
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("miss", label), &base, |b, base| {
            b.to_async(&rt).iter(|| {
                let url = format!("{base}&n={}", n.fetch_add(1, Ordering::Relaxed));
                let client = &missing;
                async move { fetch(client, &url).await }
            });
        });
    }
    group.finish();

    // The layer alone, without reqwest: a memory hit through the tower service.
    let mut tower_group = c.benchmark_group("cache_tower");
    let service = tower::ServiceBuilder::new()
        .layer(layer(MemoryCacheStore::new()))
        .service(courteous::HttpClient::new(reqwest::Client::new()));
    for (size, label) in SIZES {
        let url = server.url(&format!("/api/issues/3?size={size}"));
        let request = || {
            http::Request::get(&url)
                .body(reqwest::Body::from(""))
                .unwrap()
        };
        rt.block_on(service.clone().oneshot(request())).unwrap();
        tower_group.bench_function(BenchmarkId::new("memory_hit", label), |b| {
            b.to_async(&rt).iter(|| {
                let mut service = service.clone();
                let request = request();
                async move { service.call(request).await.unwrap() }
            });
        });
    }
    tower_group.finish();
    rt.block_on(sqlite.close()).unwrap();
}

/// A Redis-tier hit (no memory tier), the same shape as `sqlite_hit`: one `HMGET` per request.
/// Needs `--features redis` and a Redis at `COURTEOUS_REDIS_URL` (default
/// `redis://127.0.0.1:6379/`); skipped with a message otherwise.
#[cfg(feature = "redis")]
fn bench_redis(c: &mut Criterion) {
    use courteous::cache::CacheStore;
    use courteous::store::redis::RedisStore;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = std::env::var("COURTEOUS_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let (server, redis) = rt
        .block_on(async {
            let redis = RedisStore::builder(&url)
                .prefix(format!("courteous-bench:{}", std::process::id()))
                .connect()
                .ok()?;
            match redis.ping().await {
                Ok(()) => Some((server::TestServer::start().await, redis)),
                Err(e) => {
                    eprintln!("SKIPPED cache_redis: no Redis answers at {url} ({e})");
                    None
                }
            }
        })
        .unzip();
    let (Some(server), Some(redis)) = (server, redis) else {
        return;
    };
    let store = redis.cache();
    let on_redis = with_cache(layer(store.clone()));
    let mut group = c.benchmark_group("cache_redis");
    for (size, label) in SIZES {
        let url = server.url(&format!("/api/issues/1?size={size}"));
        rt.block_on(async {
            assert_eq!(fetch(&on_redis, &url).await, size);
        });
        group.bench_with_input(BenchmarkId::new("redis_hit", label), &url, |b, url| {
            b.to_async(&rt).iter(|| fetch(&on_redis, url));
        });
    }
    group.finish();
    rt.block_on(store.clear()).unwrap();
}

#[cfg(not(feature = "redis"))]
fn bench_redis(_: &mut Criterion) {
    eprintln!("SKIPPED cache_redis: built without the `redis` feature (add --features redis)");
}

criterion_group!(benches, bench, bench_redis);
criterion_main!(benches);
