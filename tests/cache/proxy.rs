//! `examples/caching_proxy`, run as a real process against a local upstream.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use axum::Router;
use axum::body::Body;
use axum::response::Response;

use crate::support::{TestServer, child};

const GZIP_BYTES: &[u8] = &[0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01];

/// The example's proxy, compiled into this test binary: the tests run it in a child process of
/// this binary (see [`child_proxy`]), so no nested `cargo build` recompiles the crate mid-test.
#[path = "../../examples/caching_proxy/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod example;

/// The proxy's command-line arguments, passed to the child in one variable.
const ARGS_ENV: &str = "COURTEOUS_PROXY_ARGS";
/// Separates the arguments in [`ARGS_ENV`].
const ARGS_SEPARATOR: char = '\u{1f}';
const CHILD_ENTRY: &str = "proxy::child_proxy";

/// In a child process: `caching_proxy` with the arguments in [`ARGS_ENV`], exactly as
/// `cargo run --example caching_proxy -- ARGS` runs it.
#[test]
#[ignore = "a child process of the proxy tests"]
fn child_proxy() {
    if !child::is_child(CHILD_ENTRY) {
        return;
    }
    let args: String = child::param(ARGS_ENV);
    let args: Vec<String> = args.split(ARGS_SEPARATOR).map(str::to_owned).collect();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(example::run(args))
        .expect("the proxy failed");
}

/// The proxy process; killed when dropped.
struct ProxyProcess {
    child: Child,
    addr: String,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(upstream: &str) -> ProxyProcess {
    start_proxy_with(upstream, &[])
}

fn start_proxy_with(upstream: &str, extra: &[&str]) -> ProxyProcess {
    let args: Vec<&str> = ["127.0.0.1:0", upstream]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "--exact",
            CHILD_ENTRY,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(child::CHILD_ENV, CHILD_ENTRY)
        .env(ARGS_ENV, args.join(&ARGS_SEPARATOR.to_string()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the proxy");
    // The test harness prints its own lines first; the proxy's first line gives its address.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("the proxy exited before it listened; its output: {seen:?}");
        };
        // The harness's "test proxy::child_proxy ... " has no line end: look inside the line.
        if let Some((_, rest)) = line.split_once("listening on http://") {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        seen.push(line);
    };
    // Keep draining stdout so that the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    ProxyProcess { child, addr }
}

async fn upstream() -> TestServer {
    TestServer::with_router(|log| {
        let (l1, l2, l3) = (log.clone(), log.clone(), log);
        Router::new()
            .route(
                "/multi",
                axum::routing::get(move |request: axum::extract::Request| async move {
                    let n = l1.record(&request);
                    Response::builder()
                        .header("cache-control", "max-age=60")
                        .header("x-multi", "a")
                        .header("x-multi", "b")
                        .body(Body::from(format!("multi {n}")))
                        .unwrap()
                }),
            )
            .route(
                "/redirect",
                axum::routing::get(move |request: axum::extract::Request| async move {
                    l2.record(&request);
                    Response::builder()
                        .status(302)
                        .header("location", "/multi")
                        .body(Body::empty())
                        .unwrap()
                }),
            )
            .route(
                "/gz",
                axum::routing::get(move |request: axum::extract::Request| async move {
                    l3.record(&request);
                    Response::builder()
                        .header("content-encoding", "gzip")
                        .body(Body::from(GZIP_BYTES))
                        .unwrap()
                }),
            )
    })
    .await
}

#[tokio::test]
async fn the_caching_proxy_passes_responses_through_unchanged_and_caches_them() {
    let upstream = upstream().await;
    let proxy = tokio::task::spawn_blocking({
        let url = upstream.url("");
        move || start_proxy(&url)
    })
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("http://{}{path}", proxy.addr);

    let mut bodies = Vec::new();
    for expected in ["MISS", "HIT"] {
        let response = client.get(url("/multi?x=1")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-cache"], expected);
        let multi: Vec<_> = response.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        bodies.push(response.text().await.unwrap());
    }
    assert_eq!(bodies, ["multi 1", "multi 1"]);
    assert_eq!(upstream.hits_on("/multi"), 1);

    let redirect = client.get(url("/redirect")).send().await.unwrap();
    assert_eq!(redirect.status(), 302);
    assert_eq!(redirect.headers()["location"], "/multi");

    let gz = client.get(url("/gz")).send().await.unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(gz.bytes().await.unwrap().as_ref(), GZIP_BYTES);

    drop(upstream);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let unreachable = client.get(url("/nothing-stored")).send().await.unwrap();
    assert_eq!(unreachable.status(), 502);
    // What is fresh in the cache is still served.
    let cached = client.get(url("/multi?x=1")).send().await.unwrap();
    assert_eq!(cached.headers()["x-cache"], "HIT");
}

#[tokio::test]
async fn the_caching_proxy_with_sqlite_serves_what_it_stored_before_a_restart() {
    let upstream = upstream().await;
    let (_dir, db) = crate::support::temp_db();
    let db = db.display().to_string();
    let start = |url: String, db: String| {
        tokio::task::spawn_blocking(move || start_proxy_with(&url, &["--sqlite", &db]))
    };
    let client = reqwest::Client::new();

    let first = start(upstream.url(""), db.clone()).await.unwrap();
    let response = client
        .get(format!("http://{}/multi", first.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    // Let the write-behind writer commit (50 ms), then kill the process without a goodbye.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(first);

    let second = start(upstream.url(""), db).await.unwrap();
    let response = client
        .get(format!("http://{}/multi", second.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-cache"], "HIT");
    assert_eq!(response.text().await.unwrap(), "multi 1");
    assert_eq!(upstream.hits_on("/multi"), 1);
}

/// Sends `target` as the raw request-target of a GET (clients such as reqwest resolve dot
/// segments before sending, which would hide what this tests) and returns the status code.
async fn raw_get_status(addr: &str, target: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {target} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {target}: {reply:?}"))
}

/// Issue 12 item 13: a path whose dot segments, in any spelling, would climb above the upstream
/// base path is refused with a 400 and never reaches the upstream; dot segments that stay below
/// it, and names that merely contain dots, pass.
#[tokio::test]
async fn the_caching_proxy_refuses_paths_that_leave_the_upstream_base_path() {
    let upstream = TestServer::start().await;
    let proxy = tokio::task::spawn_blocking({
        let url = upstream.url("/base");
        move || start_proxy(&url)
    })
    .await
    .unwrap();
    for target in [
        "/../admin",
        "/..",
        "/%2e%2e/admin",
        "/%2E%2E/admin",
        "/%2e%2E/admin",
        "/.%2e/admin",
        "/%2E./admin",
        "/a/../../admin",
        "/a/%2e%2e/%2e%2e/admin",
        "/..%2fadmin",
        "/..%2Fadmin",
        "/a/..%5c..%5cadmin",
        "/..\\admin",
        "/./../admin?x=1",
        "/%2e%2e%2fadmin",
    ] {
        assert_eq!(raw_get_status(&proxy.addr, target).await, 400, "{target}");
    }
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
    for (target, seen) in [
        ("/a/../b", "/base/b"),
        ("/items/..data/x", "/base/items/..data/x"),
        ("/a/%2e/b", "/base/a/b"),
        ("/v/...", "/base/v/..."),
    ] {
        assert_eq!(raw_get_status(&proxy.addr, target).await, 200, "{target}");
        let last = upstream.seen().last().unwrap().path_and_query.clone();
        assert_eq!(last, seen, "{target}");
    }
    assert!(
        upstream
            .seen()
            .iter()
            .all(|s| s.path_and_query.starts_with("/base/")),
        "{:?}",
        upstream.seen()
    );
}

/// Issue 13 item 8: `--shared` applies shared-cache rules (a `private` response is not stored,
/// `s-maxage` counts), `--stale-if-error` serves a stale entry when the upstream fails, and
/// `--heuristic 0` turns heuristic freshness off.
#[tokio::test]
async fn the_caching_proxy_flags_shared_stale_if_error_and_heuristic() {
    let upstream = TestServer::with_router(|log| {
        let (l1, l2, l3, l4) = (log.clone(), log.clone(), log.clone(), log);
        let route = move |log: std::sync::Arc<crate::support::server::Log>,
                          reply: fn(u64) -> Response| {
            axum::routing::get(move |request: axum::extract::Request| async move {
                reply(log.record(&request))
            })
        };
        Router::new()
            .route(
                "/private",
                route(l1, |n| {
                    Response::builder()
                        .header("cache-control", "private, max-age=60")
                        .body(Body::from(format!("private {n}")))
                        .unwrap()
                }),
            )
            .route(
                "/s-maxage",
                route(l2, |n| {
                    Response::builder()
                        .header("cache-control", "max-age=0, s-maxage=60")
                        .body(Body::from(format!("s-maxage {n}")))
                        .unwrap()
                }),
            )
            .route(
                "/flaky",
                route(l3, |n| {
                    let builder = Response::builder();
                    if n == 1 {
                        builder
                            .header("cache-control", "max-age=1")
                            .body(Body::from("good"))
                    } else {
                        builder.status(500).body(Body::from("broken"))
                    }
                    .unwrap()
                }),
            )
            .route(
                "/last-modified",
                route(l4, |n| {
                    // Unchanged for ten days: fresh for a day by the default heuristic.
                    let modified = std::time::SystemTime::now()
                        - std::time::Duration::from_secs(10 * 24 * 3600);
                    Response::builder()
                        .header("last-modified", httpdate::fmt_http_date(modified))
                        .body(Body::from(format!("last-modified {n}")))
                        .unwrap()
                }),
            )
    })
    .await;
    let start = |extra: &'static [&'static str]| {
        let url = upstream.url("");
        tokio::task::spawn_blocking(move || start_proxy_with(&url, extra))
    };
    let shared = start(&["--shared", "--stale-if-error", "600", "--heuristic", "0"])
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{}{path}", shared.addr)).send();

    for path in ["/private", "/s-maxage"] {
        get(path).await.unwrap();
    }
    let private = get("/private").await.unwrap();
    assert_eq!(private.headers()["x-cache"], "MISS");
    assert_eq!(private.text().await.unwrap(), "private 2");
    let s_maxage = get("/s-maxage").await.unwrap();
    assert_eq!(s_maxage.headers()["x-cache"], "HIT");
    assert_eq!(s_maxage.text().await.unwrap(), "s-maxage 1");

    assert_eq!(get("/flaky").await.unwrap().headers()["x-cache"], "MISS");
    // The proxy runs on the real clock: let `max-age=1` run out.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let stale = get("/flaky").await.unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.headers()["x-cache"], "STALE");
    assert_eq!(stale.text().await.unwrap(), "good");
    assert_eq!(upstream.hits_on("/flaky"), 2);
    for _ in 0..2 {
        let guessed = get("/last-modified").await.unwrap();
        assert_eq!(guessed.headers()["x-cache"], "MISS");
    }
    drop(shared);

    // Without the flags: private rules (the `private` response is stored, `s-maxage` does not
    // count) and the upstream's 500 comes through.
    let private = start(&[]).await.unwrap();
    let get = |path: &str| client.get(format!("http://{}{path}", private.addr)).send();
    for path in ["/private", "/s-maxage", "/flaky", "/last-modified"] {
        get(path).await.unwrap();
    }
    let guessed = get("/last-modified").await.unwrap();
    assert_eq!(guessed.headers()["x-cache"], "HIT");
    assert_eq!(guessed.text().await.unwrap(), "last-modified 3");
    assert_eq!(get("/private").await.unwrap().headers()["x-cache"], "HIT");
    assert_eq!(get("/s-maxage").await.unwrap().headers()["x-cache"], "MISS");
    let error = get("/flaky").await.unwrap();
    assert_eq!(error.status(), 500);
    assert_eq!(error.headers()["x-cache"], "MISS");
}
