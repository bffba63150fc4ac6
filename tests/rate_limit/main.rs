//! The rate-limit layer: exact windows, waiting, priorities, server feedback, across processes.

#[path = "../support/mod.rs"]
mod support;

mod allocation;
mod layer;
#[cfg(feature = "sqlite")]
mod sqlite;
mod window;
