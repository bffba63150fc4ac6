//! A caching reverse proxy: try the cache layer against your own API with curl.
//!
//! ```text
//! cargo run --example caching_proxy -- 127.0.0.1:8080 https://api.example.com
//! cargo run --example caching_proxy -- 127.0.0.1:8080 https://api.example.com --sqlite cache.db
//! curl -i http://127.0.0.1:8080/some/path      # x-cache: MISS, then HIT
//! ```
//!
//! The proxy itself, and every option it takes, is in `proxy.rs`: the tests in
//! `tests/cache/proxy.rs` compile that module into the test binary and run it as a child process
//! of it, so they need no nested `cargo build`.

mod proxy;

#[tokio::main]
async fn main() -> Result<(), courteous::BoxError> {
    proxy::run(std::env::args().skip(1)).await
}
