//! The Redis backend against real Redis servers: the shared one, and private ones the tests stop
//! and restart.
#![cfg(feature = "redis")]

#[path = "../support/mod.rs"]
mod support;

mod connection;
mod outage;
