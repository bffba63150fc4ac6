//! The cache stores under test: one [`Backend`] per test, from which "processes" take their own
//! handles (memory: clones of one store; SQLite: the cache of one open file; Redis: a new
//! connection to the same server and prefix), and child processes rebuild theirs from the
//! environment.

use std::sync::Arc;

use courteous::cache::{CacheStore, MemoryCacheStore};

#[cfg(feature = "redis")]
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
    memory: MemoryCacheStore,
    #[cfg(feature = "sqlite")]
    sqlite: Option<(tempfile::TempDir, courteous::store::sqlite::SqliteStore)>,
    #[cfg(feature = "redis")]
    redis: Option<(String, String)>,
}

impl Backend {
    /// A fresh store of `kind`, or `None` (after printing `SKIPPED: ...`) when Redis does not
    /// answer.
    pub async fn new(kind: Kind, test: &str) -> Option<Backend> {
        let _ = test;
        let mut backend = Backend {
            kind,
            memory: MemoryCacheStore::new(),
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
                let store = courteous::store::sqlite::SqliteStore::open(&path)
                    .await
                    .unwrap();
                backend.sqlite = Some((dir, store));
            }
            #[cfg(feature = "redis")]
            Kind::Redis => {
                let url = crate::support::redis::shared_url().await?;
                backend.redis = Some((url, crate::support::redis::unique_prefix(test)));
            }
        }
        Some(backend)
    }

    /// Whether other processes see the same entries (SQLite, Redis), as opposed to one
    /// process's memory.
    pub fn is_shared(&self) -> bool {
        self.kind != Kind::Memory
    }

    /// A handle on the store, as another process would have it.
    pub fn handle(&self) -> Arc<dyn CacheStore> {
        match self.kind {
            Kind::Memory => Arc::new(self.memory.clone()),
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => Arc::new(self.sqlite.as_ref().unwrap().1.cache()),
            #[cfg(feature = "redis")]
            Kind::Redis => {
                let (url, prefix) = self.redis.as_ref().unwrap();
                Arc::new(redis_handle(url, prefix))
            }
        }
    }

    /// Commits what the backend writes behind (SQLite), so that counts include it.
    pub async fn flush(&self) {
        #[cfg(feature = "sqlite")]
        if let Some((_, sqlite)) = &self.sqlite {
            sqlite.flush().await.unwrap();
        }
    }
}

#[cfg(feature = "redis")]
pub fn redis_handle(url: &str, prefix: &str) -> courteous::cache::RedisCacheStore {
    courteous::store::redis::RedisStore::builder(url)
        .prefix(prefix)
        .connect()
        .unwrap()
        .cache()
}

/// In a child process: the Redis store at `REDIS_URL` under `PREFIX`.
#[cfg(feature = "redis")]
pub fn from_env() -> courteous::cache::RedisCacheStore {
    redis_handle(
        &child::param::<String>("REDIS_URL"),
        &child::param::<String>("PREFIX"),
    )
}

/// Runs `test` against a fresh store of `kind`, unless it is skipped.
pub async fn run<F, Fut>(kind: Kind, name: &str, test: F)
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(backend) = Backend::new(kind, name).await {
        test(backend).await;
    }
}

pub(crate) use crate::support::suites::every_backend;
