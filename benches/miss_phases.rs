//! Where one full-stack SQLite miss spends its time, phase by phase (issue 17).
//!
//! A measuring tool, not a regression bench. Two parts, both on one `SqliteStore` file:
//!
//! 1. **Store operations alone**, each timed from the caller's side on an otherwise idle store:
//!    a bare hop to a store thread (`SqliteStore::call` with an empty job, once after a pause
//!    and once at once after), a `spawn_blocking` hop for comparison, a cache `get` that
//!    misses, a cache `put` (write-behind: only the enqueue is awaited), a dedupe `try_lead` and
//!    `publish` of 1 KiB, a rate-limit `acquire` (in flight) and its `settle`, and the writer's
//!    commit of 16 deferred 1 KiB puts (`flush`). Two more rows give the floor of a fused
//!    design, on scratch tables (`phases_*`) in the same file: one job and one transaction that
//!    reads the cache row, claims the key and records an admission (what must precede the
//!    upstream call), and one that publishes, settles and stores the entry (what could follow
//!    the caller's answer).
//! 2. **The full stack with probes**: the quickstart's composition (context, cache, dedupe,
//!    rate limit over `reqwest-middleware`), with a probe layer between every two layers that
//!    stamps an `Instant` when the request passes down and when the response passes up. The
//!    innermost probe also reads the whole body, so that the body's transfer counts as upstream
//!    time and not as the dedupe layer's buffering. Each segment between two stamps is one
//!    phase (see `SEGMENTS`). Raw `reqwest` requests run interleaved with the probed ones, for
//!    the round trip the stack adds to, and so do the same stack without probes (the probes'
//!    own cost) and without probes with `Accounting::OnSend` (no settle on the response path).
//!    The probed requests are also split by whether the write-behind writer committed a batch
//!    while they ran (its `batches` counter moved).
//!
//! Then the rate limiter's own phases (`SqliteRateLimitStore::phase_report`, the `diagnostics`
//! feature) and the write-behind writer's counters are printed.
//!
//! Run: `cargo bench --all-features --bench miss_phases`. Environment: `PHASE_REQUESTS`
//! (probed requests, default 4000), `PHASE_FLUSH_MS` and `PHASE_CHECKPOINT_MS` (the store's
//! `flush_interval` and `checkpoint_interval`, to see what the write-behind writer's batches
//! and checkpoints cost the requests they overlap). Compare runs only at similar load
//! averages (printed); numbers on a shared machine move by 2x from run to run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use courteous::cache::{CacheEntry, CacheStore};
use courteous::dedupe::{Completion, DedupeStore, Lead, SharedResponse};
use courteous::rate_limit::{
    Accounting, AdaptiveConfig, AdmissionRequest, Clock, Decision, Limit, RateLimitStore,
    SqliteRateLimitStore, SystemClock,
};
use courteous::store::sqlite::SqliteStore;
use courteous::{
    BoxError, CacheLayer, CacheTtl, ContextLayer, CourteousMiddleware, DedupeLayer, Limits,
    PathSegment, Priority, RateLimitLayer, RequestKey, Resource,
};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use reqwest_middleware::ClientWithMiddleware;
use tower::{Layer, Service, ServiceBuilder};

/// The stamps of the request in flight (requests run one at a time): probe `i` writes
/// `down[i]` when the request passes and `up[i]` when the response does.
static STAMPS: Mutex<Stamps> = Mutex::new(Stamps {
    down: [None; 5],
    up: [None; 5],
});

struct Stamps {
    down: [Option<Instant>; 5],
    up: [Option<Instant>; 5],
}

/// Probe positions: 0 above the context layer, 1 above the cache, 2 above dedupe, 3 above the
/// rate limiter, 4 above the HTTP client.
#[derive(Clone)]
struct Probe<S> {
    at: usize,
    buffer: bool,
    inner: S,
}

#[derive(Clone, Copy)]
struct ProbeLayer {
    at: usize,
    buffer: bool,
}

impl<S> Layer<S> for ProbeLayer {
    type Service = Probe<S>;
    fn layer(&self, inner: S) -> Probe<S> {
        Probe {
            at: self.at,
            buffer: self.buffer,
            inner,
        }
    }
}

impl<S, R> Service<R> for Probe<S>
where
    S: Service<R, Response = http::Response<reqwest::Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = http::Response<reqwest::Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let (at, buffer) = (self.at, self.buffer);
        STAMPS.lock().down[at] = Some(Instant::now());
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await.map_err(Into::into)?;
            if buffer {
                let (parts, body) = response.into_parts();
                let bytes = body.collect().await?.to_bytes();
                response = http::Response::from_parts(parts, reqwest::Body::from(bytes));
            }
            STAMPS.lock().up[at] = Some(Instant::now());
            Ok(response)
        })
    }
}

/// A stamp: `(true, i)` when the request passed probe `i` going down, `(false, i)` when the
/// response passed it going up; probe 99 is the caller (the start and the end of the request).
type Stamp = (bool, usize);

/// A phase: its name and the two stamps it lies between.
const SEGMENTS: [(&str, Stamp, Stamp); 10] = [
    (
        "middleware in: reqwest -> http, probe 0",
        (true, 99),
        (true, 0),
    ),
    ("context layer (down)", (true, 0), (true, 1)),
    ("cache lookup (key + store get)", (true, 1), (true, 2)),
    ("dedupe claim (local + try_lead)", (true, 2), (true, 3)),
    ("rate-limit decision (acquire)", (true, 3), (true, 4)),
    ("upstream: HttpClient + body", (true, 4), (false, 4)),
    ("rate-limit settle + feedback", (false, 4), (false, 3)),
    ("dedupe buffer + publish", (false, 3), (false, 2)),
    ("cache write (enqueue) + finish", (false, 2), (false, 1)),
    (
        "context up + middleware out + body",
        (false, 1),
        (false, 99),
    ),
];

struct Samples(Vec<Duration>);

impl Samples {
    fn line(&mut self, name: &str) -> String {
        self.0.sort_unstable();
        let at = |p: f64| {
            let n = self.0.len();
            if n == 0 {
                return 0.0;
            }
            let rank = (((n - 1) as f64) * p).round() as usize;
            self.0[rank.min(n - 1)].as_secs_f64() * 1e6
        };
        format!(
            "{name:<42} {:>8.1} {:>8.1} {:>9.1} {:>8.1}",
            at(0.5),
            at(0.9),
            at(0.99),
            at(0.999)
        )
    }
}

fn header() -> String {
    format!(
        "{:<42} {:>8} {:>8} {:>9} {:>8}",
        "phase, µs", "p50", "p90", "p99", "p99.9"
    )
}

fn key(n: u64) -> RequestKey {
    use sha2::{Digest, Sha256};
    let display = format!("GET http://phases.invalid/api/x?n={n}");
    RequestKey::from_parts(Sha256::digest(display.as_bytes()).into(), display)
}

fn env_ms(name: &str) -> Option<Duration> {
    let ms = std::env::var(name).ok()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Part 1: each store operation alone, `n` times, with a pause between so that the writer's
/// deferred work is not in the way (the pause is not timed).
async fn store_operations(sqlite: &SqliteStore, n: usize) {
    let (cache, dedupe, limits) = (sqlite.cache(), sqlite.dedupe(), sqlite.rate_limits());
    let body = bytes::Bytes::from(vec![b'x'; 1024]);
    let shared = Arc::new(SharedResponse::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        body.clone(),
    ));
    let resource = Resource::new("phases").expect("a valid resource name");
    let lim: Arc<[Limit]> = vec![Limit::per_second(1_000_000)].into();
    let adaptive = Arc::new(AdaptiveConfig::default());
    let names = [
        "hop: SqliteStore::call, empty job",
        "hop again at once (store thread warm)",
        "hop: tokio spawn_blocking, empty",
        "cache get (miss)",
        "cache put (write-behind enqueue)",
        "dedupe try_lead (BEGIN IMMEDIATE..COMMIT)",
        "dedupe publish 1 KiB (autocommit UPDATE)",
        "rate-limit acquire (in flight)",
        "rate-limit settle",
        "flush: commit 16 deferred 1 KiB puts",
        "floor before: 1 hop, read + claim + admit, 1 tx",
        "floor after: 1 hop, publish + settle + put, 1 tx",
    ];
    sqlite
        .call(|conn| {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS phases_claim (
                     key BLOB PRIMARY KEY, owner TEXT, state INTEGER, deadline INTEGER,
                     body BLOB) STRICT;
                 CREATE TABLE IF NOT EXISTS phases_admission (
                     id INTEGER PRIMARY KEY, resource TEXT, at INTEGER) STRICT;
                 CREATE INDEX IF NOT EXISTS phases_admission_at
                     ON phases_admission (resource, at);
                 CREATE TABLE IF NOT EXISTS phases_cache (key BLOB PRIMARY KEY, body BLOB)
                     STRICT;",
            )?;
            Ok(())
        })
        .await
        .expect("scratch tables");
    let mut samples: Vec<Samples> = names.iter().map(|_| Samples(Vec::new())).collect();
    for i in 0..n {
        let k = key(1_000_000 + i as u64);
        let t = Instant::now();
        sqlite.call(|_| Ok(())).await.expect("hop");
        samples[0].0.push(t.elapsed());
        let t = Instant::now();
        sqlite.call(|_| Ok(())).await.expect("hop");
        samples[1].0.push(t.elapsed());
        let t = Instant::now();
        tokio::task::spawn_blocking(|| ())
            .await
            .expect("spawn_blocking");
        samples[2].0.push(t.elapsed());
        let t = Instant::now();
        let found = cache.get(&k).await.expect("cache get");
        samples[3].0.push(t.elapsed());
        assert!(found.is_none());
        let entry = CacheEntry::new(
            k.display(),
            http::StatusCode::OK,
            body.clone(),
            std::time::SystemTime::now(),
        );
        let t = Instant::now();
        cache.put(&k, Arc::new(entry)).await.expect("cache put");
        samples[4].0.push(t.elapsed());
        let owner = format!("owner-{i}");
        let t = Instant::now();
        let lead = dedupe
            .try_lead(&k, &owner, Duration::from_secs(30))
            .await
            .expect("try_lead");
        samples[5].0.push(t.elapsed());
        assert!(matches!(lead, Lead::Acquired { .. }));
        let t = Instant::now();
        dedupe
            .publish(
                &k,
                &owner,
                Completion::Response(shared.clone()),
                Duration::from_secs(30),
            )
            .await
            .expect("publish");
        samples[6].0.push(t.elapsed());
        let request = AdmissionRequest::new(
            resource.clone(),
            Priority::User,
            lim.clone(),
            adaptive.clone(),
            SystemClock,
        )
        .in_flight(Some(Duration::from_secs(60)));
        let t = Instant::now();
        let decision = limits.acquire(request).await.expect("acquire");
        samples[7].0.push(t.elapsed());
        if let Decision::Admitted {
            in_flight: Some(in_flight),
            ..
        } = decision
        {
            let at = SystemClock.now();
            let t = Instant::now();
            limits.settle(&in_flight, at).await.expect("settle");
            samples[8].0.push(t.elapsed());
        }
        // The floor of a fused design, on scratch tables in the same file: before the upstream
        // call one job reads the cache row, claims the key and records the admission in one
        // transaction; after it one job publishes, settles and stores the entry in another.
        let hash = k.as_bytes().to_vec();
        let t = Instant::now();
        let admitted = sqlite
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(
                    courteous::store::sqlite::rusqlite::TransactionBehavior::Immediate,
                )?;
                let cached: Option<i64> = {
                    let mut read =
                        tx.prepare_cached("SELECT length(body) FROM phases_cache WHERE key = ?1")?;
                    let mut rows = read.query([&hash])?;
                    rows.next()?.map(|row| row.get(0)).transpose()?
                };
                assert!(cached.is_none());
                tx.prepare_cached(
                    "INSERT INTO phases_claim (key, owner, state, deadline) VALUES (?1, 'o', 0, 1)",
                )?
                .execute([&hash])?;
                let counted: i64 = tx
                    .prepare_cached(
                        "SELECT count(*) FROM phases_admission WHERE resource = 'r' AND at > ?1",
                    )?
                    .query_row([i as i64 - 1000], |row| row.get(0))?;
                tx.prepare_cached("INSERT INTO phases_admission (resource, at) VALUES ('r', ?1)")?
                    .execute([i as i64])?;
                let id = tx.last_insert_rowid();
                tx.commit()?;
                Ok((id, counted))
            })
            .await
            .expect("fused before");
        samples[10].0.push(t.elapsed());
        let (hash, body) = (k.as_bytes().to_vec(), body.clone());
        let t = Instant::now();
        sqlite
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(
                    courteous::store::sqlite::rusqlite::TransactionBehavior::Immediate,
                )?;
                tx.prepare_cached("UPDATE phases_claim SET state = 1, body = ?2 WHERE key = ?1")?
                    .execute((&hash, &body[..]))?;
                tx.prepare_cached("UPDATE phases_admission SET at = at + 1 WHERE id = ?1")?
                    .execute([admitted.0])?;
                tx.prepare_cached("INSERT INTO phases_cache (key, body) VALUES (?1, ?2)")?
                    .execute((&hash, &body[..]))?;
                tx.commit()?;
                Ok(())
            })
            .await
            .expect("fused after");
        samples[11].0.push(t.elapsed());
        // Let the writer commit what was deferred, off the clock, every few rounds.
        if i % 16 == 15 {
            let t = Instant::now();
            sqlite.flush().await.expect("flush");
            samples[9].0.push(t.elapsed());
        }
    }
    println!("\n## store operations alone ({n} each, idle store)\n");
    println!("{}", header());
    for (name, s) in names.iter().zip(samples.iter_mut()) {
        println!("{}", s.line(name));
    }
}

fn ttl() -> CacheTtl {
    CacheTtl::absolute(Duration::from_secs(3600))
}

fn limits() -> Limits {
    Limits::new().default_limit(Limit::per_second(1_000_000))
}

fn context() -> ContextLayer {
    ContextLayer::new().classifier(PathSegment::after("/api/"))
}

/// The quickstart's full stack with a probe above every layer and above the HTTP client.
fn probed_stack(
    client: &reqwest::Client,
    sqlite: &SqliteStore,
    rate_limits: &SqliteRateLimitStore,
) -> ClientWithMiddleware {
    let probe = |at: usize| ProbeLayer { at, buffer: false };
    reqwest_middleware::ClientBuilder::new(client.clone())
        .with(CourteousMiddleware::new(
            ServiceBuilder::new()
                .layer(probe(0))
                .layer(context())
                .layer(probe(1))
                .layer(CacheLayer::new(sqlite.cache()).default_ttl(ttl()))
                .layer(probe(2))
                .layer(DedupeLayer::new(sqlite.dedupe()))
                .layer(probe(3))
                .layer(RateLimitLayer::new(rate_limits.clone(), limits()).expect("limits"))
                .layer(ProbeLayer {
                    at: 4,
                    buffer: true,
                }),
        ))
        .build()
}

/// The same stack without probes, with the rate limiter's `accounting`.
fn plain_stack(
    client: &reqwest::Client,
    sqlite: &SqliteStore,
    accounting: Accounting,
) -> ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(client.clone())
        .with(CourteousMiddleware::new(
            ServiceBuilder::new()
                .layer(context())
                .layer(CacheLayer::new(sqlite.cache()).default_ttl(ttl()))
                .layer(DedupeLayer::new(sqlite.dedupe()))
                .layer(
                    RateLimitLayer::new(sqlite.rate_limits(), limits())
                        .expect("limits")
                        .accounting(accounting),
                ),
        ))
        .build()
}

fn main() {
    let requests: usize = std::env::var("PHASE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let small: Arc<[u8]> = vec![b'x'; 1024].into();
        let app = axum::Router::new().fallback(move || {
            let body = small.clone();
            async move { bytes::Bytes::copy_from_slice(&body) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().expect("tempdir");
        let mut builder = SqliteStore::builder(dir.path().join("phases.db"));
        if let Some(ms) = env_ms("PHASE_FLUSH_MS") {
            builder = builder.flush_interval(ms);
        }
        if let Some(ms) = env_ms("PHASE_CHECKPOINT_MS") {
            builder = builder.checkpoint_interval(ms);
        }
        let sqlite = builder.open().await.expect("open");
        println!(
            "miss phases: {requests} requests, load average at start: {}",
            load_average()
        );

        store_operations(&sqlite, requests.min(2000)).await;

        let client = reqwest::Client::new();
        let rate_limits = sqlite.rate_limits();
        let probed = probed_stack(&client, &sqlite, &rate_limits);
        let plain = plain_stack(&client, &sqlite, Accounting::Exact);
        let on_send = plain_stack(&client, &sqlite, Accounting::OnSend);
        let fresh = AtomicU64::new(0);
        let url = |fresh: &AtomicU64| {
            let n = fresh.fetch_add(1, Ordering::Relaxed);
            format!("{base}/api/1k/x?n={n}")
        };
        let mut raw = Samples(Vec::new());
        let mut plain_total = Samples(Vec::new());
        let mut on_send_total = Samples(Vec::new());
        let mut total = Samples(Vec::new());
        // The probed requests, split by whether the write-behind writer committed a batch
        // while they ran.
        let mut total_by_writer = [Samples(Vec::new()), Samples(Vec::new())];
        let mut phases: Vec<Samples> = SEGMENTS.iter().map(|_| Samples(Vec::new())).collect();
        let mut phases_writer: Vec<Samples> =
            SEGMENTS.iter().map(|_| Samples(Vec::new())).collect();
        for i in 0..requests + 200 {
            let warm = i >= 200;
            // The raw round trip and the unprobed stacks, interleaved with the probed one.
            let t = Instant::now();
            let len = client
                .get(url(&fresh))
                .send()
                .await
                .expect("raw send")
                .bytes()
                .await
                .expect("raw body")
                .len();
            let took = t.elapsed();
            assert_eq!(len, 1024);
            if warm {
                raw.0.push(took);
            }
            for (stack, samples) in [(&plain, &mut plain_total), (&on_send, &mut on_send_total)] {
                let t = Instant::now();
                let len = stack
                    .get(url(&fresh))
                    .send()
                    .await
                    .expect("stack send")
                    .bytes()
                    .await
                    .expect("stack body")
                    .len();
                let took = t.elapsed();
                assert_eq!(len, 1024);
                if warm {
                    samples.0.push(took);
                }
            }
            *STAMPS.lock() = Stamps {
                down: [None; 5],
                up: [None; 5],
            };
            let batches = sqlite.stats().batches;
            let started = Instant::now();
            let len = probed
                .get(url(&fresh))
                .send()
                .await
                .expect("stack send")
                .bytes()
                .await
                .expect("stack body")
                .len();
            let ended = Instant::now();
            assert_eq!(len, 1024);
            if !warm {
                continue;
            }
            let writer = usize::from(sqlite.stats().batches != batches);
            total.0.push(ended - started);
            total_by_writer[writer].0.push(ended - started);
            let stamps = STAMPS.lock();
            let stamp = |(down, at): Stamp| match (down, at) {
                (true, 99) => Some(started),
                (false, 99) => Some(ended),
                (true, at) => stamps.down[at],
                (false, at) => stamps.up[at],
            };
            for (j, segment) in SEGMENTS.iter().enumerate() {
                if let (Some(from), Some(to)) = (stamp(segment.1), stamp(segment.2)) {
                    let took = to.saturating_duration_since(from);
                    phases[j].0.push(took);
                    if writer == 1 {
                        phases_writer[j].0.push(took);
                    }
                }
            }
        }
        println!("\n## full stack (sqlite) through reqwest-middleware, fresh URLs, 1 KiB\n");
        println!("{}", header());
        println!("{}", raw.line("raw reqwest round trip (interleaved)"));
        println!("{}", plain_total.line("full stack, no probes"));
        println!(
            "{}",
            on_send_total.line("full stack, no probes, OnSend (no settle)")
        );
        println!("{}", total.line("full stack, probed, whole request"));
        for ((name, _, _), samples) in SEGMENTS.iter().zip(phases.iter_mut()) {
            println!("{}", samples.line(name));
        }
        println!(
            "\n## probed requests during which the writer committed a batch ({} of {})\n",
            total_by_writer[1].0.len(),
            total.0.len()
        );
        println!("{}", header());
        println!(
            "{}",
            total_by_writer[0].line("whole request, no writer batch")
        );
        println!("{}", total_by_writer[1].line("whole request, writer batch"));
        for ((name, _, _), samples) in SEGMENTS.iter().zip(phases_writer.iter_mut()) {
            println!("{}", samples.line(name));
        }
        println!("\n## rate limiter phases (diagnostics)\n");
        println!("{}", rate_limits.phase_report());
        println!("\n## write-behind writer\n\n{:?}", sqlite.stats());
        println!("\nload average at end: {}", load_average());
        sqlite.close().await.expect("close");
    });
}
