//! The rate-limit layer: exact windows, waiting, priorities, server feedback, across processes.

#[path = "../support/mod.rs"]
#[allow(unused_imports)]
mod support;

mod allocation;
mod layer;
mod window;
