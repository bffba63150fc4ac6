//! `stats` on a Redis database shared with others: a prefix holding glob characters, a
//! neighbour whose keys the unescaped pattern would match, and many unrelated keys.

use std::sync::Arc;
use std::time::Duration;

use courteous::rate_limit::{
    AdaptiveConfig, AdmissionRequest, Clock, Decision, Limit, RateLimitStore, RedisRateLimitStore,
    SystemClock,
};
use courteous::store::redis::RedisStore;
use courteous::{Priority, Resource};

use crate::support::redis::{shared_url, unique_prefix};

async fn admit(store: &RedisRateLimitStore, resource: &str) {
    let request = AdmissionRequest::new(
        Resource::new(resource).unwrap(),
        Priority::User,
        vec![Limit::per_minute(100)].into(),
        Arc::new(AdaptiveConfig::default()),
        SystemClock.now(),
    );
    assert!(matches!(
        store.acquire(request).await.unwrap(),
        Decision::Admitted { .. }
    ));
}

/// A store under `a*?[b]` counts its own resources only: not those of the store under `aXYb`
/// (which the pattern would match unescaped), nor 20,000 unrelated keys; resource names with
/// glob characters and braces are counted once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_only_the_stores_resources_under_a_glob_prefix() {
    let Some(url) = shared_url().await else {
        return;
    };
    let base = unique_prefix("rate-limit-stats-glob");
    let connect = |prefix: String| {
        RedisStore::builder(&url)
            .prefix(prefix)
            .operation_timeout(Duration::from_secs(5))
            .connect()
            .unwrap()
            .rate_limits()
    };
    let (globbed, neighbour) = (
        connect(format!("{base}:a*?[b]")),
        connect(format!("{base}:aXYb")),
    );
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for batch in (0..20_000).collect::<Vec<u32>>().chunks(5_000) {
        let mut pipe = ::redis::pipe();
        for i in batch {
            pipe.cmd("SET")
                .arg(format!("{base}:aXYb:rl:{{junk{i}}}:other"))
                .arg("x")
                .arg("EX")
                .arg(600)
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    }

    for resource in ["items", "a*b", "x}:state", "{y}"] {
        admit(&globbed, resource).await;
    }
    for resource in ["n1", "n2"] {
        admit(&neighbour, resource).await;
    }
    let stats = globbed.stats().await.unwrap();
    let neighbours = neighbour.stats().await.unwrap();

    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{base}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for chunk in keys.chunks(5_000) {
        let _: u64 = ::redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!((stats.resources, stats.admissions), (4, 4), "{stats:?}");
    assert_eq!(
        (neighbours.resources, neighbours.admissions),
        (2, 2),
        "{neighbours:?}"
    );
}
