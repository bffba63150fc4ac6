//! A caching reverse proxy: try the cache layer against your own API with curl.
//!
//! ```text
//! cargo run --example caching_proxy -- 127.0.0.1:8080 https://api.example.com
//! cargo run --example caching_proxy -- 127.0.0.1:8080 https://api.example.com --sqlite cache.db
//! curl -i http://127.0.0.1:8080/some/path      # x-cache: MISS, then HIT
//! ```
//!
//! Every request to the listening address is forwarded to the upstream base URL (the path and
//! query are appended to it) through `CacheLayer` as shipped: a private RFC 9111 cache (a shared
//! one with `--shared`), in memory or, with `--sqlite FILE`, in a SQLite file that survives
//! restarts. Options:
//!
//! * `--sqlite FILE`: keep the cache in this SQLite file (default: memory);
//! * `--shared`: a shared cache (RFC 9111 shared-cache rules: `private` responses are not
//!   stored, `s-maxage` counts, `proxy-revalidate` and `s-maxage` forbid serving stale);
//! * `--stale-if-error SECONDS`: when the upstream fails (5xx or unreachable), serve a stale
//!   entry up to this long past its freshness, as if every response said `stale-if-error`
//!   (never one that says `must-revalidate` or `no-cache`);
//! * `--heuristic PERCENT`: a response without explicit freshness but with `Last-Modified` is
//!   fresh for this percentage of its age (RFC 9111 section 4.2.2; default 10, `0` turns
//!   heuristic freshness off);
//! * `--ttl SECONDS`: force this TTL on every response instead of honouring its cache headers;
//! * `--max-entry-size BYTES`: larger bodies stream through uncached (default 5 MiB).
//!
//! ```text
//! cargo run --example caching_proxy -- 127.0.0.1:8080 http://127.0.0.1:9000 --shared --stale-if-error 300
//! cargo run --example caching_proxy -- 127.0.0.1:8080 http://127.0.0.1:9000 --heuristic 0
//! ```
//!
//! Status, headers (repeated ones stay separate) and body pass through unchanged; redirects
//! are not followed and bodies are not decompressed. The `x-cache` response header says what
//! the cache did. When the upstream cannot be reached and no stale entry may be served, the proxy
//! answers `502 Bad Gateway`. The listening address must be a loopback address: this is a tool for
//! trying things out, not a production proxy. Request bodies are read whole before forwarding.
//!
//! A request whose path climbs above the upstream base path with dot segments (`/../admin`,
//! `/%2e%2e/admin`, `/.%2E/admin`, `/..%2F..%2Fadmin`, `/..\admin`) is refused with `400 Bad
//! Request`: the URL parser would resolve them against the base (`https://api/v1` + `/../admin`
//! is `https://api/admin`), and some upstreams decode `%2F` or treat `\` as a separator too, so
//! the check decodes every percent escape and splits on both slashes before it counts.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use courteous::cache::{Cache, CacheLayer, CacheStore, CacheTtl, MemoryCacheStore};
use courteous::{BoxError, HttpClient};
use http::{HeaderName, StatusCode, header};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};

type Upstream = Cache<HttpClient>;

#[derive(Clone)]
struct Proxy {
    upstream: String,
    /// The upstream URL's path, which no request may leave.
    base_path: String,
    service: Upstream,
}

/// Hop-by-hop headers (RFC 9110, 7.6.1), never forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

fn plain(status: StatusCode, message: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(message))
        .expect("a static response")
}

/// Whether `path` (as received, percent-encoded) climbs above its root: dot segments are
/// counted after decoding every escape (`%2e`, `%2E`, `%2f`, `%5c`) and splitting on `/` and `\`,
/// which covers what the URL parser resolves and what an upstream that decodes escapes or takes
/// backslashes for separators would.
fn climbs_above_root(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            decoded.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let mut depth = 0usize;
    for segment in decoded.split(|b| *b == b'/' || *b == b'\\') {
        match segment {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    if climbs_above_root(request.uri().path()) {
        return plain(
            StatusCode::BAD_REQUEST,
            "the request path climbs above the upstream base path with dot segments\n".to_owned(),
        );
    }
    let (mut parts, body) = request.into_parts();
    let body: Bytes = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {error}\n"),
            );
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{}", proxy.upstream.trim_end_matches('/'), path);
    // Belt and braces: the URL as reqwest will send it (dot segments resolved) stays under the
    // upstream's path.
    let within_base = reqwest::Url::parse(&url).is_ok_and(|parsed| {
        let base = proxy.base_path.trim_end_matches('/');
        parsed.path() == base || parsed.path().starts_with(&format!("{base}/"))
    });
    if !within_base {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("the request path leaves the upstream base path: {url}\n"),
        );
    }
    parts.uri = match url.parse() {
        Ok(uri) => uri,
        Err(error) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("cannot build the upstream URL {url}: {error}\n"),
            );
        }
    };
    // reqwest sets Host (and Content-Length) for the upstream.
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::CONTENT_LENGTH);
    strip_hop_by_hop(&mut parts.headers);
    parts.extensions = http::Extensions::new();
    let request = http::Request::from_parts(parts, reqwest::Body::from(body));

    match proxy.service.oneshot(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.extensions = http::Extensions::new();
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => {
            eprintln!("upstream failed: {error}");
            plain(
                StatusCode::BAD_GATEWAY,
                format!("upstream {} failed: {error}\n", proxy.upstream),
            )
        }
    }
}

/// What the command line asks for.
struct Args {
    listen: SocketAddr,
    upstream: String,
    sqlite: Option<String>,
    ttl: Option<u64>,
    max_entry_size: Option<usize>,
    shared: bool,
    stale_if_error: Option<u64>,
    heuristic: Option<f64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: caching_proxy LISTEN_ADDR UPSTREAM_URL [--sqlite FILE] [--shared] [--stale-if-error SECONDS]\n\
         \x20      [--heuristic PERCENT] [--ttl SECONDS] [--max-entry-size BYTES]\n\
         example: caching_proxy 127.0.0.1:8080 https://api.example.com --sqlite cache.db"
    );
    std::process::exit(2)
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Args {
    let mut positional = Vec::new();
    let (mut sqlite, mut ttl, mut max_entry_size) = (None, None, None);
    let (mut shared, mut stale_if_error, mut heuristic) = (false, None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--sqlite" => sqlite = Some(value()),
            "--ttl" => ttl = Some(value().parse().unwrap_or_else(|_| usage())),
            "--max-entry-size" => {
                max_entry_size = Some(value().parse().unwrap_or_else(|_| usage()))
            }
            "--shared" => shared = true,
            "--stale-if-error" => {
                stale_if_error = Some(value().parse().unwrap_or_else(|_| usage()))
            }
            "--heuristic" => {
                let percent: f64 = value().parse().unwrap_or_else(|_| usage());
                if !(percent.is_finite() && percent >= 0.0) {
                    usage();
                }
                heuristic = Some(percent);
            }
            "-h" | "--help" => usage(),
            _ => positional.push(arg),
        }
    }
    let [listen, upstream] = <[String; 2]>::try_from(positional).unwrap_or_else(|_| usage());
    let listen: SocketAddr = listen.parse().unwrap_or_else(|_| usage());
    if !listen.ip().is_loopback() {
        eprintln!("refusing to listen on {listen}: use a loopback address such as 127.0.0.1:8080");
        std::process::exit(2);
    }
    if !(upstream.starts_with("http://") || upstream.starts_with("https://")) {
        eprintln!("the upstream must be an http:// or https:// URL");
        std::process::exit(2);
    }
    Args {
        listen,
        upstream,
        sqlite,
        ttl,
        max_entry_size,
        shared,
        stale_if_error,
        heuristic,
    }
}

/// Runs the proxy with the command-line arguments `args` (without the program name) until
/// Ctrl-C. Exits the process with status 2 on a malformed command line.
pub async fn run(args: impl IntoIterator<Item = String>) -> Result<(), BoxError> {
    let args = parse_args(args);
    let (store, sqlite): (Box<dyn FnOnce() -> CacheLayer>, _) = match &args.sqlite {
        Some(path) => {
            let sqlite = courteous::store::sqlite::SqliteStore::open(path).await?;
            let store = sqlite.cache();
            (Box::new(move || CacheLayer::new(store)), Some(sqlite))
        }
        None => (Box::new(|| CacheLayer::new(MemoryCacheStore::new())), None),
    };
    let mut layer = store()
        .status_header(HeaderName::from_static("x-cache"))
        .shared(args.shared);
    if let Some(percent) = args.heuristic {
        layer = layer.heuristic_fraction(percent / 100.0);
    }
    if let Some(window) = args.stale_if_error {
        layer = layer.stale_if_error(Duration::from_secs(window));
    }
    if let Some(ttl) = args.ttl {
        layer = layer.default_ttl(CacheTtl::absolute(Duration::from_secs(ttl)));
    }
    if let Some(max) = args.max_entry_size {
        layer = layer.max_entry_size(max);
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(HttpClient::new(client));
    let base_path = reqwest::Url::parse(&args.upstream)?.path().to_owned();
    let proxy = Proxy {
        upstream: args.upstream.clone(),
        base_path,
        service,
    };
    let router = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // Tests and scripts read this line to learn the port (LISTEN may end in :0).
    println!(
        "listening on http://{} -> {}",
        listener.local_addr()?,
        args.upstream
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let stats = layer.stats().await;
    eprintln!(
        "cache: {} hits, {} misses, {} stale, {} revalidated, {} bypassed, {} store errors",
        stats.hits, stats.misses, stats.stale, stats.revalidated, stats.bypass, stats.store_errors
    );
    layer.store().close().await?;
    if let Some(sqlite) = sqlite {
        sqlite.close().await?;
    }
    Ok(())
}
