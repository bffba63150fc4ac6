//! Admission decisions per second, with the latency tail, for the memory store and the SQLite
//! store (one process; two processes on one file).
//!
//! Workload: `RL_BENCH_RESOURCES` resources (default 100), each limited to 100 per second, asked
//! round-robin with alternating user and background priority, so decisions mix admissions and
//! refusals and go through the adaptive split (the last column says how many were admitted).
//! Latency is measured around each `acquire` call, from `tasks` concurrent callers.
//!
//! Run: `cargo bench --bench rate_limit` (prints a table). `RL_BENCH_SECS` sets the measured
//! time per case (default 3). Children of the two-process case inherit the settings.
//!
//! With `--features redis` the Redis store follows (one process; two processes sharing the
//! server), skipped with a message when Redis does not answer (see `rate_limit/redis.rs`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courteous::rate_limit::{
    AdaptiveConfig, AdmissionRequest, Clock, Decision, Limit, MemoryRateLimitStore, RateLimitStore,
    SystemClock,
};
use courteous::store::sqlite::SqliteStore;
use courteous::{Priority, Resource};

const CHILD_ENV: &str = "RL_BENCH_CHILD";

#[cfg(feature = "redis")]
#[path = "rate_limit/redis.rs"]
mod redis_cases;

struct Outcome {
    decisions: u64,
    admitted: u64,
    elapsed: Duration,
    latencies: Vec<u32>,
}

fn secs() -> f64 {
    std::env::var("RL_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0)
}

/// Resources asked round-robin (`RL_BENCH_RESOURCES`, default 100).
fn resources() -> usize {
    std::env::var("RL_BENCH_RESOURCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn setup() -> (Vec<Resource>, Arc<[Limit]>, Arc<AdaptiveConfig>) {
    let resources = (0..resources())
        .map(|i| Resource::new(format!("r{i}")).unwrap())
        .collect();
    let limits: Arc<[Limit]> = vec![Limit::per_second(NonZeroU32::new(100).unwrap())].into();
    (resources, limits, Arc::new(AdaptiveConfig::default()))
}

/// `tasks` concurrent loops of `acquire` on `store` for `duration`.
async fn drive(store: Arc<dyn RateLimitStore>, tasks: usize, duration: Duration) -> Outcome {
    let (resources, limits, adaptive) = setup();
    let resources: Arc<[Resource]> = resources.into();
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (store, resources, limits, adaptive) = (
                store.clone(),
                resources.clone(),
                limits.clone(),
                adaptive.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 20);
                let (mut decisions, mut admitted) = (0u64, 0u64);
                let mut i = t * 7919;
                while started.elapsed() < duration {
                    for _ in 0..64 {
                        i = i.wrapping_add(1);
                        let priority = if i % 2 == 0 {
                            Priority::User
                        } else {
                            Priority::Background
                        };
                        let request = AdmissionRequest::new(
                            resources[i % resources.len()].clone(),
                            priority,
                            limits.clone(),
                            adaptive.clone(),
                            SystemClock.now(),
                        );
                        let t0 = Instant::now();
                        let decision = store.acquire(request).await.expect("no store error");
                        latencies.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                        decisions += 1;
                        admitted += u64::from(matches!(decision, Decision::Admitted { .. }));
                    }
                }
                (decisions, admitted, latencies)
            })
        })
        .collect();
    let mut outcome = Outcome {
        decisions: 0,
        admitted: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for h in handles {
        let (d, a, l) = h.await.unwrap();
        outcome.decisions += d;
        outcome.admitted += a;
        outcome.latencies.extend(l);
    }
    outcome.elapsed = started.elapsed();
    outcome
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn summary(o: &mut Outcome) -> String {
    o.latencies.sort_unstable();
    let rate = o.decisions as f64 / o.elapsed.as_secs_f64();
    format!(
        "{:>12.0} | {:>9.1} | {:>9.1} | {:>9.1} | {:>9.1} | {:>10} | {:>8.1}%",
        rate,
        percentile(&o.latencies, 0.5),
        percentile(&o.latencies, 0.99),
        percentile(&o.latencies, 0.999),
        percentile(&o.latencies, 1.0),
        o.decisions,
        100.0 * o.admitted as f64 / o.decisions.max(1) as f64,
    )
}

async fn sqlite_run(path: &std::path::Path, tasks: usize, duration: Duration) -> Outcome {
    let mut builder = SqliteStore::builder(path);
    if let Some(ms) = std::env::var("RL_BENCH_CHECKPOINT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.checkpoint_interval(Duration::from_millis(ms));
    }
    let sqlite = builder.open().await.expect("open");
    let store: Arc<dyn RateLimitStore> = Arc::new(sqlite.rate_limits());
    let outcome = drive(store, tasks, duration).await;
    sqlite.close().await.expect("close");
    outcome
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("RL_BENCH_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
        )
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let duration = Duration::from_secs_f64(secs());
    #[cfg(feature = "redis")]
    if redis_cases::child(duration) {
        return;
    }
    if let Ok(path) = std::env::var(CHILD_ENV) {
        let tasks: usize = std::env::var("RL_BENCH_TASKS").unwrap().parse().unwrap();
        let mut o = runtime().block_on(sqlite_run(path.as_ref(), tasks, duration));
        println!("RESULT {}", summary(&mut o));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then run a short smoke.
    let bench = std::env::args().any(|a| a == "--bench");
    let duration = if bench {
        duration
    } else {
        Duration::from_millis(200)
    };

    println!(
        "{:<34} | {:>12} | {:>9} | {:>9} | {:>9} | {:>9} | {:>10} | {:>9}",
        "case", "decisions/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "decisions", "admitted"
    );
    let rt = runtime();
    let mut memory = rt.block_on(drive(Arc::new(MemoryRateLimitStore::new()), 1, duration));
    println!("{:<34} | {}", "memory, 1 task", summary(&mut memory));
    let mut memory = rt.block_on(drive(Arc::new(MemoryRateLimitStore::new()), 2, duration));
    println!("{:<34} | {}", "memory, 2 tasks", summary(&mut memory));

    let dir = tempfile::tempdir().unwrap();
    for tasks in [1, 16, 64] {
        let path = dir.path().join(format!("one-{tasks}.db"));
        let mut o = rt.block_on(sqlite_run(&path, tasks, duration));
        println!(
            "{:<34} | {}",
            format!("sqlite, 1 process, {tasks} tasks"),
            summary(&mut o)
        );
    }
    for tasks in [16, 64] {
        two_processes(&rt, dir.path(), tasks, duration);
    }
    #[cfg(feature = "redis")]
    redis_cases::run(&rt, duration);
    #[cfg(not(feature = "redis"))]
    println!("redis: SKIPPED: build with --features redis");
}

fn two_processes(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    tasks: usize,
    duration: Duration,
) {
    let path = dir.join(format!("two-{tasks}.db"));
    // Create the file first so both children only open it.
    rt.block_on(async {
        SqliteStore::open(&path)
            .await
            .unwrap()
            .close()
            .await
            .unwrap()
    });
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .env(CHILD_ENV, &path)
                .env("RL_BENCH_TASKS", tasks.to_string())
                .env("RL_BENCH_SECS", duration.as_secs_f64().to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = 0.0;
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "bench child failed");
        let out = String::from_utf8_lossy(&out.stdout);
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .expect("child result");
        total += line
            .split('|')
            .next()
            .unwrap()
            .trim()
            .parse::<f64>()
            .unwrap();
        println!(
            "{:<34} | {}",
            format!("sqlite, 2 processes: #{} ({tasks} tasks)", i + 1),
            line
        );
    }
    println!(
        "{:<34} | {:>12.0}",
        format!("sqlite, 2 processes: total ({tasks})"),
        total
    );
}
