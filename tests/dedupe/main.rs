//! The dedupe layer: in one process (memory store), the store contract for every backend, and
//! across processes (SQLite file, Redis server).

#[path = "../support/mod.rs"]
mod support;

mod backend;
mod cancel;
#[cfg(any(feature = "sqlite", feature = "redis"))]
mod cross;
mod local;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_stats;
mod sharing;
#[cfg(feature = "sqlite")]
mod sqlite;
mod stores;
