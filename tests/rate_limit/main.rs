//! The rate-limit layer: exact windows, waiting, priorities, server feedback, the store contract
//! for every backend, across processes (SQLite file, Redis server), and Redis faults.

#[path = "../support/mod.rs"]
mod support;

mod allocation;
mod backend;
mod extremes;
#[cfg(feature = "middleware")]
mod feedback;
mod in_flight;
mod layer;
#[cfg(any(feature = "sqlite", feature = "redis"))]
mod processes;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_stats;
#[cfg(feature = "sqlite")]
mod sqlite;
mod stores;
mod window;
