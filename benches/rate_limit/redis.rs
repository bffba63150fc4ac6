//! The Redis store's cases of the rate-limit bench (feature `redis`): one process with 1, 16 and
//! 64 tasks, and two processes; then upstream-exact accounting in one process (each admission
//! asked in flight and settled at once, as the layer does by default when a response head
//! arrives: the second script per request is what that mode costs on Redis). Skipped with a
//! message when Redis (`COURTEOUS_REDIS_URL`, default `redis://127.0.0.1:6379/`) does not
//! answer. Keys live under a prefix of the run's own, deleted at the end.

use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use courteous::rate_limit::{AdmissionRequest, Clock, Decision, RateLimitStore, SystemClock};
use courteous::store::redis::RedisStore;
use courteous::{Priority, Resource};

use crate::{Outcome, drive, nanos, rate_of, setup, summary, two_children};

const CHILD_ENV: &str = "RL_BENCH_REDIS_CHILD";

fn url() -> String {
    std::env::var("COURTEOUS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

async fn redis_run(prefix: &str, tasks: usize, duration: Duration) -> Outcome {
    let redis = RedisStore::builder(url())
        .prefix(prefix)
        .connect()
        .expect("redis url");
    let store: Arc<dyn RateLimitStore> = Arc::new(redis.rate_limits());
    drive(store, tasks, duration).await
}

/// `tasks` concurrent loops, each admission asked in flight (bound 60 s) and settled the moment
/// it is admitted; latency is the whole of it (acquire, and settle when admitted).
async fn redis_exact_run(prefix: &str, tasks: usize, duration: Duration) -> Outcome {
    let store = RedisStore::builder(url())
        .prefix(prefix)
        .connect()
        .expect("redis url")
        .rate_limits();
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
                    .in_flight(Some(Duration::from_secs(60)));
                    let t0 = Instant::now();
                    let answer = store.acquire(request).await.map_err(|e| e.to_string());
                    let answer = match answer {
                        Ok(Decision::Admitted {
                            in_flight: Some(in_flight),
                            remaining,
                            at,
                        }) => store
                            .settle(&in_flight, SystemClock.now())
                            .await
                            .map(|()| Decision::Admitted {
                                remaining,
                                at,
                                in_flight: None,
                            })
                            .map_err(|e| e.to_string()),
                        other => other,
                    };
                    outcome.latencies.push(nanos(t0.elapsed()));
                    outcome.count(answer);
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

/// In a child process started by [`run`]: runs its share and prints the result. Returns whether
/// this process was such a child.
pub(crate) fn child(duration: Duration) -> bool {
    let Ok(prefix) = std::env::var(CHILD_ENV) else {
        return false;
    };
    let tasks: usize = std::env::var("RL_BENCH_TASKS").unwrap().parse().unwrap();
    let mut o = crate::runtime().block_on(redis_run(&prefix, tasks, duration));
    println!("RESULT {}", summary(&mut o));
    true
}

/// Deletes the run's keys.
async fn clean(prefix: &str) {
    let Ok(client) = redis::Client::open(url()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<u64> =
                redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
        cursor = next;
        if cursor == 0 {
            return;
        }
    }
}

/// The Redis cases, after the others.
pub(crate) fn run(rt: &tokio::runtime::Runtime, duration: Duration) {
    let prefix = format!(
        "courteous-bench:{}:{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let reachable = rt.block_on(async {
        let store = RedisStore::builder(url())
            .operation_timeout(Duration::from_millis(500))
            .connect();
        match store {
            Ok(store) => store.ping().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    if let Err(why) = reachable {
        println!("redis: SKIPPED: no Redis at {} ({why})", url());
        return;
    }
    for tasks in [1, 16, 64] {
        let mut o = rt.block_on(redis_run(&format!("{prefix}:one-{tasks}"), tasks, duration));
        println!(
            "{:<34} | {}",
            format!("redis, 1 process, {tasks} tasks"),
            summary(&mut o)
        );
    }
    for tasks in [16, 64] {
        let shared = format!("{prefix}:two-{tasks}");
        let mut total = 0.0;
        let children = two_children(&[
            (CHILD_ENV, shared),
            ("RL_BENCH_TASKS", tasks.to_string()),
            ("RL_BENCH_SECS", duration.as_secs_f64().to_string()),
        ]);
        for (i, (line, _)) in children.iter().enumerate() {
            total += rate_of(line);
            println!(
                "{:<34} | {}",
                format!("redis, 2 processes: #{} ({tasks} tasks)", i + 1),
                line
            );
        }
        println!(
            "{:<34} | {:>12.0}",
            format!("redis, 2 processes: total ({tasks})"),
            total
        );
    }
    for tasks in [1, 16, 64] {
        let mut o = rt.block_on(redis_exact_run(
            &format!("{prefix}:exact-{tasks}"),
            tasks,
            duration,
        ));
        println!(
            "{:<34} | {}",
            format!("redis, exact, 1 process, {tasks} tasks"),
            summary(&mut o)
        );
    }
    rt.block_on(clean(&prefix));
}
