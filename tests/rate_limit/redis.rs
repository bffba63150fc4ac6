//! What only the Redis store does: its Lua decision checked against the Rust one, machines with
//! skewed clocks sharing one window, and Redis stopping, hanging and coming back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courteous::rate_limit::{
    AdaptiveConfig, AdmissionRequest, Clock, Decision, InFlight, Limit, Limits,
    MemoryRateLimitStore, OnStoreError, RateLimitLayer, RateLimitStore, RateLimitStoreFailed,
    RedisClock, RedisRateLimitStore, Refusal, ServerFeedback, SystemClock, Timestamp,
};
use courteous::store::redis::RedisStore;
use courteous::{HttpClient, Priority, Report, Resource};
use futures_util::future::join_all;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRng, TestRunner};
use tower::{ServiceBuilder, ServiceExt};

use crate::backend::forget;
use crate::support::TestServer;
use crate::support::redis::{OwnRedis, shared_url, unique_prefix};

fn store(url: &str, prefix: &str, timeout: Duration) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .operation_timeout(timeout)
        .connect_timeout(timeout)
        .connect()
        .unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Event {
    /// A request, stamped final at its decision (`None`) or in flight for at most this many ms.
    Request(Priority, Option<u64>),
    /// Settles the `n`-th (modulo their number) in-flight admission not settled yet, at this
    /// many ms before now (a settlement may be written late; never before its decision; −1: one
    /// ms ahead, as the layer rounds a settlement's time up).
    Settle(usize, i64),
    /// `Retry-After`: blocked for this many ms.
    Block(u64),
    /// `RateLimit-Remaining` with a reset this many ms away (often past the longest window).
    Budget(u32, u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => (
            any::<bool>(),
            prop::option::of(prop_oneof![3 => 0u64..4000, 1 => 0u64..3])
        )
            .prop_map(|(bg, bound)| Event::Request(
            if bg {
                Priority::Background
            } else {
                Priority::User
            },
            bound
        )),
        3 => (
            any::<usize>(),
            prop_oneof![2 => Just(-1i64), 2 => Just(0), 1 => 0i64..300]
        )
            .prop_map(|(n, back)| Event::Settle(n, back)),
        1 => (1u64..3000).prop_map(Event::Block),
        1 => (0u32..6, 1u64..8000).prop_map(|(left, reset)| Event::Budget(left, reset)),
    ]
}

/// The Lua decision is the Rust one: on random schedules of user and background requests (stamped
/// final, or in flight and settled later, or never), server feedback, over one to three limits
/// and an adaptive split that moves through its states, the Redis store (stamping with the
/// caller's clock) makes exactly the memory store's decisions, `retry_at`, reason and in-flight
/// expiry included, and reports the same status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lua_decision_matches_the_rust_one() {
    let Some(url) = shared_url().await else {
        return;
    };
    let strategy = (
        prop::collection::vec(
            (1u32..10, 1u64..3000).prop_map(|(max, ms)| Limit::new(max, Duration::from_millis(ms))),
            1..4,
        ),
        prop::collection::vec((prop_oneof![3 => 0u64..400, 1 => 0u64..2], event()), 1..80),
    );
    let handle = tokio::runtime::Handle::current();
    let adaptive = Arc::new(
        AdaptiveConfig::default()
            .monitoring_window(Duration::from_secs(3))
            .activity_thresholds(4, 2)
            .sustained_inactivity(Duration::from_secs(2))
            .recalculation_interval(Duration::ZERO)
            .min_user_reserved(1),
    );
    let reasons = tokio::task::spawn_blocking(move || {
        let reasons = std::sync::Mutex::new(std::collections::HashSet::new());
        // A fixed seed: the coverage check below must not depend on the luck of the draw (a
        // random seed once drew 64 schedules without a paused background).
        let config = Config::with_cases(64);
        let rng = TestRng::deterministic_rng(config.rng_algorithm);
        let mut runner = TestRunner::new_with_rng(config, rng);
        runner
            .run(&strategy, |(limits, events)| {
                let seen = handle.block_on(compare(&url, &limits, &events, &adaptive));
                reasons.lock().unwrap().extend(seen);
                Ok(())
            })
            .unwrap();
        reasons.into_inner().unwrap()
    })
    .await
    .unwrap();
    // The schedules went through every kind of refusal, not only the easy ones.
    assert_eq!(reasons.len(), 6, "{reasons:?}");
}

/// Runs `events` through both stores; returns the reasons of the refusals seen.
async fn compare(
    url: &str,
    limits: &[Limit],
    events: &[(u64, Event)],
    adaptive: &Arc<AdaptiveConfig>,
) -> Vec<Refusal> {
    let mut reasons = Vec::new();
    let prefix = unique_prefix("lua-mirror");
    let redis = store(url, &prefix, Duration::from_secs(2))
        .rate_limits()
        .clock(RedisClock::Caller);
    let memory = MemoryRateLimitStore::new();
    let resource = Resource::new("mirror").unwrap();
    let limits: Arc<[Limit]> = limits.into();
    let mut now = 1_700_000_000_000u64;
    // In-flight admissions not settled yet: (the memory store's, the Redis store's).
    let mut live: Vec<(InFlight, InFlight)> = Vec::new();
    let retention = limits
        .iter()
        .map(|l| l.window().as_millis() as u64)
        .max()
        .unwrap_or(0);
    for (i, (gap, event)) in events.iter().enumerate() {
        now += gap;
        let at = Timestamp::from_millis(now);
        match *event {
            Event::Request(priority, bound) => {
                let request = AdmissionRequest::new(
                    resource.clone(),
                    priority,
                    limits.clone(),
                    adaptive.clone(),
                    at,
                )
                .in_flight(bound.map(Duration::from_millis));
                let expected = memory.acquire(request.clone()).await.unwrap();
                let got = redis.acquire(request).await.unwrap();
                if let Decision::Refused { reason, .. } = &expected {
                    reasons.push(*reason);
                }
                assert_eq!(
                    without_id(&got),
                    without_id(&expected),
                    "event #{i} ({priority:?} in flight {bound:?} at +{gap} ms) of {events:?} over {limits:?}"
                );
                if let (
                    Decision::Admitted {
                        in_flight: Some(mine),
                        ..
                    },
                    Decision::Admitted {
                        in_flight: Some(theirs),
                        ..
                    },
                ) = (expected, got)
                {
                    live.push((mine, theirs));
                }
            }
            Event::Settle(k, back) => {
                if live.is_empty() {
                    continue;
                }
                let (mine, theirs) = live.remove(k % live.len());
                // An admission whose expiry left the longest window is forgotten: the stores
                // prune at different moments (the memory store at every decision and lazily,
                // Redis at admissions), so a settlement that late is left out (its request
                // outlived its in-flight bound by a window: never settled, in effect).
                if mine.expires_at.as_millis() <= now - retention {
                    continue;
                }
                let when = Timestamp::from_millis(now.saturating_add_signed(-back));
                memory.settle(&mine, when).await.unwrap();
                redis.settle(&theirs, when).await.unwrap();
            }
            Event::Block(ms) => {
                let feedback = ServerFeedback::Block {
                    until: at + Duration::from_millis(ms),
                };
                memory.feedback(&resource, feedback, at).await.unwrap();
                redis.feedback(&resource, feedback, at).await.unwrap();
            }
            Event::Budget(remaining, ms) => {
                let feedback = ServerFeedback::Remaining {
                    remaining,
                    reset: at + Duration::from_millis(ms),
                };
                memory.feedback(&resource, feedback, at).await.unwrap();
                redis.feedback(&resource, feedback, at).await.unwrap();
            }
        }
    }
    let at = Timestamp::from_millis(now);
    assert_eq!(
        redis
            .status(&resource, &limits, adaptive, at)
            .await
            .unwrap(),
        memory
            .status(&resource, &limits, adaptive, at)
            .await
            .unwrap()
    );
    forget(url, &prefix).await;
    reasons
}

/// A decision with the identity of its in-flight admission (each store numbers its own) left out.
fn without_id(decision: &Decision) -> Decision {
    match decision.clone() {
        Decision::Admitted {
            remaining,
            at,
            in_flight,
        } => Decision::Admitted {
            remaining,
            at,
            in_flight: in_flight
                .map(|f| InFlight::new(f.resource, f.priority, 0, f.admitted_at, f.expires_at)),
        },
        other => other,
    }
}

#[derive(Debug)]
struct Skewed(Duration);

impl Clock for Skewed {
    fn now(&self) -> Timestamp {
        SystemClock.now() + self.0
    }
}

/// Two machines whose clocks are an hour apart share one exact window on the server's clock, and
/// each gets `retry_at` on its own clock; a block one of them records holds the other back for
/// the right time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_with_clocks_an_hour_apart_share_one_window() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("skew");
    let (here, ahead) = (
        store(&url, &prefix, Duration::from_secs(1)).rate_limits(),
        store(&url, &prefix, Duration::from_secs(1)).rate_limits(),
    );
    let hour = Duration::from_secs(3600);
    let resource = Resource::new("skewed").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::new(5, Duration::from_secs(2))].into();
    let adaptive = Arc::new(AdaptiveConfig::default());
    let ask = |store: &RedisRateLimitStore, skew: Duration| {
        let request = AdmissionRequest::new(
            resource.clone(),
            Priority::User,
            limits.clone(),
            adaptive.clone(),
            SystemClock.now() + skew,
        );
        let store = store.clone();
        async move { (request.clock.now(), store.acquire(request).await.unwrap()) }
    };
    for i in 0..5 {
        let (_, decision) = if i % 2 == 0 {
            ask(&here, Duration::ZERO).await
        } else {
            ask(&ahead, hour).await
        };
        assert!(
            matches!(decision, Decision::Admitted { .. }),
            "#{i}: {decision:?}"
        );
    }
    for (store, skew) in [(&here, Duration::ZERO), (&ahead, hour)] {
        let (now, decision) = ask(store, skew).await;
        let Decision::Refused { retry_at, reason } = decision else {
            panic!("a sixth admission within 2 s: {decision:?}");
        };
        assert_eq!(reason, Refusal::Limit);
        let wait = retry_at.saturating_since(now);
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(2001),
            "{wait:?}"
        );
    }
    // The machine an hour ahead records `Retry-After: 3` on its own clock.
    let now = SystemClock.now() + hour;
    ahead
        .feedback(
            &resource,
            ServerFeedback::Block {
                until: now + Duration::from_secs(3),
            },
            now,
        )
        .await
        .unwrap();
    let (now, decision) = ask(&here, Duration::ZERO).await;
    let Decision::Refused { retry_at, reason } = decision else {
        panic!("{decision:?}");
    };
    assert_eq!(reason, Refusal::ServerBlocked);
    let wait = retry_at.saturating_since(now);
    assert!(
        wait > Duration::from_millis(2700) && wait <= Duration::from_millis(3000),
        "{wait:?}"
    );
    let status = RateLimitStore::status(&here, &resource, &limits, &adaptive, now)
        .await
        .unwrap();
    // On this machine's clock too (give or take the milliseconds between the two calls).
    let blocked_until = status.blocked_until.expect("blocked");
    assert!(
        blocked_until
            .max(retry_at)
            .saturating_since(blocked_until.min(retry_at))
            <= Duration::from_millis(20),
        "{blocked_until:?} against {retry_at:?}"
    );
    forget(&url, &prefix).await;
}

/// Through the layer: three machines (clocks −1 h, right, +1 h) send 6 requests each at 5 per
/// second; the server sees at most 5 in any second, and nobody waits an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_on_skewed_clocks_keep_the_limit_at_the_server() {
    let Some(url) = shared_url().await else {
        return;
    };
    let server = TestServer::start().await;
    let prefix = unique_prefix("skew-layer");
    let hour = Duration::from_secs(3600);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for skew in [0, 1, 2] {
        let layer = RateLimitLayer::new(
            store(&url, &prefix, Duration::from_secs(1)).rate_limits(),
            Limits::new().default_limit(Limit::per_second(5)),
        )
        .unwrap()
        .max_wait(Duration::from_secs(20))
        .safety_margin(Duration::from_millis(100));
        let layer = match skew {
            0 => layer.clock(Skewed(Duration::ZERO)),
            1 => layer.clock(Skewed(hour)),
            _ => layer.clock(MinusSkew(hour)),
        };
        let service = ServiceBuilder::new()
            .layer(layer)
            .service(HttpClient::new(reqwest::Client::new()));
        for i in 0..6 {
            let request = http::Request::get(server.url(&format!("/api/items/{skew}-{i}")))
                .body(reqwest::Body::from(""))
                .unwrap();
            tasks.push(tokio::spawn(service.clone().oneshot(request)));
        }
    }
    for response in join_all(tasks).await {
        assert_eq!(response.unwrap().expect("admitted").status(), 200);
    }
    let elapsed = started.elapsed();
    let mut seen: Vec<Instant> = server.seen().iter().map(|s| s.at).collect();
    seen.sort();
    assert_eq!(seen.len(), 18);
    let worst = (0..seen.len())
        .map(|i| {
            seen[i..]
                .iter()
                .take_while(|t| **t < seen[i] + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(worst <= 5, "{worst} calls within 1 s");
    // 18 calls at 5 per 1.1 s: about 3.3 s.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    forget(&url, &prefix).await;
}

#[derive(Debug)]
struct MinusSkew(Duration);

impl Clock for MinusSkew {
    fn now(&self) -> Timestamp {
        SystemClock.now() - self.0
    }
}

fn get(url: &str) -> http::Request<reqwest::Body> {
    http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

fn client(
    layer: RateLimitLayer,
) -> impl tower::Service<
    http::Request<reqwest::Body>,
    Response = http::Response<reqwest::Body>,
    Error = courteous::BoxError,
    Future: Send,
> + Clone {
    ServiceBuilder::new()
        .layer(layer)
        .service(HttpClient::new(reqwest::Client::new()))
}

/// Redis stopped mid-run: a layer that fails closed refuses at once, within the operation
/// timeout, with a typed error that names Redis, and sends nothing; one that fails open sends
/// the request and says so. Redis restarted: the same store decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_fails_closed_or_open_and_a_restart_recovers() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let server = TestServer::start().await;
    let timeout = Duration::from_millis(300);
    let rate_limits = store(&redis.url(), "faults", timeout).rate_limits();
    let limits = Limits::new().default_limit(Limit::per_minute(100));
    let closed = RateLimitLayer::new(rate_limits.clone(), limits.clone()).unwrap();
    let open = RateLimitLayer::new(rate_limits.clone(), limits)
        .unwrap()
        .on_store_error(OnStoreError::FailOpen);
    let items = server.url("/api/items/");
    let response = client(closed.clone()).oneshot(get(&items)).await.unwrap();
    let report = Report::of(&response).unwrap().rate_limit.unwrap();
    assert_eq!((report.remaining, report.unchecked), (99, false));

    redis.stop();
    let started = Instant::now();
    let err = client(closed.clone())
        .oneshot(get(&items))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < timeout + Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let failed = err
        .downcast_ref::<RateLimitStoreFailed>()
        .unwrap_or_else(|| panic!("not a RateLimitStoreFailed: {err}"));
    assert!(failed.is_unavailable(), "{failed}");
    assert_eq!(failed.store_error().backend(), "redis");
    assert_eq!(failed.resource().as_str(), "items");
    assert!(failed.to_string().contains("redis"), "{failed}");
    assert_eq!(
        server.hits(),
        1,
        "a request that could not be counted was sent"
    );
    let stats = closed.stats().await.resources["items"];
    assert_eq!((stats.store_errors, stats.admitted_unchecked), (1, 0));

    let started = Instant::now();
    let response = client(open.clone()).oneshot(get(&items)).await.unwrap();
    assert!(
        started.elapsed() < timeout + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), 200);
    assert!(Report::of(&response).unwrap().rate_limit.unwrap().unchecked);
    assert_eq!(server.hits(), 2);
    let stats = open.stats().await.resources["items"];
    assert_eq!((stats.store_errors, stats.admitted_unchecked), (1, 1));

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let response = loop {
        match client(closed.clone()).oneshot(get(&items)).await {
            Ok(response) => break response,
            Err(err) => {
                assert!(err.is::<RateLimitStoreFailed>(), "{err}");
                assert!(
                    Instant::now() < deadline,
                    "the store never recovered: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let report = Report::of(&response).unwrap().rate_limit.unwrap();
    assert!(!report.unchecked);
    // The restarted server kept nothing (no persistence): it counts from this admission.
    assert_eq!(report.remaining, 99);
    let status = closed
        .status(&Resource::new("items").unwrap())
        .await
        .unwrap();
    assert_eq!(status.limits[0].used, 1);
}

/// After a restart, the first decision on the store's old (broken) connection succeeds: the
/// store retries once on a new connection, within its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_decision_after_a_restart_succeeds() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let rate_limits = store(&redis.url(), "restart", Duration::from_secs(2)).rate_limits();
    let request = || {
        AdmissionRequest::new(
            Resource::new("items").unwrap(),
            Priority::User,
            vec![Limit::per_minute(10)].into(),
            Arc::new(AdaptiveConfig::default()),
            SystemClock.now(),
        )
    };
    assert!(matches!(
        rate_limits.acquire(request()).await.unwrap(),
        Decision::Admitted { remaining: 9, .. }
    ));
    redis.restart();
    assert!(matches!(
        rate_limits.acquire(request()).await.unwrap(),
        Decision::Admitted { remaining: 9, .. }
    ));
}

/// Redis that accepts connections but does not answer (paused with SIGSTOP): the decision fails
/// within the timeout and the layer fails closed; nothing hangs.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_redis_fails_closed_within_the_timeout() {
    let Some(redis) = OwnRedis::start() else {
        return;
    };
    let server = TestServer::start().await;
    let timeout = Duration::from_millis(300);
    let layer = RateLimitLayer::new(
        store(&redis.url(), "hang", timeout).rate_limits(),
        Limits::new().default_limit(Limit::per_minute(100)),
    )
    .unwrap();
    let items = server.url("/api/items/");
    client(layer.clone()).oneshot(get(&items)).await.unwrap();
    redis.pause();
    let started = Instant::now();
    let err = client(layer.clone())
        .oneshot(get(&items))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    redis.resume();
    assert!(
        elapsed < timeout + Duration::from_millis(200),
        "{elapsed:?}"
    );
    let failed = err
        .downcast_ref::<RateLimitStoreFailed>()
        .expect("typed error");
    assert!(failed.is_unavailable(), "{failed}");
    assert_eq!(server.hits(), 1);
}

/// Nothing grows without bound: each admission trims what no window needs (admissions) and what
/// the monitoring window no longer counts (user activity per second), and every key expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_admissions_and_activity_are_trimmed_and_every_key_expires() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("growth");
    let redis = store(&url, &prefix, Duration::from_secs(2));
    let injected = redis.rate_limits().clock(RedisClock::Caller);
    let resource = Resource::new("growth").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::new(100, Duration::from_secs(2))].into();
    let adaptive = Arc::new(AdaptiveConfig::default().monitoring_window(Duration::from_secs(3)));
    // 60 user and background admissions over 30 s, on the caller's clock; every fourth in flight
    // for at most 1 s and never settled (its process died).
    for i in 0..60u64 {
        let priority = if i % 2 == 0 {
            Priority::User
        } else {
            Priority::Background
        };
        let request = AdmissionRequest::new(
            resource.clone(),
            priority,
            limits.clone(),
            adaptive.clone(),
            Timestamp::from_millis(1_700_000_000_000 + i * 500),
        )
        .in_flight((i % 4 == 0).then_some(Duration::from_secs(1)));
        assert!(matches!(
            injected.acquire(request).await.unwrap(),
            Decision::Admitted { .. }
        ));
    }
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = |part: &str| format!("{prefix}:rl:{{growth}}:{part}");
    let card = |k: String| ::redis::cmd("ZCARD").arg(k).to_owned();
    let all: u64 = card(key("all")).query_async(&mut conn).await.unwrap();
    let bg: u64 = card(key("bg")).query_async(&mut conn).await.unwrap();
    // A window of 2 s at one admission per 500 ms: at most 5 (the trim keeps `at > now - 2 s`);
    // the dead in-flight admissions are trimmed once their expiry has left it (14 of them would
    // be left otherwise).
    assert!(all <= 5 && bg <= 3, "all {all}, bg {bg}");
    let seconds: u64 = ::redis::cmd("HLEN")
        .arg(key("act"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let index: u64 = card(key("actidx")).query_async(&mut conn).await.unwrap();
    // A monitoring window of 3 s: a handful of per-second buckets, not 30.
    assert!(
        seconds <= 6 && seconds == index,
        "{seconds} buckets, {index} indexed"
    );

    // On the server's clock: every key the store writes has a time to live.
    let live = redis.rate_limits();
    live.feedback(
        &resource,
        ServerFeedback::Block {
            until: SystemClock.now() + Duration::from_secs(1),
        },
        SystemClock.now(),
    )
    .await
    .unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 5, "{keys:?}");
    for k in keys {
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{k} has no expiry ({ttl})");
    }
    let other = Resource::new("short").unwrap();
    let request = AdmissionRequest::new(
        other,
        Priority::Background,
        vec![Limit::new(10, Duration::from_millis(200))].into(),
        adaptive.clone(),
        SystemClock.now(),
    );
    live.acquire(request).await.unwrap();
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(format!("{prefix}:rl:{{short}}:all"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 200,
        "admissions of a 200 ms window kept {ttl} ms"
    );
    forget(&url, &prefix).await;
}

/// Every key under `prefix` has a time to live.
async fn assert_every_key_expires(url: &str, prefix: &str, expected: usize) {
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), expected, "{keys:?}");
    for k in keys {
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{k} has no expiry ({ttl})");
    }
}

/// Absurd feedback (a reset in µs since the epoch, a `Retry-After` of centuries) and absurd
/// durations (windows, inactivity, monitoring of `Duration::MAX`) are clamped: no script fails
/// half-way (Redis would keep its first writes), every key still expires, and a refusal's
/// `retry_at` is in the future and not past a decade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_times_and_durations_neither_fail_nor_leave_keys_without_expiry() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("extreme");
    let store = store(&url, &prefix, Duration::from_secs(2)).rate_limits();
    let resource = Resource::new("extreme").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::per_second(100)].into();
    let adaptive = Arc::new(AdaptiveConfig::default());
    let decade = Duration::from_secs(11 * 365 * 24 * 3600);

    // `X-RateLimit-Reset: 1e19`, read as seconds since the epoch.
    let now = SystemClock.now();
    store
        .feedback(
            &resource,
            ServerFeedback::Remaining {
                remaining: 1,
                reset: Timestamp::from_millis(u64::MAX),
            },
            now,
        )
        .await
        .unwrap();
    // A budget counts the admissions after the millisecond it was observed in (an admission in
    // that same millisecond may be the one the server already counted): step past it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let request = |priority, now| {
        AdmissionRequest::new(
            resource.clone(),
            priority,
            limits.clone(),
            adaptive.clone(),
            now,
        )
    };
    let first = store
        .acquire(request(Priority::User, SystemClock.now()))
        .await
        .unwrap();
    assert!(matches!(first, Decision::Admitted { .. }), "{first:?}");
    assert_every_key_expires(&url, &prefix, 4).await;
    let now = SystemClock.now();
    match store.acquire(request(Priority::User, now)).await.unwrap() {
        Decision::Refused { retry_at, reason } => {
            assert_eq!(reason, Refusal::ServerBudget);
            assert!(retry_at > now && retry_at <= now + decade, "{retry_at:?}");
        }
        other => panic!("the budget of 1 is spent: {other:?}"),
    }

    // `Retry-After: 9999999999999999`.
    let now = SystemClock.now();
    store
        .feedback(
            &resource,
            ServerFeedback::Block {
                until: now + Duration::from_secs(9_999_999_999_999_999),
            },
            now,
        )
        .await
        .unwrap();
    let now = SystemClock.now();
    match store
        .acquire(request(Priority::Background, now))
        .await
        .unwrap()
    {
        Decision::Refused { retry_at, reason } => {
            assert_eq!(reason, Refusal::ServerBlocked);
            assert!(retry_at > now && retry_at <= now + decade, "{retry_at:?}");
        }
        other => panic!("blocked: {other:?}"),
    }
    assert_every_key_expires(&url, &prefix, 4).await;

    // Durations of `Duration::MAX`, on a fresh resource.
    let forever = Resource::new("forever").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::new(1, Duration::MAX)].into();
    let adaptive = Arc::new(
        AdaptiveConfig::default()
            .sustained_inactivity(Duration::MAX)
            .monitoring_window(Duration::MAX),
    );
    let request = |priority| {
        AdmissionRequest::new(
            forever.clone(),
            priority,
            limits.clone(),
            adaptive.clone(),
            SystemClock.now(),
        )
    };
    let first = store.acquire(request(Priority::User)).await.unwrap();
    assert!(matches!(first, Decision::Admitted { .. }), "{first:?}");
    let now = SystemClock.now();
    match store.acquire(request(Priority::Background)).await.unwrap() {
        Decision::Refused { retry_at, .. } => {
            assert!(retry_at > now && retry_at <= now + decade, "{retry_at:?}");
        }
        other => panic!("a limit of 1 is spent: {other:?}"),
    }
    store
        .status(&forever, &limits, &adaptive, SystemClock.now())
        .await
        .unwrap();
    assert_every_key_expires(&url, &prefix, 8).await;
    forget(&url, &prefix).await;
}

/// A rolling deploy shortens a limit from an hour to a minute: the processes with the minute do
/// not trim the admissions that the processes still on the hour count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_with_a_shorter_window_keep_what_a_longer_window_still_counts() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("highwater");
    let redis = store(&url, &prefix, Duration::from_secs(2));
    let old = redis.rate_limits().clock(RedisClock::Caller);
    let new = redis.rate_limits().clock(RedisClock::Caller);
    let resource = Resource::new("deploy").unwrap();
    let hour: Arc<[Limit]> = vec![Limit::per_hour(2)].into();
    let minute: Arc<[Limit]> = vec![Limit::per_minute(100)].into();
    let adaptive = Arc::new(AdaptiveConfig::default());
    let t0 = 1_700_000_000_000u64;
    let at = |limits: &Arc<[Limit]>, minutes: u64| {
        AdmissionRequest::new(
            resource.clone(),
            Priority::User,
            limits.clone(),
            adaptive.clone(),
            Timestamp::from_millis(t0 + minutes * 60_000),
        )
    };
    let first = old.acquire(at(&hour, 0)).await.unwrap();
    assert!(matches!(first, Decision::Admitted { .. }), "{first:?}");
    let second = new.acquire(at(&minute, 2)).await.unwrap();
    assert!(matches!(second, Decision::Admitted { .. }), "{second:?}");
    // The hour holds two admissions: the old process is at its limit.
    match old.acquire(at(&hour, 3)).await.unwrap() {
        Decision::Refused { retry_at, reason } => {
            assert_eq!(reason, Refusal::Limit);
            assert_eq!(retry_at, Timestamp::from_millis(t0 + 3_600_001));
        }
        other => panic!("the first admission was trimmed: {other:?}"),
    }
    // Once nobody has counted in the hour for an hour, the minute's callers trim to a minute.
    let third = new.acquire(at(&minute, 30)).await.unwrap();
    assert!(matches!(third, Decision::Admitted { .. }), "{third:?}");
    let later = new.acquire(at(&minute, 64)).await.unwrap();
    assert!(matches!(later, Decision::Admitted { .. }), "{later:?}");
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let kept: u64 = ::redis::cmd("ZCARD")
        .arg(format!("{prefix}:rl:{{deploy}}:all"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 1, "the high-water mark lapses");
    forget(&url, &prefix).await;
}

/// A user request at `at` on the caller's clock, in flight for at most `bound` (`None`: final).
fn in_flight_request(
    resource: &Resource,
    limits: &Arc<[Limit]>,
    at: u64,
    bound: Option<Duration>,
) -> AdmissionRequest {
    AdmissionRequest::new(
        resource.clone(),
        Priority::User,
        limits.clone(),
        Arc::new(AdaptiveConfig::default()),
        Timestamp::from_millis(at),
    )
    .in_flight(bound)
}

fn admitted_in_flight(decision: Decision) -> InFlight {
    match decision {
        Decision::Admitted {
            in_flight: Some(in_flight),
            ..
        } => in_flight,
        other => panic!("not admitted in flight: {other:?}"),
    }
}

/// In-flight admissions fill the window: a refusal says so and asks again one window from now
/// (the earliest their slots can free); one settles on one connection, and another connection
/// (another process, in effect) sees it counted from its settlement: refused by the limit until
/// one window after it, then admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_is_visible_to_another_connection() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("settle");
    let here = store(&url, &prefix, Duration::from_secs(2))
        .rate_limits()
        .clock(RedisClock::Caller);
    let there = store(&url, &prefix, Duration::from_secs(2))
        .rate_limits()
        .clock(RedisClock::Caller);
    let resource = Resource::new("settle").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::new(2, Duration::from_secs(1))].into();
    let minute = Some(Duration::from_secs(60));
    let t0 = 1_700_000_000_000u64;
    let first = admitted_in_flight(
        here.acquire(in_flight_request(&resource, &limits, t0, minute))
            .await
            .unwrap(),
    );
    assert_eq!(first.admitted_at, Timestamp::from_millis(t0));
    assert_eq!(first.expires_at, Timestamp::from_millis(t0 + 60_000));
    let second = admitted_in_flight(
        here.acquire(in_flight_request(&resource, &limits, t0 + 10, minute))
            .await
            .unwrap(),
    );
    assert_ne!(first.id, second.id);
    // Both in flight, long after their decisions: the window is full, for an unknown time.
    let asked = t0 + 5_000;
    assert_eq!(
        there
            .acquire(in_flight_request(&resource, &limits, asked, minute))
            .await
            .unwrap(),
        Decision::Refused {
            retry_at: Timestamp::from_millis(asked + 1_001),
            reason: Refusal::InFlight,
        }
    );
    let status = there
        .status(
            &resource,
            &limits,
            &AdaptiveConfig::default(),
            Timestamp::from_millis(asked),
        )
        .await
        .unwrap();
    assert_eq!((status.in_flight, status.limits[0].used), (2, 2));
    // The first response head arrived at +5.2 s; the other connection counts it from then.
    here.settle(&first, Timestamp::from_millis(t0 + 5_200))
        .await
        .unwrap();
    // Settling twice (a retried write) changes nothing.
    here.settle(&first, Timestamp::from_millis(t0 + 5_900))
        .await
        .unwrap();
    let asked = t0 + 5_300;
    let status = there
        .status(
            &resource,
            &limits,
            &AdaptiveConfig::default(),
            Timestamp::from_millis(asked),
        )
        .await
        .unwrap();
    assert_eq!((status.in_flight, status.limits[0].used), (1, 2));
    assert_eq!(
        there
            .acquire(in_flight_request(&resource, &limits, asked, minute))
            .await
            .unwrap(),
        Decision::Refused {
            retry_at: Timestamp::from_millis(t0 + 5_200 + 1_001),
            reason: Refusal::Limit,
        }
    );
    let third = admitted_in_flight(
        there
            .acquire(in_flight_request(&resource, &limits, t0 + 6_201, minute))
            .await
            .unwrap(),
    );
    assert_eq!(third.admitted_at, Timestamp::from_millis(t0 + 6_201));
    forget(&url, &prefix).await;
}

/// An in-flight admission counts in every window, however short, for as long as it is in flight:
/// 90 minutes after its decision it still holds one of the two slots of a one-second limit (and
/// one of the hour's), and it holds its keys as long as that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_admission_counts_in_every_window() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("every-window");
    let store = store(&url, &prefix, Duration::from_secs(2))
        .rate_limits()
        .clock(RedisClock::Caller);
    let resource = Resource::new("windows").unwrap();
    let limits: Arc<[Limit]> =
        vec![Limit::new(2, Duration::from_secs(1)), Limit::per_hour(5)].into();
    let t0 = 1_700_000_000_000u64;
    let two_hours = Some(Duration::from_secs(7200));
    let slow = admitted_in_flight(
        store
            .acquire(in_flight_request(&resource, &limits, t0, two_hours))
            .await
            .unwrap(),
    );
    let later = t0 + 90 * 60_000;
    let status = store
        .status(
            &resource,
            &limits,
            &AdaptiveConfig::default(),
            Timestamp::from_millis(later),
        )
        .await
        .unwrap();
    assert_eq!(status.in_flight, 1);
    assert_eq!(
        status.limits.iter().map(|l| l.used).collect::<Vec<_>>(),
        [1, 1]
    );
    assert!(matches!(
        store
            .acquire(in_flight_request(&resource, &limits, later, None))
            .await
            .unwrap(),
        Decision::Admitted { remaining: 0, .. }
    ));
    assert_eq!(
        store
            .acquire(in_flight_request(&resource, &limits, later + 1, None))
            .await
            .unwrap(),
        Decision::Refused {
            retry_at: Timestamp::from_millis(later + 1_001),
            reason: Refusal::Limit,
        }
    );
    // Its sets live until its expiry has left the longest window (Redis's own clock runs
    // against the caller's here, whence the caller-clock slack of an hour on top).
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for key in ["all", "state"] {
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(format!("{prefix}:rl:{{windows}}:{key}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 3 * 3_600_000 - 60_000, "{key} lives {ttl} ms");
    }
    // Settled at last: it leaves the second's window a second later.
    store
        .settle(&slow, Timestamp::from_millis(later + 2))
        .await
        .unwrap();
    assert!(matches!(
        store
            .acquire(in_flight_request(&resource, &limits, later + 1_003, None))
            .await
            .unwrap(),
        Decision::Admitted { .. }
    ));
    forget(&url, &prefix).await;
}

/// Child entry: one in-flight admission on the parent's Redis, then, as `SETTLE` says, a
/// settlement 300 ms later (its response arrived) or an exit without one (the process died with
/// its request in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by the in-flight tests of this module"]
async fn child_in_flight() {
    if !crate::support::child::is_child("redis::child_in_flight") {
        return;
    }
    let url: String = crate::support::child::param("REDIS_URL");
    let prefix: String = crate::support::child::param("PREFIX");
    let settle: bool = crate::support::child::param("SETTLE");
    let bound: u64 = crate::support::child::param("BOUND_MS");
    let store = store(&url, &prefix, Duration::from_secs(5)).rate_limits();
    let limits: Arc<[Limit]> = vec![Limit::new(1, Duration::from_secs(1))].into();
    let request = AdmissionRequest::new(
        Resource::new("child").unwrap(),
        Priority::User,
        limits,
        Arc::new(AdaptiveConfig::default()),
        SystemClock,
    )
    .in_flight(Some(Duration::from_millis(bound)));
    let in_flight = admitted_in_flight(store.acquire(request).await.unwrap());
    println!("admitted {}", in_flight.admitted_at.as_millis());
    if settle {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.settle(&in_flight, SystemClock.now()).await.unwrap();
        println!("settled");
    } else {
        // Gone, with its request in flight: nothing settles it.
        println!("exiting");
        std::process::exit(0);
    }
}

fn run_child(url: &str, prefix: &str, settle: bool, bound_ms: u64) -> String {
    crate::support::child::wait_ok(crate::support::child::spawn(
        "redis::child_in_flight",
        &[
            ("REDIS_URL", url.to_owned()),
            ("PREFIX", prefix.to_owned()),
            ("SETTLE", settle.to_string()),
            ("BOUND_MS", bound_ms.to_string()),
        ],
    ))
}

/// A real child process admits a request in flight (on Redis's clock) and settles it when its
/// response arrives: this process counts it from the settlement, as a plain admission of one
/// window, not as in flight for the child's minute-long bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_sees_a_settlement() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("settle-child");
    let (u, p) = (url.clone(), prefix.clone());
    let out = tokio::task::spawn_blocking(move || run_child(&u, &p, true, 60_000))
        .await
        .unwrap();
    assert!(out.contains("settled"), "{out}");
    let store = store(&url, &prefix, Duration::from_secs(2)).rate_limits();
    let resource = Resource::new("child").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::new(1, Duration::from_secs(1))].into();
    let adaptive = AdaptiveConfig::default();
    let status = store
        .status(&resource, &limits, &adaptive, SystemClock.now())
        .await
        .unwrap();
    assert_eq!(status.in_flight, 0, "{}", status.reason);
    let asked = SystemClock.now();
    let request = AdmissionRequest::new(
        resource.clone(),
        Priority::User,
        limits.clone(),
        Arc::new(AdaptiveConfig::default()),
        SystemClock,
    );
    match store.acquire(request.clone()).await.unwrap() {
        // Within the settled admission's second (unless this machine is very slow): refused
        // by the limit, for less than a second, never for the child's in-flight minute.
        Decision::Refused { retry_at, reason } => {
            assert_eq!(reason, Refusal::Limit);
            assert!(
                retry_at.saturating_since(asked) <= Duration::from_millis(1_500),
                "{retry_at:?} from {asked:?}"
            );
            tokio::time::sleep(retry_at.saturating_since(SystemClock.now())).await;
        }
        Decision::Admitted { .. } => {
            forget(&url, &prefix).await;
            return;
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(
            store.acquire(request).await.unwrap(),
            Decision::Admitted { .. }
        ),
        "not admitted at the retry time"
    );
    forget(&url, &prefix).await;
}

/// A real child process dies with its request in flight (never settled): every other process
/// counts the admission in flight until its bound, then as if sent at its bound for one window,
/// then not at all. A crash holds a slot for its bound and a window, not forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_admission_of_a_dead_process_expires() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("dead-child");
    let bound = 2_000u64;
    let (u, p) = (url.clone(), prefix.clone());
    let out = tokio::task::spawn_blocking(move || run_child(&u, &p, false, bound))
        .await
        .unwrap();
    assert!(out.contains("exiting") && !out.contains("settled"), "{out}");
    let store = store(&url, &prefix, Duration::from_secs(2)).rate_limits();
    let resource = Resource::new("child").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::new(1, Duration::from_secs(1))].into();
    let request = AdmissionRequest::new(
        resource.clone(),
        Priority::User,
        limits.clone(),
        Arc::new(AdaptiveConfig::default()),
        SystemClock,
    );
    let started = Instant::now();
    let mut in_flight_refusals = 0;
    loop {
        let asked = SystemClock.now();
        match store.acquire(request.clone()).await.unwrap() {
            Decision::Admitted { .. } => break,
            Decision::Refused { retry_at, reason } => {
                assert!(
                    matches!(reason, Refusal::InFlight | Refusal::Limit),
                    "{reason:?}"
                );
                in_flight_refusals += usize::from(reason == Refusal::InFlight);
                // One window at most (and the time the reply took).
                let wait = retry_at.saturating_since(asked);
                assert!(wait <= Duration::from_millis(1_500), "{wait:?}");
                tokio::time::sleep(wait).await;
            }
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the dead process's admission never expired"
        );
    }
    // It was held (the child exits well within its 2 s bound, even on a loaded machine), and
    // freed no earlier than its bound and one window after the child's decision.
    assert!(in_flight_refusals >= 1);
    let admitted_at: u64 = out
        .lines()
        .find_map(|l| l.split_once("admitted ").map(|(_, v)| v))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        SystemClock.now().as_millis() > admitted_at + bound + 1_000,
        "admitted before the dead admission left the window"
    );
    forget(&url, &prefix).await;
}

/// Decisions are stamped when Redis makes them (its `TIME`, inside the script), not when the
/// caller asked: a request that waited a second for a stalled Redis is stamped a second later,
/// and so is the expiry of its in-flight admission.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_stamped_when_redis_makes_it() {
    let Some(redis) = OwnRedis::start() else {
        return;
    };
    let rate_limits = store(&redis.url(), "stamp", Duration::from_secs(10)).rate_limits();
    let resource = Resource::new("stamp").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::per_minute(10)].into();
    // Warm the connection (and load the script).
    rate_limits
        .acquire(AdmissionRequest::new(
            resource.clone(),
            Priority::User,
            limits.clone(),
            Arc::new(AdaptiveConfig::default()),
            SystemClock,
        ))
        .await
        .unwrap();
    redis.pause();
    let asked = SystemClock.now();
    let pending = tokio::spawn({
        let rate_limits = rate_limits.clone();
        let request = AdmissionRequest::new(
            resource.clone(),
            Priority::User,
            limits.clone(),
            Arc::new(AdaptiveConfig::default()),
            SystemClock,
        )
        .in_flight(Some(Duration::from_secs(30)));
        async move { rate_limits.acquire(request).await }
    });
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let resumed = SystemClock.now();
    redis.resume();
    let decision = pending.await.unwrap().unwrap();
    let Decision::Admitted {
        at,
        in_flight: Some(in_flight),
        ..
    } = decision
    else {
        panic!("{decision:?}");
    };
    assert!(
        at >= resumed - Duration::from_millis(5),
        "stamped {:?} before Redis decided, asked at {asked:?}, resumed at {resumed:?}",
        resumed.saturating_since(at)
    );
    assert_eq!(in_flight.admitted_at, at);
    assert_eq!(in_flight.expires_at, at + Duration::from_secs(30));
    // And Redis holds the expiry of an admission decided after it resumed (its clock is this
    // machine's).
    let client = ::redis::Client::open(redis.url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let score: u64 = ::redis::cmd("ZSCORE")
        .arg("stamp:rl:{stamp}:all")
        .arg(format!("i{}", in_flight.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    let decided = Timestamp::from_millis(score) - Duration::from_secs(30);
    assert!(
        decided >= resumed - Duration::from_millis(5) && decided <= at,
        "Redis decided at {decided:?}, resumed at {resumed:?}"
    );
}

/// A settlement is stamped up to a millisecond ahead of the clock (the layer rounds its time up,
/// and so does the script with Redis's `TIME`): such a stamp is a settled admission, counted
/// from then (a `Limit` refusal, exact retry time), not one in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_rounded_up_is_not_in_flight() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("rounding");
    let redis = store(&url, &prefix, Duration::from_secs(2));
    let caller = redis.rate_limits().clock(RedisClock::Caller);
    let resource = Resource::new("rounding").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::new(1, Duration::from_secs(1))].into();
    let t0 = 1_700_000_000_000u64;
    let minute = Some(Duration::from_secs(60));
    let admission = admitted_in_flight(
        caller
            .acquire(in_flight_request(&resource, &limits, t0, minute))
            .await
            .unwrap(),
    );
    let now = t0 + 500;
    caller
        .settle(&admission, Timestamp::from_millis(now + 1))
        .await
        .unwrap();
    assert_eq!(
        caller
            .acquire(in_flight_request(&resource, &limits, now, minute))
            .await
            .unwrap(),
        Decision::Refused {
            retry_at: Timestamp::from_millis(now + 1 + 1_001),
            reason: Refusal::Limit,
        }
    );
    let status = caller
        .status(
            &resource,
            &limits,
            &AdaptiveConfig::default(),
            Timestamp::from_millis(now),
        )
        .await
        .unwrap();
    assert_eq!((status.in_flight, status.limits[0].used), (0, 1));

    // On Redis's clock, the settlement's stamp is never within the millisecond read before it
    // was sent (rounded up, not down).
    let server = redis.rate_limits();
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let limits: Arc<[Limit]> = vec![Limit::per_minute(1000)].into();
    for _ in 0..20 {
        let request = AdmissionRequest::new(
            resource.clone(),
            Priority::User,
            limits.clone(),
            Arc::new(AdaptiveConfig::default()),
            SystemClock,
        )
        .in_flight(minute);
        let admission = admitted_in_flight(server.acquire(request).await.unwrap());
        let before = SystemClock.now();
        server.settle(&admission, before).await.unwrap();
        let score: u64 = ::redis::cmd("ZSCORE")
            .arg(format!("{prefix}:rl:{{rounding}}:all"))
            .arg(format!("s{}", admission.id))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            score > before.as_millis(),
            "settled at {score}, read {before:?} before"
        );
    }
    forget(&url, &prefix).await;
}

/// A decision whose reply was lost (Redis stalled past the operation timeout, the layer failed
/// closed and sent nothing) but that Redis ran once it resumed holds no in-flight slot until
/// the in-flight bound (a minute by default): it is settled at its decision, so the limit (one
/// a second here) frees one window later.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_whose_reply_was_lost_does_not_hold_its_slot() {
    let Some(redis) = OwnRedis::start() else {
        return;
    };
    let server = TestServer::start().await;
    let timeout = Duration::from_millis(300);
    let layer = RateLimitLayer::new(
        store(&redis.url(), "lost", timeout).rate_limits(),
        Limits::new().default_limit(Limit::per_second(1)),
    )
    .unwrap()
    .fail_fast();
    let items = server.url("/api/items/");
    // Once, so that Redis knows the script (a lost `EVALSHA` of an unknown script runs nothing).
    client(layer.clone()).oneshot(get(&items)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    redis.pause();
    let err = client(layer.clone())
        .oneshot(get(&items))
        .await
        .unwrap_err();
    assert!(err.is::<RateLimitStoreFailed>(), "{err}");
    redis.resume();
    assert_eq!(server.hits(), 1);
    // Well under the minute the lost admission would hold, well over its one-second window.
    let started = Instant::now();
    loop {
        match client(layer.clone()).oneshot(get(&items)).await {
            Ok(_) => break,
            Err(err) if started.elapsed() < Duration::from_secs(15) => {
                assert!(
                    err.is::<courteous::rate_limit::RateLimited>()
                        || err.is::<RateLimitStoreFailed>(),
                    "{err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("still refused after {:?}: {err}", started.elapsed()),
        }
    }
    assert_eq!(server.hits(), 2);
}
