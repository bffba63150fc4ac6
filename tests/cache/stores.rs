//! The store contract, one suite for every backend: each behaviour is an `async fn(Backend)`
//! run for the memory, SQLite and Redis stores (`<behaviour>::memory`, `::sqlite`, `::redis`),
//! on their own, as the back tier of a [`TieredCacheStore`], and under the real [`CacheLayer`].
//! Then what only the memory store promises (its bounds, shared bodies).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use courteous::RequestKey;
use courteous::cache::{
    CacheChange, CacheEntry, CacheLayer, CacheStatus, CacheStore, CacheStoreStats, CacheTtl,
    ChangeFeed, Invalidation, MemoryCacheStore, TieredCacheStore,
};
use courteous::store::StoreError;

use crate::backend::{Backend, every_backend};
use crate::support::TestServer;
use crate::support::server::Log;
use crate::{TestClock, client, get, send};

every_backend!(
    a_store_reads_its_writes_and_replaces_and_deletes_them,
    expired_entries_are_never_returned_and_purge_removes_them,
    invalidation_by_prefix_and_by_path,
    clear_drops_every_entry,
    touch_moves_an_entries_expiry,
    the_tiered_store_stays_consistent_on_replace_delete_and_expiry,
    the_layer_serves_hits_misses_and_vary_variants,
    the_layer_over_a_tiered_store_serves_from_memory_and_the_back_store,
    expired_entries_are_cleaned_up_in_the_background_on_an_interval,
);

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

/// The memory store decides expiry on its own clock, so a test that moves the cache layer's
/// clock can move the store's with it (and through it a tiered store's memory tier).
#[tokio::test]
async fn the_memory_store_reads_expiry_from_its_clock() {
    let clock = TestClock::new();
    let store = MemoryCacheStore::builder().clock(clock.clone()).build();
    let stored = Arc::new(
        CacheEntry::new(
            "http://h/1",
            http::StatusCode::OK,
            Bytes::new(),
            clock.now(),
        )
        .fresh_for(Duration::from_secs(60), Duration::from_secs(60)),
    );
    store.put(&key(1), stored.clone()).await.unwrap();
    store.put(&key(2), stored).await.unwrap();
    clock.advance(Duration::from_secs(119));
    assert!(store.get(&key(1)).await.unwrap().is_some());
    clock.advance(Duration::from_secs(1));
    assert!(
        store.get(&key(1)).await.unwrap().is_none(),
        "expired on the clock"
    );
    assert_eq!(store.stats().await.unwrap().expired, 1);
    assert_eq!(store.purge_expired().await.unwrap(), 1);
    // Written already expired on the clock: not stored.
    let late = CacheEntry::new(
        "http://h/3",
        http::StatusCode::OK,
        Bytes::new(),
        SystemTime::now(),
    );
    store.put(&key(3), Arc::new(late)).await.unwrap();
    assert!(store.get(&key(3)).await.unwrap().is_none());

    let tiered = TieredCacheStore::new(
        MemoryCacheStore::builder().clock(clock.clone()).build(),
        MemoryCacheStore::new(),
    );
    let fresh = CacheEntry::new(
        "http://h/4",
        http::StatusCode::OK,
        Bytes::new(),
        clock.now(),
    )
    .fresh_for(Duration::from_secs(60), Duration::ZERO);
    tiered.memory().put(&key(4), Arc::new(fresh)).await.unwrap();
    assert!(tiered.get_now(&key(4)).is_some());
    clock.advance(Duration::from_secs(60));
    assert!(
        tiered.get_now(&key(4)).is_none(),
        "the memory tier follows the clock"
    );
}

/// Memory has no other processes: for it, "another handle" is a clone.
async fn a_store_reads_its_writes_and_replaces_and_deletes_them(backend: Backend) {
    let (store, other) = (backend.handle(), backend.handle());
    let mut stored = (*entry("http://h/1?q=a", "one", HOUR)).clone();
    stored.headers.insert("etag", "\"e1\"".parse().unwrap());
    stored.headers.append("link", "<a>".parse().unwrap());
    stored.headers.append("link", "<b>".parse().unwrap());
    stored.vary = vec![http::header::ACCEPT];
    stored.sliding = Some(Duration::from_secs(30));
    stored.status = http::StatusCode::NON_AUTHORITATIVE_INFORMATION;
    store.put(&key(1), Arc::new(stored.clone())).await.unwrap();
    backend.flush().await;
    // Another handle reads the entry whole.
    let got = other.get(&key(1)).await.unwrap().unwrap();
    assert_eq!(got.url, stored.url);
    assert_eq!(got.status, stored.status);
    assert_eq!(got.headers, stored.headers);
    assert_eq!(got.body, stored.body);
    assert_eq!(got.vary, stored.vary);
    assert_eq!(got.sliding, stored.sliding);
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    assert_eq!(ms(got.fresh_until), ms(stored.fresh_until));
    assert_eq!(ms(got.expires_at), ms(stored.expires_at));
    // A replacement is what both read next.
    store
        .put(&key(1), entry("http://h/1?q=a", "two", HOUR))
        .await
        .unwrap();
    backend.flush().await;
    assert_eq!(other.get(&key(1)).await.unwrap().unwrap().body, "two");
    assert_eq!(store.get(&key(1)).await.unwrap().unwrap().body, "two");
    store
        .put(&key(2), entry("http://h/2", "2", HOUR))
        .await
        .unwrap();
    store.delete(&key(2)).await.unwrap();
    backend.flush().await;
    assert!(other.get(&key(2)).await.unwrap().is_none());
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.entries, 1, "{stats:?}");
    assert!(stats.bytes >= 3, "{stats:?}");
    // Deleting what is not there is fine.
    store.delete(&key(3)).await.unwrap();
}

async fn expired_entries_are_never_returned_and_purge_removes_them(backend: Backend) {
    let store = backend.handle();
    let past = Arc::new(CacheEntry {
        expires_at: SystemTime::now() - Duration::from_secs(1),
        ..(*entry("http://h/1", "old", HOUR)).clone()
    });
    store.put(&key(1), past).await.unwrap();
    assert!(store.get(&key(1)).await.unwrap().is_none());
    store
        .put(&key(3), entry("http://h/3", "stays", HOUR))
        .await
        .unwrap();
    store
        .put(
            &key(2),
            entry("http://h/2", "soon", Duration::from_millis(50)),
        )
        .await
        .unwrap();
    backend.flush().await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(store.get(&key(2)).await.unwrap().is_none());
    let before = store.stats().await.unwrap();
    assert_eq!((before.hits, before.misses), (0, 2), "{before:?}");
    if backend.is_shared() {
        // The shared stores keep expired entries (or their index) until cleanup...
        assert_eq!(before.entries - before.expired, 1, "{before:?}");
        assert!(before.expired >= 1, "{before:?}");
        assert_eq!(store.purge_expired().await.unwrap(), before.expired);
    } else {
        store.purge_expired().await.unwrap();
    }
    // ...which leaves the live one only.
    let after = store.stats().await.unwrap();
    assert_eq!((after.entries, after.expired), (1, 0), "{after:?}");
    assert_eq!(store.purge_expired().await.unwrap(), 0);
    assert_eq!(store.get(&key(3)).await.unwrap().unwrap().body, "stays");
}

async fn invalidation_by_prefix_and_by_path(backend: Backend) {
    let (store, other) = (backend.handle(), backend.handle());
    let urls = [
        "http://h/a/1",
        "http://h/a/1?x=2",
        "http://h/a/10",
        "http://h/b/1",
        "http://h/a/1/sub",
    ];
    for (n, url) in urls.iter().enumerate() {
        store
            .put(&key(n as u8), entry(url, "x", HOUR))
            .await
            .unwrap();
    }
    backend.flush().await;
    // The path with any query, not its longer siblings or children.
    let n = other
        .invalidate(&Invalidation::Path("http://h/a/1".into()))
        .await
        .unwrap();
    assert_eq!(n, 2);
    backend.flush().await;
    for (n, kept) in [(0, false), (1, false), (2, true), (3, true), (4, true)] {
        assert_eq!(store.get(&key(n)).await.unwrap().is_some(), kept, "{n}");
    }
    let n = other
        .invalidate(&Invalidation::Prefix("http://h/a/".into()))
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert!(store.get(&key(2)).await.unwrap().is_none());
    assert!(store.get(&key(4)).await.unwrap().is_none());
    assert!(store.get(&key(3)).await.unwrap().is_some());
    // Nothing matches: nothing goes.
    assert_eq!(
        store
            .invalidate(&Invalidation::Prefix("http://other/".into()))
            .await
            .unwrap(),
        0
    );
    backend.flush().await;
    assert_eq!(store.stats().await.unwrap().entries, 1);
}

async fn clear_drops_every_entry(backend: Backend) {
    let (store, other) = (backend.handle(), backend.handle());
    for n in 0..20 {
        store
            .put(&key(n), entry(&format!("http://h/{n}"), "x", HOUR))
            .await
            .unwrap();
    }
    backend.flush().await;
    other.clear().await.unwrap();
    for n in 0..20 {
        assert!(store.get(&key(n)).await.unwrap().is_none(), "{n}");
    }
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.entries, stats.bytes), (0, 0), "{stats:?}");
    // The store works on after a clear.
    store
        .put(&key(1), entry("http://h/1", "again", HOUR))
        .await
        .unwrap();
    assert_eq!(store.get(&key(1)).await.unwrap().unwrap().body, "again");
}

async fn touch_moves_an_entries_expiry(backend: Backend) {
    let store = backend.handle();
    store
        .put(
            &key(1),
            entry("http://h/1", "slides", Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let now = SystemTime::now();
    store
        .touch(&key(1), now + HOUR, now + 2 * HOUR)
        .await
        .unwrap();
    // Touching what is not stored stores nothing.
    store.touch(&key(2), now + HOUR, now + HOUR).await.unwrap();
    backend.flush().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = store
        .get(&key(1))
        .await
        .unwrap()
        .expect("moved past its first expiry");
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(got.fresh_until), secs(now + HOUR));
    assert_eq!(secs(got.expires_at), secs(now + 2 * HOUR));
    assert!(store.get(&key(2)).await.unwrap().is_none());
    assert_eq!(store.stats().await.unwrap().expired, 0);
}

/// Memory in front of the backend's store, which another handle also sees.
async fn the_tiered_store_stays_consistent_on_replace_delete_and_expiry(backend: Backend) {
    let back = backend.handle();
    let tiered = TieredCacheStore::new(MemoryCacheStore::new(), backend.handle());
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
    backend.flush().await;
    assert_eq!(tiered.get(&key(1)).await.unwrap().unwrap().body, "v2");
    assert_eq!(back.get(&key(1)).await.unwrap().unwrap().body, "v2");
    // Delete: gone from both.
    tiered.delete(&key(1)).await.unwrap();
    backend.flush().await;
    assert!(tiered.get(&key(1)).await.unwrap().is_none());
    assert!(back.get(&key(1)).await.unwrap().is_none());
    // An entry only in the back tier is found and promoted (once the memory tier is live: over
    // Redis, once its change feed is subscribed, and not by a read that the report of this very
    // write overtook).
    back.put(&key(2), entry("http://h/2", "back", HOUR))
        .await
        .unwrap();
    backend.flush().await;
    wait_until("the memory tier is live", || tiered.is_memory_live()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(tiered.get(&key(2)).await.unwrap().unwrap().body, "back");
        if tiered.memory().get(&key(2)).await.unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "never promoted to memory");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
    backend.flush().await;
    assert!(back.get(&key(2)).await.unwrap().is_none());
    // Over a shared store, what the tiers answered is what another handle reads.
    assert!(backend.handle().get(&key(1)).await.unwrap().is_none());
}

/// `/vary`: `Vary: Accept-Language`, the body names the language and the count.
async fn vary(State(log): State<Arc<Log>>, request: Request) -> Response {
    let n = log.record(&request);
    let lang = request
        .headers()
        .get("accept-language")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    Response::builder()
        .header("cache-control", "max-age=3600")
        .header("vary", "Accept-Language")
        .body(axum::body::Body::from(format!("{lang} {n}")))
        .unwrap()
}

async fn the_layer_serves_hits_misses_and_vary_variants(backend: Backend) {
    let server = TestServer::with_router(|log| {
        Router::new()
            .route("/vary", axum::routing::get(vary).post(vary))
            .fallback(crate::support::server::default_handler)
            .with_state(log)
    })
    .await;
    let layer = CacheLayer::new(backend.handle()).default_ttl(CacheTtl::absolute(HOUR));
    let client = client(layer.clone());
    let url = server.url("/api/issues/1");
    let first = send(&client, get(&url)).await;
    let second = send(&client, get(&url)).await;
    assert_eq!(
        (first.cache, second.cache),
        (Some(CacheStatus::Miss), Some(CacheStatus::Hit))
    );
    assert_eq!(first.body, second.body);
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(server.hits_on("/api/issues/1"), 1);

    // RFC freshness with Vary (no forced TTL): variants side by side.
    let client = client_rfc(backend.handle());
    let vary_url = server.url("/vary");
    let lang = |l: &'static str| get(&vary_url).header("accept-language", l);
    assert_eq!(send(&client, lang("en")).await.text(), "en 1");
    assert_eq!(send(&client, lang("fr")).await.text(), "fr 2");
    for _ in 0..2 {
        let en = send(&client, lang("en")).await;
        let fr = send(&client, lang("fr")).await;
        assert_eq!(
            (en.text().as_str(), en.cache),
            ("en 1", Some(CacheStatus::Hit))
        );
        assert_eq!(
            (fr.text().as_str(), fr.cache),
            ("fr 2", Some(CacheStatus::Hit))
        );
    }
    assert_eq!(
        send(&client, lang("de")).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(server.hits_on("/vary"), 3);
    // A POST invalidates the URL: index and variants.
    send(&client, http::Request::post(&vary_url)).await;
    assert_eq!(
        send(&client, lang("en")).await.cache,
        Some(CacheStatus::Miss)
    );
    let stats = layer.stats().await;
    assert_eq!(stats.store_errors, 0, "{stats:?}");
}

fn client_rfc(store: Arc<dyn CacheStore>) -> crate::Client {
    client(CacheLayer::new(store))
}

async fn the_layer_over_a_tiered_store_serves_from_memory_and_the_back_store(backend: Backend) {
    let server = TestServer::start().await;
    let tiered = TieredCacheStore::new(MemoryCacheStore::new(), backend.handle());
    let layer = CacheLayer::new(tiered.clone()).default_ttl(CacheTtl::absolute(HOUR));
    let client = client(layer.clone());
    let url = server.url("/api/issues/1");
    send(&client, get(&url)).await;
    wait_until("the memory tier is live", || tiered.is_memory_live()).await;
    assert_eq!(send(&client, get(&url)).await.cache, Some(CacheStatus::Hit));
    backend.flush().await;
    // Drop the memory tier's copy: the next hit comes from the back store and refills memory.
    tiered.memory().clear().await.unwrap();
    assert_eq!(send(&client, get(&url)).await.cache, Some(CacheStatus::Hit));
    assert_eq!(tiered.memory().stats().await.unwrap().entries, 1);
    // A POST invalidates both tiers.
    send(&client, http::Request::post(&url)).await;
    assert_eq!(
        send(&client, get(&url)).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(server.hits_on("/api/issues/1"), 3);
    backend.flush().await;
    assert_eq!(layer.stats().await.store.entries, 1);
}

async fn expired_entries_are_cleaned_up_in_the_background_on_an_interval(backend: Backend) {
    let server = TestServer::start().await;
    let layer = CacheLayer::new(backend.handle())
        .default_ttl(CacheTtl::absolute(Duration::from_millis(100)))
        .cleanup_interval(Some(Duration::from_millis(50)));
    let client = client(layer.clone());
    send(&client, get(&server.url("/api/issues/1"))).await;
    backend.flush().await;
    assert_eq!(layer.stats().await.store.entries, 1);
    // No request after this one: only the background cleanup can remove the entry.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = layer.stats().await;
        // The purge is counted once its transaction has committed, so a look between the
        // commit and the count sees the entry gone and the count not yet raised: wait for both.
        let counted = !backend.is_shared() || stats.store.purged == 1;
        if stats.store.entries == 0 && counted {
            assert!(stats.store.purged <= 1, "{stats:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never cleaned up: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 10 s) until `done`.
pub async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A back store with a change feed the test drives, and reads the test can hold in flight.
#[derive(Debug, Clone)]
struct FedStore {
    inner: MemoryCacheStore,
    feed: tokio::sync::broadcast::Sender<CacheChange>,
    /// While set, `get` waits for a permit.
    gate: Arc<std::sync::Mutex<Option<Arc<tokio::sync::Semaphore>>>>,
}

impl FedStore {
    fn new() -> Self {
        FedStore {
            inner: MemoryCacheStore::new(),
            feed: tokio::sync::broadcast::channel(64).0,
            gate: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl CacheStore for FedStore {
    async fn get(&self, key: &RequestKey) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        let found = self.inner.get(key).await;
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.acquire().await.unwrap().forget();
        }
        found
    }
    async fn put(&self, key: &RequestKey, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        self.inner.put(key, entry).await
    }
    async fn touch(&self, k: &RequestKey, f: SystemTime, x: SystemTime) -> Result<(), StoreError> {
        self.inner.touch(k, f, x).await
    }
    async fn delete(&self, key: &RequestKey) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn clear(&self) -> Result<(), StoreError> {
        self.inner.clear().await
    }
    async fn invalidate(&self, target: &Invalidation) -> Result<u64, StoreError> {
        self.inner.invalidate(target).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.inner.purge_expired().await
    }
    async fn stats(&self) -> Result<CacheStoreStats, StoreError> {
        self.inner.stats().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn changes(&self) -> Option<ChangeFeed> {
        Some(ChangeFeed::new(self.feed.subscribe(), false))
    }
}

/// Waits until the tiered store's follower has taken every change sent so far.
async fn drained(back: &FedStore) {
    wait_until("the changes are applied", || back.feed.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// The tiered store over any back store with a change feed: it fills its memory tier only while
/// the feed is connected, drops what the feed reports, and never fills it from a read that a
/// report about the same key overtook.
#[tokio::test]
async fn the_tiered_store_follows_its_back_stores_change_feed() {
    let back = FedStore::new();
    let tiered = TieredCacheStore::new(MemoryCacheStore::new(), back.clone());
    let in_memory = |n| tiered.memory().get_now(&key(n)).unwrap().unwrap().is_some();
    back.put(&key(1), entry("http://h/1", "v1", HOUR))
        .await
        .unwrap();
    // Not connected yet: served from the back store, not kept in memory.
    assert_eq!(tiered.get(&key(1)).await.unwrap().unwrap().body, "v1");
    assert!(!tiered.is_memory_live() && !in_memory(1));
    back.feed.send(CacheChange::Connected).unwrap();
    wait_until("connected", || tiered.is_memory_live()).await;
    tiered.get(&key(1)).await.unwrap();
    assert!(in_memory(1));

    // Another process replaced key 1: the memory copy goes, the next read gets the new one.
    back.put(&key(1), entry("http://h/1", "v2", HOUR))
        .await
        .unwrap();
    back.feed.send(CacheChange::Key(key(1))).unwrap();
    drained(&back).await;
    assert!(!in_memory(1));
    assert_eq!(tiered.get(&key(1)).await.unwrap().unwrap().body, "v2");

    // A read that a report about its key overtakes does not fill memory with what it read.
    tiered.memory().clear().await.unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *back.gate.lock().unwrap() = Some(gate.clone());
    let read = tokio::spawn({
        let tiered = tiered.clone();
        async move { tiered.get(&key(1)).await.unwrap().unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    back.put(&key(1), entry("http://h/1", "v3", HOUR))
        .await
        .unwrap();
    back.feed.send(CacheChange::Key(key(1))).unwrap();
    drained(&back).await;
    gate.add_permits(1);
    assert_eq!(
        read.await.unwrap().body,
        "v2",
        "the read saw the old entry..."
    );
    assert!(!in_memory(1), "...and did not keep it");
    *back.gate.lock().unwrap() = None;
    assert_eq!(tiered.get(&key(1)).await.unwrap().unwrap().body, "v3");

    // Invalidations and clears reported by the feed reach memory.
    back.put(&key(2), entry("http://h/a/2", "2", HOUR))
        .await
        .unwrap();
    tiered.get(&key(2)).await.unwrap();
    assert!(in_memory(1) && in_memory(2));
    back.feed
        .send(CacheChange::Invalidated(Invalidation::Prefix(
            "http://h/a/".into(),
        )))
        .unwrap();
    drained(&back).await;
    assert!(in_memory(1) && !in_memory(2));
    back.feed.send(CacheChange::Cleared).unwrap();
    drained(&back).await;
    assert!(!in_memory(1));

    // Lost: memory emptied and not filled (not even by puts) until connected again.
    tiered.get(&key(1)).await.unwrap();
    assert!(in_memory(1));
    back.feed.send(CacheChange::Lost).unwrap();
    wait_until("lost", || !tiered.is_memory_live()).await;
    drained(&back).await;
    assert!(!in_memory(1));
    tiered.get(&key(1)).await.unwrap();
    tiered
        .put(&key(3), entry("http://h/3", "3", HOUR))
        .await
        .unwrap();
    assert!(!in_memory(1) && !in_memory(3));
    back.feed.send(CacheChange::Connected).unwrap();
    wait_until("connected again", || tiered.is_memory_live()).await;
    tiered.get(&key(3)).await.unwrap();
    assert!(in_memory(3));
}

/// A back store whose writes (puts, deletes, invalidations, clears) wait at a gate the test
/// opens, so that a read can reach it while a write is on its way.
#[derive(Debug, Clone)]
struct SlowWrites {
    inner: MemoryCacheStore,
    /// Writes that reached the gate.
    arrived: Arc<tokio::sync::Semaphore>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl SlowWrites {
    fn new() -> Self {
        SlowWrites {
            inner: MemoryCacheStore::new(),
            arrived: Arc::new(tokio::sync::Semaphore::new(0)),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }

    async fn wait(&self) {
        self.arrived.add_permits(1);
        self.gate.acquire().await.unwrap().forget();
    }
}

#[async_trait::async_trait]
impl CacheStore for SlowWrites {
    async fn get(&self, key: &RequestKey) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &RequestKey, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        self.wait().await;
        self.inner.put(key, entry).await
    }
    async fn touch(&self, k: &RequestKey, f: SystemTime, x: SystemTime) -> Result<(), StoreError> {
        self.wait().await;
        self.inner.touch(k, f, x).await
    }
    async fn delete(&self, key: &RequestKey) -> Result<(), StoreError> {
        self.wait().await;
        self.inner.delete(key).await
    }
    async fn clear(&self) -> Result<(), StoreError> {
        self.wait().await;
        self.inner.clear().await
    }
    async fn invalidate(&self, target: &Invalidation) -> Result<u64, StoreError> {
        self.wait().await;
        self.inner.invalidate(target).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.inner.purge_expired().await
    }
    async fn stats(&self) -> Result<CacheStoreStats, StoreError> {
        self.inner.stats().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A read that reaches the back store while this process's own delete, invalidation, clear or
/// replacing put is still on its way there reads the old entry; it must not keep it in memory
/// (the back store's change feed does not report this process's own writes, so nothing would
/// remove it until it expires).
#[tokio::test]
async fn a_read_during_a_write_in_flight_does_not_keep_the_old_entry_in_memory() {
    type Write = fn(TieredCacheStore) -> tokio::task::JoinHandle<()>;
    let writes: [(&str, Write, Option<&str>); 4] = [
        (
            "delete",
            |t| tokio::spawn(async move { t.delete(&key(1)).await.unwrap() }),
            None,
        ),
        (
            "invalidate",
            |t| {
                tokio::spawn(async move {
                    t.invalidate(&Invalidation::Prefix("http://h/".into()))
                        .await
                        .map(drop)
                        .unwrap()
                })
            },
            None,
        ),
        (
            "clear",
            |t| tokio::spawn(async move { t.clear().await.unwrap() }),
            None,
        ),
        (
            "put",
            |t| {
                tokio::spawn(async move {
                    t.put(&key(1), entry("http://h/1", "new", HOUR))
                        .await
                        .unwrap()
                })
            },
            Some("new"),
        ),
    ];
    for (what, write, after) in writes {
        let back = SlowWrites::new();
        back.inner
            .put(&key(1), entry("http://h/1", "old", HOUR))
            .await
            .unwrap();
        let tiered = TieredCacheStore::new(MemoryCacheStore::new(), back.clone());
        assert_eq!(tiered.get(&key(1)).await.unwrap().unwrap().body, "old");
        assert!(tiered.is_memory_live());

        let writing = write(tiered.clone());
        back.arrived.acquire().await.unwrap().forget();
        // The write is on its way; the memory copy is gone (evicted, say): this read finds the
        // old entry in the back store.
        tiered.memory().delete(&key(1)).await.unwrap();
        assert_eq!(
            tiered.get(&key(1)).await.unwrap().unwrap().body,
            "old",
            "{what}"
        );
        back.gate.add_permits(1);
        writing.await.unwrap();

        let now = tiered.get(&key(1)).await.unwrap();
        assert_eq!(
            now.map(|e| String::from_utf8(e.body.to_vec()).unwrap())
                .as_deref(),
            after,
            "{what}: the memory tier kept the entry the write replaced"
        );
    }
}

/// RFC 9111 section 4.4: an unsafe request whose caller gives up (drops the response future)
/// while the invalidation is on its way to the store still invalidates: the origin has
/// applied the change, so the old entry must go. Found in review: the invalidation was an
/// await in the caller's future, cancelled with it, and the pre-POST body stayed a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_completes_when_its_caller_gives_up() {
    let server = TestServer::start().await;
    let back = SlowWrites::new();
    let layer = CacheLayer::new(back.clone()).default_ttl(CacheTtl::absolute(HOUR));
    let client = client(layer.clone());
    let url = server.url("/api/issues/1");
    back.gate.add_permits(1);
    send(&client, get(&url)).await;
    back.arrived.acquire().await.unwrap().forget();
    assert_eq!(send(&client, get(&url)).await.cache, Some(CacheStatus::Hit));

    // The POST reaches the origin and its invalidation the store: the caller gives up (the
    // response future is dropped there).
    tokio::select! {
        _ = send(&client, http::Request::post(&url)) => {
            panic!("the POST finished while its invalidation waited at the gate")
        }
        permit = back.arrived.acquire() => permit.unwrap().forget(),
    }
    assert_eq!(server.hits_on("/api/issues/1"), 2);
    back.gate.add_permits(100);

    let deadline = Instant::now() + Duration::from_secs(10);
    while back.inner.stats().await.unwrap().entries > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(send(&client, get(&url)).await.cache, Some(CacheStatus::Hit));
    assert_eq!(server.hits_on("/api/issues/1"), 3);
}
