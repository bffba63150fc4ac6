//! Dedupe costs: what a follower adds in one process, what a leader adds, and how long a
//! follower over another store handle (the cross-process path: polling the SQLite file, or a
//! pub/sub wake-up from Redis) takes to see a leader's result.
//!
//! Run: `cargo bench --bench dedupe -- --warm-up-time 1 --measurement-time 3`
//! (`--all-features` adds the Redis case, against `COURTEOUS_REDIS_URL` or 127.0.0.1:6379; it is
//! skipped when no Redis answers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courteous::dedupe::DedupeRole;
use courteous::dedupe::{DedupeLayer, DedupeStore, MemoryDedupeStore};
use courteous::store::sqlite::SqliteStore;
use courteous::{BoxError, Report};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt, service_fn};

type Request = http::Request<reqwest::Body>;
type Response = http::Response<reqwest::Body>;

fn get(url: &str) -> Request {
    http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

/// An upstream that answers once the gate gets a permit.
fn gated(
    gate: Arc<Semaphore>,
) -> impl tower::Service<Request, Response = Response, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |_req: Request| {
        let gate = gate.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            let mut response = http::Response::new(reqwest::Body::from(&b"{\"ok\":true}"[..]));
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok::<_, BoxError>(response)
        }
    })
}

/// 1 leader and `n - 1` followers wait on a gate; returns the time from opening it until all
/// `n` have their response, divided by the followers.
async fn followers_round(n: usize) -> Duration {
    let gate = Arc::new(Semaphore::new(0));
    let service = DedupeLayer::new(MemoryDedupeStore::new()).layer(gated(gate.clone()));
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(service.clone().oneshot(get("http://h/x"))))
        .collect();
    // Let every task run up to its wait.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    let start = Instant::now();
    gate.add_permits(1);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    start.elapsed() / (n as u32 - 1)
}

fn in_process(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("dedupe/in_process");
    group.bench_function("per_follower_of_1000", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(followers_round(1000))).sum())
    });

    // A request alone: the local map, the memory store's lease and publish, the buffering.
    let open = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let direct = gated(open.clone());
    let layered = DedupeLayer::new(MemoryDedupeStore::new()).layer(gated(open));
    let n = AtomicU64::new(0);
    group.bench_function("request_without_layer", |b| {
        b.to_async(&rt)
            .iter(|| direct.clone().oneshot(get("http://h/x")))
    });
    group.bench_function("request_as_leader", |b| {
        b.to_async(&rt).iter(|| {
            let url = format!("http://h/{}", n.fetch_add(1, Ordering::Relaxed));
            layered.clone().oneshot(get(&url))
        })
    });
    group.finish();
}

/// Two handles on one file: layer A leads, layer B follows through the store (as another process
/// would). Measures from A's return to B's.
fn cross_store(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let (one, two) = rt.block_on(async {
        (
            SqliteStore::open(&path).await.unwrap(),
            SqliteStore::open(&path).await.unwrap(),
        )
    });
    wake_latency(c, &rt, "dedupe/cross_store", one.dedupe(), two.dedupe());
}

/// The same over two connections to one Redis server (one prefix): B is woken by pub/sub.
#[cfg(feature = "redis")]
fn cross_redis(c: &mut Criterion) {
    use courteous::store::redis::RedisStore;
    let rt = runtime();
    let url = std::env::var("COURTEOUS_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let prefix = format!("courteous-bench:{}", std::process::id());
    let connect = || RedisStore::builder(&url).prefix(&prefix).connect().unwrap();
    let (one, two) = rt.block_on(async { (connect(), connect()) });
    if let Err(error) = rt.block_on(one.ping()) {
        eprintln!("SKIPPED: dedupe/cross_redis: no Redis answers at {url} ({error})");
        return;
    }
    wake_latency(c, &rt, "dedupe/cross_redis", one.dedupe(), two.dedupe());
}

#[cfg(not(feature = "redis"))]
fn cross_redis(_: &mut Criterion) {}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Layer A over `one` leads, layer B over `two` follows through the store; measures from A's
/// return (after its publish) to B's, and prints the median and p99.
fn wake_latency(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    one: impl DedupeStore,
    two: impl DedupeStore,
) {
    let gate = Arc::new(Semaphore::new(0));
    let a = DedupeLayer::new(one).layer(gated(gate.clone()));
    let b_layer = DedupeLayer::new(two).layer(gated(Arc::new(Semaphore::new(0))));
    let n = AtomicU64::new(0);
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut group = c.benchmark_group(name);
    group.sample_size(30);
    group.bench_function("wake_after_leader_returns", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let url = format!("http://h/cross/{}", n.fetch_add(1, Ordering::Relaxed));
                let latency = rt.block_on(async {
                    let leader = tokio::spawn(a.clone().oneshot(get(&url)));
                    // Let A lead in the store before B asks.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let follower = tokio::spawn(b_layer.clone().oneshot(get(&url)));
                    // An upstream call of 30 ms.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    gate.add_permits(1);
                    let leader_done = {
                        leader.await.unwrap().unwrap();
                        Instant::now()
                    };
                    let response = follower.await.unwrap().unwrap();
                    let done = Instant::now();
                    assert_eq!(
                        Report::of(&response).unwrap().dedupe,
                        Some(DedupeRole::CrossProcessFollower)
                    );
                    done.duration_since(leader_done)
                });
                samples.lock().unwrap().push(latency);
                total += latency;
            }
            total
        })
    });
    group.finish();
    let mut samples = samples.lock().unwrap().clone();
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "{name}: wake latency over {} samples: median {:?}, p99 {:?}",
        samples.len(),
        at(0.5),
        at(0.99)
    );
}

criterion_group!(benches, in_process, cross_store, cross_redis);
criterion_main!(benches);
