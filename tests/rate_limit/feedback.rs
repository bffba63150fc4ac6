//! Server feedback against a real local server: rate-limit headers lower the budget, and an
//! idempotent request may be retried once after `Retry-After`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use courteous::rate_limit::{
    Limit, Limits, MaxWait, MemoryRateLimitStore, RateLimitLayer, RateLimited,
};
use courteous::{HttpClient, Report, Resource};
use tower::{ServiceBuilder, ServiceExt};

use crate::support::TestServer;
use crate::support::server::Log;

/// `/api/quota/`: says 2 - n requests remain for 30 s (IETF names); `/api/xquota/`: says none remain
/// until 30 s from now in Unix seconds (X- names); `/api/flaky/`: 429 with `Retry-After: 1` on
/// the first call, 200 after.
async fn server() -> TestServer {
    TestServer::with_router(|log| {
        Router::new()
            .fallback(|State(log): State<Arc<Log>>, request: Request| async move {
                let n = log.record(&request);
                let builder = Response::builder();
                let builder = match request.uri().path() {
                    "/api/quota/" => builder
                        .header("ratelimit-remaining", 2u64.saturating_sub(n).to_string())
                        .header("ratelimit-reset", "30"),
                    "/api/xquota/" => {
                        let reset = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_secs()
                            + 30;
                        builder
                            .header("x-ratelimit-remaining", "0")
                            .header("x-ratelimit-reset", reset.to_string())
                    }
                    "/api/flaky/" if n == 1 => builder.status(429).header("retry-after", "1"),
                    _ => builder,
                };
                builder.body(axum::body::Body::from("{}")).unwrap()
            })
            .with_state(log)
    })
    .await
}

fn layer() -> RateLimitLayer {
    let limits = Limits::new().default_limit(Limit::per_minute(100));
    RateLimitLayer::new(MemoryRateLimitStore::new(), limits)
        .unwrap()
        .fail_fast()
}

fn get(url: String) -> http::Request<reqwest::Body> {
    http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

#[tokio::test]
async fn remaining_headers_lower_the_budget_in_both_spellings() {
    let server = server().await;
    let layer = layer();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));

    // The server says 1 remains: one more goes (and the server then says 0), the next is refused
    // although our own limit has room for 98.
    service
        .clone()
        .oneshot(get(server.url("/api/quota/")))
        .await
        .unwrap();
    let status = layer
        .status(&Resource::new("quota").unwrap())
        .await
        .unwrap();
    assert_eq!(status.server_remaining, Some(1));
    assert_eq!(status.remaining, 1);
    service
        .clone()
        .oneshot(get(server.url("/api/quota/")))
        .await
        .unwrap();
    let err = service
        .clone()
        .oneshot(get(server.url("/api/quota/")))
        .await
        .unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("rate limited");
    assert!(limited.retry_after() > Duration::from_secs(25), "{limited}");
    assert_eq!(server.hits_on("/api/quota/"), 2);

    service
        .clone()
        .oneshot(get(server.url("/api/xquota/")))
        .await
        .unwrap();
    let err = service
        .clone()
        .oneshot(get(server.url("/api/xquota/")))
        .await
        .unwrap_err();
    assert!(err.is::<RateLimited>());
    assert_eq!(server.hits_on("/api/xquota/"), 1);
}

#[tokio::test]
async fn an_idempotent_request_is_retried_once_after_retry_after() {
    let server = server().await;
    let service = ServiceBuilder::new()
        .layer(layer().retry_once(true))
        .service(HttpClient::new(reqwest::Client::new()));
    let mut request = get(server.url("/api/flaky/"));
    request
        .extensions_mut()
        .insert(MaxWait(Duration::from_secs(5)));
    let started = Instant::now();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let report = Report::of(&response).unwrap().rate_limit.unwrap();
    assert!(report.retried);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.hits_on("/api/flaky/"), 2);
}

#[tokio::test]
async fn no_retry_for_a_post_or_past_max_wait_or_when_off() {
    let server = server().await;
    let retrying = ServiceBuilder::new()
        .layer(layer().retry_once(true))
        .service(HttpClient::new(reqwest::Client::new()));
    let post = http::Request::post(server.url("/api/flaky/"))
        .body(reqwest::Body::from("x"))
        .unwrap();
    let response = retrying.clone().oneshot(post).await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(!Report::of(&response).unwrap().rate_limit.unwrap().retried);

    let server = self::server().await;
    let retrying = ServiceBuilder::new()
        .layer(layer().retry_once(true))
        .service(HttpClient::new(reqwest::Client::new()));
    // Fail-fast: a Retry-After of 1 s is past a max_wait of zero.
    let response = retrying
        .clone()
        .oneshot(get(server.url("/api/flaky/")))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);

    let server = self::server().await;
    let plain = ServiceBuilder::new()
        .layer(layer())
        .service(HttpClient::new(reqwest::Client::new()));
    let mut request = get(server.url("/api/flaky/"));
    request
        .extensions_mut()
        .insert(MaxWait(Duration::from_secs(5)));
    let response = plain.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(server.hits_on("/api/flaky/"), 1);
}

#[tokio::test]
async fn pacing_spaces_calls_to_one_host() {
    use courteous::rate_limit::Pacing;
    let server = TestServer::start().await;
    let service = ServiceBuilder::new()
        .layer(
            layer()
                .max_wait(Duration::from_secs(10))
                .pacing(Pacing::per_host(Duration::from_millis(100))),
        )
        .service(HttpClient::new(reqwest::Client::new()));
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            tokio::spawn(
                service
                    .clone()
                    .oneshot(get(server.url(&format!("/api/r{i}/")))),
            )
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let mut seen: Vec<Instant> = server.seen().iter().map(|s| s.at).collect();
    seen.sort();
    assert_eq!(seen.len(), 5);
    for pair in seen.windows(2) {
        // Five different resources, one host: spaced although no limit is near.
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(80),
            "{:?}",
            pair[1] - pair[0]
        );
    }
}

/// Defect 1 of the reference: the priority never reached the limiter. Both priorities arrive
/// through reqwest-middleware and are counted as what they are.
#[tokio::test]
async fn both_priorities_reach_the_decision_through_reqwest_middleware() {
    use courteous::{CourteousMiddleware, Priority};
    let server = TestServer::start().await;
    let layer = layer();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CourteousMiddleware::new(layer.clone()))
        .build();
    for priority in [Priority::User, Priority::Background, Priority::Background] {
        let response = client
            .get(server.url("/api/volumes/"))
            .with_extension(priority)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let stats = layer.stats().await.resources["volumes"];
    assert_eq!((stats.admitted_user, stats.admitted_background), (1, 2));
}

/// `/api/<resource>/`: answers with the status in the request's `x-reply-status` and, for each
/// request header `x-reply-<name>`, a response header `<name>` with its value: the test decides
/// what the server says.
async fn echo_server() -> TestServer {
    TestServer::with_router(|log| {
        Router::new()
            .fallback(|State(log): State<Arc<Log>>, request: Request| async move {
                log.record(&request);
                let mut builder = Response::builder();
                for (name, value) in request.headers() {
                    if name == "x-reply-status" {
                        builder = builder.status(value.to_str().unwrap().parse::<u16>().unwrap());
                    } else if let Some(name) = name.as_str().strip_prefix("x-reply-") {
                        builder = builder.header(name, value);
                    }
                }
                builder.body(axum::body::Body::from("{}")).unwrap()
            })
            .with_state(log)
    })
    .await
}

fn asking(url: String, status: u16, headers: &[(&str, &str)]) -> http::Request<reqwest::Body> {
    let mut request = get(url);
    request
        .headers_mut()
        .insert("x-reply-status", status.to_string().parse().unwrap());
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-reply-{name}").as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Issue 11 item 4: absurd feedback (`X-RateLimit-Reset: 1900000000000`, `inf`, `1e300`, a date
/// in the year 9999) through a real server never holds the resource back longer than
/// `max_server_block` (one hour by default), and non-finite, negative or unparsable values are
/// ignored, on the memory and the SQLite stores. It used to refuse the resource for up to 292 M
/// years (and the SQLite file kept that across restarts).
#[tokio::test]
async fn absurd_server_feedback_is_capped_or_ignored() {
    let server = echo_server().await;
    let hour = 3_600_000u64;
    /// (status, headers, whether it blocks, as opposed to being ignored)
    type Case<'a> = (u16, &'a [(&'a str, &'a str)], bool);
    let cases: &[Case] = &[
        (429, &[("retry-after", "1e300")], true),
        (429, &[("retry-after", "18446744073709551615")], true),
        (
            503,
            &[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")],
            true,
        ),
        (429, &[("retry-after", "inf")], false),
        (429, &[("retry-after", "-1")], false),
        (429, &[("retry-after", "NaN")], false),
        (429, &[("retry-after", "tomorrow")], false),
        (
            200,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1900000000000"),
            ],
            true,
        ),
        (
            200,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1e300"),
            ],
            true,
        ),
        (
            200,
            &[
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "99999999999"),
            ],
            true,
        ),
        (
            200,
            &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "inf")],
            false,
        ),
        (
            200,
            &[
                ("x-ratelimit-remaining", "inf"),
                ("x-ratelimit-reset", "30"),
            ],
            false,
        ),
        (
            200,
            &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "-30")],
            false,
        ),
    ];
    #[cfg(feature = "sqlite")]
    let (_dir, path) = crate::support::temp_db();
    #[cfg(feature = "sqlite")]
    let sqlite = courteous::store::sqlite::SqliteStore::open(&path)
        .await
        .unwrap();
    let mut layers = vec![("memory", layer())];
    #[cfg(feature = "sqlite")]
    layers.push((
        "sqlite",
        RateLimitLayer::new(
            sqlite.rate_limits(),
            Limits::new().default_limit(Limit::per_minute(100)),
        )
        .unwrap()
        .fail_fast(),
    ));
    for (backend, layer) in layers {
        let service = ServiceBuilder::new()
            .layer(layer.clone())
            .service(HttpClient::new(reqwest::Client::new()));
        for (i, (status, headers, blocks)) in cases.iter().enumerate() {
            let name = format!("evil{i}");
            let resource = Resource::new(&name).unwrap();
            let url = server.url(&format!("/api/{name}/"));
            let response = service
                .clone()
                .oneshot(asking(url.clone(), *status, headers))
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), *status);
            let status = layer.status(&resource).await.unwrap();
            let refused = service.clone().oneshot(asking(url, 200, &[])).await.err();
            let what = format!("{backend} {headers:?}: {status:?}");
            if *blocks {
                let limited = refused
                    .as_ref()
                    .and_then(|e| e.downcast_ref::<RateLimited>())
                    .unwrap_or_else(|| panic!("not held back: {what}"));
                // At most an hour (and a little for the time the test takes).
                assert!(
                    limited.retry_after() <= Duration::from_millis(hour + 60_000),
                    "{what}: {limited}"
                );
                assert!(
                    limited.retry_after() >= Duration::from_millis(hour - 60_000),
                    "{what}: {limited}"
                );
                if let Some(until) = status.blocked_until {
                    assert!(until.as_millis() <= now_ms() + hour + 60_000, "{what}");
                }
            } else {
                assert!(refused.is_none(), "{what}: {refused:?}");
                assert_eq!(status.blocked_until, None, "{what}");
                assert_eq!(status.server_remaining, None, "{what}");
            }
        }
    }
    #[cfg(feature = "sqlite")]
    sqlite.close().await.unwrap();
}

/// A shorter `max_server_block` cuts a long `Retry-After` to it: the resource is free again
/// once it has passed.
#[tokio::test]
async fn max_server_block_cuts_a_long_retry_after() {
    let server = echo_server().await;
    let layer = layer().max_server_block(Duration::from_millis(300));
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let url = server.url("/api/short/");
    service
        .clone()
        .oneshot(asking(url.clone(), 429, &[("retry-after", "86400")]))
        .await
        .unwrap();
    let err = service
        .clone()
        .oneshot(asking(url.clone(), 200, &[]))
        .await
        .unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("rate limited");
    // The block starts when the response is observed, no earlier than its admission's settled
    // stamp (the clock rounded up to the next millisecond): 300 ms from then.
    assert!(
        limited.retry_after() <= Duration::from_millis(301),
        "{limited}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    service.oneshot(asking(url, 200, &[])).await.unwrap();
}

/// Blocks `resource` through `blocker` (a 429 with a day's `Retry-After`, cut to the default
/// hour), checks that `other` (another store over the same file or server) is held back too,
/// lifts it with `blocker`'s `unblock`, and checks that `other` sends again; then the same with
/// a `RateLimit-Remaining: 0` budget.
async fn unblock_is_seen_by(blocker: RateLimitLayer, other: RateLimitLayer) {
    let server = echo_server().await;
    let client = |layer: &RateLimitLayer| {
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(HttpClient::new(reqwest::Client::new()))
    };
    let (first, second) = (client(&blocker), client(&other));
    for (status, headers) in [
        (429u16, &[("retry-after", "86400")][..]),
        (
            200,
            &[("ratelimit-remaining", "0"), ("ratelimit-reset", "86400")][..],
        ),
    ] {
        let resource = Resource::new("lifted").unwrap();
        let url = server.url("/api/lifted/");
        first
            .clone()
            .oneshot(asking(url.clone(), status, headers))
            .await
            .unwrap();
        let err = second
            .clone()
            .oneshot(asking(url.clone(), 200, &[]))
            .await
            .unwrap_err();
        assert!(err.is::<RateLimited>(), "{err}");
        let hits = server.hits();
        blocker.unblock(&resource).await.unwrap();
        let status = other.status(&resource).await.unwrap();
        assert_eq!(status.blocked_until, None, "{status:?}");
        assert_eq!(status.server_remaining, None, "{status:?}");
        second
            .clone()
            .oneshot(asking(url, 200, &[]))
            .await
            .expect("sent again after unblock");
        assert_eq!(server.hits(), hits + 1);
    }
}

fn limits() -> Limits {
    Limits::new().default_limit(Limit::per_minute(100))
}

/// `unblock` lifts a server's block and budget for another layer over a clone of one memory
/// store.
#[tokio::test]
async fn unblock_lifts_a_block_for_every_layer_over_a_memory_store() {
    let store = MemoryRateLimitStore::new();
    let layer =
        |store: MemoryRateLimitStore| RateLimitLayer::new(store, limits()).unwrap().fail_fast();
    unblock_is_seen_by(layer(store.clone()), layer(store)).await;
}

/// `unblock` lifts a server's block and budget for a second store on the same SQLite file (as
/// another process would open it).
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unblock_lifts_a_block_for_another_store_on_the_same_sqlite_file() {
    use courteous::store::sqlite::SqliteStore;
    let (_dir, path) = crate::support::temp_db();
    let (one, two) = (
        SqliteStore::open(&path).await.unwrap(),
        SqliteStore::open(&path).await.unwrap(),
    );
    let layer = |store: &SqliteStore| {
        RateLimitLayer::new(store.rate_limits(), limits())
            .unwrap()
            .fail_fast()
    };
    unblock_is_seen_by(layer(&one), layer(&two)).await;
    one.close().await.unwrap();
    two.close().await.unwrap();
}

/// `unblock` lifts a server's block and budget for a second store on the same Redis server.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unblock_lifts_a_block_for_another_store_on_the_same_redis() {
    use courteous::store::redis::RedisStore;
    let Some(url) = crate::support::redis::shared_url().await else {
        return;
    };
    let prefix = crate::support::redis::unique_prefix("unblock");
    let layer = || {
        let store = RedisStore::builder(&url)
            .prefix(&prefix)
            .operation_timeout(Duration::from_secs(2))
            .connect()
            .unwrap();
        RateLimitLayer::new(store.rate_limits(), limits())
            .unwrap()
            .fail_fast()
    };
    unblock_is_seen_by(layer(), layer()).await;
}

/// The server's `RateLimit-Remaining` already counts the response's own request: after a
/// response saying 1 remains, the store allows exactly one more, whatever clock stamps the
/// admission's settlement (Redis's own `TIME` by default, rounded up to the next millisecond).
async fn the_response_counts_once_against_the_server_budget(layer: RateLimitLayer) {
    let server = echo_server().await;
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(reqwest::Client::new()));
    let url = server.url("/api/budget/");
    let says_one_left = [("ratelimit-remaining", "1"), ("ratelimit-reset", "60")];
    service
        .clone()
        .oneshot(asking(url.clone(), 200, &says_one_left))
        .await
        .unwrap();
    let status = layer
        .status(&Resource::new("budget").unwrap())
        .await
        .unwrap();
    assert_eq!(status.server_remaining, Some(1), "{status:?}");
    assert_eq!(status.remaining, 1, "{status:?}");
    service
        .clone()
        .oneshot(asking(url.clone(), 200, &[]))
        .await
        .expect("the one request the server still allows");
    let err = service
        .clone()
        .oneshot(asking(url, 200, &[]))
        .await
        .unwrap_err();
    assert!(err.is::<RateLimited>(), "{err}");
    assert_eq!(server.hits(), 2);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_counts_once_against_the_server_budget_on_sqlite() {
    use courteous::store::sqlite::SqliteStore;
    let (_dir, path) = crate::support::temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let layer = RateLimitLayer::new(store.rate_limits(), limits())
        .unwrap()
        .fail_fast();
    the_response_counts_once_against_the_server_budget(layer).await;
    store.close().await.unwrap();
}

/// On Redis with its own clock (the default), the settlement and the feedback both read `TIME`.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_counts_once_against_the_server_budget_on_redis() {
    use courteous::store::redis::RedisStore;
    let Some(url) = crate::support::redis::shared_url().await else {
        return;
    };
    for round in 0..5 {
        let prefix = crate::support::redis::unique_prefix(&format!("budget-once-{round}"));
        let store = RedisStore::builder(&url)
            .prefix(&prefix)
            .operation_timeout(Duration::from_secs(2))
            .connect()
            .unwrap();
        let layer = RateLimitLayer::new(store.rate_limits(), limits())
            .unwrap()
            .fail_fast();
        the_response_counts_once_against_the_server_budget(layer).await;
    }
}
