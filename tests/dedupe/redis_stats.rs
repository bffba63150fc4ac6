//! `stats` on a Redis database shared with others: a prefix holding glob characters, a
//! neighbour whose keys the unescaped pattern would match, and many unrelated keys.

use std::time::Duration;

use courteous::RequestKey;
use courteous::dedupe::{Completion, DedupeStore};
use courteous::store::redis::RedisStore;

use crate::support::redis::{shared_url, unique_prefix};

/// Writes `n` unrelated string keys named `{prefix}:{i}`, each with a TTL.
async fn fill(conn: &mut ::redis::aio::MultiplexedConnection, prefix: &str, n: usize) {
    for batch in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let mut pipe = ::redis::pipe();
        for i in batch {
            pipe.cmd("SET")
                .arg(format!("{prefix}:{i}"))
                .arg("x")
                .arg("EX")
                .arg(600)
                .ignore();
        }
        let () = pipe.query_async(conn).await.unwrap();
    }
}

/// Deletes every key under `base` (no glob characters in it).
async fn forget(conn: &mut ::redis::aio::MultiplexedConnection, base: &str) {
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{base}:*"))
        .query_async(conn)
        .await
        .unwrap();
    for chunk in keys.chunks(5_000) {
        let _: u64 = ::redis::cmd("DEL")
            .arg(chunk)
            .query_async(conn)
            .await
            .unwrap();
    }
}

/// A store under `a*?[b]` counts its own keys only: not those of the store under `aXYb`
/// (which the pattern would match unescaped), nor 20,000 unrelated keys, nor a key under its
/// own `dedupe:{` that is none of a lease, a meta hash or a result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_only_the_stores_keys_under_a_glob_prefix() {
    let Some(url) = shared_url().await else {
        return;
    };
    let base = unique_prefix("dedupe-stats-glob");
    let connect = |prefix: String| {
        RedisStore::builder(&url)
            .prefix(prefix)
            .operation_timeout(Duration::from_secs(5))
            .connect()
            .unwrap()
            .dedupe()
    };
    let (globbed, neighbour) = (
        connect(format!("{base}:a*?[b]")),
        connect(format!("{base}:aXYb")),
    );
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    fill(&mut conn, &format!("{base}:aXYb:dedupe:{{junk}}"), 20_000).await;
    fill(&mut conn, &format!("{base}:unrelated"), 100).await;
    let _: () = ::redis::cmd("SET")
        .arg(format!("{base}:a*?[b]:dedupe:{{ff}}:other"))
        .arg("x")
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .unwrap();

    let long = Duration::from_secs(60);
    let key = |n: u8, path: &str| RequestKey::from_parts([n; 32], format!("GET http://h/{path}"));
    globbed.try_lead(&key(1, "live"), "me", long).await.unwrap();
    globbed.try_lead(&key(2, "done"), "me", long).await.unwrap();
    globbed
        .publish(&key(2, "done"), "me", Completion::TooLarge, long)
        .await
        .unwrap();
    for n in 3..6 {
        neighbour
            .try_lead(&key(n, "n"), "them", long)
            .await
            .unwrap();
    }

    let stats = globbed.stats().await.unwrap();
    let neighbours = neighbour.stats().await.unwrap();
    forget(&mut conn, &base).await;
    assert_eq!(
        (stats.pending, stats.completed, stats.expired),
        (1, 1, 0),
        "{stats:?}"
    );
    assert_eq!(
        (neighbours.pending, neighbours.completed, neighbours.expired),
        (3, 0, 0),
        "{neighbours:?}"
    );
}
