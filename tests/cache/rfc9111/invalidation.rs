//! RFC 9111 section 4.4: a non-error response to an unsafe request invalidates the target URI
//! and the same-origin URIs of `Location` and `Content-Location`.

use courteous::cache::CacheStatus;
use http::Method;

use super::{Case, Reply};

/// Stores `path` (`max-age=600`) and checks that the next GET is a hit.
async fn stored(case: &Case, client: &crate::Client, path: &str) {
    case.origin
        .reply(path, Reply::ok().header("cache-control", "max-age=600"));
    case.get(client, path).await;
    let hit = case.get(client, path).await;
    assert_eq!(hit.cache, Some(CacheStatus::Hit), "{} {path}", case.label());
}

/// Every method that is not GET, HEAD, OPTIONS or TRACE is unsafe, including methods the
/// cache has never heard of; their non-error answers invalidate the target URI.
async fn s4_4_every_unsafe_method_invalidates_the_target(case: Case) {
    let client = case.client();
    for (i, method) in ["POST", "PUT", "PATCH", "DELETE", "PURGE", "REPORT", "LOCK"]
        .into_iter()
        .enumerate()
    {
        let path = format!("/m{i}");
        stored(&case, &client, &path).await;
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let answer = case
            .send(
                &client,
                http::Request::builder()
                    .method(method.clone())
                    .uri(case.url(&path)),
            )
            .await;
        assert_eq!(answer.cache, Some(CacheStatus::Bypass));
        let after = case.get(&client, &path).await;
        assert_eq!(
            after.cache,
            Some(CacheStatus::Miss),
            "{} {method} did not invalidate",
            case.label()
        );
        assert_eq!(case.origin.hits_by("GET", &path), 2, "{}", case.label());
    }
}

/// Safe methods (OPTIONS, TRACE) never invalidate; neither do error answers (4xx, 5xx) to
/// unsafe ones. Redirections (3xx) do.
async fn s4_4_safe_methods_and_error_answers_do_not_invalidate(case: Case) {
    let client = case.client();
    stored(&case, &client, "/r").await;
    for method in [Method::OPTIONS, Method::TRACE] {
        case.send(
            &client,
            http::Request::builder().method(method).uri(case.url("/r")),
        )
        .await;
    }
    case.origin
        .script("/r", |asked| match asked.method.as_str() {
            "POST" => Reply::status(409),
            "PUT" => Reply::status(503),
            "DELETE" => Reply::status(303).header("location", "/elsewhere"),
            _ => Reply::ok().header("cache-control", "max-age=600"),
        });
    case.send(&client, http::Request::post(case.url("/r")))
        .await;
    case.send(&client, http::Request::put(case.url("/r"))).await;
    assert_eq!(
        case.get(&client, "/r").await.cache,
        Some(CacheStatus::Hit),
        "{}",
        case.label()
    );
    assert_eq!(case.origin.hits_by("GET", "/r"), 1);
    case.send(&client, http::Request::delete(case.url("/r")))
        .await;
    assert_eq!(
        case.get(&client, "/r").await.cache,
        Some(CacheStatus::Miss),
        "{}",
        case.label()
    );
}

/// The target URI is invalidated with any query; `Location` and `Content-Location` (absolute
/// or relative) on the same origin are invalidated too; another origin's are not.
async fn s4_4_location_and_content_location_of_the_same_origin(case: Case) {
    let client = case.client();
    for path in ["/items/1", "/items/2", "/items/list"] {
        stored(&case, &client, path).await;
    }
    // A variant of the target with a query.
    case.origin.script("/items", move |asked| {
        if asked.method == "POST" {
            Reply::status(201)
                .header("location", "items/2")
                .header("content-location", "/items/list")
        } else {
            Reply::ok().header("cache-control", "max-age=600")
        }
    });
    case.send(&client, http::Request::get(case.url("/items?page=2")))
        .await;
    // Another origin (same host, another port) whose entries share the store.
    let elsewhere = super::Origin::start(case.clock.clone()).await;
    elsewhere.reply("/other", Reply::ok().header("cache-control", "max-age=600"));
    let foreign = elsewhere.url("/other");
    crate::send(&client, http::Request::get(&foreign)).await;
    let location = foreign.clone();
    case.origin.script("/items/1", move |asked| {
        if asked.method == "PATCH" {
            Reply::ok()
                .header("location", &location)
                .header("content-location", &location)
        } else {
            Reply::ok().header("cache-control", "max-age=600")
        }
    });

    case.send(&client, http::Request::post(case.url("/items")))
        .await;
    let query = case
        .send(&client, http::Request::get(case.url("/items?page=2")))
        .await;
    assert_eq!(
        query.cache,
        Some(CacheStatus::Miss),
        "{} target with query",
        case.label()
    );
    for (path, expected) in [
        ("/items/2", CacheStatus::Miss),
        ("/items/list", CacheStatus::Miss),
        ("/items/1", CacheStatus::Hit),
    ] {
        assert_eq!(
            case.get(&client, path).await.cache,
            Some(expected),
            "{} {path}",
            case.label()
        );
    }

    case.send(&client, http::Request::patch(case.url("/items/1")))
        .await;
    let foreign_again = crate::send(&client, http::Request::get(&foreign)).await;
    assert_eq!(
        foreign_again.cache,
        Some(CacheStatus::Hit),
        "{}: another origin's entry was invalidated",
        case.label()
    );
    assert_eq!(elsewhere.hits("/other"), 1);
    assert_eq!(
        case.get(&client, "/items/1").await.cache,
        Some(CacheStatus::Miss),
        "{}",
        case.label()
    );
}

/// An unsafe request the cache cannot key (a streaming body) still invalidates its URL.
async fn s4_4_an_unkeyable_unsafe_request_still_invalidates(case: Case) {
    let client = case.client();
    stored(&case, &client, "/upload").await;
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter([Ok::<_, std::io::Error>(
        bytes::Bytes::from_static(b"chunk"),
    )]));
    let request = http::Request::post(case.url("/upload")).body(body).unwrap();
    use tower::ServiceExt;
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        case.get(&client, "/upload").await.cache,
        Some(CacheStatus::Miss),
        "{}",
        case.label()
    );
}

rfc9111!(
    s4_4_every_unsafe_method_invalidates_the_target,
    s4_4_safe_methods_and_error_answers_do_not_invalidate,
    s4_4_location_and_content_location_of_the_same_origin,
    s4_4_an_unkeyable_unsafe_request_still_invalidates,
);

/// The invalidation reaches every client of the store (another layer, as another process
/// would have it): client B's `DELETE` drops what client A stored.
async fn s4_4_invalidation_reaches_every_client_of_the_store(case: Case) {
    let (a, b) = (case.client(), case.client());
    stored(&case, &a, "/shared").await;
    case.flush().await;
    assert_eq!(
        case.get(&b, "/shared").await.cache,
        Some(CacheStatus::Hit),
        "{}",
        case.label()
    );
    case.send(&b, http::Request::delete(case.url("/shared")))
        .await;
    case.flush().await;
    assert_eq!(
        case.get(&a, "/shared").await.cache,
        Some(CacheStatus::Miss),
        "{}",
        case.label()
    );
}

rfc9111!(s4_4_invalidation_reaches_every_client_of_the_store);
