//! What only the Redis store does: native TTLs and self-cleaning indexes, the entry size limit,
//! memory tiers in several OS processes kept consistent through pub/sub, and riding out a Redis
//! that stops, stalls and comes back. The contract it shares with the other stores is in
//! `stores.rs`.
//!
//! Without Redis these tests print `SKIPPED` and pass; `COURTEOUS_REQUIRE_REDIS=1` makes that a
//! failure.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use courteous::cache::{
    CacheEntry, CacheLayer, CacheMode, CacheStatus, CacheStore, CacheTtl, MemoryCacheStore,
    RedisCacheStore, TieredCacheStore,
};
use courteous::store::redis::RedisStore;
use courteous::time::{Clock, SystemClock, Timestamp};

use crate::backend::redis_handle;
use crate::stores::{entry, key, wait_until};
use crate::support::redis::{OwnRedis, shared_url, unique_prefix};
use crate::support::{TestServer, child};
use crate::{client, get, send, try_send};

const HOUR: Duration = Duration::from_secs(3600);

/// A raw connection, to look at what the store wrote.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn cmd<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(conn).await.unwrap()
}

#[tokio::test]
async fn entries_carry_native_ttls_and_expired_ones_leave_the_indexes() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("native_ttls");
    let store = redis_handle(&url, &prefix);
    let mut conn = raw(&url).await;
    store
        .put(&key(1), entry("http://h/1", "an hour", HOUR))
        .await
        .unwrap();
    let entry_key = format!("{prefix}:cache:e:{}", key(1).to_hex());
    let pttl: i64 = cmd(&mut conn, &["PTTL", &entry_key]).await;
    assert!(
        pttl > 3_590_000 && pttl <= 3_600_000,
        "the entry expires by itself at expires_at: {pttl}"
    );
    // Entries that expire leave index members behind; the next writes clean them up.
    for n in 2..6 {
        store
            .put(
                &key(n),
                entry(&format!("http://h/{n}"), "brief", Duration::from_millis(30)),
            )
            .await
            .unwrap();
    }
    let expiry = format!("{prefix}:cache:expiry");
    assert_eq!(cmd::<u64>(&mut conn, &["ZCARD", &expiry]).await, 5);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let gone: i64 = cmd(
        &mut conn,
        &["EXISTS", &format!("{prefix}:cache:e:{}", key(2).to_hex())],
    )
    .await;
    assert_eq!(gone, 0, "Redis dropped the expired entry itself");
    store
        .put(&key(9), entry("http://h/9", "new", HOUR))
        .await
        .unwrap();
    assert_eq!(cmd::<u64>(&mut conn, &["ZCARD", &expiry]).await, 2);
    let urls: Vec<Vec<u8>> = cmd(
        &mut conn,
        &["ZRANGE", &format!("{prefix}:cache:urls"), "0", "-1"],
    )
    .await;
    let mut expected = [
        format!("http://h/1\0{}", key(1).to_hex()),
        format!("http://h/9\0{}", key(9).to_hex()),
    ];
    expected.sort();
    assert_eq!(urls, expected.map(String::into_bytes));
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.entries, stats.expired, stats.purged),
        (2, 0, 4),
        "{stats:?}"
    );
    let bytes: u64 = cmd(&mut conn, &["GET", &format!("{prefix}:cache:bytes")]).await;
    assert_eq!(
        bytes,
        (entry("http://h/1", "an hour", HOUR).size() + entry("http://h/9", "new", HOUR).size())
            as u64
    );
    store.clear().await.unwrap();
    let left: Vec<String> = cmd(&mut conn, &["KEYS", &format!("{prefix}:cache:*")]).await;
    assert!(left.iter().all(|k| k.ends_with(":bytes")), "{left:?}");
}

#[tokio::test]
async fn an_oversized_entry_is_not_stored_and_drops_the_one_it_replaces() {
    let Some(url) = shared_url().await else {
        return;
    };
    let store = redis_handle(&url, &unique_prefix("oversized")).max_entry_size(1024);
    store
        .put(&key(1), entry("http://h/1", "small", HOUR))
        .await
        .unwrap();
    assert!(store.get(&key(1)).await.unwrap().is_some());
    store
        .put(&key(1), entry("http://h/1", &"x".repeat(2048), HOUR))
        .await
        .unwrap();
    assert!(store.get(&key(1)).await.unwrap().is_none());
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.entries, stats.bytes, stats.errors),
        (0, 0, 0),
        "{stats:?}"
    );
}

/// A clock `.0` behind the system clock.
#[derive(Debug)]
struct Behind(Duration);

impl Clock for Behind {
    fn now(&self) -> Timestamp {
        SystemClock.now() - self.0
    }
}

/// A client whose clock is an hour behind Redis's: its entries live their whole TTL in Redis
/// (a relative expiry), and the expiry index is in Redis's clock, so purges and `expired` agree
/// with Redis about what has expired.
#[tokio::test]
async fn entries_live_their_ttl_whatever_the_clients_clock_says() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("skew");
    let behind = || SystemTime::now() - HOUR;
    let store = redis_handle(&url, &prefix).clock(Behind(HOUR));
    let mut conn = raw(&url).await;
    let lives = Duration::from_secs(60);
    let skewed = Arc::new(
        CacheEntry::new(
            "http://h/1",
            http::StatusCode::OK,
            Bytes::from("x"),
            behind(),
        )
        .fresh_for(lives, Duration::ZERO),
    );
    store.put(&key(1), skewed.clone()).await.unwrap();
    let got = store
        .get(&key(1))
        .await
        .unwrap()
        .expect("stored and still there");
    let off = skewed.expires_at.duration_since(got.expires_at).unwrap();
    assert!(
        off < Duration::from_millis(1),
        "kept in the client's clock: {off:?}"
    );
    let entry_key = format!("{prefix}:cache:e:{}", key(1).to_hex());
    let pttl: i64 = cmd(&mut conn, &["PTTL", &entry_key]).await;
    assert!(pttl > 55_000 && pttl <= 60_000, "a 60 s TTL: {pttl}");
    let (secs, micros): (String, String) = cmd(&mut conn, &["TIME"]).await;
    let redis_now = secs.parse::<i64>().unwrap() * 1000 + micros.parse::<i64>().unwrap() / 1000;
    let score: f64 = cmd(
        &mut conn,
        &[
            "ZSCORE",
            &format!("{prefix}:cache:expiry"),
            &format!("http://h/1\0{}", key(1).to_hex()),
        ],
    )
    .await;
    let ahead = score as i64 - redis_now;
    assert!(
        ahead > 55_000 && ahead <= 60_000,
        "scored in Redis's clock: {ahead}"
    );
    assert_eq!(store.purge_expired().await.unwrap(), 0);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.entries, stats.expired), (1, 0), "{stats:?}");

    // Touched: the new expiry is relative too.
    store
        .touch(&key(1), behind(), behind() + Duration::from_secs(120))
        .await
        .unwrap();
    let pttl: i64 = cmd(&mut conn, &["PTTL", &entry_key]).await;
    assert!(pttl > 115_000 && pttl <= 120_000, "a 120 s TTL: {pttl}");
    assert!(store.get(&key(1)).await.unwrap().is_some());
    store.clear().await.unwrap();
}

/// An entry Redis drops before its expiry (a `volatile-*` eviction, here a `DEL` behind the
/// store's back) leaves index members and bytes behind until a purge finds it gone.
#[tokio::test]
async fn a_purge_removes_the_index_members_of_entries_evicted_early() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("evicted");
    let store = redis_handle(&url, &prefix);
    let mut conn = raw(&url).await;
    for n in 1..=3 {
        store
            .put(&key(n), entry(&format!("http://h/{n}"), "body", HOUR))
            .await
            .unwrap();
    }
    let before = store.stats().await.unwrap();
    assert_eq!(before.entries, 3);
    let evicted: i64 = cmd(
        &mut conn,
        &["DEL", &format!("{prefix}:cache:e:{}", key(2).to_hex())],
    )
    .await;
    assert_eq!(evicted, 1);
    assert_eq!(store.purge_expired().await.unwrap(), 1);
    let after = store.stats().await.unwrap();
    assert_eq!(after.entries, 2, "{after:?}");
    assert_eq!(
        after.bytes,
        before.bytes - entry("http://h/2", "body", HOUR).size() as u64
    );
    let member = format!("http://h/2\0{}", key(2).to_hex());
    for index in ["urls", "expiry"] {
        let score: Option<f64> = cmd(
            &mut conn,
            &["ZSCORE", &format!("{prefix}:cache:{index}"), &member],
        )
        .await;
        assert_eq!(score, None, "{index}");
    }
    let size: Option<u64> = cmd(
        &mut conn,
        &["HGET", &format!("{prefix}:cache:sizes"), &member],
    )
    .await;
    assert_eq!(size, None);
    assert!(store.get(&key(1)).await.unwrap().is_some());
    assert!(store.get(&key(3)).await.unwrap().is_some());
    store.clear().await.unwrap();
}

/// Marks a child's answer in its output.
const ANSWER: &str = "answer: ";

/// A process over the shared Redis with its own memory tier, taking commands on stdin.
struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    fn start(env: &[(&'static str, String)]) -> Process {
        let mut child = child::spawn_interactive("redis::child_cache_process", env);
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Process {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and returns the child's answer (its next line with [`ANSWER`]).
    fn ask(&mut self, command: &str) -> String {
        tokio::task::block_in_place(|| {
            writeln!(self.stdin, "{command}").unwrap();
            self.stdin.flush().unwrap();
            loop {
                let mut line = String::new();
                let read = self.stdout.read_line(&mut line).unwrap();
                assert!(read > 0, "the child exited while asked {command:?}");
                // The test harness may have started the line (`test ... `).
                if let Some((_, answer)) = line.split_once(ANSWER) {
                    return answer.trim_end().to_owned();
                }
            }
        })
    }

    /// Asks `command` until `done` accepts the answer (up to 5 s); returns it.
    fn ask_until(&mut self, command: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let answer = self.ask(command);
            if done(&answer) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "{command:?} still answers {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn quit(mut self) {
        assert_eq!(self.ask("quit"), "bye");
        let output = self.child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
    }
}

/// Child entry: a tiered store (memory over Redis) under the cache layer, driven by commands on
/// stdin, one answer line ([`ANSWER`] ...) each: `live`, `get URL`, `cached URL` (only-if-cached),
/// `reload URL`, `post URL`, `clear`, `memory` (entries in the memory tier), `quit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by the cross-process Redis tests"]
async fn child_cache_process() {
    if !child::is_child("redis::child_cache_process") {
        return;
    }
    let tiered = TieredCacheStore::new(MemoryCacheStore::new(), crate::backend::from_env());
    let client = client(CacheLayer::new(tiered.clone()).default_ttl(CacheTtl::absolute(HOUR)));
    let describe = |got: crate::Got| {
        format!(
            "{} {:?} {}",
            got.status.as_u16(),
            got.cache.unwrap(),
            got.text()
        )
    };
    let stdin = std::io::stdin();
    loop {
        let mut line = String::new();
        if tokio::task::block_in_place(|| stdin.lock().read_line(&mut line)).unwrap() == 0 {
            return;
        }
        let (command, url) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let answer = match command {
            "live" => {
                // The first operation subscribes to the change feed.
                tiered.stats().await.unwrap();
                let _ = tiered.get(&key(0)).await.unwrap();
                wait_until("the memory tier is live", || tiered.is_memory_live()).await;
                "live".to_owned()
            }
            "get" => describe(send(&client, get(url)).await),
            "cached" => describe(send(&client, get(url).extension(CacheMode::OnlyIfCached)).await),
            "reload" => describe(send(&client, get(url).extension(CacheMode::Reload)).await),
            "post" => describe(send(&client, http::Request::post(url)).await),
            "clear" => {
                tiered.clear().await.unwrap();
                "cleared".to_owned()
            }
            "memory" => tiered.memory().stats().await.unwrap().entries.to_string(),
            "quit" => {
                println!("{ANSWER}bye");
                return;
            }
            other => panic!("unknown command {other}"),
        };
        println!("{ANSWER}{answer}");
    }
}

/// Two OS processes, each with its own memory tier over one Redis: what one stores the other
/// serves; what one replaces, invalidates or clears the other stops serving from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_tiers_in_several_processes_follow_each_others_changes() {
    let Some(url) = shared_url().await else {
        return;
    };
    let server = TestServer::start().await;
    let env = vec![
        ("REDIS_URL", url.clone()),
        ("PREFIX", unique_prefix("several_processes")),
    ];
    let (mut a, mut b) = (Process::start(&env), Process::start(&env));
    assert_eq!(a.ask("live"), "live");
    assert_eq!(b.ask("live"), "live");
    let page = server.url("/api/issues/1");

    // A stores; A's next read comes from its memory; B is served what A stored.
    let first = a.ask(&format!("get {page}"));
    assert!(first.starts_with("200 Miss "), "{first}");
    let body = first.trim_start_matches("200 Miss ").to_owned();
    assert_eq!(a.ask(&format!("get {page}")), format!("200 Hit {body}"));
    assert_eq!(a.ask("memory"), "1");
    assert_eq!(b.ask(&format!("get {page}")), format!("200 Hit {body}"));
    assert_eq!(server.hits(), 1);

    // B replaces the entry: A stops serving its memory copy and reads B's from Redis.
    let replaced = b.ask(&format!("reload {page}"));
    assert!(replaced.starts_with("200 Miss "), "{replaced}");
    let new_body = replaced.trim_start_matches("200 Miss ").to_owned();
    assert_ne!(new_body, body);
    a.ask_until(&format!("get {page}"), |got| {
        got == format!("200 Hit {new_body}")
    });
    assert_eq!(
        server.hits(),
        2,
        "A read the replacement from Redis, not upstream"
    );

    // B's POST invalidates the URL everywhere: A has nothing cached any more.
    b.ask(&format!("post {page}"));
    a.ask_until(&format!("cached {page}"), |got| got.starts_with("504 "));

    // A caches again; B clears the store: A's memory tier is emptied too.
    assert!(a.ask(&format!("get {page}")).starts_with("200 Miss "));
    assert!(a.ask(&format!("cached {page}")).starts_with("200 Hit "));
    assert_eq!(b.ask("clear"), "cleared");
    a.ask_until(&format!("cached {page}"), |got| got.starts_with("504 "));
    a.ask_until("memory", |n| n == "0");
    a.quit();
    b.quit();
}

fn own_store(own: &OwnRedis, test: &str) -> RedisStore {
    RedisStore::builder(own.url())
        .prefix(unique_prefix(test))
        .connect_timeout(Duration::from_millis(250))
        .operation_timeout(Duration::from_millis(250))
        .connect()
        .unwrap()
}

/// A request while Redis is down or stalled: it passes through, well within the bound of its
/// store operations (a lookup and a write, each limited to 250 ms).
async fn passes_through(client: &crate::Client, url: &str) {
    let started = Instant::now();
    let got = try_send(client, get(url))
        .await
        .expect("the request itself succeeds");
    assert_eq!(
        (got.status, got.cache),
        (http::StatusCode::OK, Some(CacheStatus::Miss))
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

/// Sends until a hit (Redis is back: the first request stores, the next hits), up to 10 s.
async fn hits_again(client: &crate::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = send(client, get(url)).await;
        if got.cache == Some(CacheStatus::Hit) {
            return;
        }
        assert!(Instant::now() < deadline, "never a hit again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pass_through_while_redis_is_down_and_hit_again_after_a_restart() {
    let Some(mut own) = OwnRedis::start() else {
        return;
    };
    let server = TestServer::start().await;
    let redis = own_store(&own, "redis_down");
    let layer = CacheLayer::new(redis.cache()).default_ttl(CacheTtl::absolute(HOUR));
    let client = client(layer.clone());
    let url = server.url("/api/issues/1");
    assert_eq!(
        send(&client, get(&url)).await.cache,
        Some(CacheStatus::Miss)
    );
    assert_eq!(send(&client, get(&url)).await.cache, Some(CacheStatus::Hit));

    own.stop();
    for _ in 0..3 {
        passes_through(&client, &url).await;
    }
    let stats = layer.stats().await;
    assert!(stats.store_errors >= 3, "{stats:?}");
    assert_eq!(server.hits(), 4);

    // The restarted server is empty; the same store reconnects and caches again.
    own.restart();
    hits_again(&client, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pass_through_while_redis_stalls() {
    let Some(own) = OwnRedis::start() else {
        return;
    };
    let server = TestServer::start().await;
    let redis = own_store(&own, "redis_stalls");
    let layer = CacheLayer::new(redis.cache()).default_ttl(CacheTtl::absolute(HOUR));
    let client = client(layer.clone());
    let url = server.url("/api/issues/1");
    send(&client, get(&url)).await;
    assert_eq!(send(&client, get(&url)).await.cache, Some(CacheStatus::Hit));

    // Stalled, as a server that swaps or blocks on a slow command: connected, never answering.
    own.pause();
    let errors = layer.stats().await.store_errors;
    for _ in 0..2 {
        passes_through(&client, &url).await;
    }
    assert!(layer.stats().await.store_errors >= errors + 2);
    own.resume();
    // The entry survived the stall: hits again, without a new store.
    hits_again(&client, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_tier_is_emptied_while_the_change_feed_is_down_and_refills_after() {
    let Some(mut own) = OwnRedis::start() else {
        return;
    };
    let server = TestServer::start().await;
    let redis = own_store(&own, "feed_down");
    let back: RedisCacheStore = redis.cache();
    let tiered = TieredCacheStore::new(MemoryCacheStore::new(), back.clone());
    let layer = CacheLayer::new(tiered.clone()).default_ttl(CacheTtl::absolute(HOUR));
    let client = client(layer.clone());
    let url = server.url("/api/issues/1");
    send(&client, get(&url)).await;
    wait_until("subscribed", || tiered.is_memory_live()).await;
    send(&client, get(&url)).await;
    assert_eq!(send(&client, get(&url)).await.cache, Some(CacheStatus::Hit));
    assert_eq!(tiered.memory().stats().await.unwrap().entries, 1);

    own.stop();
    // Changes made elsewhere can no longer reach this process: its memory copy goes.
    wait_until("the feed is down", || !tiered.is_memory_live()).await;
    assert!(!back.is_subscribed());
    assert_eq!(tiered.memory().stats().await.unwrap().entries, 0);
    passes_through(&client, &url).await;
    assert_eq!(
        tiered.memory().stats().await.unwrap().entries,
        0,
        "not refilled while down"
    );

    own.restart();
    wait_until("the feed is back", || tiered.is_memory_live()).await;
    hits_again(&client, &url).await;
    assert_eq!(tiered.memory().stats().await.unwrap().entries, 1);
    assert!(back.is_subscribed());
}

/// A subscription whose server stops answering without closing the connection (paused with
/// SIGSTOP) is noticed by its keepalive: the memory tier is emptied and bypassed, and it comes
/// back once the server answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_change_subscription_counts_as_lost_and_recovers() {
    let Some(own) = OwnRedis::start() else {
        return;
    };
    let redis = own_store(&own, "feed_stalls");
    let back = redis.cache();
    let tiered = TieredCacheStore::new(MemoryCacheStore::new(), back.clone());
    tiered
        .put(&key(1), entry("http://h/1", "v", HOUR))
        .await
        .unwrap();
    wait_until("subscribed", || tiered.is_memory_live()).await;
    tiered.get(&key(1)).await.unwrap();
    assert_eq!(tiered.memory().stats().await.unwrap().entries, 1);

    own.pause();
    let stalled = Instant::now();
    wait_until("the stalled feed counts as lost", || {
        !tiered.is_memory_live()
    })
    .await;
    assert!(
        stalled.elapsed() < Duration::from_secs(3),
        "noticed after {:?}",
        stalled.elapsed()
    );
    assert!(!back.is_subscribed());
    assert_eq!(tiered.memory().stats().await.unwrap().entries, 0);

    own.resume();
    wait_until("the feed is back", || tiered.is_memory_live()).await;
    assert!(back.is_subscribed());
    tiered.get(&key(1)).await.unwrap();
    assert_eq!(tiered.memory().stats().await.unwrap().entries, 1);
}

/// Two tiered stores over clones of one Redis store, in one process: each clone is an instance
/// of its own, so each memory tier drops what the other replaces (and keeps its own writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_stores_over_clones_of_one_store_see_each_others_writes() {
    let Some(url) = shared_url().await else {
        return;
    };
    let store = redis_handle(&url, &unique_prefix("clones"));
    let a = TieredCacheStore::new(MemoryCacheStore::new(), store.clone());
    let b = TieredCacheStore::new(MemoryCacheStore::new(), store.clone());
    let in_memory = |t: &TieredCacheStore| {
        t.memory()
            .get_now(&key(1))
            .unwrap()
            .unwrap()
            .map(|e| e.body.clone())
    };
    a.put(&key(1), entry("http://h/1", "v1", HOUR))
        .await
        .unwrap();
    b.get(&key(1)).await.unwrap();
    wait_until("both subscribed", || {
        a.is_memory_live() && b.is_memory_live()
    })
    .await;
    // The subscription may have come up before a's first write reached Redis: that write's report
    // then reaches b later, possibly after b's next read filled its memory tier, and empties it
    // again (the guarantee is eventual). Read until the entry stays; under load one read is not
    // always enough.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        b.get(&key(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        if in_memory(&b).as_deref() == Some(&b"v1"[..]) {
            break;
        }
        assert!(Instant::now() < deadline, "b never kept v1 in memory");
    }

    a.put(&key(1), entry("http://h/1", "v2", HOUR))
        .await
        .unwrap();
    wait_until("b drops what a replaced", || in_memory(&b).is_none()).await;
    assert_eq!(b.get(&key(1)).await.unwrap().unwrap().body, "v2");
    assert_eq!(
        in_memory(&a).as_deref(),
        Some(&b"v2"[..]),
        "a keeps its own write"
    );

    b.delete(&key(1)).await.unwrap();
    wait_until("a drops what b deleted", || in_memory(&a).is_none()).await;
    assert!(a.get(&key(1)).await.unwrap().is_none());
    store.clear().await.unwrap();
}

/// The entry value as format 1 lays it out (`crate::store::codec`), written by hand: what the
/// builds before the shared codec wrote, byte for byte.
fn format_1_value(url: &str, body: &[u8], expires_ms: i64) -> Vec<u8> {
    let mut value = vec![1, 0, 203, 20]; // format, status 203, HTTP/2
    for int in [1_000i64, 250, expires_ms, expires_ms, -1] {
        value.extend_from_slice(&int.to_be_bytes());
    }
    let headers = b"\0\0\0\x04etag\0\0\0\x03\"x\"\0\0\0\x0aset-cookie\0\0\0\x03a=1\0\0\0\x0aset-cookie\0\0\0\x03b=2";
    for part in [url.as_bytes(), b"accept", &headers[..]] {
        value.extend_from_slice(&(part.len() as u32).to_be_bytes());
        value.extend_from_slice(part);
    }
    value.extend_from_slice(body);
    value
}

/// Values written by earlier builds in format 1 read back intact; a damaged value, or one in a
/// format this build does not know, is a miss (not an error, not a panic).
#[tokio::test]
async fn format_1_values_read_back_and_damaged_ones_are_misses() {
    let Some(url) = shared_url().await else {
        return;
    };
    let prefix = unique_prefix("format");
    let store = redis_handle(&url, &prefix);
    let mut conn = raw(&url).await;
    let expires = SystemTime::now() + HOUR;
    let expires_ms = expires
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let good = format_1_value("http://h/1", b"body", expires_ms);
    let mut future = good.clone();
    future[0] = 2;
    let values = [
        good.clone(),
        good[..30].to_vec(),
        future,
        b"not an entry".to_vec(),
    ];
    for (n, value) in values.iter().enumerate() {
        let entry_key = format!("{prefix}:cache:e:{}", key(n as u8 + 1).to_hex());
        let mut hset = redis::cmd("HSET");
        hset.arg(&entry_key)
            .arg("u")
            .arg("http://h/1")
            .arg("e")
            .arg(&value[..])
            .arg("f")
            .arg(expires_ms)
            .arg("x")
            .arg(expires_ms);
        let _: i64 = hset.query_async(&mut conn).await.unwrap();
        let _: i64 = cmd(&mut conn, &["PEXPIRE", &entry_key, "60000"]).await;
    }
    let got = store.get(&key(1)).await.unwrap().expect("format 1 reads");
    assert_eq!(got.url, "http://h/1");
    assert_eq!(got.status, http::StatusCode::NON_AUTHORITATIVE_INFORMATION);
    assert_eq!(got.version, http::Version::HTTP_2);
    assert_eq!(&got.body[..], b"body");
    assert_eq!(got.vary, vec![http::header::ACCEPT]);
    assert_eq!(got.age_at_store, Duration::from_millis(250));
    assert_eq!(got.sliding, None);
    assert_eq!(got.headers["etag"], "\"x\"");
    let cookies: Vec<_> = got.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    for n in 2..=4 {
        assert!(store.get(&key(n)).await.unwrap().is_none(), "key {n}");
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.hits, stats.misses, stats.errors),
        (1, 3, 0),
        "{stats:?}"
    );
}
