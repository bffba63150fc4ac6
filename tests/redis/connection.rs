//! Connecting, failing within the timeout, and recovering without a restart of the application.

use std::time::{Duration, Instant};

use courteous::store::redis::RedisStore;

use crate::support::redis::{OwnRedis, shared_url};

#[tokio::test]
async fn the_shared_server_answers_with_its_clock() {
    let Some(url) = shared_url().await else {
        return;
    };
    let store = RedisStore::connect(url).unwrap();
    store.ping().await.unwrap();
    let skew = store
        .server_time()
        .await
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(5), "{skew:?}");
}

#[tokio::test]
async fn a_port_with_nothing_listening_fails_fast_with_a_typed_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
        .operation_timeout(Duration::from_millis(300))
        .connect()
        .expect("connecting is lazy: creating the store succeeds while Redis is down");
    let started = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_restarted_server_is_used_again_without_a_new_store() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .operation_timeout(Duration::from_millis(300))
        .connect()
        .unwrap();
    store.ping().await.unwrap();

    redis.stop();
    let started = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.ping().await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_unavailable(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the store did not reconnect: {e}"),
        }
    }
}

/// The store's connection has TCP keepalive on: Linux shows its keepalive timer armed
/// (`tr` 02 in `/proc/net/tcp`) on an idle, established connection that has it, and no timer
/// on one without it.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_connection_sends_keepalive_probes() {
    let Some(redis) = OwnRedis::start() else {
        return;
    };
    let url = redis.url();
    let port: u16 = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let store = RedisStore::connect(url).unwrap();
    store.ping().await.unwrap();
    // This process's sockets.
    let ours: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut timers = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (remote, state, timer, inode) = (fields[2], fields[3], fields[5], fields[9]);
            let remote_port = u16::from_str_radix(remote.rsplit(':').next().unwrap(), 16).unwrap();
            if remote_port == port && state == "01" && ours.iter().any(|i| i == inode) {
                timers.push(timer.split(':').next().unwrap().to_owned());
            }
        }
    }
    assert!(!timers.is_empty(), "no connection to port {port} found");
    assert!(
        timers.iter().all(|t| t == "02"),
        "timers {timers:?} (02: keepalive)"
    );
    drop(store);
}
