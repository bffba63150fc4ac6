//! Nothing secret at rest or in errors, files owner-only, SQLite stores consistent (issue 12,
//! items 7, 8, 9 and 11): real SQLite files in temp dirs, the local HTTP server, real Redis.

#[path = "../support/mod.rs"]
mod support;

#[cfg(feature = "sqlite")]
mod consistency;
#[cfg(all(feature = "sqlite", unix))]
mod files;
mod logs;
#[cfg(feature = "sqlite")]
mod migration;
#[cfg(all(feature = "sqlite", unix))]
mod readonly;
#[cfg(all(feature = "sqlite", unix))]
mod reopen;
mod secrets;
