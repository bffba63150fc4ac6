//! The dedupe layer: in one process (memory store) and across processes (SQLite store).

#[path = "../support/mod.rs"]
mod support;

#[cfg(feature = "sqlite")]
mod cross;
mod local;
