//! One deterministic test per panic found with hostile numbers (issue 12, item 4), on memory and
//! SQLite stores. Before the fix each of them panicked with "overflow when adding duration to
//! instant" (or "overflow when adding durations").

use std::time::Duration;

use courteous::CacheLayer;

use courteous::cache::{CacheStatus, CacheTtl};

use crate::server::{Reply, ScriptedServer};
use courteous::dedupe::OnTimeout;

use crate::{AheadClock, BACKENDS, Backend, Got, panics, stack_with};

/// How much later (by the cache layer's clock) the second request comes.
const GAP: Duration = Duration::from_secs(5);
const U64_MAX: &str = "18446744073709551615";
const I64_MAX_PLUS_1: &str = "9223372036854775808";
/// More digits than any integer type holds.
const HUGE: &str = "99999999999999999999999999999";

/// Two GETs of one URL through a fresh stack on `backend` whose server answers `replies` in
/// order; both must succeed, with no panic anywhere (spawned tasks included).
async fn twice(
    backend: Backend,
    configure: impl FnOnce(CacheLayer) -> CacheLayer,
    replies: Vec<Reply>,
) -> (Got, Got) {
    twice_with(backend, configure, |d| d, replies).await
}

async fn twice_with(
    backend: Backend,
    configure: impl FnOnce(CacheLayer) -> CacheLayer,
    configure_dedupe: impl FnOnce(courteous::DedupeLayer) -> courteous::DedupeLayer,
    replies: Vec<Reply>,
) -> (Got, Got) {
    let before = panics();
    let server = ScriptedServer::start().await;
    // The cache layer's clock, moved forward between the two requests: an age overflow needs a
    // whole second to carry.
    let offset = AheadClock::default();
    let clock = offset.clone();
    let configure = move |c: CacheLayer| configure(c).clock(clock);
    let stack = stack_with(backend, configure, configure_dedupe).await;
    server.script("/api/item/1", replies);
    let url = server.url("/api/item/1");
    let first = crate::send(&stack.client, &url, &[]).await.unwrap();
    offset.set_ahead(GAP.as_secs());
    let second = crate::send(&stack.client, &url, &[]).await.unwrap();
    // Give a background refresh (stale-while-revalidate) the time to run and, before the fix,
    // to panic.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(panics(), before, "{backend:?}: a panic happened");
    for got in [&first, &second] {
        assert_eq!(got.status, 200, "{backend:?}");
        // What the cache serves carries its own `Age`, a number (a miss passes the server's on).
        if got.cache != Some(CacheStatus::Miss) {
            let age = got.headers.get("age").expect("Age").to_str().unwrap();
            assert!(age.parse::<u64>().is_ok(), "{backend:?}: Age {age}");
        }
    }
    (first, second)
}

fn cache_control(value: &str) -> Vec<Reply> {
    vec![Reply::new(200).header("Cache-Control", value)]
}

#[tokio::test]
async fn stale_if_error_at_u64_max_does_not_panic() {
    for backend in BACKENDS {
        let cc = format!("max-age=60, stale-if-error={U64_MAX}");
        let (first, second) = twice(backend, |c| c, cache_control(&cc)).await;
        assert_eq!(first.cache, Some(CacheStatus::Miss));
        assert_eq!(second.cache, Some(CacheStatus::Hit), "{backend:?}");
    }
}

#[tokio::test]
async fn stale_while_revalidate_at_u64_max_does_not_panic() {
    for backend in BACKENDS {
        for cc in [
            format!("max-age=60, stale-while-revalidate={U64_MAX}"),
            // Stale at once: the second request is served stale and refreshed in the background.
            format!("max-age=0, stale-while-revalidate={U64_MAX}"),
        ] {
            let (_, second) = twice(backend, |c| c, cache_control(&cc)).await;
            assert!(second.cache.is_some(), "{backend:?} {cc}");
        }
    }
}

#[tokio::test]
async fn max_age_at_2_63_and_above_saturates() {
    for backend in BACKENDS {
        for value in [I64_MAX_PLUS_1, U64_MAX, HUGE] {
            let (_, second) =
                twice(backend, |c| c, cache_control(&format!("max-age={value}"))).await;
            // RFC 9111 section 1.2.2: a delta-seconds too large to represent counts as 2^31 s, so
            // the response is fresh (not "0", stale at once, which the value failing to parse
            // meant before).
            assert_eq!(second.cache, Some(CacheStatus::Hit), "{backend:?} {value}");
        }
    }
}

#[tokio::test]
async fn s_maxage_at_2_63_and_above_saturates_in_shared_mode() {
    for backend in BACKENDS {
        for value in [I64_MAX_PLUS_1, U64_MAX, HUGE] {
            let cc = format!("public, s-maxage={value}, max-age=0");
            let (_, second) = twice(backend, |c| c.shared(true), cache_control(&cc)).await;
            assert_eq!(second.cache, Some(CacheStatus::Hit), "{backend:?} {value}");
        }
    }
}

#[tokio::test]
async fn huge_age_with_an_etag_does_not_panic_on_the_second_request() {
    for backend in BACKENDS {
        for age in [U64_MAX, I64_MAX_PLUS_1, HUGE] {
            let replies = vec![
                Reply::new(200)
                    .header("Cache-Control", "max-age=60")
                    .header("ETag", "\"v1\"")
                    .header("Age", age),
                Reply::new(304).header("ETag", "\"v1\"").header("Age", age),
            ];
            // Without dedupe of GETs: its completed result (kept at least 1 s) would answer the
            // second request instead of the revalidation this test wants to see.
            let (_, second) = twice_with(backend, |c| c, |d| d.methods([]), replies).await;
            // Older than its max-age on arrival: stored for its validator, revalidated next time.
            assert_eq!(
                second.cache,
                Some(CacheStatus::Revalidated),
                "{backend:?} {age}"
            );
        }
    }
}

#[tokio::test]
async fn dates_at_the_ends_of_time_do_not_panic() {
    const FIRST: &str = "Mon, 01 Jan 1900 00:00:00 GMT";
    const LAST: &str = "Fri, 31 Dec 9999 23:59:59 GMT";
    for backend in BACKENDS {
        // (Date, Expires, Last-Modified, fresh for more than the gap between the requests).
        for (date, expires, modified, fresh) in [
            (Some(FIRST), Some(LAST), None, true),
            (Some(LAST), Some(FIRST), None, false),
            (None, Some(LAST), None, true),
            // Heuristic freshness: a tenth of 8,100 years, and of 126 years.
            (Some(LAST), None, Some(FIRST), true),
            (None, None, Some(FIRST), true),
            (Some(FIRST), None, Some(LAST), false),
        ] {
            let mut reply = Reply::new(200).header("ETag", "\"d\"");
            for (name, value) in [
                ("Date", date),
                ("Expires", expires),
                ("Last-Modified", modified),
            ] {
                if let Some(value) = value {
                    reply = reply.header(name, value);
                }
            }
            let replies = vec![reply, Reply::new(304).header("ETag", "\"d\"")];
            let (_, second) = twice(backend, |c| c, replies).await;
            let hit = second.cache == Some(CacheStatus::Hit);
            assert_eq!(hit, fresh, "{backend:?} {date:?} {expires:?} {modified:?}");
        }
    }
}

#[tokio::test]
async fn configured_durations_at_the_maximum_saturate() {
    for backend in BACKENDS {
        for ttl in [
            CacheTtl::absolute(Duration::MAX),
            CacheTtl::sliding(Duration::MAX),
        ] {
            let configure = move |c: CacheLayer| {
                c.default_ttl(ttl)
                    .keep_stale(Duration::MAX)
                    .stale_if_error(Duration::MAX)
                    .cleanup_interval(Some(Duration::MAX))
            };
            let replies = vec![Reply::new(200).header("ETag", "\"c\"")];
            let (_, second) = twice(backend, configure, replies).await;
            assert_eq!(second.cache, Some(CacheStatus::Hit), "{backend:?} {ttl:?}");
        }
    }
}

#[tokio::test]
async fn configured_dedupe_durations_at_the_maximum_saturate() {
    for backend in BACKENDS {
        let configure = |d: courteous::DedupeLayer| {
            d.lease_timeout(Duration::MAX)
                .result_ttl(Duration::MAX)
                .follower_timeout(Duration::MAX, OnTimeout::Fail)
        };
        let replies = vec![Reply::new(200)];
        let (first, second) = twice_with(backend, |c| c, configure, replies).await;
        assert_eq!(first.cache, Some(CacheStatus::Miss), "{backend:?}");
        assert_eq!(second.cache, Some(CacheStatus::Miss), "{backend:?}");
    }
}

#[tokio::test]
async fn directive_names_count_in_any_case() {
    for backend in BACKENDS {
        for cc in [
            "MAX-AGE=60",
            "Max-Age=60, Public",
            "s-MaxAge=60, max-AGE=60",
        ] {
            let (_, second) = twice(backend, |c| c, cache_control(cc)).await;
            // `http-cache-semantics` looks names up as written: it saw no max-age here, so
            // the response (with no validator) was not stored at all.
            assert_eq!(second.cache, Some(CacheStatus::Hit), "{backend:?} {cc}");
        }
    }
}

#[tokio::test]
async fn a_zero_cleanup_interval_does_not_kill_the_cleanup_task() {
    for backend in BACKENDS {
        // `tokio::time::interval` asserts a non-zero period: the cleanup task panicked.
        let configure = |c: CacheLayer| c.cleanup_interval(Some(Duration::ZERO));
        let replies = vec![Reply::new(200).header("Cache-Control", "max-age=60")];
        let (_, second) = twice(backend, configure, replies).await;
        assert_eq!(second.cache, Some(CacheStatus::Hit), "{backend:?}");
    }
}
