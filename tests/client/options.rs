//! One test per option of the builder; each fails without its option.

use std::time::Duration;

use courteous::{
    CacheMode, CacheStatus, Courteous, DedupeRole, DefaultKeyExtractor, HttpClient, Limit,
    PrefixTable, Priority,
};
use http::HeaderName;
use tower::{ServiceBuilder, ServiceExt};

use crate::support::TestServer;
use crate::{get, refused};

fn hour() -> Duration {
    Duration::from_secs(3600)
}

fn per_minute(n: u32) -> Limit {
    Limit::per_minute(n)
}

#[tokio::test]
async fn resource_ttl_serves_the_second_request_from_the_cache() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .resource("issue", |r| r.ttl(hour()))
        .build()
        .await
        .unwrap();
    let url = server.url("/api/issue/1/");
    assert_eq!(get(&client, &url).await.1.cache, Some(CacheStatus::Miss));
    assert_eq!(get(&client, &url).await.1.cache, Some(CacheStatus::Hit));
    assert_eq!(server.hits(), 1);
    // Another resource has no TTL, and the server sends no cache headers: not stored. (Dedupe
    // may still hand the second request the first one's result, kept 3 s for late followers.)
    let other = server.url("/api/volume/1/");
    get(&client, &other).await;
    assert_eq!(get(&client, &other).await.1.cache, Some(CacheStatus::Miss));
}

#[tokio::test]
async fn default_ttl_caches_every_resource_without_its_own() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .default_ttl(hour())
        .resource("search", |r| r.ttl(Duration::ZERO))
        .build()
        .await
        .unwrap();
    let (issue, search) = (server.url("/api/issue/1/"), server.url("/api/search/?q=x"));
    assert_eq!(get(&client, &issue).await.1.cache, Some(CacheStatus::Miss));
    assert_eq!(get(&client, &search).await.1.cache, Some(CacheStatus::Miss));
    assert_eq!(get(&client, &issue).await.1.cache, Some(CacheStatus::Hit));
    let (_, report) = get(&client, &search).await;
    assert_eq!(
        report.cache,
        Some(CacheStatus::Miss),
        "a zero TTL of its own: never stored"
    );
    assert_eq!(server.hits_on("/api/issue/1/"), 1);
}

#[tokio::test]
async fn resource_limit_refuses_the_request_over_it() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .resource("search", |r| r.limit(per_minute(2)))
        .max_wait(Duration::ZERO)
        .build()
        .await
        .unwrap();
    for i in 0..2 {
        let url = server.url(&format!("/api/search/?q={i}"));
        assert!(!refused(&client, &url).await);
    }
    assert!(refused(&client, &server.url("/api/search/?q=2")).await);
    assert_eq!(server.hits(), 2);
    // Other resources have no limit.
    for i in 0..5 {
        let url = server.url(&format!("/api/issue/{i}/"));
        assert!(!refused(&client, &url).await);
    }
}

#[tokio::test]
async fn default_limit_applies_to_resources_without_their_own() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .default_limit(per_minute(1))
        .resource("search", |r| r.limit(per_minute(3)))
        .max_wait(Duration::ZERO)
        .build()
        .await
        .unwrap();
    assert!(!refused(&client, &server.url("/api/issue/1/")).await);
    assert!(refused(&client, &server.url("/api/issue/2/")).await);
    for i in 0..3 {
        let url = server.url(&format!("/api/search/?q={i}"));
        assert!(
            !refused(&client, &url).await,
            "search has limits of its own"
        );
    }
}

#[tokio::test]
async fn max_wait_bounds_the_wait_for_the_limiter() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .default_limit(per_minute(1))
        .max_wait(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    assert!(!refused(&client, &server.url("/api/issue/1/")).await);
    // Without the option the request would wait up to the default 60 s.
    let url = server.url("/api/issue/2/");
    let second = tokio::time::timeout(Duration::from_secs(10), refused(&client, &url));
    assert!(second.await.expect("refused within max_wait"));
}

#[tokio::test]
async fn dedupe_merges_concurrent_requests_unless_switched_off() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .resource("search", |r| r.dedupe(false))
        .build()
        .await
        .unwrap();
    let merged = server.url("/api/issue/1/?delay_ms=300");
    let (a, b) = tokio::join!(get(&client, &merged), get(&client, &merged));
    assert_eq!(server.hits_on("/api/issue/1/"), 1);
    let roles = [a.1.dedupe, b.1.dedupe];
    assert!(roles.contains(&Some(DedupeRole::Follower)), "{roles:?}");

    let apart = server.url("/api/search/?q=x&delay_ms=300");
    let (a, b) = tokio::join!(get(&client, &apart), get(&client, &apart));
    assert_eq!(
        server.hits_on("/api/search/"),
        2,
        "dedupe(false): each goes upstream"
    );
    assert_eq!((a.1.dedupe, b.1.dedupe), (None, None));
}

#[tokio::test]
async fn cache_mode_applies_to_the_resource_unless_the_request_sets_one() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .resource("archive", |r| {
            r.ttl(hour()).cache_mode(CacheMode::OnlyIfCached)
        })
        .build()
        .await
        .unwrap();
    let url = server.url("/api/archive/1/");
    let (status, report) = get(&client, &url).await;
    assert_eq!(status, 504, "only-if-cached and nothing stored");
    assert_eq!(report.cache, Some(CacheStatus::Miss));
    assert_eq!(server.hits(), 0);
    // A request's own mode wins.
    let response = client
        .get(&url)
        .with_extension(CacheMode::Default)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.hits(), 1);
    let (status, report) = get(&client, &url).await;
    assert_eq!((status, report.cache), (200, Some(CacheStatus::Hit)));
    // Only that resource: another one goes upstream as usual.
    let (status, _) = get(&client, &server.url("/api/issue/1/")).await;
    assert_eq!(status, 200);
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn default_priority_marks_requests_without_one() {
    let server = TestServer::start().await;
    let background = Courteous::new(reqwest::Client::new())
        .default_priority(Priority::Background)
        .build()
        .await
        .unwrap();
    let url = server.url("/api/issue/1/");
    assert_eq!(
        get(&background, &url).await.1.priority,
        Some(Priority::Background)
    );
    let marked = background
        .get(&url)
        .with_extension(Priority::User)
        .send()
        .await
        .unwrap();
    let report = marked.extensions().get::<courteous::Report>().unwrap();
    assert_eq!(report.priority, Some(Priority::User));
}

#[tokio::test]
async fn classifier_names_the_resources_the_settings_apply_to() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .classifier(PrefixTable::new().route("/v2/things", "widgets"))
        .resource("widgets", |r| r.ttl(hour()))
        .build()
        .await
        .unwrap();
    let url = server.url("/v2/things/1");
    let (_, report) = get(&client, &url).await;
    assert_eq!(
        report.resource.as_ref().map(|r| r.as_str()),
        Some("widgets")
    );
    assert_eq!(get(&client, &url).await.1.cache, Some(CacheStatus::Hit));
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn key_extractor_separates_requests_by_the_headers_it_names() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .key_extractor(DefaultKeyExtractor::new().header(HeaderName::from_static("x-tenant")))
        .default_ttl(hour())
        .build()
        .await
        .unwrap();
    let url = server.url("/api/issue/1/");
    for tenant in ["a", "b", "a"] {
        client
            .get(&url)
            .header("x-tenant", tenant)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(server.hits(), 2, "one upstream call per tenant");
}

#[tokio::test]
async fn default_headers_put_the_clients_credentials_in_the_key() {
    let server = TestServer::start().await;
    let (_dir, path) = crate::support::temp_db();
    let sqlite = courteous::store::sqlite::SqliteStore::open(&path)
        .await
        .unwrap();
    let url = server.url("/api/issue/1/");
    for user in ["alice", "bob"] {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {user}").parse().unwrap(),
        );
        let reqwest = reqwest::Client::builder()
            .default_headers(headers.clone())
            .build()
            .unwrap();
        let client = Courteous::new(reqwest)
            .sqlite_store(sqlite.clone())
            .default_headers(headers)
            .default_ttl(hour())
            .build()
            .await
            .unwrap();
        let (_, report) = get(&client, &url).await;
        assert_eq!(
            report.cache,
            Some(CacheStatus::Miss),
            "{user} gets no one else's answer"
        );
        sqlite.flush().await.unwrap();
    }
    assert_eq!(server.hits(), 2);
    sqlite.close().await.unwrap();
}

#[tokio::test]
async fn layers_and_service_run_the_same_stack_under_tower() {
    let server = TestServer::start().await;
    let stack = Courteous::new(reqwest::Client::new())
        .default_ttl(hour())
        .layers()
        .await
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(stack.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let request = || {
        http::Request::get(server.url("/api/issue/1/"))
            .body(reqwest::Body::from(""))
            .unwrap()
    };
    service.clone().oneshot(request()).await.unwrap();
    let response = service.oneshot(request()).await.unwrap();
    let report = courteous::Report::of(&response).unwrap();
    assert_eq!(report.cache, Some(CacheStatus::Hit));
    assert_eq!(server.hits(), 1);
    assert!(stack.cache().stats().await.hits >= 1);

    let service = Courteous::new(reqwest::Client::new())
        .default_ttl(hour())
        .service()
        .await
        .unwrap();
    service.clone().oneshot(request()).await.unwrap();
    service.oneshot(request()).await.unwrap();
    assert_eq!(
        server.hits(),
        2,
        "a second build has a cache of its own (memory)"
    );
}

/// The journal is on with SQLite by default, off with `.journal(false)`, and off in memory unless
/// asked for.
#[tokio::test]
async fn journal_is_on_for_sqlite_and_follows_the_option() {
    use courteous::journal::JournalQuery;
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();

    let layers = Courteous::new(reqwest::Client::new())
        .sqlite(dir.path().join("on.db"))
        .layers()
        .await
        .unwrap();
    let client = layers.client(reqwest::Client::new());
    get(&client, &server.url("/api/issue/1/?token=s3cret")).await;
    let journal = layers.journal().expect("on by default with SQLite");
    layers.sqlite().unwrap().flush().await.unwrap();
    let rows = journal.query(&JournalQuery::all()).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        !rows[0].url.contains("s3cret"),
        "the URL is masked: {}",
        rows[0].url
    );

    let off = Courteous::new(reqwest::Client::new())
        .sqlite(dir.path().join("off.db"))
        .journal(false)
        .layers()
        .await
        .unwrap();
    assert!(off.journal().is_none());

    let memory = Courteous::new(reqwest::Client::new())
        .layers()
        .await
        .unwrap();
    assert!(memory.journal().is_none(), "off in memory by default");
    let memory = Courteous::new(reqwest::Client::new())
        .journal(true)
        .layers()
        .await
        .unwrap();
    let client = memory.client(reqwest::Client::new());
    get(&client, &server.url("/api/issue/2/")).await;
    let rows = memory
        .journal()
        .unwrap()
        .query(&JournalQuery::all())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    server.stop().await;
}
