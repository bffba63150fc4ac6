//! Admission decisions per second, with the latency tail, for the memory store and the SQLite
//! store (one process; two processes on one file).
//!
//! Workload: `RL_BENCH_RESOURCES` resources (default 100), each limited to `RL_BENCH_LIMIT` per
//! second (default 100; a limit far above the rate asked makes every decision an insert), asked
//! round-robin with alternating user and background priority, so decisions mix admissions and
//! refusals and go through the adaptive split (the `admitted` column says how many were
//! admitted). Latency is measured around each `acquire` call, from `tasks` concurrent callers.
//! The `errors` column counts store errors that reached a caller (followed by their distinct
//! messages); they are not counted as decisions.
//!
//! Two load models for the SQLite store:
//!
//! * *saturation*: `tasks` callers each calling `acquire` again the moment it returns (closed
//!   loop). This measures the most decisions per second; its latency is mostly queueing, since
//!   by Little's law the mean latency is `tasks / throughput` whatever the store does.
//! * *fixed rate*: requests issued at a fixed rate in total (split evenly over the processes),
//!   each in its own task, whether or not earlier ones have been answered (open loop), for each
//!   rate of `RL_BENCH_RATES` (comma-separated, default `10000,25000,50000`). This is the measure of a latency target: the latency at a given load.
//!   Requests are issued on the runtime's 1 ms timer ticks, so they arrive in bursts of
//!   `rate / 1000`; latency is measured from the issue, and the line under the case gives it from
//!   the scheduled time as well (which adds the timer's lateness).
//!
//! The `stamp ms p99/max` column is how long after its stamp an admitted caller had its answer,
//! in milliseconds (the stamps' unit): the time an admission is counted too early by. Stores
//! stamp at the decision (issue 11); `RL_BENCH_STAMP=ask` makes requests carry the time they
//! were made instead, as the layer passed it before, for the "before" figure.
//!
//! Under each SQLite case, `sched` is how late a thread sleeping 1 ms wakes up in that process
//! during the run (what the machine's CPU contention alone does to a latency), and, built with
//! `--features diagnostics`, the store's per-phase histograms are printed (turn wait, `BEGIN`,
//! statements, `COMMIT`, queueing).
//!
//! Run: `cargo bench --bench rate_limit` (prints a table). `RL_BENCH_SECS` sets the measured
//! time per case (default 3), `RL_BENCH_CHECKPOINT_MS` the SQLite store's checkpoint interval,
//! `RL_BENCH_MAX_WAL` its `max_wal_size` in bytes,
//! `RL_BENCH_THREADS` the runtime's worker threads (default 1), `RL_BENCH_DIR` where the files
//! go (default: the system's temporary directory), `RL_BENCH_TASKS` the closed-loop task counts
//! (default `1,16,64` in one process, `16,64` in two; empty for none), `RL_BENCH_ONLY` which
//! groups of cases run (comma-separated among `memory`, `sqlite-1`, `sqlite-2`, `redis`; default
//! all; an empty `RL_BENCH_RATES` skips the fixed-rate cases). Children of the two-process cases
//! inherit the settings. Latencies include the calls that ended in a store error.
//!
//! The *accounting* cases (group `accounting`, in `RL_BENCH_ONLY`; not in the default run) put
//! the whole layer over the memory and SQLite stores in front of a fake upstream that answers
//! after 10 ms or 200 ms, with enough callers to keep the limit saturated, and measure the
//! requests the upstream received per second in the steady state (after the first window's
//! burst), for 20 per 2 s and 1000 per 1 s, in `Accounting::Exact` (the default) and
//! `Accounting::OnSend`, `RL_BENCH_SAMPLES` runs each (default 3; the median is printed, and
//! every sample), with the busiest window of the upstream's own log.
//!
//! With `--features redis` the Redis store follows (one process; two processes sharing the
//! server), skipped with a message when Redis does not answer (see `rate_limit/redis.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use courteous::rate_limit::{
    Accounting, AdaptiveConfig, AdmissionRequest, Clock, Decision, Limit, Limits,
    MemoryRateLimitStore, RateLimitLayer, RateLimitStore, SystemClock,
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
    latencies: Vec<u64>,
    /// Per admission: from its stamp to the moment its caller had the answer (µs).
    stamp_delays: Vec<u64>,
    /// Decisions the store failed to make (counted, not decisions), and their distinct messages.
    errors: u64,
    messages: std::collections::BTreeSet<String>,
}

impl Outcome {
    fn new(capacity: usize) -> Self {
        Outcome {
            decisions: 0,
            admitted: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::with_capacity(capacity),
            stamp_delays: Vec::with_capacity(capacity),
            errors: 0,
            messages: Default::default(),
        }
    }

    /// Counts one answer of the store, just received: a decision, or an error (reported, not a
    /// panic, so that a run shows how many surfaced).
    fn count(&mut self, answer: Result<Decision, String>) {
        let delay = stamp_delay(&answer);
        self.count_answered(answer, delay);
    }

    /// Counts one answer received earlier, `delay` after its stamp.
    fn count_answered(&mut self, answer: Result<Decision, String>, delay: Option<u64>) {
        match answer {
            Ok(decision) => {
                self.decisions += 1;
                if let Decision::Admitted { .. } = decision {
                    self.admitted += 1;
                }
                self.stamp_delays.extend(delay);
            }
            Err(error) => {
                self.errors += 1;
                self.messages.insert(error);
            }
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.decisions += other.decisions;
        self.admitted += other.admitted;
        self.latencies.extend(other.latencies);
        self.stamp_delays.extend(other.stamp_delays);
        self.errors += other.errors;
        self.messages.extend(other.messages);
    }
}

/// The clock a request carries: the wall clock, read by the store when it decides; with
/// `RL_BENCH_STAMP=ask`, the time the request was made, as the layer passed it before issue 11
/// (the "before" of the stamp-delay column).
fn clock() -> Arc<dyn Clock> {
    if std::env::var("RL_BENCH_STAMP").is_ok_and(|v| v == "ask") {
        Arc::new(SystemClock.now())
    } else {
        Arc::new(SystemClock)
    }
}

/// How long after its stamp an admission's answer is in its caller's hands (now), in ns of
/// whole milliseconds (the stamps' unit).
fn stamp_delay(answer: &Result<Decision, String>) -> Option<u64> {
    match answer {
        Ok(Decision::Admitted { at, .. }) => Some(nanos(SystemClock.now().saturating_since(*at))),
        _ => None,
    }
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

/// Each resource's limit per second (`RL_BENCH_LIMIT`, default 100). A limit far above the rate
/// asked makes every decision an admission (an insert), the write-bound case.
fn limit() -> u32 {
    std::env::var("RL_BENCH_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

/// Whether to run a group of cases: `RL_BENCH_ONLY` lists the groups to run, comma-separated,
/// among `memory`, `sqlite-1`, `sqlite-2` and `redis` (default: all).
pub(crate) fn wanted(group: &str) -> bool {
    std::env::var("RL_BENCH_ONLY").map_or(true, |only| only.split(',').any(|g| g.trim() == group))
}

fn setup() -> (Vec<Resource>, Arc<[Limit]>, Arc<AdaptiveConfig>) {
    let resources = (0..resources())
        .map(|i| Resource::new(format!("r{i}")).unwrap())
        .collect();
    let limits: Arc<[Limit]> = vec![Limit::per_second(limit())].into();
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
                let mut outcome = Outcome::new(1 << 16);
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
                            SystemClock,
                        )
                        .with_clock(clock());
                        let t0 = Instant::now();
                        let answer = store.acquire(request).await.map_err(|e| e.to_string());
                        outcome.latencies.push(nanos(t0.elapsed()));
                        outcome.count(answer);
                    }
                }
                outcome
            })
        })
        .collect();
    let mut outcome = Outcome::new(0);
    for h in handles {
        outcome.merge(h.await.unwrap());
    }
    outcome.elapsed = started.elapsed();
    outcome
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn summary(o: &mut Outcome) -> String {
    o.latencies.sort_unstable();
    o.stamp_delays.sort_unstable();
    let rate = o.decisions as f64 / o.elapsed.as_secs_f64();
    format!(
        "{:>12.0} | {:>9.1} | {:>9.1} | {:>9.1} | {:>9.1} | {:>7.0}/{:<8.0} | {:>10} | {:>8.1}% | {:>6}{}",
        rate,
        percentile(&o.latencies, 0.5),
        percentile(&o.latencies, 0.99),
        percentile(&o.latencies, 0.999),
        percentile(&o.latencies, 1.0),
        percentile(&o.stamp_delays, 0.99) / 1000.0,
        percentile(&o.stamp_delays, 1.0) / 1000.0,
        o.decisions,
        100.0 * o.admitted as f64 / o.decisions.max(1) as f64,
        o.errors,
        o.messages
            .iter()
            .map(|e| format!(" ({e})"))
            .collect::<String>(),
    )
}

/// How a case loads the store.
#[derive(Clone, Copy)]
enum Load {
    /// `n` callers in a closed loop.
    Tasks(usize),
    /// Requests issued at this many per second, open loop.
    Rate(f64),
}

impl Load {
    fn to_env(self) -> String {
        match self {
            Load::Tasks(n) => format!("tasks:{n}"),
            Load::Rate(r) => format!("rate:{r}"),
        }
    }

    fn from_env(s: &str) -> Self {
        match s.split_once(':') {
            Some(("tasks", n)) => Load::Tasks(n.parse().unwrap()),
            Some(("rate", r)) => Load::Rate(r.parse().unwrap()),
            _ => panic!("bad load {s}"),
        }
    }

    fn label(self) -> String {
        match self {
            Load::Tasks(n) => format!("{n} tasks"),
            Load::Rate(r) => format!("{r:.0}/s offered"),
        }
    }
}

/// Requests issued at `rate` per second for `duration`, each in its own task (open loop).
/// Returns the outcome (latency from the issue) and the latencies from the scheduled time.
async fn drive_rate(
    store: Arc<dyn RateLimitStore>,
    rate: f64,
    duration: Duration,
) -> (Outcome, Vec<u64>) {
    let (resources, limits, adaptive) = setup();
    let resources: Arc<[Resource]> = resources.into();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity((rate * duration.as_secs_f64()) as usize + 1024);
    let mut issued: u64 = 0;
    loop {
        ticks.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while issued < due {
            let i = issued as usize;
            let scheduled = started + Duration::from_secs_f64(issued as f64 / rate);
            issued += 1;
            let priority = if i.is_multiple_of(2) {
                Priority::User
            } else {
                Priority::Background
            };
            let request = AdmissionRequest::new(
                resources[i % resources.len()].clone(),
                priority,
                limits.clone(),
                adaptive.clone(),
                SystemClock,
            )
            .with_clock(clock());
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let answer = store.acquire(request).await.map_err(|e| e.to_string());
                let done = Instant::now();
                let delay = stamp_delay(&answer);
                (nanos(done - t0), nanos(done - scheduled), answer, delay)
            }));
        }
    }
    let mut outcome = Outcome::new(handles.len());
    let mut from_schedule = Vec::with_capacity(handles.len());
    for h in handles {
        let (latency, late, answer, delay) = h.await.unwrap();
        outcome.count_answered(answer, delay);
        outcome.latencies.push(latency);
        from_schedule.push(late);
    }
    outcome.elapsed = started.elapsed();
    // The rate column is the offered rate achieved over the issuing time, not the drain.
    outcome.elapsed = outcome.elapsed.min(duration);
    (outcome, from_schedule)
}

/// A thread sleeping 1 ms in a loop, recording how late it wakes: the CPU contention a latency
/// measured in this process suffers whatever the store does.
struct SchedProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl SchedProbe {
    fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut late = Vec::with_capacity(1 << 16);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                let over = t0.elapsed().saturating_sub(Duration::from_millis(1));
                late.push(nanos(over));
            }
            late
        });
        SchedProbe { stop, thread }
    }

    fn finish(self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut late = self.thread.join().unwrap();
        late.sort_unstable();
        format!(
            "sched: a 1 ms sleep woke late by p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            percentile(&late, 0.999),
            percentile(&late, 1.0),
        )
    }
}

/// One SQLite case in this process: the table row and the notes printed under it.
async fn sqlite_run(
    path: &std::path::Path,
    load: Load,
    duration: Duration,
) -> (String, Vec<String>) {
    let mut builder = SqliteStore::builder(path);
    if let Some(ms) = std::env::var("RL_BENCH_CHECKPOINT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.checkpoint_interval(Duration::from_millis(ms));
    }
    if let Some(bytes) = std::env::var("RL_BENCH_MAX_WAL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.max_wal_size(bytes);
    }
    let sqlite = builder.open().await.expect("open");
    let rate_limits = sqlite.rate_limits();
    let store: Arc<dyn RateLimitStore> = Arc::new(rate_limits.clone());
    let probe = SchedProbe::start();
    let mut notes = Vec::new();
    let mut outcome = match load {
        Load::Tasks(tasks) => drive(store, tasks, duration).await,
        Load::Rate(rate) => {
            let (outcome, mut from_schedule) = drive_rate(store, rate, duration).await;
            from_schedule.sort_unstable();
            notes.push(format!(
                "from the scheduled time: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
                percentile(&from_schedule, 0.5),
                percentile(&from_schedule, 0.99),
                percentile(&from_schedule, 0.999),
                percentile(&from_schedule, 1.0),
            ));
            outcome
        }
    };
    notes.push(probe.finish());
    #[cfg(feature = "diagnostics")]
    notes.extend(rate_limits.phase_report().lines().map(str::to_owned));
    sqlite.close().await.expect("close");
    (summary(&mut outcome), notes)
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

fn print_case(name: &str, row: &str, notes: &[String]) {
    println!("{name:<34} | {row}");
    for note in notes {
        println!("{:<34}   {note}", "");
    }
}

fn main() {
    let duration = Duration::from_secs_f64(secs());
    #[cfg(feature = "redis")]
    if redis_cases::child(duration) {
        return;
    }
    if let Ok(path) = std::env::var(CHILD_ENV) {
        let load = Load::from_env(&std::env::var("RL_BENCH_LOAD").unwrap());
        let (row, notes) = runtime().block_on(sqlite_run(path.as_ref(), load, duration));
        println!("RESULT {row}");
        for note in notes {
            println!("NOTE {note}");
        }
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then run a short smoke.
    let bench = std::env::args().any(|a| a == "--bench");
    let duration = if bench {
        duration
    } else {
        Duration::from_millis(200)
    };
    let rates: Vec<f64> = std::env::var("RL_BENCH_RATES")
        .unwrap_or_else(|_| "10000,25000,50000".to_owned())
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            r.trim()
                .parse()
                .expect("RL_BENCH_RATES: rates per second, comma-separated")
        })
        .collect();

    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at start: {}", load.trim());
    }
    println!(
        "{:<34} | {:>12} | {:>9} | {:>9} | {:>9} | {:>9} | {:>16} | {:>10} | {:>9} | {:>6}",
        "case",
        "decisions/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "stamp ms p99/max",
        "decisions",
        "admitted",
        "errors"
    );
    let rt = runtime();
    if wanted("memory") {
        for tasks in [1, 2] {
            let mut memory = rt.block_on(drive(
                Arc::new(MemoryRateLimitStore::new()),
                tasks,
                duration,
            ));
            println!(
                "{:<34} | {}",
                format!("memory, {tasks} task{}", if tasks == 1 { "" } else { "s" }),
                summary(&mut memory)
            );
        }
    }

    // `RL_BENCH_DIR` puts the files elsewhere (a tmpfs, to take the disk out of the picture).
    let dir = match std::env::var_os("RL_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let one = tasks(&[1, 16, 64]).chain(rates.iter().map(|&r| Load::Rate(r)));
    for load in one.filter(|_| wanted("sqlite-1")) {
        let path = dir.path().join(format!("one-{}.db", load.to_env()));
        let (row, notes) = rt.block_on(sqlite_run(&path, load, duration));
        print_case(
            &format!("sqlite, 1 process, {}", load.label()),
            &row,
            &notes,
        );
    }
    let two = tasks(&[16, 64]).chain(rates.iter().map(|&r| Load::Rate(r / 2.0)));
    for load in two.filter(|_| wanted("sqlite-2")) {
        two_processes(&rt, dir.path(), load, duration);
    }
    #[cfg(feature = "redis")]
    if wanted("redis") {
        redis_cases::run(&rt, duration);
    }
    if std::env::var("RL_BENCH_ONLY").is_ok_and(|only| only.split(',').any(|g| g == "accounting")) {
        accounting_cases(&rt, dir.path(), bench);
    }
    #[cfg(not(feature = "redis"))]
    println!("redis: SKIPPED: build with --features redis");
}

/// The closed-loop loads: `RL_BENCH_TASKS` (task counts, comma-separated; empty for none) or
/// `default`.
fn tasks(default: &[usize]) -> impl Iterator<Item = Load> {
    let counts: Vec<usize> = match std::env::var("RL_BENCH_TASKS") {
        Ok(list) => list
            .split(',')
            .filter(|n| !n.trim().is_empty())
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("RL_BENCH_TASKS: task counts, comma-separated")
            })
            .collect(),
        Err(_) => default.to_vec(),
    };
    counts.into_iter().map(Load::Tasks)
}

fn two_processes(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    load: Load,
    duration: Duration,
) {
    let path = dir.join(format!("two-{}.db", load.to_env()));
    // Create the file first so both children only open it.
    rt.block_on(async {
        SqliteStore::open(&path)
            .await
            .unwrap()
            .close()
            .await
            .unwrap()
    });
    let mut total = 0.0;
    let children = two_children(&[
        (CHILD_ENV, path.display().to_string()),
        ("RL_BENCH_LOAD", load.to_env()),
        ("RL_BENCH_SECS", duration.as_secs_f64().to_string()),
    ]);
    for (i, (line, notes)) in children.iter().enumerate() {
        total += rate_of(line);
        print_case(
            &format!("sqlite, 2 processes: #{} ({})", i + 1, load.label()),
            line,
            notes,
        );
    }
    println!(
        "{:<34} | {:>12.0}",
        format!("sqlite, 2 processes: total ({})", load.label()),
        total
    );
}

/// Runs this bench binary twice at once with `env` (two processes sharing a store) and returns
/// each child's `RESULT` line and its `NOTE` lines.
fn two_children(env: &[(&str, String)]) -> Vec<(String, Vec<String>)> {
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "bench child failed");
            let out = String::from_utf8_lossy(&out.stdout);
            let line = out
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .expect("child result")
                .to_owned();
            let notes = out
                .lines()
                .filter_map(|l| l.strip_prefix("NOTE "))
                .map(str::to_owned)
                .collect();
            (line, notes)
        })
        .collect()
}

/// The decisions per second of a `RESULT` line (its first column).
fn rate_of(line: &str) -> f64 {
    line.split('|').next().unwrap().trim().parse().unwrap()
}

/// An upstream that logs when each request arrives and answers after `latency`.
fn fake_upstream(
    log: Arc<std::sync::Mutex<Vec<Instant>>>,
    latency: Duration,
) -> impl tower::Service<
    http::Request<String>,
    Response = http::Response<String>,
    Error = courteous::BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_req: http::Request<String>| {
        log.lock().unwrap().push(Instant::now());
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, courteous::BoxError>(http::Response::new(String::new()))
        }
    })
}

/// One accounting case: the layer over `store`, enough callers in a closed loop, a fake
/// upstream answering after `latency`, for one window plus `measured`. Returns the upstream's
/// arrivals per second in the steady state, and the most arrivals in any window of its log.
async fn accounting_case(
    store: Arc<dyn RateLimitStore>,
    accounting: Accounting,
    limit: Limit,
    latency: Duration,
    measured: Duration,
) -> (f64, usize) {
    use tower::{ServiceBuilder, ServiceExt};
    let layer = RateLimitLayer::new(store, Limits::new().default_limit(limit))
        .unwrap()
        .accounting(accounting)
        .max_wait(Duration::from_secs(3600));
    let arrivals: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(fake_upstream(arrivals.clone(), latency));
    // Enough callers that one always waits for the next free slot.
    let tasks = (limit.max() as usize * 3 / 2).max(8);
    let started = Instant::now();
    let end = started + limit.window() + measured;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                while Instant::now() < end {
                    let request = http::Request::get("http://upstream.test/api/items/")
                        .body(String::new())
                        .unwrap();
                    let _ = service.clone().oneshot(request).await;
                }
            })
        })
        .collect();
    tokio::time::sleep_until((end + latency).into()).await;
    for handle in &handles {
        handle.abort();
    }
    for handle in handles {
        let _ = handle.await;
    }
    let mut seen = arrivals.lock().unwrap().clone();
    seen.sort();
    // The steady rate: `max` over the mean time a slot takes to come round (from an arrival to
    // the one `max` later), after the first cycle: exactly `max / period` for batches every
    // period, and unbiased by the phase of the run's end or a first burst spread out.
    let max = limit.max() as usize;
    let rate = if seen.len() > 2 * max {
        let cycles: f64 = (2 * max..seen.len())
            .map(|k| seen[k].duration_since(seen[k - max]).as_secs_f64())
            .sum();
        max as f64 / (cycles / (seen.len() - 2 * max) as f64)
    } else {
        0.0
    };
    let busiest = (0..seen.len())
        .map(|i| {
            seen[i..]
                .iter()
                .take_while(|t| **t < seen[i] + limit.window())
                .count()
        })
        .max()
        .unwrap_or(0);
    (rate, busiest)
}

/// Admitted per second by accounting mode (see the module docs).
fn accounting_cases(rt: &tokio::runtime::Runtime, dir: &std::path::Path, bench: bool) {
    let samples: usize = std::env::var("RL_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 3 } else { 1 });
    let limits = [
        (Limit::new(20, Duration::from_secs(2)), "20 per 2 s"),
        (Limit::new(1000, Duration::from_secs(1)), "1000 per 1 s"),
    ];
    println!();
    println!(
        "{:<8} | {:<12} | {:>7} | {:<7} | {:>10} | {:>10} | {:>7} | samples",
        "store", "limit", "latency", "mode", "admitted/s", "ideal", "busiest"
    );
    let mut case = 0;
    for store_kind in ["memory", "sqlite"] {
        for (limit, label) in limits {
            for latency in [Duration::from_millis(10), Duration::from_millis(200)] {
                for accounting in [Accounting::Exact, Accounting::OnSend] {
                    let measured = if bench {
                        limit.window() * 6
                    } else {
                        Duration::from_millis(200)
                    };
                    let mut rates = Vec::new();
                    let mut busiest = 0;
                    for _ in 0..samples {
                        case += 1;
                        let (rate, most) = rt.block_on(async {
                            let (store, sqlite): (Arc<dyn RateLimitStore>, _) = match store_kind {
                                "memory" => (Arc::new(MemoryRateLimitStore::new()), None),
                                _ => {
                                    let sqlite =
                                        SqliteStore::open(dir.join(format!("acct-{case}.db")))
                                            .await
                                            .expect("open");
                                    (Arc::new(sqlite.rate_limits()), Some(sqlite))
                                }
                            };
                            let out =
                                accounting_case(store, accounting, limit, latency, measured).await;
                            if let Some(sqlite) = sqlite {
                                sqlite.close().await.expect("close");
                            }
                            out
                        });
                        rates.push(rate);
                        busiest = busiest.max(most);
                    }
                    let mut sorted = rates.clone();
                    sorted.sort_by(f64::total_cmp);
                    let median = sorted[sorted.len() / 2];
                    let window = limit.window().as_secs_f64();
                    let ideal = match accounting {
                        Accounting::OnSend => limit.max() as f64 / window,
                        _ => limit.max() as f64 / (window + latency.as_secs_f64()),
                    };
                    println!(
                        "{:<8} | {:<12} | {:>4} ms | {:<7} | {:>10.2} | {:>10.2} | {:>7} | {}",
                        store_kind,
                        label,
                        latency.as_millis(),
                        format!("{accounting:?}"),
                        median,
                        ideal,
                        busiest,
                        rates
                            .iter()
                            .map(|r| format!("{r:.2}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                }
            }
        }
    }
}
