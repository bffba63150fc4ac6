//! What the stack journals: a row for each request whose own call reached the upstream.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use courteous::cache::{CacheLayer, CacheStatus, MemoryCacheStore};
use courteous::journal::{GroupBy, Journal, JournalQuery, MemoryJournalStore};
use courteous::{ContextLayer, DedupeRole, DefaultKeyExtractor, HttpClient, Priority};
use futures_util::future::join_all;
use tower::{ServiceBuilder, ServiceExt};

use crate::support::TestServer;
use crate::support::server::Log;
use crate::{fetch, journaled, stack};

fn memory() -> Journal {
    Journal::new(MemoryJournalStore::new())
}

#[tokio::test]
async fn a_miss_is_journaled_and_the_hit_after_it_is_not() {
    let server = TestServer::start().await;
    let journal = memory();
    let client = journaled(&journal);
    let url = server.url("/api/issues/7?size=1234");

    assert_eq!(fetch(&client, &url).await.cache, Some(CacheStatus::Miss));
    assert_eq!(fetch(&client, &url).await.cache, Some(CacheStatus::Hit));
    assert_eq!(server.hits(), 1);

    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.resource.as_str(), "issues");
    assert_eq!(row.priority, Priority::User);
    assert_eq!(row.method, http::Method::GET);
    assert_eq!(row.url, url);
    assert_eq!(row.status, http::StatusCode::OK);
    assert_eq!(row.bytes, Some(1234), "the upstream's Content-Length");
    assert!(row.latency > Duration::ZERO);
    assert!(!row.revalidation);
    let now = journal.now();
    assert!(row.time <= now && now.saturating_since(row.time) < Duration::from_secs(10));
    assert_eq!(journal.stats().recorded, 1);
}

#[tokio::test]
async fn dedupe_followers_are_not_journaled() {
    let server = TestServer::start().await;
    let journal = memory();
    let client = journaled(&journal);
    let url = server.url("/api/search/?q=x&delay_ms=300");

    let reports = join_all((0..8).map(|_| fetch(&client, &url))).await;
    assert_eq!(server.hits(), 1);
    let followers = reports
        .iter()
        .filter(|r| r.dedupe.is_some_and(DedupeRole::is_follower))
        .count();
    assert_eq!(followers, 7);

    let summary = journal
        .summary(&JournalQuery::all(), GroupBy::Resource)
        .await
        .unwrap();
    assert_eq!(summary.total.calls, 1);
    assert_eq!(summary.groups[0].key, "search");
    assert_eq!(
        summary.total.followers, 7,
        "the leader's row counts its followers"
    );
}

#[tokio::test]
async fn secrets_in_the_url_never_reach_the_journal() {
    let server = TestServer::start().await;
    let journal = memory();
    let context = ContextLayer::new()
        .key_extractor(DefaultKeyExtractor::new().secret_param("sig"))
        .journal(journal.clone());
    let client = stack(context);
    let url = format!(
        "http://alice:pa55word@{}/api/files/?page=2&api_key=s3cret&sig=abc%20def&token=t0k",
        server.addr
    );

    fetch(&client, &url).await;
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows.len(), 1);
    let logged = &rows[0].url;
    for secret in ["alice", "pa55word", "s3cret", "abc", "t0k"] {
        assert!(!logged.contains(secret), "{secret} in {logged}");
    }
    assert_eq!(
        logged,
        &format!(
            "http://REDACTED@{}/api/files/?page=2&api_key=REDACTED&sig=REDACTED&token=REDACTED",
            server.addr
        )
    );
}

#[tokio::test]
async fn secrets_with_brackets_quotes_or_semicolons_never_reach_the_journal() {
    let server = TestServer::start().await;
    let journal = memory();
    let client = journaled(&journal);
    let url = server.url("/api/files/?token[]=brk3t&a=1;api_key=s3mi&access_token=ab)cd'ef");

    fetch(&client, &url).await;
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    let logged = &rows[0].url;
    for secret in ["brk3t", "s3mi", "ab", "cd", "ef"] {
        assert!(!logged.contains(secret), "{secret} in {logged}");
    }
    assert!(logged.ends_with("?token[]=REDACTED&a=1;api_key=REDACTED&access_token=REDACTED"));
}

#[tokio::test]
async fn a_long_url_is_cut_in_the_journal() {
    let server = TestServer::start().await;
    let journal = memory();
    let client = journaled(&journal);
    let url = server.url(&format!("/api/files/{}?token=s3cret", "x".repeat(60_000)));

    fetch(&client, &url).await;
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows[0].url.len(), courteous::journal::MAX_URL_LEN);
    assert!(!rows[0].url.contains("s3cret"));
}

#[tokio::test]
async fn failed_answers_count_and_group_by_status_and_priority() {
    let server = TestServer::start().await;
    let journal = memory();
    let client = journaled(&journal);
    fetch(&client, &server.url("/api/a/1")).await;
    fetch(&client, &server.url("/api/a/2?status=429")).await;
    fetch(&client, &server.url("/api/b/1?status=500")).await;
    let mut background = http::Request::get(server.url("/api/b/2"))
        .body(reqwest::Body::from(""))
        .unwrap();
    background.extensions_mut().insert(Priority::Background);
    tower::ServiceExt::oneshot(client.clone(), background)
        .await
        .unwrap();

    let by_status = journal
        .summary(&JournalQuery::all(), GroupBy::Status)
        .await
        .unwrap();
    let counts: Vec<_> = by_status
        .groups
        .iter()
        .map(|g| (g.key.as_str(), g.calls, g.quota_spent))
        .collect();
    assert_eq!(counts, [("200", 2, 2), ("429", 1, 1), ("500", 1, 1)]);
    assert_eq!(by_status.total.quota_spent, 4);

    let by_priority = journal
        .summary(&JournalQuery::all(), GroupBy::Priority)
        .await
        .unwrap();
    let counts: Vec<_> = by_priority
        .groups
        .iter()
        .map(|g| (g.key.as_str(), g.calls))
        .collect();
    assert_eq!(counts, [("user", 3), ("background", 1)]);

    let b = journal
        .query(&JournalQuery::all().resource(courteous::Resource::new("b").unwrap()))
        .await
        .unwrap();
    assert_eq!(b.len(), 2);
}

/// `/api/etag`: `ETag: "v1"`, `no-cache` (revalidate every time); `If-None-Match: "v1"` gets a
/// `304`.
async fn etag(State(log): State<Arc<Log>>, request: Request) -> Response {
    log.record(&request);
    let conditional = request
        .headers()
        .get("if-none-match")
        .is_some_and(|v| v == "\"v1\"");
    let builder = Response::builder()
        .header("etag", "\"v1\"")
        .header("cache-control", "no-cache");
    if conditional {
        return builder
            .status(http::StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap();
    }
    builder.body(Body::from("version 1")).unwrap()
}

#[tokio::test]
async fn a_revalidation_is_journaled_as_one() {
    let server = TestServer::with_router(|log| {
        Router::new()
            .route("/api/etag", axum::routing::get(etag))
            .with_state(log)
    })
    .await;
    let journal = memory();
    // No forced TTL: the server's `no-cache` rules.
    let client = ServiceBuilder::new()
        .layer(ContextLayer::new().journal(journal.clone()))
        .layer(CacheLayer::new(MemoryCacheStore::new()))
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone();
    let url = server.url("/api/etag");

    fetch(&client, &url).await;
    let second = fetch(&client, &url).await;
    assert_eq!(second.cache, Some(CacheStatus::Revalidated));
    assert_eq!(server.hits(), 2);

    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(!rows[0].revalidation);
    assert!(rows[1].revalidation);
    assert_eq!(rows[1].status, http::StatusCode::NOT_MODIFIED);
    let summary = journal
        .summary(&JournalQuery::all(), GroupBy::Resource)
        .await
        .unwrap();
    assert_eq!(summary.total.revalidations, 1);
}

#[tokio::test]
async fn without_a_journal_nothing_is_captured() {
    let server = TestServer::start().await;
    let client = stack(ContextLayer::new());
    let report = fetch(&client, &server.url("/api/x/1")).await;
    assert!(report.upstream.is_some());
}

/// `/api/flaky`: the first call succeeds with `max-age=1, stale-if-error=600`; later ones fail
/// with a 500.
async fn flaky(State(log): State<Arc<Log>>, request: Request) -> Response {
    let n = log.record(&request);
    if n == 1 {
        return Response::builder()
            .header("cache-control", "max-age=1, stale-if-error=600")
            .body(Body::from("good"))
            .unwrap();
    }
    Response::builder()
        .status(http::StatusCode::INTERNAL_SERVER_ERROR)
        .body(Body::from("bad"))
        .unwrap()
}

#[tokio::test]
async fn a_stale_answer_served_for_an_upstream_error_journals_the_error() {
    let server = TestServer::with_router(|log| {
        Router::new()
            .route("/api/flaky", axum::routing::get(flaky))
            .with_state(log)
    })
    .await;
    let journal = memory();
    let client = ServiceBuilder::new()
        .layer(ContextLayer::new().journal(journal.clone()))
        .layer(CacheLayer::new(MemoryCacheStore::new()))
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone();
    let url = server.url("/api/flaky");

    fetch(&client, &url).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(fetch(&client, &url).await.cache, Some(CacheStatus::Stale));
    assert_eq!(server.hits(), 2);
    let statuses: Vec<_> = journal
        .query(&JournalQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|row| row.status.as_u16())
        .collect();
    assert_eq!(
        statuses,
        [200, 500],
        "the call that spent quota, with its own answer"
    );
}

#[tokio::test]
async fn the_rate_limiters_wait_is_journaled() {
    use courteous::rate_limit::{Limit, Limits, MemoryRateLimitStore, RateLimitLayer};

    let server = TestServer::start().await;
    let journal = memory();
    let limits = Limits::new().default_limit(Limit::per_second(1));
    let client = ServiceBuilder::new()
        .layer(ContextLayer::new().journal(journal.clone()))
        .layer(RateLimitLayer::new(MemoryRateLimitStore::new(), limits).unwrap())
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone();

    fetch(&client, &server.url("/api/a/1")).await;
    fetch(&client, &server.url("/api/a/2")).await;
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0].limiter_wait < Duration::from_millis(200),
        "{rows:?}"
    );
    assert!(
        rows[1].limiter_wait > Duration::from_millis(500),
        "{rows:?}"
    );
    let summary = journal
        .summary(&JournalQuery::all(), GroupBy::Priority)
        .await
        .unwrap();
    assert_eq!(
        summary.total.limiter_wait,
        rows[0].limiter_wait + rows[1].limiter_wait
    );
}

#[tokio::test]
async fn a_request_cancelled_mid_flight_writes_no_row_and_never_panics() {
    let server = TestServer::start().await;
    let journal = memory();
    let client = journaled(&journal);
    let url = server.url("/api/slow/?delay_ms=400");

    // Alone: dropped while the upstream is answering.
    let cancelled = tokio::time::timeout(Duration::from_millis(50), fetch(&client, &url)).await;
    assert!(cancelled.is_err());
    journal.flush().await.unwrap();
    assert!(
        journal
            .query(&JournalQuery::all())
            .await
            .unwrap()
            .is_empty()
    );

    // A cancelled leader with followers: whoever answers is journaled once per upstream call
    // that answered.
    let url = server.url("/api/slow/?delay_ms=300&n=2");
    // `join!` polls the leader first; it is dropped at 100 ms, the followers wait on.
    let (leader, reports) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(100), fetch(&client, &url)),
        join_all((0..3).map(|_| fetch(&client, &url))),
    );
    assert!(leader.is_err());
    assert_eq!(reports.len(), 3);
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert!(
        !rows.is_empty() && rows.len() as u64 <= server.hits(),
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r.status == http::StatusCode::OK));
}

#[tokio::test]
async fn a_token_in_the_path_is_masked_by_the_journals_own_masking() {
    let server = TestServer::start().await;
    let journal = memory().mask_url(|url| match url.split_once("/bot") {
        Some((head, tail)) => {
            let rest = tail.find('/').map_or("", |i| &tail[i..]);
            format!("{head}/botREDACTED{rest}")
        }
        None => url.to_owned(),
    });
    let client = journaled(&journal);
    let url = server.url("/api/bot123456:AAH-s3cr3t/getMe?token=t0k");

    fetch(&client, &url).await;
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    let logged = &rows[0].url;
    assert!(
        !logged.contains("s3cr3t") && !logged.contains("t0k"),
        "{logged}"
    );
    assert!(
        logged.ends_with("/api/botREDACTED/getMe?token=REDACTED"),
        "{logged}"
    );
    assert!(!rows[0].resource.as_str().contains("s3cr3t"));
}
