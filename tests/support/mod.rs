//! Shared helpers for the integration tests: a local HTTP server that counts what it is asked,
//! temporary SQLite files, and child processes.
#![allow(dead_code, unused_imports, unreachable_pub)]

pub mod child;
#[cfg(feature = "redis")]
pub mod redis;
pub mod server;
pub mod suites;

pub use server::TestServer;

/// A temporary directory and a database path inside it.
pub fn temp_db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("courteous.db");
    (dir, path)
}
