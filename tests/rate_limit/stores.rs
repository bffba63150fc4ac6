//! The store contract, one suite for every backend: each behaviour is an `async fn(Backend)` run
//! for the memory, SQLite and Redis stores (`<behaviour>::memory`, `::sqlite`, `::redis`). Two
//! handles on one store behave like two processes.
//!
//! Tests that inject time take Redis handles that stamp with the caller's clock
//! ([`Time::Injected`]); the others, and the Redis-only tests in `redis`, use the server's.

use std::sync::Arc;
use std::time::Duration;

use courteous::rate_limit::{
    AdaptiveConfig, AdmissionRequest, Clock, Decision, Limit, Refusal, ServerFeedback, SystemClock,
    Timestamp,
};
use courteous::{Priority, Resource};
use futures_util::future::join_all;

use crate::backend::{Backend, Time, every_backend};

every_backend!(
    concurrent_acquires_from_two_handles_never_exceed_the_limit,
    refusals_and_retry_at_follow_every_window,
    background_is_held_to_its_share_and_users_are_not,
    status_reports_usage_reset_and_split,
    server_feedback_blocks_and_caps_every_handle,
    a_server_budget_counts_admissions_older_than_the_longest_window,
    extreme_feedback_and_durations_are_neither_errors_nor_due_at_once,
    store_stats_count_admissions_in_flight_and_blocks_for_every_handle,
);

const T: u64 = 1_700_000_000_000;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(T + ms)
}

fn request(
    resource: &Resource,
    priority: Priority,
    limits: &Arc<[Limit]>,
    now: Timestamp,
) -> AdmissionRequest {
    AdmissionRequest::new(
        resource.clone(),
        priority,
        limits.clone(),
        Arc::new(AdaptiveConfig::default()),
        now,
    )
}

fn admitted(remaining: u32) -> Decision {
    Decision::Admitted {
        remaining,
        at: Timestamp::default(),
        in_flight: None,
    }
}

/// A decision without the time it was made (what the steps below compare).
fn plain(decision: Decision) -> Decision {
    match decision {
        Decision::Admitted { remaining, .. } => admitted(remaining),
        other => other,
    }
}

fn refused(retry_at: Timestamp, reason: Refusal) -> Decision {
    Decision::Refused { retry_at, reason }
}

/// 2 handles × 50 concurrent acquires on a limit of 20: exactly 20 admitted. Regression test for
/// DESIGN.md §6 defect 4 (check-then-record let concurrent callers overshoot).
async fn concurrent_acquires_from_two_handles_never_exceed_the_limit(backend: Backend) {
    let (one, two) = (
        backend.handle(Time::Real).await,
        backend.handle(Time::Real).await,
    );
    let resource = Resource::new("race").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::per_minute(20)].into();
    let attempts = (0..100).map(|i| {
        let store = if i % 2 == 0 {
            one.store.clone()
        } else {
            two.store.clone()
        };
        let request = request(&resource, Priority::User, &limits, SystemClock.now());
        tokio::spawn(async move {
            (
                request.clock.now(),
                plain(store.acquire(request).await.unwrap()),
            )
        })
    });
    let decisions: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(|d| d.unwrap())
        .collect();
    let admitted = decisions
        .iter()
        .filter(|(_, d)| matches!(d, Decision::Admitted { .. }))
        .count();
    assert_eq!(admitted, 20, "{decisions:?}");
    for (now, decision) in &decisions {
        if let Decision::Refused { retry_at, reason } = decision {
            assert_eq!(*reason, Refusal::Limit);
            // The oldest admission leaves the minute's window about a minute from now.
            let wait = retry_at.saturating_since(*now);
            assert!(
                wait > Duration::from_secs(55) && wait <= Duration::from_secs(61),
                "{wait:?}"
            );
        }
    }
    // Both handles ("processes") see what the store holds: the 20 admissions, nothing more.
    let stats = one.store.stats().await.unwrap();
    assert_eq!(two.store.stats().await.unwrap(), stats);
    assert_eq!(
        (
            stats.resources,
            stats.admissions,
            stats.in_flight,
            stats.blocked
        ),
        (1, 20, 0, 0)
    );
    one.close().await;
    two.close().await;
}

/// Two limits at once, exact `retry_at`: the later of the windows that are full.
async fn refusals_and_retry_at_follow_every_window(backend: Backend) {
    let (one, two) = (
        backend.handle(Time::Injected).await,
        backend.handle(Time::Injected).await,
    );
    let r = Resource::new("windows").unwrap();
    let limits: Arc<[Limit]> = vec![
        Limit::new(3, Duration::from_millis(1000)),
        Limit::new(5, Duration::from_secs(10)),
    ]
    .into();
    let user = |ms| request(&r, Priority::User, &limits, at(ms));
    let steps = [
        (0, admitted(2)),
        (100, admitted(1)),
        (200, admitted(0)),
        // The second: the oldest admission (at 0) leaves the window at 1000 + 1.
        (300, refused(at(1001), Refusal::Limit)),
        (1001, admitted(0)),
        (1100, admitted(0)),
        // Both windows are full: the 1 s one frees at 200 + 1001, the 10 s one at 10_001.
        (1150, refused(at(10_001), Refusal::Limit)),
    ];
    for (i, (ms, expected)) in steps.into_iter().enumerate() {
        // Alternate handles: the other "process" sees every admission.
        let store = if i % 2 == 0 { &one.store } else { &two.store };
        let decision = plain(store.acquire(user(ms)).await.unwrap());
        assert_eq!(decision, expected, "at +{ms} ms");
    }
    one.close().await;
    two.close().await;
}

/// Background takes its share (the limit less the user reserve), then is refused with the time
/// its oldest admission leaves; a user request still goes through.
async fn background_is_held_to_its_share_and_users_are_not(backend: Backend) {
    let handle = backend.handle(Time::Injected).await;
    let r = Resource::new("share").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::new(10, Duration::from_secs(10))].into();
    // No user has been seen: users keep the minimum reserve (5 of 10).
    for i in 0..5 {
        let decision = plain(
            handle
                .store
                .acquire(request(&r, Priority::Background, &limits, at(i)))
                .await
                .unwrap(),
        );
        assert_eq!(decision, admitted(9 - i as u32), "background #{i}");
    }
    let decision = plain(
        handle
            .store
            .acquire(request(&r, Priority::Background, &limits, at(5)))
            .await
            .unwrap(),
    );
    assert_eq!(decision, refused(at(10_001), Refusal::BackgroundShare));
    let decision = plain(
        handle
            .store
            .acquire(request(&r, Priority::User, &limits, at(6)))
            .await
            .unwrap(),
    );
    assert_eq!(decision, admitted(4));
    // The refusal recorded nothing.
    let stats = handle.store.stats().await.unwrap();
    assert_eq!((stats.resources, stats.admissions), (1, 6));
    handle.close().await;
}

async fn status_reports_usage_reset_and_split(backend: Backend) {
    let handle = backend.handle(Time::Injected).await;
    let r = Resource::new("status").unwrap();
    let limit = Limit::new(10, Duration::from_secs(10));
    let limits: Arc<[Limit]> = vec![limit].into();
    let adaptive = AdaptiveConfig::default();
    let empty = handle
        .store
        .status(&r, &limits, &adaptive, at(0))
        .await
        .unwrap();
    assert_eq!(empty.limits[0].used, 0);
    assert_eq!(empty.limits[0].remaining, 10);
    assert_eq!(empty.limits[0].reset, None);
    assert_eq!(empty.remaining, 10);
    for (ms, priority) in [
        (0, Priority::Background),
        (100, Priority::Background),
        (200, Priority::User),
    ] {
        let decision = plain(
            handle
                .store
                .acquire(request(&r, priority, &limits, at(ms)))
                .await
                .unwrap(),
        );
        assert!(
            matches!(decision, Decision::Admitted { .. }),
            "{decision:?}"
        );
    }
    let status = handle
        .store
        .status(&r, &limits, &adaptive, at(300))
        .await
        .unwrap();
    assert_eq!(status.resource, r);
    let one = &status.limits[0];
    assert_eq!((one.used, one.background_used, one.remaining), (3, 2, 7));
    assert_eq!(one.reset, Some(at(10_001)));
    assert_eq!(one.split.user_reserved + one.split.background_max, 10);
    assert!(one.split.user_reserved >= 5, "{:?}", one.split);
    assert_eq!(status.remaining, 7);
    assert_eq!(status.blocked_until, None);
    assert_eq!(status.server_remaining, None);
    assert!(!status.background_paused);
    assert!(status.reason.contains("3 of 10"), "{}", status.reason);
    // After the window, nothing is left in it.
    let later = handle
        .store
        .status(&r, &limits, &adaptive, at(10_201))
        .await
        .unwrap();
    assert_eq!((later.limits[0].used, later.remaining), (0, 10));
    handle.close().await;
}

/// `Retry-After` blocks every handle until then; `RateLimit-Remaining` caps what is sent until
/// the server's reset; both show in `status`.
async fn server_feedback_blocks_and_caps_every_handle(backend: Backend) {
    let (one, two) = (
        backend.handle(Time::Injected).await,
        backend.handle(Time::Injected).await,
    );
    let r = Resource::new("feedback").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::per_minute(100)].into();
    let adaptive = AdaptiveConfig::default();
    one.store
        .feedback(&r, ServerFeedback::Block { until: at(5000) }, at(0))
        .await
        .unwrap();
    // An earlier block does not shorten it.
    one.store
        .feedback(&r, ServerFeedback::Block { until: at(1000) }, at(0))
        .await
        .unwrap();
    let user = |ms| request(&r, Priority::User, &limits, at(ms));
    assert_eq!(
        plain(two.store.acquire(user(10)).await.unwrap()),
        refused(at(5000), Refusal::ServerBlocked)
    );
    let status = two
        .store
        .status(&r, &limits, &adaptive, at(10))
        .await
        .unwrap();
    assert_eq!(status.blocked_until, Some(at(5000)));
    assert_eq!(status.remaining, 0);
    assert!(
        status.reason.contains("server asked to wait"),
        "{}",
        status.reason
    );
    assert_eq!(
        plain(two.store.acquire(user(5000)).await.unwrap()),
        admitted(99)
    );

    // Two more until the server's reset at +8 s.
    one.store
        .feedback(
            &r,
            ServerFeedback::Remaining {
                remaining: 2,
                reset: at(8000),
            },
            at(5000),
        )
        .await
        .unwrap();
    assert_eq!(
        plain(two.store.acquire(user(5001)).await.unwrap()),
        admitted(1)
    );
    assert_eq!(
        plain(one.store.acquire(user(5002)).await.unwrap()),
        admitted(0)
    );
    assert_eq!(
        plain(two.store.acquire(user(5003)).await.unwrap()),
        refused(at(8000), Refusal::ServerBudget)
    );
    let status = one
        .store
        .status(&r, &limits, &adaptive, at(5003))
        .await
        .unwrap();
    assert_eq!(status.server_remaining, Some(0));
    assert_eq!(status.remaining, 0);
    // After the reset the limit alone applies: 3 admitted in the minute before this one.
    assert_eq!(
        plain(two.store.acquire(user(8000)).await.unwrap()),
        admitted(96)
    );
    one.close().await;
    two.close().await;
}

/// The server's `RateLimit-Remaining` budget counts every admission since it was observed, also
/// those older than the longest window (which a store may otherwise forget).
async fn a_server_budget_counts_admissions_older_than_the_longest_window(backend: Backend) {
    let handle = backend.handle(Time::Injected).await;
    let r = Resource::new("budget").unwrap();
    let limits: Arc<[Limit]> = vec![Limit::per_second(10)].into();
    let user = |ms| request(&r, Priority::User, &limits, at(ms));
    handle
        .store
        .feedback(
            &r,
            ServerFeedback::Remaining {
                remaining: 3,
                reset: at(60_000),
            },
            at(0),
        )
        .await
        .unwrap();
    for (ms, left) in [(1, 2), (2, 1), (3, 0)] {
        assert_eq!(
            plain(handle.store.acquire(user(ms)).await.unwrap()),
            admitted(left)
        );
    }
    // Long after the 1 s window, the budget is still spent.
    for ms in [6000, 6100, 30_000] {
        assert_eq!(
            plain(handle.store.acquire(user(ms)).await.unwrap()),
            refused(at(60_000), Refusal::ServerBudget),
            "at +{ms} ms"
        );
        // Let written-behind pruning happen, where a store has it.
        handle.flush().await;
    }
    assert_eq!(
        plain(handle.store.acquire(user(60_000)).await.unwrap()),
        admitted(9)
    );
    handle.close().await;
}

/// Absurd server feedback (a `Retry-After` of centuries, a reset read as µs since the epoch) and
/// durations of `Duration::MAX` (window, inactivity, monitoring) make no store fail or panic,
/// and every refusal asks to wait (a `retry_at` after `now`).
async fn extreme_feedback_and_durations_are_neither_errors_nor_due_at_once(backend: Backend) {
    let handle = backend.handle(Time::Injected).await;
    let store = &handle.store;
    let adaptive = Arc::new(
        AdaptiveConfig::default()
            .sustained_inactivity(Duration::MAX)
            .monitoring_window(Duration::MAX),
    );
    let limits: Arc<[Limit]> = vec![Limit::new(1, Duration::MAX)].into();
    let ask = |r: &Resource, priority, ms| {
        AdmissionRequest::new(
            r.clone(),
            priority,
            limits.clone(),
            adaptive.clone(),
            at(ms),
        )
    };
    let refused_later = |decision: Decision, ms: u64, expected: Refusal| match decision {
        Decision::Refused { retry_at, reason } => {
            assert_eq!(reason, expected);
            assert!(retry_at > at(ms), "{retry_at:?}");
        }
        other => panic!("{other:?}"),
    };

    let blocked = Resource::new("centuries").unwrap();
    store
        .feedback(
            &blocked,
            ServerFeedback::Block {
                until: at(0) + Duration::from_secs(9_999_999_999_999_999),
            },
            at(0),
        )
        .await
        .unwrap();
    refused_later(
        plain(
            store
                .acquire(ask(&blocked, Priority::User, 1))
                .await
                .unwrap(),
        ),
        1,
        Refusal::ServerBlocked,
    );

    let budget = Resource::new("micros").unwrap();
    store
        .feedback(
            &budget,
            ServerFeedback::Remaining {
                remaining: 5,
                reset: Timestamp::from_millis(u64::MAX),
            },
            at(0),
        )
        .await
        .unwrap();
    let first = plain(
        store
            .acquire(ask(&budget, Priority::User, 1))
            .await
            .unwrap(),
    );
    assert!(matches!(first, Decision::Admitted { .. }), "{first:?}");
    refused_later(
        plain(
            store
                .acquire(ask(&budget, Priority::User, 2))
                .await
                .unwrap(),
        ),
        2,
        Refusal::Limit,
    );
    let background = plain(
        store
            .acquire(ask(&budget, Priority::Background, 3))
            .await
            .unwrap(),
    );
    assert!(matches!(background, Decision::Refused { retry_at, .. } if retry_at > at(3)));
    let status = store
        .status(&budget, &limits, &adaptive, at(4))
        .await
        .unwrap();
    assert_eq!(status.remaining, 0);
    handle.close().await;
}

/// What the store holds, as every handle ("process") reads it: the resources, the admissions
/// kept, those in flight until they settle, and the resources a server blocks until it lifts.
async fn store_stats_count_admissions_in_flight_and_blocks_for_every_handle(backend: Backend) {
    let (one, two) = (
        backend.handle(Time::Real).await,
        backend.handle(Time::Real).await,
    );
    let limits: Arc<[Limit]> = vec![Limit::per_minute(10)].into();
    let (items, search) = (
        Resource::new("items").unwrap(),
        Resource::new("search").unwrap(),
    );
    let live = || {
        request(&items, Priority::User, &limits, SystemClock.now())
            .with_clock(Arc::new(SystemClock))
            .in_flight(Some(Duration::from_secs(60)))
    };
    let mut in_flight = Vec::new();
    for store in [&one.store, &two.store] {
        match store.acquire(live()).await.unwrap() {
            Decision::Admitted {
                in_flight: Some(admission),
                ..
            } => in_flight.push(admission),
            other => panic!("{other:?}"),
        }
    }
    for resource in [&items, &search] {
        let done = request(resource, Priority::Background, &limits, SystemClock.now())
            .with_clock(Arc::new(SystemClock));
        assert!(matches!(
            two.store.acquire(done).await.unwrap(),
            Decision::Admitted { .. }
        ));
    }
    let now = SystemClock.now();
    let until = now + Duration::from_secs(60);
    two.store
        .feedback(&items, ServerFeedback::Block { until }, now)
        .await
        .unwrap();
    let counts = |s: courteous::rate_limit::RateLimitStoreStats| {
        (s.resources, s.admissions, s.in_flight, s.blocked)
    };
    for store in [&one.store, &two.store] {
        assert_eq!(counts(store.stats().await.unwrap()), (2, 4, 2, 1));
    }
    // Settled by one process, lifted by the other: every handle sees both.
    one.store
        .settle(&in_flight[1], SystemClock.now() + Duration::from_millis(1))
        .await
        .unwrap();
    one.store.unblock(&items).await.unwrap();
    for store in [&one.store, &two.store] {
        assert_eq!(counts(store.stats().await.unwrap()), (2, 4, 1, 0));
    }
    one.close().await;
    two.close().await;
}
