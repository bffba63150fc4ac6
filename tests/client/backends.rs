//! The store options: memory, SQLite (by path and by handle), Redis (by URL and by handle).

use std::time::Duration;

use courteous::{CacheStatus, Courteous};

use crate::get;
use crate::support::{TestServer, temp_db};

fn hour() -> Duration {
    Duration::from_secs(3600)
}

#[tokio::test]
async fn sqlite_shares_the_cache_with_a_second_builder_on_the_same_file() {
    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let url = server.url("/api/issue/1/");
    let first = Courteous::new(reqwest::Client::new())
        .sqlite(&path)
        .default_ttl(hour())
        .layers()
        .await
        .unwrap();
    let (_, report) = get(&first.client(reqwest::Client::new()), &url).await;
    assert_eq!(report.cache, Some(CacheStatus::Miss));
    let sqlite = first.sqlite().expect("built on SQLite");
    assert_eq!(sqlite.path(), path.as_path());
    sqlite.close().await.unwrap();

    let second = Courteous::new(reqwest::Client::new())
        .sqlite(&path)
        .default_ttl(hour())
        .build()
        .await
        .unwrap();
    assert_eq!(get(&second, &url).await.1.cache, Some(CacheStatus::Hit));
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn sqlite_store_uses_the_handle_given() {
    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let store = courteous::store::sqlite::SqliteStore::open(&path)
        .await
        .unwrap();
    let url = server.url("/api/issue/1/");
    let client = Courteous::new(reqwest::Client::new())
        .sqlite_store(store.clone())
        .default_ttl(hour())
        .build()
        .await
        .unwrap();
    get(&client, &url).await;
    store.close().await.unwrap();
    // Closed through our handle: the entry was committed to the file.
    let reopened = Courteous::new(reqwest::Client::new())
        .sqlite(&path)
        .default_ttl(hour())
        .build()
        .await
        .unwrap();
    assert_eq!(get(&reopened, &url).await.1.cache, Some(CacheStatus::Hit));
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn memory_keeps_the_state_to_one_build() {
    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let url = server.url("/api/issue/1/");
    for _ in 0..2 {
        // `.memory()` replaces the SQLite file chosen before it.
        let client = Courteous::new(reqwest::Client::new())
            .sqlite(&path)
            .memory()
            .default_ttl(hour())
            .layers()
            .await
            .unwrap();
        assert!(client.sqlite().is_none());
        let client = client.client(reqwest::Client::new());
        assert_eq!(get(&client, &url).await.1.cache, Some(CacheStatus::Miss));
        assert_eq!(get(&client, &url).await.1.cache, Some(CacheStatus::Hit));
    }
    assert_eq!(server.hits(), 2);
    assert!(!path.exists(), "no SQLite file was opened");
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::support::redis::{shared_url, unique_prefix};
    use courteous::store::redis::RedisStore;

    #[tokio::test]
    async fn redis_shares_the_cache_between_builders() {
        let Some(url) = shared_url().await else {
            return;
        };
        let server = TestServer::start().await;
        // The server's port makes the keys unique to this run.
        let api = server.url("/api/issue/1/");
        for expected in [CacheStatus::Miss, CacheStatus::Hit] {
            let client = Courteous::new(reqwest::Client::new())
                .redis(&url)
                .default_ttl(hour())
                .build()
                .await
                .unwrap();
            assert_eq!(get(&client, &api).await.1.cache, Some(expected));
        }
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn redis_store_uses_the_handle_and_its_prefix() {
        let Some(url) = shared_url().await else {
            return;
        };
        let server = TestServer::start().await;
        let api = server.url("/api/issue/1/");
        let prefix = unique_prefix("client");
        for expected in [CacheStatus::Miss, CacheStatus::Hit] {
            let store = RedisStore::builder(&url).prefix(&prefix).connect().unwrap();
            let stack = Courteous::new(reqwest::Client::new())
                .redis_store(store)
                .default_ttl(hour())
                .layers()
                .await
                .unwrap();
            assert_eq!(stack.redis().map(RedisStore::prefix), Some(prefix.as_str()));
            let client = stack.client(reqwest::Client::new());
            assert_eq!(get(&client, &api).await.1.cache, Some(expected));
        }
        // Another prefix is another namespace.
        let other = RedisStore::builder(&url)
            .prefix(unique_prefix("client"))
            .connect()
            .unwrap();
        let client = Courteous::new(reqwest::Client::new())
            .redis_store(other)
            .default_ttl(hour())
            .build()
            .await
            .unwrap();
        assert_eq!(get(&client, &api).await.1.cache, Some(CacheStatus::Miss));
        assert_eq!(server.hits(), 2);
    }
}
