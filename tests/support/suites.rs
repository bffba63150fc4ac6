//! Behaviour suites parameterised by backend. A test crate that uses them has a `backend`
//! module with a `Kind` (`Memory`, `Sqlite`, `Redis`) and
//! `async fn run(kind: Kind, name: &str, test: impl FnOnce(Backend) -> impl Future)`, which skips
//! the test (printing why) when its backend is not available.
#![allow(unused_macros)]

/// For each behaviour `name` (an `async fn name(backend: Backend)` in the calling module), a module `name` with one
/// test per backend: `name::memory`, `name::sqlite`, `name::redis`.
macro_rules! every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::backend::{Kind, run};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                run(Kind::Memory, stringify!($name), super::$name).await;
            }

            #[cfg(feature = "sqlite")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(Kind::Sqlite, stringify!($name), super::$name).await;
            }

            #[cfg(feature = "redis")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                run(Kind::Redis, stringify!($name), super::$name).await;
            }
        }
    )*};
}

/// The same, for behaviours across processes: SQLite and Redis only.
macro_rules! shared_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[allow(unused_imports)]
            use crate::backend::{Kind, run};

            #[cfg(feature = "sqlite")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(Kind::Sqlite, stringify!($name), super::$name).await;
            }

            #[cfg(feature = "redis")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                run(Kind::Redis, stringify!($name), super::$name).await;
            }
        }
    )*};
}

pub(crate) use {every_backend, shared_backends};
