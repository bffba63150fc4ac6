//! What the journal adds to an upstream call, and how fast SQLite takes its rows.
//!
//! 1. **Added cost per upstream call.** A [`ContextLayer`] over an upstream that answers at once
//!    with an upstream report (as `HttpClient` writes it), so the measure is the layer's own
//!    work: without a journal, and with a journal in memory, in SQLite (a write-behind row) and,
//!    when a Redis answers at `COURTEOUS_REDIS_URL` (default `redis://127.0.0.1:6379/`), in
//!    Redis (a row queued for the background task). The URL has a secret to mask. The cases run
//!    interleaved, in rounds of batches; the table gives each case's median and p99 per call,
//!    and the median added over the case without a journal (target: under 5 µs).
//! 2. **SQLite write throughput.** Rows recorded as fast as the writer takes them, in chunks of
//!    10,000 each followed by a flush: rows per second committed.
//!
//! Run: `cargo bench --bench journal` (all features). Environment: `JOURNAL_ROUNDS` (default 300),
//! `JOURNAL_BATCH` (calls per batch, default 100: short batches, so that on a busy machine most
//! of them run without being preempted and the median shows the work, not the scheduler), `JOURNAL_ROWS` (rows for the throughput,
//! default 200,000).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use courteous::journal::{Journal, JournalEntry, JournalStore, MemoryJournalStore};
use courteous::store::sqlite::SqliteStore;
use courteous::time::{Clock, SystemClock};
use courteous::{ContextLayer, PathSegment, Report, Resource, UpstreamReport};
use futures_util::FutureExt;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

type Stack = BoxCloneService<http::Request<String>, http::Response<String>, Infallible>;

const URL: &str = "https://api.example/api/issues/?page=3&per_page=100&api_key=s3cret";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The context layer (with `journal`, if any) over an upstream that answers at once.
fn stack(journal: Option<Journal>) -> Stack {
    let mut context = ContextLayer::new().classifier(PathSegment::after("/api/"));
    if let Some(journal) = journal {
        context = context.journal(journal);
    }
    ServiceBuilder::new()
        .layer(context)
        .service(tower::service_fn(|_request: http::Request<String>| {
            let mut response = http::Response::new(String::new());
            let mut upstream = UpstreamReport::new(http::StatusCode::OK, Duration::from_millis(30));
            upstream.bytes = Some(2_048);
            Report::record(response.extensions_mut()).upstream = Some(upstream);
            std::future::ready(Ok::<_, Infallible>(response))
        }))
        .boxed_clone()
}

struct Case {
    name: &'static str,
    stack: Stack,
    journal: Option<Journal>,
    /// Per-call times, one per batch.
    samples: Vec<Duration>,
}

/// One batch of `n` calls; the time per call.
fn batch(stack: &mut Stack, n: usize) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        let request = http::Request::get(URL).body(String::new()).unwrap();
        // The upstream is ready at once: no runtime needed to drive it.
        let ready = stack.ready().now_or_never().unwrap().unwrap();
        let response = ready.call(request).now_or_never().unwrap().unwrap();
        std::hint::black_box(response);
    }
    started.elapsed() / n as u32
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

#[cfg(feature = "redis")]
async fn redis_journal() -> Option<Journal> {
    let url = std::env::var("COURTEOUS_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let redis = courteous::store::redis::RedisStore::builder(url)
        .prefix(format!("courteous-bench:{}", std::process::id()))
        .connect()
        .ok()?;
    redis.ping().await.ok()?;
    Some(Journal::new(redis.journal().max_len(10_000)))
}

/// Deletes the stream the Redis case wrote.
#[cfg(feature = "redis")]
async fn delete_redis_stream(journal: &Journal) {
    let url = std::env::var("COURTEOUS_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let _ = journal.flush().await;
    let key = format!("courteous-bench:{}:journal", std::process::id());
    if let Ok(client) = redis::Client::open(url)
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
    }
}

#[cfg(not(feature = "redis"))]
async fn delete_redis_stream(_: &Journal) {}

#[cfg(not(feature = "redis"))]
async fn redis_journal() -> Option<Journal> {
    None
}

fn added_cost(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let rounds = env("JOURNAL_ROUNDS", 300);
    let per_batch = env("JOURNAL_BATCH", 100);
    let sqlite = runtime
        .block_on(SqliteStore::open(dir.join("added.db")))
        .expect("open sqlite");
    let memory = Journal::new(MemoryJournalStore::new());
    let in_sqlite = Journal::new(sqlite.journal());
    let mut cases = vec![
        Case {
            name: "no journal",
            stack: stack(None),
            journal: None,
            samples: Vec::new(),
        },
        Case {
            name: "memory journal",
            stack: stack(Some(memory.clone())),
            journal: Some(memory),
            samples: Vec::new(),
        },
        Case {
            name: "sqlite journal",
            stack: stack(Some(in_sqlite.clone())),
            journal: Some(in_sqlite),
            samples: Vec::new(),
        },
    ];
    let redis = runtime.block_on(redis_journal());
    if let Some(journal) = &redis {
        cases.push(Case {
            name: "redis journal",
            stack: stack(Some(journal.clone())),
            journal: Some(journal.clone()),
            samples: Vec::new(),
        });
    }
    // The Redis journal's task runs on this runtime, on its own threads.
    let _entered = runtime.enter();
    for case in &mut cases {
        batch(&mut case.stack, per_batch); // warm up
    }
    for _ in 0..rounds {
        for case in &mut cases {
            let sample = batch(&mut case.stack, per_batch);
            case.samples.push(sample);
        }
        // Let the SQLite writer catch up between rounds, as it would between requests.
        runtime.block_on(sqlite.flush()).expect("flush");
    }
    let base = percentile(&cases[0].samples, 0.5);
    println!(
        "journal: added cost per upstream call ({rounds} rounds x {per_batch} calls; load {})",
        loadavg()
    );
    println!(
        "{:<16} {:>10} {:>10} {:>12} {:>8}",
        "case", "p50", "p99", "added p50", "dropped"
    );
    for case in &cases {
        let p50 = percentile(&case.samples, 0.5);
        let p99 = percentile(&case.samples, 0.99);
        let dropped = case.journal.as_ref().map_or(0, |j| j.stats().dropped);
        println!(
            "{:<16} {:>10.2?} {:>10.2?} {:>12.2?} {:>8}",
            case.name,
            p50,
            p99,
            p50.saturating_sub(base),
            dropped
        );
    }
    runtime.block_on(sqlite.close()).expect("close");
    if let Some(journal) = &redis {
        runtime.block_on(delete_redis_stream(journal));
    }
}

fn throughput(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let rows = env("JOURNAL_ROWS", 200_000);
    const CHUNK: usize = 10_000;
    let sqlite = runtime
        .block_on(SqliteStore::open(dir.join("throughput.db")))
        .expect("open sqlite");
    let journal = sqlite.journal();
    let now = SystemClock.now();
    let resource = Resource::new("issues").unwrap();
    let entry = {
        let mut e = JournalEntry::new(
            now,
            resource,
            http::Method::GET,
            "https://api.example/api/issues/?page=3&api_key=REDACTED",
            http::StatusCode::OK,
        );
        e.latency = Duration::from_millis(30);
        e.bytes = Some(2_048);
        e
    };
    let started = Instant::now();
    let mut sent = 0;
    while sent < rows {
        let n = CHUNK.min(rows - sent);
        for _ in 0..n {
            journal.record(entry.clone());
        }
        runtime.block_on(journal.flush()).expect("flush");
        sent += n;
    }
    let elapsed = started.elapsed();
    let stats = journal.stats();
    let committed = stats.recorded - stats.dropped;
    println!(
        "journal: sqlite write throughput: {committed} rows in {elapsed:.2?} = {:.0} rows/s ({} dropped; load {})",
        committed as f64 / elapsed.as_secs_f64(),
        stats.dropped,
        loadavg()
    );
    runtime.block_on(sqlite.close()).expect("close");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    added_cost(&runtime, dir.path());
    throughput(&runtime, dir.path());
}
