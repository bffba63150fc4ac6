//! What a demanding user or a hostile input does to the builder: names that configure nothing,
//! credentials that must never share a response, values at the edge of their range.

use std::time::Duration;

use courteous::{BuildError, CacheStatus, Courteous, Report, Resource, classify_fn};

use crate::get;
use crate::support::TestServer;

fn hour() -> Duration {
    Duration::from_secs(3600)
}

#[tokio::test]
async fn a_name_the_stock_classifier_never_gives_is_refused() {
    for (name, classified_as) in [
        ("Issue", Some("issue")),
        ("api/search", Some("search")),
        ("/api/issue/", Some("issue")),
        ("v1", Some("root")),
        ("my issue", None),
    ] {
        let error = Courteous::new(reqwest::Client::new())
            .resource(name, |r| r.ttl(hour()))
            .layers()
            .await
            .expect_err(name);
        assert!(
            matches!(
                &error,
                BuildError::UnclassifiedResource { name: n, classified_as: c }
                    if n == name && c.as_deref() == classified_as
            ),
            "{name:?}: {error:?}"
        );
        assert_eq!(error.code(), "build_unclassified_resource");
        assert!(error.to_string().contains(".classifier("), "{error}");
    }
    for name in ["issue", " search ", "root", "2024"] {
        let built = Courteous::new(reqwest::Client::new())
            .resource(name, |r| r.ttl(hour()))
            .layers()
            .await;
        assert!(built.is_ok(), "{name:?}: {built:?}");
    }
}

#[tokio::test]
async fn a_name_of_a_custom_classifier_is_trusted_and_applies() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .resource("Upper/Case", |r| r.ttl(hour()))
        .classifier(classify_fn(|_| Resource::from_static("Upper/Case")))
        .build()
        .await
        .expect("a custom classifier may give any name");
    let url = server.url("/api/issue/1/");
    get(&client, &url).await;
    assert_eq!(get(&client, &url).await.1.cache, Some(CacheStatus::Hit));
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn users_with_different_credentials_never_share_a_response() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .default_ttl(hour())
        .build()
        .await
        .unwrap();
    let (header, in_url) = (server.url("/api/issue/1/"), server.url("/api/issue/2/"));
    let report = |response: &reqwest::Response| response.extensions().get::<Report>().cloned();
    for (user, password) in [("alice", "a"), ("bob", "b")] {
        let response = client
            .get(&header)
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(
            report(&response).and_then(|r| r.cache),
            Some(CacheStatus::Miss)
        );
        // In the URL (reqwest turns it into `Authorization` below the middleware chain).
        let url = in_url.replacen("http://", &format!("http://{user}:{password}@"), 1);
        let (_, report) = get(&client, &url).await;
        assert_eq!(report.cache, Some(CacheStatus::Miss), "{user} in the URL");
    }
    for url in [&header, &in_url] {
        let (_, report) = get(&client, url).await;
        assert_eq!(report.cache, Some(CacheStatus::Miss), "anonymous: {url}");
    }
    assert_eq!(server.hits(), 6);
}

/// "Wait as long as it takes" is a reasonable thing to ask for.
#[tokio::test]
async fn a_max_wait_of_duration_max_does_not_panic() {
    let server = TestServer::start().await;
    let client = Courteous::new(reqwest::Client::new())
        .max_wait(Duration::MAX)
        .build()
        .await
        .unwrap();
    let url = server.url("/api/issue/1/");
    assert_eq!(get(&client, &url).await.0, 200);
    let per_request = client
        .get(server.url("/api/issue/2/"))
        .with_extension(courteous::rate_limit::MaxWait(Duration::MAX))
        .send()
        .await
        .unwrap();
    assert_eq!(per_request.status(), 200);
}
