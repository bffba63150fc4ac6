//! Typed build errors: each names what is wrong, and nothing is opened when the configuration
//! is invalid.

use std::time::Duration;

use courteous::{BuildError, Courteous, Limit};

use crate::support::temp_db;

#[tokio::test]
async fn an_empty_resource_name_is_refused() {
    let error = Courteous::new(reqwest::Client::new())
        .resource(" ", |r| r.ttl(Duration::from_secs(1)))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(&error, BuildError::InvalidResource { name } if name == " "));
    assert_eq!(error.code(), "build_invalid_resource");
}

#[tokio::test]
async fn a_zero_window_is_refused_before_the_file_is_created() {
    let (_dir, path) = temp_db();
    let zero = Limit::new(1, Duration::ZERO);
    let error = Courteous::new(reqwest::Client::new())
        .sqlite(&path)
        .resource("issue", |r| r.limit(zero))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, BuildError::RateLimit(_)), "{error}");
    assert!(!path.exists());
}

#[tokio::test]
async fn a_sqlite_file_that_cannot_be_opened_is_reported() {
    let (dir, _) = temp_db();
    let path = dir.path().join("missing-dir").join("courteous.db");
    let error = Courteous::new(reqwest::Client::new())
        .sqlite(&path)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, BuildError::Sqlite(_)), "{error}");
    assert_eq!(error.code(), "build_sqlite");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn an_unreachable_redis_is_reported() {
    // Port 1: nothing listens there.
    let error = Courteous::new(reqwest::Client::new())
        .redis("redis://127.0.0.1:1/")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, BuildError::Redis(_)), "{error}");
    assert_eq!(error.code(), "build_redis");

    let error = Courteous::new(reqwest::Client::new())
        .redis("not a url")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, BuildError::Redis(_)), "{error}");
}
