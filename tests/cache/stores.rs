//! The stores on their own: bounds, invalidation, and the tiered store's consistency.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use courteous::RequestKey;
use courteous::cache::{CacheEntry, CacheStore, Invalidation, MemoryCacheStore, TieredCacheStore};

pub fn key(n: u8) -> RequestKey {
    RequestKey::from_parts([n; 32], format!("GET http://h/items/{n}"))
}

pub fn entry(url: &str, body: &str, lives: Duration) -> Arc<CacheEntry> {
    Arc::new(
        CacheEntry::new(
            url,
            http::StatusCode::OK,
            Bytes::from(body.to_owned()),
            SystemTime::now(),
        )
        .fresh_for(lives, Duration::ZERO),
    )
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn the_memory_store_is_bounded_by_entries() {
    let store = MemoryCacheStore::builder().max_entries(10).build();
    for n in 0..100 {
        store
            .put(&key(n), entry(&format!("http://h/{n}"), "x", HOUR))
            .await
            .unwrap();
    }
    let stats = store.stats().await.unwrap();
    assert!(stats.entries <= 10, "{stats:?}");
    assert!(stats.entries > 0, "{stats:?}");
}

#[tokio::test]
async fn the_memory_store_is_bounded_by_bytes() {
    let store = MemoryCacheStore::builder()
        .max_entries(1_000)
        .max_bytes(100 * 1024)
        .build();
    let body = "x".repeat(10 * 1024);
    for n in 0..50 {
        store
            .put(&key(n), entry(&format!("http://h/{n}"), &body, HOUR))
            .await
            .unwrap();
    }
    let stats = store.stats().await.unwrap();
    assert!(stats.bytes <= 100 * 1024, "{stats:?}");
    assert!(stats.entries >= 5, "{stats:?}");
}

#[tokio::test]
async fn a_memory_hit_shares_the_stored_body() {
    let store = MemoryCacheStore::new();
    let stored = entry("http://h/1", "shared", HOUR);
    store.put(&key(1), stored.clone()).await.unwrap();
    let got = store.get(&key(1)).await.unwrap().unwrap();
    assert!(Arc::ptr_eq(&got, &stored));
    assert_eq!(got.body.as_ptr(), stored.body.as_ptr());
}

#[tokio::test]
async fn expired_entries_are_never_returned_and_purge_removes_them() {
    let store = MemoryCacheStore::new();
    let past = Arc::new(CacheEntry {
        expires_at: SystemTime::now() - Duration::from_secs(1),
        ..(*entry("http://h/1", "old", HOUR)).clone()
    });
    store.put(&key(1), past).await.unwrap();
    assert!(store.get(&key(1)).await.unwrap().is_none());
    store
        .put(
            &key(2),
            entry("http://h/2", "soon", Duration::from_millis(50)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(store.get(&key(2)).await.unwrap().is_none());
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.entries, stats.hits, stats.misses), (0, 0, 2));
}

#[tokio::test]
async fn invalidation_by_prefix_and_by_path() {
    let store = MemoryCacheStore::new();
    let urls = [
        "http://h/a/1",
        "http://h/a/1?x=2",
        "http://h/a/10",
        "http://h/b/1",
    ];
    for (n, url) in urls.iter().enumerate() {
        store
            .put(&key(n as u8), entry(url, "x", HOUR))
            .await
            .unwrap();
    }
    let n = store
        .invalidate(&Invalidation::Path("http://h/a/1".into()))
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert!(store.get(&key(2)).await.unwrap().is_some());
    let n = store
        .invalidate(&Invalidation::Prefix("http://h/a/".into()))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(store.get(&key(3)).await.unwrap().is_some());
    store.clear().await.unwrap();
    assert!(store.get(&key(3)).await.unwrap().is_none());
}

/// Memory in front of a second memory store as the back tier (`sqlite` runs the same checks over
/// the SQLite back tier).
#[tokio::test]
async fn the_tiered_store_stays_consistent_on_replace_delete_and_expiry() {
    tiered_consistency(MemoryCacheStore::new()).await;
}

pub async fn tiered_consistency(back: impl CacheStore + Clone) {
    let tiered = TieredCacheStore::new(MemoryCacheStore::new(), back.clone());
    tiered
        .put(&key(1), entry("http://h/1", "v1", HOUR))
        .await
        .unwrap();
    assert_eq!(tiered.get(&key(1)).await.unwrap().unwrap().body, "v1");
    // Replace: both tiers see v2.
    tiered
        .put(&key(1), entry("http://h/1", "v2", HOUR))
        .await
        .unwrap();
    assert_eq!(tiered.get(&key(1)).await.unwrap().unwrap().body, "v2");
    assert_eq!(back.get(&key(1)).await.unwrap().unwrap().body, "v2");
    // Delete: gone from both.
    tiered.delete(&key(1)).await.unwrap();
    assert!(tiered.get(&key(1)).await.unwrap().is_none());
    assert!(back.get(&key(1)).await.unwrap().is_none());
    // An entry only in the back tier is found and promoted.
    back.put(&key(2), entry("http://h/2", "back", HOUR))
        .await
        .unwrap();
    assert_eq!(tiered.get(&key(2)).await.unwrap().unwrap().body, "back");
    assert!(tiered.memory().get(&key(2)).await.unwrap().is_some());
    // Expiry: the memory tier does not outlive the entry.
    tiered
        .put(
            &key(3),
            entry("http://h/3", "brief", Duration::from_millis(50)),
        )
        .await
        .unwrap();
    assert!(tiered.get(&key(3)).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(tiered.get(&key(3)).await.unwrap().is_none());
    assert!(tiered.memory().get(&key(3)).await.unwrap().is_none());
    // Invalidation reaches both tiers.
    tiered
        .invalidate(&Invalidation::Prefix("http://h/".into()))
        .await
        .unwrap();
    assert!(tiered.memory().get(&key(2)).await.unwrap().is_none());
    assert!(back.get(&key(2)).await.unwrap().is_none());
}
