//! The store contract, one suite for every backend: each behaviour is an `async fn(Backend)`
//! run for the memory, SQLite and Redis stores (`<behaviour>::memory`, `::sqlite`, `::redis`).
//! Two handles on one store behave like two processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use courteous::dedupe::{
    BypassReason, Completion, DedupeError, DedupeLayer, DedupeRole, DedupeStore, DedupeStoreStats,
    KeyState, Lead, MemoryDedupeStore, SharedResponse,
};
use courteous::time::TokioClock;
use courteous::{BoxError, HttpClient, Report, RequestKey};
use futures_util::future::join_all;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};

use crate::backend::{Backend, every_backend};
use crate::support::TestServer;

every_backend!(
    taking_the_lead_is_atomic,
    an_expired_lease_is_taken_over,
    only_the_owner_renews_publishes_or_releases,
    a_published_response_is_read_whole,
    a_published_result_is_not_served_after_result_ttl,
    a_leaders_error_and_an_oversized_body_reach_followers_through_the_store,
    a_cancelled_leader_releases_its_lease_for_other_processes,
    cleanup_removes_lapsed_leases_only,
    followers_already_waiting_get_a_result_published_with_a_zero_result_ttl,
    stats_count_pending_completed_and_expired_entries,
    two_layers_over_one_store_count_apart_and_see_the_same_store,
);

fn get(url: &str) -> http::Request<reqwest::Body> {
    http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

fn key_of(url: &str) -> RequestKey {
    let mut r = get(url);
    courteous::dedupe::store_key(&mut r).unwrap()
}

fn role(r: &http::Response<reqwest::Body>) -> DedupeRole {
    Report::of(r).unwrap().dedupe.unwrap()
}

/// 2 handles × 50 tasks race to lead one key: exactly one wins. Regression test for DESIGN.md §6
/// defect 3 (check-then-insert registration let two processes lead).
async fn taking_the_lead_is_atomic(backend: Backend) {
    let (one, two) = (backend.handle().await, backend.handle().await);
    let key = RequestKey::from_parts([3; 32], "GET http://h/race");
    let lease = Duration::from_secs(30);
    let attempts = (0..100).map(|i| {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        let key = key.clone();
        tokio::spawn(async move {
            store
                .try_lead(&key, &format!("owner-{i}"), lease)
                .await
                .unwrap()
        })
    });
    let leads: Vec<Lead> = join_all(attempts)
        .await
        .into_iter()
        .map(|l| l.unwrap())
        .collect();
    let winners: Vec<usize> = (0..100)
        .filter(|&i| matches!(leads[i], Lead::Acquired { takeover: false }))
        .collect();
    assert_eq!(winners.len(), 1, "{leads:?}");
    let winner = format!("owner-{}", winners[0]);
    assert!(
        leads.iter().all(|l| matches!(l, Lead::Acquired { .. })
            || matches!(l, Lead::Pending { owner, .. } if *owner == winner)),
        "{leads:?}"
    );
    one.release(&key, &winner).await.unwrap();
}

/// An expired lease is taken over by the next caller, and reported as a takeover; the old owner
/// can no longer renew or publish.
async fn an_expired_lease_is_taken_over(backend: Backend) {
    let store = backend.handle().await;
    let key = RequestKey::from_parts([4; 32], "GET http://h/lease");
    // Long enough that a loaded machine still makes the second call within it.
    let short = Duration::from_millis(400);
    assert!(matches!(
        store.try_lead(&key, "old", short).await.unwrap(),
        Lead::Acquired { takeover: false }
    ));
    assert!(matches!(
        store.try_lead(&key, "new", short).await.unwrap(),
        Lead::Pending { owner, .. } if owner == "old"
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        store.poll(&key).await.unwrap(),
        KeyState::Expired { owner, age } if owner == "old" && age >= Duration::from_millis(450)
    ));
    assert!(matches!(
        store
            .try_lead(&key, "new", Duration::from_secs(30))
            .await
            .unwrap(),
        Lead::Acquired { takeover: true }
    ));
    assert!(!store.renew(&key, "old", short).await.unwrap());
    store
        .publish(&key, "old", Completion::TooLarge, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        matches!(store.poll(&key).await.unwrap(), KeyState::Pending { owner, .. } if owner == "new")
    );
    store.release(&key, "new").await.unwrap();
}

/// Renewing extends only the owner's lease; release and publish by anyone else change nothing.
async fn only_the_owner_renews_publishes_or_releases(backend: Backend) {
    let (one, two) = (backend.handle().await, backend.handle().await);
    let key = RequestKey::from_parts([5; 32], "GET http://h/owner");
    let lease = Duration::from_millis(300);
    assert!(matches!(
        one.try_lead(&key, "me", lease).await.unwrap(),
        Lead::Acquired { .. }
    ));
    assert!(!two.renew(&key, "intruder", lease).await.unwrap());
    two.release(&key, "intruder").await.unwrap();
    two.publish(&key, "intruder", Completion::TooLarge, lease)
        .await
        .unwrap();
    assert!(matches!(
        two.poll(&key).await.unwrap(),
        KeyState::Pending { .. }
    ));
    // Renewed past its first deadline, the lease still holds.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(one.renew(&key, "me", lease).await.unwrap());
    }
    assert!(matches!(
        two.poll(&key).await.unwrap(),
        KeyState::Pending { .. }
    ));
    one.release(&key, "me").await.unwrap();
    assert!(matches!(two.poll(&key).await.unwrap(), KeyState::Vacant));
}

/// Status, headers (repeated ones too) and a binary body come back whole from another handle,
/// and a waiting follower on that handle wakes with them.
async fn a_published_response_is_read_whole(backend: Backend) {
    let (one, two) = (backend.handle().await, backend.handle().await);
    let key = RequestKey::from_parts([6; 32], "GET http://h/whole");
    one.try_lead(&key, "me", Duration::from_secs(30))
        .await
        .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.append("set-cookie", "a=1".parse().unwrap());
    headers.append("set-cookie", "b=2".parse().unwrap());
    headers.insert("content-type", "application/octet-stream".parse().unwrap());
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let response = SharedResponse::new(
        http::StatusCode::CREATED,
        headers.clone(),
        body.clone().into(),
    );
    let waiter = {
        let (two, key) = (two.clone(), key.clone());
        tokio::spawn(async move {
            two.wait(&key, Instant::now() + Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    one.publish(
        &key,
        "me",
        Completion::Response(Arc::new(response)),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the waiter woke")
        .unwrap()
        .unwrap();
    let KeyState::Completed {
        completion: Completion::Response(read),
        ..
    } = woke
    else {
        panic!("expected a response, found {woke:?}");
    };
    assert_eq!(read.status, http::StatusCode::CREATED);
    assert_eq!(read.headers, headers);
    assert_eq!(read.body, body);
    assert_eq!(two.poll(&key).await.unwrap().status(), Some(201));
    assert!(matches!(
        two.try_lead(&key, "late", Duration::from_secs(30))
            .await
            .unwrap(),
        Lead::Completed(Completion::Response(_))
    ));
}

/// Two layers over two handles behave like two processes: a published result is served to a
/// late follower within result_ttl, and never after. Regression test for DESIGN.md §6 defect 8
/// (completed jobs kept forever and served as a second, stale cache).
async fn a_published_result_is_not_served_after_result_ttl(backend: Backend) {
    let server = TestServer::start().await;
    let (one, two) = (backend.handle().await, backend.handle().await);
    let ttl = Duration::from_millis(1500);
    let client = |store: &Arc<dyn DedupeStore>| {
        ServiceBuilder::new()
            .layer(DedupeLayer::new(store.clone()).result_ttl(ttl))
            .service(HttpClient::new(reqwest::Client::new()))
    };
    let (a, b) = (client(&one), client(&two));
    let url = server.url("/x");
    let key = key_of(&url);

    let first = a.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&first), DedupeRole::Leader);
    let first = first.into_body().collect().await.unwrap().to_bytes();
    match two.poll(&key).await.unwrap() {
        state @ KeyState::Completed { expires_in, .. } => {
            assert_eq!(state.status(), Some(200));
            assert!(expires_in <= ttl);
        }
        other => panic!("expected a kept result, found {other:?}"),
    }
    let late = b.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&late), DedupeRole::CrossProcessFollower);
    assert_eq!(late.into_body().collect().await.unwrap().to_bytes(), first);
    assert_eq!(server.hits(), 1);

    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(matches!(two.poll(&key).await.unwrap(), KeyState::Vacant));
    let after = b.clone().oneshot(get(&url)).await.unwrap();
    assert_eq!(role(&after), DedupeRole::Leader);
    assert_eq!(server.hits(), 2);
}

/// Over two handles: a leader's error reaches the follower on the other handle as its message,
/// and a body over the limit sends that follower upstream on its own.
async fn a_leaders_error_and_an_oversized_body_reach_followers_through_the_store(backend: Backend) {
    let (one, two) = (backend.handle().await, backend.handle().await);
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |req: http::Request<reqwest::Body>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if req.uri().path() == "/fails" {
                    return Err::<http::Response<reqwest::Body>, BoxError>(
                        "upstream said no".into(),
                    );
                }
                Ok(http::Response::new(reqwest::Body::from(vec![b'x'; 5000])))
            }
        })
    };
    let client = |store: &Arc<dyn DedupeStore>| {
        ServiceBuilder::new()
            .layer(DedupeLayer::new(store.clone()).max_body(1000))
            .service(upstream.clone())
    };
    let (a, b) = (client(&one), client(&two));

    let leader = tokio::spawn(a.clone().oneshot(get("http://h/fails")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let error = b.clone().oneshot(get("http://h/fails")).await.unwrap_err();
    let error = error.downcast_ref::<DedupeError>().unwrap();
    assert!(
        matches!(error, DedupeError::RemoteUpstream { message } if message.contains("upstream said no")),
        "{error}"
    );
    assert_eq!(
        leader
            .await
            .unwrap()
            .unwrap_err()
            .downcast_ref::<DedupeError>()
            .unwrap()
            .code(),
        "dedupe_upstream"
    );
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

    let leader = tokio::spawn(a.clone().oneshot(get("http://h/large")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let own = b.clone().oneshot(get("http://h/large")).await.unwrap();
    assert_eq!(
        Report::of(&own).unwrap().dedupe,
        Some(DedupeRole::Bypassed(BypassReason::TooLarge))
    );
    assert_eq!(
        own.into_body().collect().await.unwrap().to_bytes().len(),
        5000
    );
    let led = leader.await.unwrap().unwrap();
    assert_eq!(
        led.into_body().collect().await.unwrap().to_bytes().len(),
        5000
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A leader cancelled on one handle gives its lease back at once: the follower on the other
/// handle takes over long before the 30 s lease would have run out.
async fn a_cancelled_leader_releases_its_lease_for_other_processes(backend: Backend) {
    let (one, two) = (backend.handle().await, backend.handle().await);
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |_req: http::Request<reqwest::Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(http::Response::new(reqwest::Body::from(format!(
                    "answer {n}"
                ))))
            }
        })
    };
    let client = |store: &Arc<dyn DedupeStore>| {
        ServiceBuilder::new()
            .layer(DedupeLayer::new(store.clone()))
            .service(upstream.clone())
    };
    let (a, b) = (client(&one), client(&two));
    let leader = tokio::spawn(a.oneshot(get("http://h/x")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let follower = tokio::spawn(b.oneshot(get("http://h/x")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    leader.abort();
    let response = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower took over before the lease ran out")
        .unwrap()
        .unwrap();
    assert_eq!(role(&response), DedupeRole::Leader);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "answer 2"
    );
}

/// `cleanup` removes what a lapsed lease left (the next leader is then no takeover), and keeps
/// live leases and kept results.
async fn cleanup_removes_lapsed_leases_only(backend: Backend) {
    let store = backend.handle().await;
    let (lapsed, live, done) = (
        RequestKey::from_parts([7; 32], "GET http://h/lapsed"),
        RequestKey::from_parts([8; 32], "GET http://h/live"),
        RequestKey::from_parts([9; 32], "GET http://h/done"),
    );
    let long = Duration::from_secs(30);
    store
        .try_lead(&lapsed, "gone", Duration::from_millis(30))
        .await
        .unwrap();
    store.try_lead(&live, "me", long).await.unwrap();
    store.try_lead(&done, "me", long).await.unwrap();
    store
        .publish(&done, "me", Completion::TooLarge, long)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(store.cleanup().await.unwrap() >= 1);
    assert!(store.stats().await.unwrap().cleaned >= 1);
    assert!(matches!(
        store.poll(&lapsed).await.unwrap(),
        KeyState::Vacant
    ));
    assert!(matches!(
        store.poll(&live).await.unwrap(),
        KeyState::Pending { .. }
    ));
    assert!(matches!(
        store.poll(&done).await.unwrap(),
        KeyState::Completed {
            completion: Completion::TooLarge,
            ..
        }
    ));
    assert!(matches!(
        store.try_lead(&lapsed, "next", long).await.unwrap(),
        Lead::Acquired { takeover: false }
    ));
    store.release(&lapsed, "next").await.unwrap();
    store.release(&live, "me").await.unwrap();
}

/// With `result_ttl(0)`, a follower already waiting on another handle (another process) still
/// gets the leader's result: a published result is kept at least 1 s. Before, it was gone at
/// once, the follower found a vacant key and led a second upstream call. The result does not
/// outlive that floor by much.
async fn followers_already_waiting_get_a_result_published_with_a_zero_result_ttl(backend: Backend) {
    let (one, two) = (backend.handle().await, backend.handle().await);
    let calls = Arc::new(AtomicUsize::new(0));
    let client = |store: &Arc<dyn DedupeStore>| {
        let calls = calls.clone();
        ServiceBuilder::new()
            .layer(DedupeLayer::new(store.clone()).result_ttl(Duration::ZERO))
            .service(tower::service_fn(
                move |_req: http::Request<reqwest::Body>| {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, BoxError>(http::Response::new(reqwest::Body::from(format!(
                            "answer {n}"
                        ))))
                    }
                },
            ))
    };
    let (a, b) = (client(&one), client(&two));
    let url = "http://h/zero-ttl";
    let leader = tokio::spawn(a.oneshot(get(url)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let follower = b.oneshot(get(url)).await.unwrap();
    let leader = leader.await.unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{:?}", role(&follower));
    assert_eq!(role(&leader), DedupeRole::Leader);
    assert_eq!(role(&follower), DedupeRole::CrossProcessFollower);
    let body = follower.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"answer 1");

    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(matches!(
        two.poll(&key_of(url)).await.unwrap(),
        KeyState::Vacant
    ));
}

/// `stats` counts what the store holds for every handle (process): live leases as `pending`,
/// kept results as `completed`, lapsed leases as `expired` until cleanup removes them, which
/// the cleaning handle counts as `cleaned`.
async fn stats_count_pending_completed_and_expired_entries(backend: Backend) {
    let (one, two) = (backend.handle().await, backend.handle().await);
    assert_eq!(two.stats().await.unwrap(), DedupeStoreStats::default());
    let long = Duration::from_secs(30);
    let (live, done, lapsed) = (
        RequestKey::from_parts([21; 32], "GET http://h/stats-live"),
        RequestKey::from_parts([22; 32], "GET http://h/stats-done"),
        RequestKey::from_parts([23; 32], "GET http://h/stats-lapsed"),
    );
    one.try_lead(&live, "me", long).await.unwrap();
    one.try_lead(&done, "me", long).await.unwrap();
    one.publish(&done, "me", Completion::TooLarge, long)
        .await
        .unwrap();
    let stats = two.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.completed, stats.expired),
        (1, 1, 0),
        "{stats:?}"
    );

    one.try_lead(&lapsed, "gone", Duration::from_millis(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let stats = two.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.completed, stats.expired),
        (1, 1, 1),
        "{stats:?}"
    );

    let removed = two.cleanup().await.unwrap();
    assert!(removed >= 1);
    let stats = two.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.completed, stats.expired),
        (1, 1, 0),
        "{stats:?}"
    );
    assert_eq!(stats.cleaned, removed);

    one.release(&live, "me").await.unwrap();
    assert_eq!(two.stats().await.unwrap().pending, 0);
}

/// Two layers over one store (two processes) count what each did, apart; `stats().store` is
/// the one store both see: the lease while the leader runs, then its kept result.
async fn two_layers_over_one_store_count_apart_and_see_the_same_store(backend: Backend) {
    let (one, two) = (backend.handle().await, backend.handle().await);
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let upstream = {
        let calls = calls.clone();
        tower::service_fn(move |_req: http::Request<reqwest::Body>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, BoxError>(http::Response::new(reqwest::Body::from("shared")))
            }
        })
    };
    let kept = Duration::from_secs(60);
    let (first, second) = (
        DedupeLayer::new(one).result_ttl(kept),
        DedupeLayer::new(two).result_ttl(kept),
    );
    let client = |layer: &DedupeLayer| {
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(upstream.clone())
    };
    let leader = tokio::spawn(client(&first).oneshot(get("http://h/stats")));
    let deadline = Instant::now() + Duration::from_secs(10);
    while second.stats().await.store.pending == 0 {
        assert!(Instant::now() < deadline, "the leader never took its lease");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(first.stats().await.store.pending, 1);
    let follower = tokio::spawn(client(&second).oneshot(get("http://h/stats")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    open.send_replace(true);
    let follower = follower.await.unwrap().unwrap();
    assert_eq!(role(&follower), DedupeRole::CrossProcessFollower);
    let led = leader.await.unwrap().unwrap();
    assert_eq!(role(&led), DedupeRole::Leader);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (a, b) = (first.stats().await, second.stats().await);
    assert_eq!((a.leaders, a.cross_process_joins), (1, 0), "{a:?}");
    assert_eq!((b.leaders, b.cross_process_joins), (0, 1), "{b:?}");
    assert_eq!((a.store_errors, b.store_errors), (0, 0));
    assert_eq!((a.store.pending, a.store.completed), (0, 1), "{a:?}");
    assert_eq!((b.store.pending, b.store.completed), (0, 1), "{b:?}");
}

/// A lease and a result end by the store's clock, which `advance` moves (`key` is the test's
/// own): at 29 s a 30 s lease holds, at 31 s it is expired and the next caller leads; a result
/// kept 10 s is there at 9 s and gone at 10 s. Ages and expiries are read on that clock.
pub(crate) async fn expires_by_its_clock<F, Fut>(
    store: &dyn DedupeStore,
    key: &RequestKey,
    advance: F,
) where
    F: Fn(Duration) -> Fut,
    Fut: Future<Output = ()>,
{
    let lease = Duration::from_secs(30);
    assert!(matches!(
        store.try_lead(key, "old", lease).await.unwrap(),
        Lead::Acquired { takeover: false }
    ));
    advance(Duration::from_secs(29)).await;
    let state = store.poll(key).await.unwrap();
    assert!(
        matches!(&state, KeyState::Pending { owner, age } if owner == "old" && *age == Duration::from_secs(29)),
        "{state:?}"
    );
    advance(Duration::from_secs(2)).await;
    let state = store.poll(key).await.unwrap();
    assert!(
        matches!(&state, KeyState::Expired { owner, age } if owner == "old" && *age == Duration::from_secs(31)),
        "{state:?}"
    );
    // A takeover, or a fresh lead when a sweep removed the lapsed lease first.
    assert!(matches!(
        store.try_lead(key, "new", lease).await.unwrap(),
        Lead::Acquired { .. }
    ));
    store
        .publish(key, "new", Completion::TooLarge, Duration::from_secs(10))
        .await
        .unwrap();
    advance(Duration::from_secs(9)).await;
    let state = store.poll(key).await.unwrap();
    assert!(
        matches!(
            &state,
            KeyState::Completed { completion: Completion::TooLarge, age, expires_in }
                if *age == Duration::from_secs(9) && *expires_in == Duration::from_secs(1)
        ),
        "{state:?}"
    );
    assert!(matches!(
        store.try_lead(key, "late", lease).await.unwrap(),
        Lead::Completed(Completion::TooLarge)
    ));
    advance(Duration::from_secs(1)).await;
    let state = store.poll(key).await.unwrap();
    assert!(matches!(state, KeyState::Vacant), "{state:?}");
    assert!(matches!(
        store.try_lead(key, "next", lease).await.unwrap(),
        Lead::Acquired { takeover: false }
    ));
    store.release(key, "next").await.unwrap();
}

/// The memory store on tokio's paused clock: minutes of leases and results in no time.
#[tokio::test(start_paused = true)]
async fn the_memory_store_expires_by_its_clock() {
    let store = MemoryDedupeStore::with_clock(TokioClock::new());
    let key = RequestKey::from_parts([10; 32], "GET http://h/clock");
    expires_by_its_clock(&store, &key, tokio::time::advance).await;
}
