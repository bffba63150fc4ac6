//! The `courteous` command, run as a user would: a child process runs a real stack against a
//! local server and writes a SQLite file, then every command runs on that file, with and
//! without `--json`, and its output is checked.

#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use courteous::{Courteous, Limit};
use serde_json::Value;
use support::{TestServer, child, temp_db};

const CHILD: &str = "child_stack";

/// Runs `courteous --db PATH ARGS...`.
fn courteous(db: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_courteous"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("run courteous")
}

/// Runs a command that must succeed; returns its stdout.
fn ok(db: &Path, args: &[&str]) -> String {
    let output = courteous(db, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "courteous {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs a command with `--json`; returns the parsed output.
fn json(db: &Path, args: &[&str]) -> Value {
    let mut with = args.to_vec();
    with.push("--json");
    let stdout = ok(db, &with);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}:\n{stdout}"))
}

/// The child: a stack with a limit on `issue`, the builder's journal, against `BASE`; four
/// calls reach the upstream (one of them a 429 that blocks `search` for an hour), one is
/// answered from the cache.
#[tokio::test]
#[ignore = "run by the cli tests as a child process"]
async fn child_stack() {
    if !child::is_child(CHILD) {
        return;
    }
    let base: String = child::param("BASE");
    let db: String = child::param("DB");
    let layers = Courteous::new(reqwest::Client::new())
        .sqlite(&db)
        .resource("issue", |r| {
            r.limit(Limit::per_hour(100)).ttl(Duration::from_secs(3600))
        })
        .layers()
        .await
        .expect("stack");
    let client = layers.client(reqwest::Client::new());
    for path in [
        "/api/issue/1/",
        "/api/issue/1/",
        "/api/issue/2/",
        "/api/search/?q=a",
        "/api/search/?status=429&retry_after=3600",
    ] {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("get");
        response.bytes().await.expect("body");
    }
    if let Some(journal) = layers.journal() {
        journal.flush().await.expect("journal flush");
    }
    let sqlite = layers.sqlite().expect("sqlite store");
    sqlite.flush().await.expect("flush");
    sqlite.close().await.expect("close");
}

/// Runs the child against `server`, writing `db`.
async fn run_child(server: &TestServer, db: &Path) {
    let env = [("BASE", server.url("")), ("DB", db.display().to_string())];
    let handle = child::spawn(CHILD, &env);
    tokio::task::spawn_blocking(move || child::wait_ok(handle))
        .await
        .expect("child joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_reads_and_changes_a_file_an_application_wrote() {
    let server = TestServer::start().await;
    let (_dir, db) = temp_db();
    run_child(&server, &db).await;
    assert_eq!(server.hits(), 4, "four calls reached the upstream");

    // status: the resources, their admissions and the server's block.
    let text = ok(&db, &["status"]);
    assert!(text.contains("issue") && text.contains("search"), "{text}");
    assert!(text.contains("blocked until"), "{text}");
    let status = json(&db, &["status"]);
    let resources = status["resources"].as_array().expect("resources");
    let find = |status: &Value, name: &str| -> Value {
        status["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["resource"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    assert!(resources.len() >= 2, "{status}");
    assert_eq!(find(&status, "issue")["admissions"]["1h"]["user"], 2);
    assert!(
        find(&status, "search")["blocked_until"].is_string(),
        "{status}"
    );
    assert!(
        find(&status, "issue")["blocked_until"].is_null(),
        "{status}"
    );

    // status with a limit the application sets: what remains.
    let limited = json(&db, &["status", "issue", "--limit", "issue=10/1h"]);
    assert_eq!(limited["resources"].as_array().map(Vec::len), Some(1));
    assert_eq!(limited["limits"][0]["used"], 2);
    assert_eq!(limited["limits"][0]["remaining"], 8);
    let text = ok(&db, &["status", "issue", "--limit", "issue=10/1h"]);
    assert!(text.contains("10/3600s") && text.contains("now"), "{text}");

    // stats: cache, rate limit, journal, schema.
    let stats = json(&db, &["stats"]);
    assert_eq!(
        stats["cache"]["entries"].as_u64().map(|n| n >= 2),
        Some(true),
        "{stats}"
    );
    assert_eq!(stats["journal"]["calls"], 4, "{stats}");
    assert_eq!(stats["rate_limit"]["blocked"], 1, "{stats}");
    assert!(stats["schema"]["journal"].as_i64().is_some(), "{stats}");
    let text = ok(&db, &["stats"]);
    assert!(
        text.contains("calls kept") && text.contains("schema"),
        "{text}"
    );

    // journal: the calls, by resource and by status.
    let journal = json(&db, &["journal", "--since", "1h"]);
    assert_eq!(journal["total"]["calls"], 4, "{journal}");
    assert_eq!(journal["groups"][0]["key"], "issue", "{journal}");
    assert_eq!(journal["groups"][0]["calls"], 2, "{journal}");
    let by_status = json(&db, &["journal", "--by", "status", "--resource", "search"]);
    let keys: Vec<&str> = by_status["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(|g| g["key"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(keys, ["200", "429"], "{by_status}");
    let text = ok(&db, &["journal", "--by", "resource"]);
    assert!(text.contains("quota spent") && text.contains("issue") && text.contains("total"));

    // unblock: the server's block on `search` goes.
    assert!(ok(&db, &["unblock", "search"]).contains("unblocked search"));
    assert_eq!(json(&db, &["unblock", "search"])["unblocked"], "search");
    assert!(find(&json(&db, &["status"]), "search")["blocked_until"].is_null());
    assert_eq!(json(&db, &["stats"])["rate_limit"]["blocked"], 0);

    // invalidate: the cached responses under a prefix.
    let prefix = server.url("/api/issue/1/");
    let dropped = json(&db, &["invalidate", &prefix]);
    assert_eq!(dropped["cache_entries_dropped"], 1, "{dropped}");
    assert!(ok(&db, &["invalidate", &prefix]).contains("dropped 0 cached responses"));

    // purge --expired drops nothing fresh; purge and clear drop the rest.
    let entries = json(&db, &["stats"])["cache"]["entries"]
        .as_u64()
        .unwrap_or(0);
    assert!(entries >= 1);
    assert_eq!(
        json(&db, &["purge", "--expired"])["cache_entries_dropped"],
        0
    );
    assert!(ok(&db, &["purge", "--expired"]).contains("dropped 0 cached"));
    assert_eq!(json(&db, &["purge"])["cache_entries_dropped"], entries);
    assert!(ok(&db, &["clear"]).contains("dropped 0 cached"));
    assert_eq!(json(&db, &["clear"])["cache_entries_dropped"], 0);
    assert_eq!(json(&db, &["stats"])["cache"]["entries"], 0);

    // vacuum, then check: a sound file.
    assert!(ok(&db, &["vacuum"]).contains("vacuumed"));
    assert!(json(&db, &["vacuum"])["bytes_after"].as_u64().is_some());
    let check = json(&db, &["check"]);
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["integrity"][0], "ok");
    let text = ok(&db, &["check"]);
    assert!(
        text.contains("integrity") && text.contains("verdict"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_on_a_damaged_file() {
    let server = TestServer::start().await;
    let (_dir, db) = temp_db();
    run_child(&server, &db).await;
    assert!(courteous(&db, &["check"]).status.success());
    // Overwrite the middle of the file: pages of the tables, not the header.
    let mut bytes = std::fs::read(&db).expect("read db");
    let page = 4096;
    assert!(bytes.len() > 3 * page, "a file of several pages");
    let end = bytes.len() - 100;
    for b in &mut bytes[page + 100..end] {
        *b = 0x5a;
    }
    std::fs::write(&db, &bytes).expect("write db");
    let output = courteous(&db, &["check"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let output = courteous(&db, &["check", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["ok"], false, "{report}");
    server.stop().await;
}

#[test]
fn a_missing_file_is_an_error_not_a_new_file() {
    let (_dir, db) = temp_db();
    let output = courteous(&db, &["stats"]);
    assert!(!output.status.success());
    assert!(!db.exists());
}

/// The child on Redis: the same calls as [`child_stack`], under the prefix `PREFIX`.
#[cfg(feature = "redis")]
#[tokio::test]
#[ignore = "run by the cli tests as a child process"]
async fn child_redis_stack() {
    if !child::is_child(REDIS_CHILD) {
        return;
    }
    let base: String = child::param("BASE");
    let url: String = child::param("REDIS");
    let prefix: String = child::param("PREFIX");
    let store = courteous::store::redis::RedisStore::builder(url)
        .prefix(prefix)
        .connect()
        .expect("redis");
    let layers = Courteous::new(reqwest::Client::new())
        .redis_store(store.clone())
        .journal(true)
        .resource("issue", |r| {
            r.limit(Limit::per_hour(100)).ttl(Duration::from_secs(3600))
        })
        .layers()
        .await
        .expect("stack");
    let client = layers.client(reqwest::Client::new());
    for path in [
        "/api/issue/1/",
        "/api/issue/1/",
        "/api/issue/2/",
        "/api/search/?q=a",
        "/api/search/?status=429&retry_after=3600",
    ] {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("get");
        response.bytes().await.expect("body");
    }
    layers
        .journal()
        .expect("a journal")
        .flush()
        .await
        .expect("journal flush");
}

#[cfg(feature = "redis")]
const REDIS_CHILD: &str = "child_redis_stack";

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_work_on_redis() {
    let Some(url) = support::redis::shared_url().await else {
        return;
    };
    let prefix = support::redis::unique_prefix("cli");
    let server = TestServer::start().await;
    let env = [
        ("BASE", server.url("")),
        ("REDIS", url.clone()),
        ("PREFIX", prefix.clone()),
    ];
    let handle = child::spawn(REDIS_CHILD, &env);
    tokio::task::spawn_blocking(move || child::wait_ok(handle))
        .await
        .expect("child joined");
    assert_eq!(server.hits(), 4);

    let run = |args: &[&str]| -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_courteous"))
            .args(["--redis", &url, "--prefix", &prefix])
            .args(args)
            .output()
            .expect("run courteous")
    };
    let text = |args: &[&str]| -> String {
        let output = run(args);
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let json = |args: &[&str]| -> Value {
        let mut with = args.to_vec();
        with.push("--json");
        serde_json::from_str(&text(&with)).expect("json")
    };

    let stats = json(&["stats"]);
    assert_eq!(stats["journal"]["calls"], 4, "{stats}");
    assert_eq!(stats["rate_limit"]["blocked"], 1, "{stats}");
    assert!(stats["file"].is_null());
    assert_eq!(stats["cache"]["entries"], 2, "{stats}");
    assert!(text(&["stats"]).contains("calls kept"));

    let journal = json(&["journal", "--by", "resource"]);
    assert_eq!(journal["groups"][0]["key"], "issue", "{journal}");
    assert_eq!(journal["total"]["calls"], 4);
    assert!(text(&["journal"]).contains("search"));

    let status = json(&["status", "--limit", "issue=10/1h", "--limit", "search=5/1m"]);
    let limits = status["limits"].as_array().cloned().unwrap_or_default();
    let of = |name: &str| limits.iter().find(|l| l["resource"] == name).cloned();
    assert_eq!(of("issue").map(|l| l["remaining"].clone()), Some(8.into()));
    assert!(
        of("search").is_some_and(|l| l["blocked_until"].is_string()),
        "{status}"
    );
    assert!(text(&["status", "--limit", "issue=10/1h"]).contains("10/3600s"));
    assert!(
        !run(&["status"]).status.success(),
        "Redis lists no resources"
    );

    assert!(text(&["unblock", "search"]).contains("unblocked search"));
    assert_eq!(json(&["stats"])["rate_limit"]["blocked"], 0);

    // The URL prefix is not the key prefix (`--prefix`), which names the same argument id.
    let prefix_url = server.url("/api/issue/");
    assert_eq!(
        json(&["invalidate", &prefix_url])["cache_entries_dropped"],
        2
    );
    assert_eq!(json(&["stats"])["cache"]["entries"], 0);
    assert!(!run(&["check"]).status.success(), "check needs a file");
    server.stop().await;
}
