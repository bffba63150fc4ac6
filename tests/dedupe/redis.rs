//! What only the Redis store does: pub/sub wake-ups (and the polling fallback when a message is
//! missed), and its behaviour when Redis stops, hangs and comes back.

use std::time::{Duration, Instant};

use courteous::dedupe::{
    BypassReason, Completion, DedupeLayer, DedupeRole, DedupeStore, KeyState, Lead,
};
use courteous::store::redis::RedisStore;
use courteous::{HttpClient, Report, RequestKey};
use futures_util::future::join_all;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};

use crate::support::TestServer;
use crate::support::redis::{OwnRedis, shared_url, unique_prefix};

fn get(url: &str) -> http::Request<reqwest::Body> {
    http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

fn role(r: &http::Response<reqwest::Body>) -> DedupeRole {
    Report::of(r).unwrap().dedupe.unwrap()
}

fn store(url: &str, prefix: &str, timeout: Duration) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .operation_timeout(timeout)
        .connect_timeout(timeout)
        .connect()
        .unwrap()
}

/// A follower is woken by the leader's announcement, not by its polling: with a 10 s fallback
/// poll, the publish is seen within milliseconds (without pub/sub the next poll would come about
/// a second later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_are_woken_through_pub_sub() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("pubsub");
    let timeout = Duration::from_secs(1);
    let leader = store(&url, &prefix, timeout).dedupe();
    let follower = store(&url, &prefix, timeout)
        .dedupe()
        .fallback_poll(Duration::from_secs(10));
    let key = RequestKey::from_parts([21; 32], "GET http://h/pubsub");
    leader
        .try_lead(&key, "me", Duration::from_secs(30))
        .await
        .unwrap();
    let started = Instant::now();
    let waiter = {
        let (follower, key) = (follower.clone(), key.clone());
        tokio::spawn(async move {
            let state = follower
                .wait(&key, Instant::now() + Duration::from_secs(20))
                .await;
            (state, Instant::now())
        })
    };
    // Polls happen at about 1, 3, 7, ... 1023, 2047 ms: publish between the last two.
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(started.elapsed())).await;
    assert!(follower.is_subscribed(), "the wake-up subscription is up");
    let published = Instant::now();
    leader
        .publish(&key, "me", Completion::TooLarge, Duration::from_secs(5))
        .await
        .unwrap();
    let (state, woke) = waiter.await.unwrap();
    assert!(matches!(
        state.unwrap(),
        KeyState::Completed {
            completion: Completion::TooLarge,
            ..
        }
    ));
    let latency = woke.duration_since(published);
    println!("woken {latency:?} after the publish");
    assert!(latency < Duration::from_millis(300), "{latency:?}");
}

/// A result written without an announcement (a missed message) is still found by polling, within
/// about the fallback interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_announcement_is_caught_by_polling() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("missed");
    let redis = store(&url, &prefix, Duration::from_secs(1));
    let follower = redis.dedupe().fallback_poll(Duration::from_millis(100));
    let key = RequestKey::from_parts([22; 32], "GET http://h/missed");
    assert!(matches!(
        follower
            .try_lead(&key, "silent", Duration::from_secs(30))
            .await
            .unwrap(),
        Lead::Acquired { .. }
    ));
    let waiter = {
        let (follower, key) = (follower.clone(), key.clone());
        tokio::spawn(async move {
            follower
                .wait(&key, Instant::now() + Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What publish writes, but with no PUBLISH.
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let base = format!("{prefix}:dedupe:{{{}}}", key.to_hex());
    let _: () = ::redis::pipe()
        .atomic()
        .del(format!("{base}:lease"))
        .del(format!("{base}:meta"))
        .hset_multiple(
            format!("{base}:result"),
            &[
                ("kind", "f"),
                ("at", "0"),
                ("status", ""),
                ("headers", ""),
                ("body", ""),
                ("error", "written quietly"),
            ],
        )
        .pexpire(format!("{base}:result"), 5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let written = Instant::now();
    let state = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("polling found the result")
        .unwrap()
        .unwrap();
    assert!(
        matches!(&state, KeyState::Completed { completion: Completion::Failed(m), .. } if &**m == "written quietly"),
        "{state:?}"
    );
    assert!(written.elapsed() < Duration::from_millis(500));
}

fn client(
    layer: DedupeLayer,
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

/// Redis stopped mid-run: the leader in flight still answers, a follower waiting on the store in
/// another "process" goes upstream itself, and new requests pass through, all within the
/// operation timeout (plus the upstream's own time). Redis restarted: the same stores coalesce
/// again, pub/sub included, without being re-made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_passes_through_and_a_restart_recovers() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let server = TestServer::start().await;
    let timeout = Duration::from_millis(300);
    let (one, two) = (
        store(&redis.url(), "faults", timeout).dedupe(),
        store(&redis.url(), "faults", timeout).dedupe(),
    );
    let (layer_one, layer_two) = (DedupeLayer::new(one.clone()), DedupeLayer::new(two.clone()));
    let (a, b) = (client(layer_one.clone()), client(layer_two.clone()));

    // A leader in flight on `a`, a cross-process follower waiting on `b`.
    let slow = server.url("/slow?delay_ms=1500");
    let leader = tokio::spawn(a.clone().oneshot(get(&slow)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let follower = tokio::spawn(b.clone().oneshot(get(&slow)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.hits(), 1);

    redis.stop();
    let stopped = Instant::now();
    let followed = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the follower did not hang")
        .unwrap()
        .unwrap();
    assert_eq!(
        role(&followed),
        DedupeRole::Bypassed(BypassReason::StoreFailed)
    );
    let led = tokio::time::timeout(Duration::from_secs(5), leader)
        .await
        .expect("the leader did not hang")
        .unwrap()
        .unwrap();
    assert_eq!(role(&led), DedupeRole::Leader);
    // The follower's own call took 1.5 s; its store failure at most the timeout (and a retry).
    assert!(
        stopped.elapsed() < Duration::from_millis(1500) + 3 * timeout + Duration::from_millis(500),
        "{:?}",
        stopped.elapsed()
    );
    assert!(layer_one.stats().await.store_errors >= 1 && layer_two.stats().await.store_errors >= 1);

    // While Redis is down: 10 identical requests in one process still coalesce locally and
    // pass the store by, within the timeout. The upstream takes 200 ms, so that all of them
    // arrive while the leader is in flight: one that arrives after it finished leads again
    // (with the store down no result is kept), which made this check fail now and then.
    let down = server.url("/down?delay_ms=200");
    let hits = server.hits();
    let started = Instant::now();
    let responses = join_all((0..10).map(|_| a.clone().oneshot(get(&down)))).await;
    let elapsed = started.elapsed();
    let roles: Vec<DedupeRole> = responses
        .iter()
        .map(|r| role(r.as_ref().unwrap()))
        .collect();
    assert_eq!(server.hits(), hits + 1, "{roles:?}");
    assert!(roles.contains(&DedupeRole::Bypassed(BypassReason::StoreFailed)));
    assert!(
        elapsed < 3 * timeout + Duration::from_millis(500),
        "{elapsed:?}"
    );

    redis.restart();
    // Each store's first operation after the restart may still fail (its connection manager
    // re-connects on the failure); it passes through, and the next one works.
    let deadline = Instant::now() + Duration::from_secs(10);
    for client in [&a, &b] {
        loop {
            let response = client
                .clone()
                .oneshot(get(&server.url("/back")))
                .await
                .unwrap();
            if role(&response) != DedupeRole::Bypassed(BypassReason::StoreFailed) {
                break;
            }
            assert!(Instant::now() < deadline, "the store never recovered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Both handles coalesce again, and the follower is woken through the re-made subscription.
    let again = server.url("/again?delay_ms=500");
    let hits = server.hits();
    let leader = tokio::spawn(a.clone().oneshot(get(&again)));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let followed = b.clone().oneshot(get(&again)).await.unwrap();
    let led = leader.await.unwrap().unwrap();
    assert_eq!(role(&led), DedupeRole::Leader);
    assert_eq!(role(&followed), DedupeRole::CrossProcessFollower);
    assert_eq!(
        followed.into_body().collect().await.unwrap().to_bytes(),
        led.into_body().collect().await.unwrap().to_bytes()
    );
    assert_eq!(server.hits(), hits + 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !two.is_subscribed() {
        assert!(
            Instant::now() < deadline,
            "the subscription was not re-made"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis that accepts connections but does not answer (paused with SIGSTOP): every store
/// operation fails within the timeout and requests pass through; nothing hangs.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_redis_fails_within_the_timeout() {
    let Some(redis) = OwnRedis::start() else {
        return;
    };
    let server = TestServer::start().await;
    let timeout = Duration::from_millis(300);
    let dedupe = store(&redis.url(), "hang", timeout).dedupe();
    let key = RequestKey::from_parts([23; 32], "GET http://h/hang");
    dedupe.poll(&key).await.unwrap();
    redis.pause();
    let started = Instant::now();
    let error = dedupe
        .try_lead(&key, "me", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(started.elapsed() < timeout + Duration::from_millis(200));
    assert_eq!(error.backend(), "redis");
    let started = Instant::now();
    assert!(
        dedupe
            .wait(&key, Instant::now() + Duration::from_secs(30))
            .await
            .is_err()
    );
    assert!(started.elapsed() < timeout + Duration::from_millis(200));

    let client = client(DedupeLayer::new(dedupe.clone()));
    let started = Instant::now();
    let response = client.oneshot(get(&server.url("/hang"))).await.unwrap();
    assert_eq!(
        role(&response),
        DedupeRole::Bypassed(BypassReason::StoreFailed)
    );
    assert!(
        started.elapsed() < timeout + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    redis.resume();
}

/// A wake-up subscription whose server stops answering (paused with SIGSTOP; no message would say
/// so) counts as lost within a few seconds, so followers poll instead of trusting it, and is back
/// once the server answers again.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_wake_up_subscription_counts_as_lost_and_recovers() {
    let Some(redis) = OwnRedis::start() else {
        return;
    };
    let dedupe = store(&redis.url(), "stall", Duration::from_millis(300)).dedupe();
    let key = RequestKey::from_parts([24; 32], "GET http://h/stall");
    dedupe
        .try_lead(&key, "other", Duration::from_secs(30))
        .await
        .unwrap();
    // A wait opens the subscription.
    dedupe
        .wait(&key, Instant::now() + Duration::from_millis(300))
        .await
        .unwrap();
    until("subscribed", || dedupe.is_subscribed()).await;
    redis.pause();
    until("lost while Redis is paused", || !dedupe.is_subscribed()).await;
    redis.resume();
    until("subscribed again", || dedupe.is_subscribed()).await;
}

/// Waits until `done`, failing the test after 3 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "not {what} after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Given a clock, the Redis store's leases and results end by it (set by hand here), before
/// Redis's own expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_expires_by_the_clock_it_is_given() {
    let Some(url) = shared_url().await else {
        return;
    };
    let clock = crate::backend::HandClock::at(1_700_000_000_000);
    let dedupe = store(&url, &unique_prefix("clock"), Duration::from_secs(2))
        .dedupe()
        .clock(clock.clone());
    let key = RequestKey::from_parts([10; 32], "GET http://h/clock");
    crate::stores::expires_by_its_clock(&dedupe, &key, |by| {
        clock.advance(by);
        std::future::ready(())
    })
    .await;
}

/// Leases and result TTLs of `Duration::MAX` saturate: the scripts write the sums they compute
/// as integers. Before, `PEXPIRE` refused the lease plus grace that Lua wrote with an exponent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_at_the_maximum_saturate() {
    let Some(url) = shared_url().await else {
        return;
    };
    let dedupe = store(&url, &unique_prefix("max"), Duration::from_secs(2)).dedupe();
    let key = RequestKey::from_parts([11; 32], "GET http://h/max");
    assert!(matches!(
        dedupe.try_lead(&key, "me", Duration::MAX).await.unwrap(),
        Lead::Acquired { takeover: false }
    ));
    assert!(dedupe.renew(&key, "me", Duration::MAX).await.unwrap());
    assert!(matches!(
        dedupe.poll(&key).await.unwrap(),
        KeyState::Pending { .. }
    ));
    dedupe
        .publish(&key, "me", Completion::TooLarge, Duration::MAX)
        .await
        .unwrap();
    let state = dedupe.poll(&key).await.unwrap();
    assert!(
        matches!(&state, KeyState::Completed { expires_in, .. } if *expires_in > Duration::from_secs(1 << 40)),
        "{state:?}"
    );
    assert_eq!(dedupe.invalidate("http://h/max").await.unwrap(), 1);
}
