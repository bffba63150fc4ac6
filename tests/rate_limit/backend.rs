//! The rate-limit stores under test: one [`Backend`] per test, from which "processes" take their
//! own handles (memory: clones of one store; SQLite: the same file opened again; Redis: a new
//! connection to the same server and prefix), and child processes rebuild theirs from the
//! environment.

use std::sync::Arc;

use courteous::rate_limit::{MemoryRateLimitStore, RateLimitStore};

use crate::support::child;

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite,
    #[cfg(feature = "redis")]
    Redis,
}

/// One store shared by the handles a test takes from it.
pub struct Backend {
    pub kind: Kind,
    memory: MemoryRateLimitStore,
    #[cfg(feature = "sqlite")]
    sqlite: Option<(tempfile::TempDir, std::path::PathBuf)>,
    #[cfg(feature = "redis")]
    redis: Option<(String, String)>,
}

/// A handle on the store, with what it needs to flush and close.
pub struct Handle {
    pub store: Arc<dyn RateLimitStore>,
    #[cfg(feature = "sqlite")]
    sqlite: Option<courteous::store::sqlite::SqliteStore>,
}

impl Handle {
    /// Makes written-behind state (SQLite's user activity) visible to other processes.
    pub async fn flush(&self) {
        #[cfg(feature = "sqlite")]
        if let Some(sqlite) = &self.sqlite {
            sqlite.flush().await.unwrap();
        }
    }

    pub async fn close(self) {
        #[cfg(feature = "sqlite")]
        if let Some(sqlite) = &self.sqlite {
            sqlite.close().await.unwrap();
        }
    }
}

/// Whose clock a Redis handle stamps admissions with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Time {
    /// As deployed: the Redis server's clock (the other stores use the caller's `now` anyway).
    Real,
    /// The `now` the test passes (Redis with `RedisClock::Caller`), so tests can inject time.
    Injected,
}

impl Backend {
    /// A fresh store of `kind`, or `None` (after printing `SKIPPED: ...`) when Redis does not
    /// answer.
    pub async fn new(kind: Kind, test: &str) -> Option<Backend> {
        let _ = test;
        let mut backend = Backend {
            kind,
            memory: MemoryRateLimitStore::new(),
            #[cfg(feature = "sqlite")]
            sqlite: None,
            #[cfg(feature = "redis")]
            redis: None,
        };
        match kind {
            Kind::Memory => {}
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => {
                let (dir, path) = crate::support::temp_db();
                // Create the schema once, before processes race to open the file.
                courteous::store::sqlite::SqliteStore::open(&path)
                    .await
                    .unwrap()
                    .close()
                    .await
                    .unwrap();
                backend.sqlite = Some((dir, path));
            }
            #[cfg(feature = "redis")]
            Kind::Redis => {
                let url = crate::support::redis::shared_url().await?;
                backend.redis = Some((url, crate::support::redis::unique_prefix(test)));
            }
        }
        Some(backend)
    }

    /// A handle on the store, as another process would have it.
    pub async fn handle(&self, time: Time) -> Handle {
        match self.kind {
            Kind::Memory => Handle {
                store: {
                    let _ = time;
                    Arc::new(self.memory.clone())
                },
                #[cfg(feature = "sqlite")]
                sqlite: None,
            },
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => {
                let _ = time;
                sqlite_handle(&self.sqlite.as_ref().unwrap().1).await
            }
            #[cfg(feature = "redis")]
            Kind::Redis => {
                let (url, prefix) = self.redis.as_ref().unwrap();
                redis_handle(url, prefix, time)
            }
        }
    }

    /// What a child process needs to open the same store ([`from_env`]).
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        match self.kind {
            Kind::Memory => panic!("a memory store cannot be shared with another process"),
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => vec![
                ("BACKEND", "sqlite".to_owned()),
                (
                    "DB_PATH",
                    self.sqlite.as_ref().unwrap().1.display().to_string(),
                ),
            ],
            #[cfg(feature = "redis")]
            Kind::Redis => {
                let (url, prefix) = self.redis.as_ref().unwrap();
                vec![
                    ("BACKEND", "redis".to_owned()),
                    ("REDIS_URL", url.clone()),
                    ("PREFIX", prefix.clone()),
                ]
            }
        }
    }
}

#[cfg(feature = "sqlite")]
async fn sqlite_handle(path: &std::path::Path) -> Handle {
    let sqlite = courteous::store::sqlite::SqliteStore::open(path)
        .await
        .unwrap();
    Handle {
        store: Arc::new(sqlite.rate_limits()),
        sqlite: Some(sqlite),
    }
}

#[cfg(feature = "redis")]
fn redis_handle(url: &str, prefix: &str, time: Time) -> Handle {
    use courteous::rate_limit::RedisClock;
    let store = courteous::store::redis::RedisStore::builder(url)
        .prefix(prefix)
        .connect()
        .unwrap()
        .rate_limits()
        .clock(match time {
            Time::Real => RedisClock::Server,
            Time::Injected => RedisClock::Caller,
        });
    Handle {
        store: Arc::new(store),
        #[cfg(feature = "sqlite")]
        sqlite: None,
    }
}

/// In a child process: the store the parent's [`Backend::child_env`] describes (real time).
pub async fn from_env() -> Handle {
    let backend: String = child::param("BACKEND");
    match backend.as_str() {
        #[cfg(feature = "sqlite")]
        "sqlite" => sqlite_handle(std::path::Path::new(&child::param::<String>("DB_PATH"))).await,
        #[cfg(feature = "redis")]
        "redis" => redis_handle(
            &child::param::<String>("REDIS_URL"),
            &child::param::<String>("PREFIX"),
            Time::Real,
        ),
        other => panic!("unknown backend {other}"),
    }
}

/// Runs `test` against a fresh store of `kind`, unless it is skipped.
pub async fn run<F, Fut>(kind: Kind, name: &str, test: F)
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(backend) = Backend::new(kind, name).await {
        #[cfg(feature = "redis")]
        let redis = backend.redis.clone();
        test(backend).await;
        // The state hashes would otherwise stay in the shared server for days.
        #[cfg(feature = "redis")]
        if let Some((url, prefix)) = redis {
            forget(&url, &prefix).await;
        }
    }
}

/// Deletes the keys under `prefix`.
#[cfg(feature = "redis")]
pub async fn forget(url: &str, prefix: &str) {
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: u64 = ::redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

pub(crate) use crate::support::suites::{every_backend, shared_backends};
