//! The metrics of the table in the `observe` docs, read back from `metrics-util`'s debugging
//! recorder.

use std::collections::BTreeMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};

use crate::support::server::TestServer;
use crate::{full_stack, get};

/// `name{label=value,...}` -> counter value or number of histogram samples.
fn snapshot(recorder: &DebuggingRecorder) -> BTreeMap<String, u64> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let value = match value {
                DebugValue::Counter(n) => n,
                DebugValue::Histogram(samples) => samples.len() as u64,
                DebugValue::Gauge(g) => g.into_inner() as u64,
            };
            (name, value)
        })
        .collect()
}

/// Runs `test` on a current-thread runtime with a debugging recorder installed for this
/// thread, and returns what it recorded.
fn recorded<F: std::future::Future<Output = ()>>(
    test: impl FnOnce() -> F,
) -> BTreeMap<String, u64> {
    let recorder = DebuggingRecorder::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    snapshot(&recorder)
}

#[test]
fn the_documented_metrics_with_their_labels() {
    let seen = recorded(|| async {
        let server = TestServer::start().await;
        let client = full_stack();
        // A miss (upstream 200), a hit, a refusal, and a miss answered 404.
        get(&client, &server.url("/api/issues/1")).await.unwrap();
        get(&client, &server.url("/api/issues/1")).await.unwrap();
        get(&client, &server.url("/api/issues/2"))
            .await
            .unwrap_err();
        get(&client, &server.url("/api/volumes/1?status=404"))
            .await
            .unwrap();
        server.stop().await;
    });
    let expect = [
        ("courteous_requests_total{cache=miss,resource=issues}", 1),
        ("courteous_requests_total{cache=hit,resource=issues}", 1),
        ("courteous_requests_total{cache=error,resource=issues}", 1),
        ("courteous_requests_total{cache=miss,resource=volumes}", 1),
        (
            "courteous_upstream_requests_total{resource=issues,status=200}",
            1,
        ),
        (
            "courteous_upstream_requests_total{resource=volumes,status=404}",
            1,
        ),
        ("courteous_upstream_latency_seconds{resource=issues}", 1),
        (
            "courteous_rate_limit_wait_seconds{priority=user,resource=issues}",
            1,
        ),
        (
            "courteous_rate_limit_refusals_total{priority=user,resource=issues}",
            1,
        ),
    ];
    for (name, value) in expect {
        assert_eq!(seen.get(name), Some(&value), "{name} in {seen:#?}");
    }
    assert!(
        !seen
            .keys()
            .any(|k| k.starts_with("courteous_dedupe_followers_total")),
        "no follower yet: {seen:#?}"
    );
}

#[test]
fn dedupe_followers_are_counted() {
    let seen = recorded(|| async {
        let server = TestServer::start().await;
        let client = full_stack();
        let url = server.url("/api/issues/7?delay_ms=200");
        let (a, b) = tokio::join!(get(&client, &url), get(&client, &url));
        a.unwrap();
        b.unwrap();
        assert_eq!(server.hits(), 1, "the second joined the first");
        server.stop().await;
    });
    assert_eq!(
        seen.get("courteous_dedupe_followers_total{resource=issues}"),
        Some(&1),
        "{seen:#?}"
    );
    // One admission, one upstream call: the follower's copy of the leader's report counts nothing.
    for name in [
        "courteous_rate_limit_wait_seconds{priority=user,resource=issues}",
        "courteous_upstream_requests_total{resource=issues,status=200}",
        "courteous_upstream_latency_seconds{resource=issues}",
    ] {
        assert_eq!(seen.get(name), Some(&1), "{name} in {seen:#?}");
    }
}

#[test]
fn store_errors_are_counted_by_layer() {
    let seen = recorded(|| async {
        let server = TestServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let sqlite = courteous::store::sqlite::SqliteStore::open(dir.path().join("c.db"))
            .await
            .unwrap();
        // A closed store fails every operation: the request passes through.
        sqlite.close().await.unwrap();
        let client = crate::client_over(courteous::CacheLayer::new(sqlite.cache()));
        let response = get(&client, &server.url("/api/issues/1")).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        server.stop().await;
    });
    assert!(
        seen.get("courteous_store_errors_total{layer=cache}")
            .is_some_and(|n| *n >= 1),
        "{seen:#?}"
    );
}
