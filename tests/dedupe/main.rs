//! The dedupe layer: in one process (memory store) and across processes (SQLite store).

#[path = "../support/mod.rs"]
mod support;

mod local;
