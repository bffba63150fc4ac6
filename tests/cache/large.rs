//! Bodies over `max_entry_size` stream through uncached, with flat memory.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use courteous::cache::{CacheLayer, CacheStatus, CacheTtl, MemoryCacheStore};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::support::{TestServer, child, server::query_map};
use crate::{client, get, send};

const CHUNK: usize = 64 * 1024;

/// `/big?bytes=N[&length=1]`: N bytes in 64 KiB chunks of one shared buffer (so the server holds
/// no copy), chunked unless `length` asks for a `Content-Length`.
async fn big(request: Request) -> Response {
    let query = query_map(&request);
    let total: usize = query.get("bytes").and_then(|v| v.parse().ok()).unwrap_or(0);
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    let chunks = (0..total.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(total - i * CHUNK);
        Ok::<_, std::io::Error>(chunk.slice(..len))
    });
    let mut response = Response::builder().header("cache-control", "max-age=3600");
    if query.contains_key("length") {
        response = response.header("content-length", total);
    }
    response
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap()
}

async fn big_server() -> TestServer {
    TestServer::with_router(|_| Router::new().route("/big", axum::routing::get(big))).await
}

#[tokio::test]
async fn a_body_over_max_entry_size_streams_through_whole_and_uncached() {
    let server = big_server().await;
    let layer = CacheLayer::new(MemoryCacheStore::new())
        .default_ttl(CacheTtl::absolute(Duration::from_secs(3600)))
        .max_entry_size(100 * 1024);
    let client = client(layer.clone());
    for query in ["bytes=1000000", "bytes=1000000&length=1"] {
        let url = server.url(&format!("/big?{query}"));
        for _ in 0..2 {
            let got = send(&client, get(&url)).await;
            assert_eq!(got.body.len(), 1_000_000);
            assert!(got.body.iter().all(|&b| b == b'z'));
            assert_eq!(got.cache, Some(CacheStatus::Miss));
        }
    }
    // Within the limit, the same route is stored.
    let small = server.url("/big?bytes=100000");
    send(&client, get(&small)).await;
    let hit = send(&client, get(&small)).await;
    assert_eq!(
        (hit.body.len(), hit.cache),
        (100_000, Some(CacheStatus::Hit))
    );
    assert_eq!(layer.stats().await.store.entries, 1);
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Child entry: streams `BYTES` through the cache layer (limit 5 MiB) and prints the peak
/// resident memory before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by a_1_gib_body_streams_through_with_flat_memory"]
async fn child_streams_a_large_body() {
    if !child::is_child("large::child_streams_a_large_body") {
        return;
    }
    let total: usize = child::param("BYTES");
    let server = big_server().await;
    let layer = CacheLayer::new(MemoryCacheStore::new())
        .default_ttl(CacheTtl::absolute(Duration::from_secs(3600)));
    let client = client(layer.clone());
    // Warm up (connection pool, runtime, allocator) with a body under the limit.
    send(&client, get(&server.url("/big?bytes=1000000"))).await;
    let before = peak_rss_kib();
    let started = Instant::now();
    let request = http::Request::get(server.url(&format!("/big?bytes={total}")))
        .body(reqwest::Body::from(""))
        .unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    let status = courteous::Report::of(&response).unwrap().cache;
    let mut body = response.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
        }
    }
    let after = peak_rss_kib();
    println!(
        "streamed {received} bytes in {:?}; cache {status:?}; peak rss before {before} KiB, after {after} KiB, growth {} KiB; stored entries {}",
        started.elapsed(),
        after - before,
        layer.stats().await.store.entries,
    );
    println!("result {received} {before} {after}");
}

#[tokio::test]
async fn a_1_gib_body_streams_through_with_flat_memory() {
    const GIB: usize = 1024 * 1024 * 1024;
    let out = tokio::task::spawn_blocking(|| {
        child::wait_ok(child::spawn(
            "large::child_streams_a_large_body",
            &[("BYTES", GIB.to_string())],
        ))
    })
    .await
    .unwrap();
    println!("{out}");
    let result = out
        .lines()
        .find_map(|l| l.split_once("result ").map(|(_, r)| r))
        .expect("child printed its result");
    let numbers: Vec<u64> = result.split(' ').map(|n| n.parse().unwrap()).collect();
    let (received, before, after) = (numbers[0], numbers[1], numbers[2]);
    assert_eq!(received, GIB as u64);
    // The limit is 5 MiB; allow for it, a chunk, and the allocator: far below the 1 GiB body.
    assert!(
        after - before < 48 * 1024,
        "peak memory grew by {} KiB",
        after - before
    );
}
