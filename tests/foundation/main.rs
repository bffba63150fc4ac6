//! The foundation: transport adapter, reqwest-middleware, request keys, the SQLite engine.

#[path = "../support/mod.rs"]
mod support;

mod keys;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "middleware")]
mod transport;
