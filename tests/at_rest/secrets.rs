//! Issue 12 item 7: no secret query parameter or URL userinfo in errors returned to callers, in
//! what the dedupe stores publish to other processes, or anywhere in the SQLite files.

#[cfg(feature = "redis")]
use std::time::Duration;

use courteous::dedupe::{DedupeLayer, DedupeStore};
use courteous::key::{is_default_secret_param, redact_secrets, redact_url};
use courteous::{BoxError, ContextLayer, DefaultKeyExtractor, HttpClient};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

type Client =
    BoxCloneService<http::Request<reqwest::Body>, http::Response<reqwest::Body>, BoxError>;

/// Secrets in every place a URL can carry one: default names in any case, a name the key
/// extractor was told about (`sig`), a percent-encoded name, and userinfo.
const SECRETS: &[&str] = &["SEKRET-A", "SEKRET-S", "SEKRET-T", "SEKRET-E", "pa55word"];

/// A URL carrying [`SECRETS`] on a local server that reads each request and hangs up without
/// answering: the request was sent, so its failure is a real upstream outcome that a dedupe
/// leader publishes (a refused connection is not: the request never left).
fn hangup_url() -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buffer = [0u8; 4096];
            // Read until the request head is complete, then close without a response.
            let mut seen = Vec::new();
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buffer[..n]);
                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    });
    format!(
        "http://user:pa55word@127.0.0.1:{port}/items?api_key=SEKRET-A&page=1&sig=SEKRET-S\
         &Token=SEKRET-T&access%5Ftoken=SEKRET-E"
    )
}

fn keys() -> DefaultKeyExtractor {
    DefaultKeyExtractor::new().secret_param("sig")
}

fn client<S: DedupeStore + Clone>(store: S) -> Client {
    ServiceBuilder::new()
        .layer(ContextLayer::new().key_extractor(keys()))
        .layer(DedupeLayer::new(store))
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone()
}

/// Asserts that no secret is in `text`, and that `text` is not vacuous: it names the masked URL.
fn assert_masked(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} holds {secret}: {text}");
    }
    assert!(
        text.contains("api_key=REDACTED") && text.contains("sig=REDACTED"),
        "{what} does not show the masked URL: {text}"
    );
}

/// Every rendering of an error a caller may log: Display, Debug, and each source's.
fn assert_error_masked(error: &BoxError) {
    assert_masked("the error's Display", &error.to_string());
    assert_masked("the error's Debug", &format!("{error:?}"));
    let mut source = error.source();
    while let Some(next) = source {
        assert!(
            !SECRETS.iter().any(|s| next.to_string().contains(s)),
            "a source holds a secret: {next}"
        );
        source = next.source();
    }
}

async fn send(client: &Client, url: &str) -> Result<http::Response<reqwest::Body>, BoxError> {
    let request = http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap();
    client.clone().oneshot(request).await
}

#[test]
fn urls_and_text_are_masked_by_name_in_any_case_and_encoding() {
    let mut url = reqwest::Url::parse(
        "https://u:p@h/x?API_KEY=a&api%5Fkey=b&page=2&token&key=&apikey=c%26d&q=api_key=no",
    )
    .unwrap();
    redact_url(&mut url, is_default_secret_param);
    assert_eq!(
        url.as_str(),
        "https://REDACTED@h/x?API_KEY=REDACTED&api%5Fkey=REDACTED&page=2&token&key=REDACTED\
         &apikey=REDACTED&q=api_key=no"
    );

    let cases = [
        ("no secret at all", "no secret at all"),
        ("(http://h/x?token=t)", "(http://h/x?token=REDACTED)"),
        (
            "GET /x?a=1&Password=pw&b=2 failed",
            "GET /x?a=1&Password=REDACTED&b=2 failed",
        ),
        (
            "u=\"h/x?signature=s\" next",
            "u=\"h/x?signature=REDACTED\" next",
        ),
        ("/x;key=k;other=1", "/x;key=REDACTED;other=1"),
        ("/x?api%5fkey=k#frag", "/x?api%5fkey=REDACTED#frag"),
        ("end?key=", "end?key=REDACTED"),
        (
            "a https://tok@h/p and http://u:p@h",
            "a https://REDACTED@h/p and http://REDACTED@h",
        ),
        ("mail me@h", "mail me@h"),
        ("http://h/x?e=a@b", "http://h/x?e=a@b"),
        ("sqlite error: x; check", "sqlite error: x; check"),
        (
            "?token=\u{e9}t\u{e9} \u{1F600}",
            "?token=REDACTED \u{1F600}",
        ),
    ];
    for (text, masked) in cases {
        assert_eq!(
            redact_secrets(text, is_default_secret_param),
            masked,
            "{text}"
        );
    }
}

/// The tower path: a leader whose server hangs up. Its error (Display, Debug, sources)
/// and the error published in the SQLite dedupe table hold only the masked URL, and after the
/// store closes no byte of the database, its WAL or its shared memory holds a secret.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_leader_leaves_no_secret_in_errors_or_the_sqlite_file() {
    use courteous::store::sqlite::SqliteStore;

    let (dir, path) = crate::support::temp_db();
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let client = client(sqlite.dedupe());
    let url = hangup_url();
    let error = send(&client, &url).await.expect_err("the server hangs up");
    assert_error_masked(&error);

    let published: Vec<String> = sqlite
        .call(|conn| {
            let mut statement =
                conn.prepare("SELECT error FROM courteous_dedupe WHERE error IS NOT NULL")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(published.len(), 1, "the leader published its failure");
    assert_masked("the published error", &published[0]);

    sqlite.flush().await.unwrap();
    // Every file of the database while it is open, and again once closed.
    let scan = || {
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let file = file.unwrap().path();
            let bytes = std::fs::read(&file).unwrap();
            for secret in SECRETS {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds {secret}",
                    file.display()
                );
            }
        }
    };
    scan();
    sqlite.close().await.unwrap();
    scan();
}

/// The same over Redis: nothing under the store's prefix holds a secret, and the published
/// failure holds the masked URL.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_leader_leaves_no_secret_in_redis() {
    use courteous::store::redis::RedisStore;

    let Some(redis_url) = crate::support::redis::shared_url().await else {
        return;
    };
    let prefix = crate::support::redis::unique_prefix("at-rest-secrets");
    let store = RedisStore::builder(&redis_url)
        .prefix(&prefix)
        .operation_timeout(Duration::from_secs(2))
        .connect()
        .unwrap();
    let client = client(store.dedupe());
    let error = send(&client, &hangup_url())
        .await
        .expect_err("the server hangs up");
    assert_error_masked(&error);

    let redis = ::redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut errors = Vec::new();
    for key in &keys {
        let kind: String = ::redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "hash" => {
                let fields: Vec<(String, Vec<u8>)> = ::redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                for (field, value) in &fields {
                    if field == "error" {
                        errors.push(String::from_utf8_lossy(value).into_owned());
                    }
                }
                fields.into_iter().map(|(_, v)| v).collect()
            }
            "string" => vec![
                ::redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
            ],
            _ => Vec::new(),
        };
        for value in values {
            for secret in SECRETS {
                assert!(
                    !value.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{key} holds {secret}"
                );
            }
        }
    }
    let errors: Vec<_> = errors.into_iter().filter(|e| !e.is_empty()).collect();
    assert_eq!(
        errors.len(),
        1,
        "the leader published its failure: {keys:?}"
    );
    assert_masked("the published error", &errors[0]);
}

/// The reqwest-middleware path: the error reqwest returns under `courteous::CourteousMiddleware` holds
/// the masked URL.
#[cfg(feature = "middleware")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_path_returns_masked_errors() {
    use courteous::{CourteousMiddleware, dedupe::MemoryDedupeStore};

    let stack = ServiceBuilder::new()
        .layer(ContextLayer::new().key_extractor(keys()))
        .layer(DedupeLayer::new(MemoryDedupeStore::new()));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CourteousMiddleware::new(stack))
        .build();
    let error = client
        .get(hangup_url())
        .send()
        .await
        .expect_err("the server hangs up");
    let error: BoxError = Box::new(error);
    assert_error_masked(&error);
}

/// A transport of the user's own whose error message quotes the URL: the dedupe layer masks
/// what it publishes to other processes itself, with the key extractor's secret names.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedupe_layer_masks_what_it_publishes_from_any_transport() {
    use courteous::store::sqlite::SqliteStore;

    let (_dir, path) = crate::support::temp_db();
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let client: Client = ServiceBuilder::new()
        .layer(ContextLayer::new().key_extractor(keys()))
        .layer(DedupeLayer::new(sqlite.dedupe()))
        .service(tower::service_fn(
            |request: http::Request<reqwest::Body>| async move {
                Err::<http::Response<reqwest::Body>, BoxError>(
                    format!("my transport could not reach {}", request.uri()).into(),
                )
            },
        ))
        .boxed_clone();
    let url = hangup_url().replace("user:pa55word@", "");
    send(&client, &url).await.expect_err("the transport fails");
    let published: Vec<String> = sqlite
        .call(|conn| {
            let mut statement =
                conn.prepare("SELECT error FROM courteous_dedupe WHERE error IS NOT NULL")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(published.len(), 1, "the leader published its failure");
    assert_masked("the published error", &published[0]);
    sqlite.close().await.unwrap();
}

/// The whole stack over one SQLite file, responses cached, deduplicated and rate limited: no
/// secret of the URLs reaches the file (cache rows, dedupe rows, rate-limit rows).
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_response_leaves_no_secret_in_the_sqlite_file() {
    use courteous::cache::CacheLayer;
    use courteous::store::sqlite::SqliteStore;
    use courteous::{Limit, Limits, RateLimitLayer};

    let server = crate::support::TestServer::start().await;
    let (dir, path) = crate::support::temp_db();
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let client: Client = ServiceBuilder::new()
        .layer(ContextLayer::new().key_extractor(keys()))
        .layer(CacheLayer::new(sqlite.cache()))
        .layer(DedupeLayer::new(sqlite.dedupe()))
        .layer(
            RateLimitLayer::new(
                sqlite.rate_limits(),
                Limits::new().default_limit(Limit::per_minute(100)),
            )
            .unwrap(),
        )
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone();
    let url = server.url(
        "/api/items/?api_key=SEKRET-A&sig=SEKRET-S&Token=SEKRET-T&access%5Ftoken=SEKRET-E\
         &cache_control=max-age%3D60",
    );
    for _ in 0..2 {
        let response = send(&client, &url).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
    }
    assert_eq!(server.hits(), 1, "the second came from the cache");
    sqlite.flush().await.unwrap();
    let cached: String = sqlite
        .call(|conn| Ok(conn.query_row("SELECT url FROM cache_entries", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert!(cached.contains("api_key=REDACTED"), "{cached}");
    sqlite.close().await.unwrap();
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let file = file.unwrap().path();
        let bytes = std::fs::read(&file).unwrap();
        for secret in SECRETS {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds {secret}",
                file.display()
            );
        }
    }
}

/// Secret parameters outside the exact default list (an S3 pre-signed URL, an OAuth refresh
/// token, an Azure SAS signature) with the stock key extractor: masked in the SQLite file too.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_url_parameters_leave_no_secret_in_the_sqlite_file() {
    use courteous::cache::CacheLayer;
    use courteous::store::sqlite::SqliteStore;

    const PRESIGNED: &[&str] = &[
        "SEKRET-SIG",
        "SEKRET-CRED",
        "SEKRET-STS",
        "SEKRET-RT",
        "SEKRET-AZ",
    ];
    let server = crate::support::TestServer::start().await;
    let (dir, path) = crate::support::temp_db();
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let client: Client = ServiceBuilder::new()
        .layer(ContextLayer::new())
        .layer(CacheLayer::new(sqlite.cache()))
        .layer(DedupeLayer::new(sqlite.dedupe()))
        .service(HttpClient::new(reqwest::Client::new()))
        .boxed_clone();
    let url = server.url(
        "/api/items/?X-Amz-Signature=SEKRET-SIG&X-Amz-Credential=SEKRET-CRED\
         &X-Amz-Security-Token=SEKRET-STS&refresh_token=SEKRET-RT&sig=SEKRET-AZ\
         &cache_control=max-age%3D60",
    );
    for _ in 0..2 {
        let response = send(&client, &url).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
    }
    assert_eq!(server.hits(), 1, "the second came from the cache");
    sqlite.flush().await.unwrap();
    let cached: String = sqlite
        .call(|conn| Ok(conn.query_row("SELECT url FROM cache_entries", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert!(cached.contains("X-Amz-Signature=REDACTED"), "{cached}");
    sqlite.close().await.unwrap();
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let file = file.unwrap().path();
        let bytes = std::fs::read(&file).unwrap();
        for secret in PRESIGNED {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds {secret}",
                file.display()
            );
        }
    }
}
