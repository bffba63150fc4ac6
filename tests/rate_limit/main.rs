//! The rate-limit layer: exact windows, waiting, priorities, server feedback, across processes.

#[path = "../support/mod.rs"]
mod support;

mod allocation;
#[cfg(feature = "middleware")]
mod feedback;
mod layer;
#[cfg(feature = "sqlite")]
mod sqlite;
mod window;
