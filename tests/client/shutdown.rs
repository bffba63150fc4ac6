//! Shutdown: what a stack built on `.sqlite(path)` wrote before the process exits is in the file.
//!
//! The builder opens that store itself, so the user has no handle to `close()` it: the stack
//! closes it (committing the deferred cache writes) when its last clone is dropped.

use std::time::Duration;

use courteous::{CacheStatus, Courteous};

use crate::get;
use crate::support::{TestServer, child, temp_db};

const CHILD: &str = "shutdown::child_fetches_once_and_exits";

fn hour() -> Duration {
    Duration::from_secs(3600)
}

/// The README's program: build on a SQLite file, fetch, let the client go and exit at once.
#[tokio::test]
#[ignore = "a child process of a_cache_entry_outlives_the_process_that_wrote_it"]
async fn child_fetches_once_and_exits() {
    if !child::is_child(CHILD) {
        return;
    }
    let path: String = child::param("COURTEOUS_TEST_DB");
    let url: String = child::param("COURTEOUS_TEST_URL");
    let client = Courteous::new(reqwest::Client::new())
        .sqlite(path)
        .default_ttl(hour())
        .build()
        .await
        .expect("build");
    let (status, report) = get(&client, &url).await;
    assert_eq!((status, report.cache), (200, Some(CacheStatus::Miss)));
    drop(client);
    // As `main` returning does: no runtime shutdown, no test harness, no time for a thread.
    std::process::exit(0);
}

#[tokio::test]
async fn a_cache_entry_outlives_the_process_that_wrote_it() {
    let server = TestServer::start().await;
    let (_dir, path) = temp_db();
    let url = server.url("/api/issue/1/");
    let env = [
        ("COURTEOUS_TEST_DB", path.display().to_string()),
        ("COURTEOUS_TEST_URL", url.clone()),
    ];
    let child = child::spawn(CHILD, &env);
    tokio::task::spawn_blocking(move || child::wait_ok(child))
        .await
        .expect("the child's waiter");
    assert_eq!(server.hits(), 1, "the child fetched once");

    let client = Courteous::new(reqwest::Client::new())
        .sqlite(&path)
        .default_ttl(hour())
        .build()
        .await
        .unwrap();
    let (_, report) = get(&client, &url).await;
    assert_eq!(
        report.cache,
        Some(CacheStatus::Hit),
        "the child's answer was committed before it exited"
    );
    assert_eq!(server.hits(), 1);
}
