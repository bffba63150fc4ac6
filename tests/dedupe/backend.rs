//! The dedupe stores under test: one [`Backend`] per test, from which "processes" take their own
//! handles (memory: clones of one store; SQLite: the same file opened again; Redis: a new
//! connection to the same server and prefix), and child processes rebuild theirs from the
//! environment.

use std::sync::Arc;

use courteous::dedupe::{DedupeStore, MemoryDedupeStore};

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
    memory: MemoryDedupeStore,
    #[cfg(feature = "sqlite")]
    sqlite: Option<(tempfile::TempDir, std::path::PathBuf)>,
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
            memory: MemoryDedupeStore::new(),
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
    pub async fn handle(&self) -> Arc<dyn DedupeStore> {
        match self.kind {
            Kind::Memory => Arc::new(self.memory.clone()),
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => {
                let (_, path) = self.sqlite.as_ref().unwrap();
                sqlite_handle(path).await
            }
            #[cfg(feature = "redis")]
            Kind::Redis => {
                let (url, prefix) = self.redis.as_ref().unwrap();
                redis_handle(url, prefix)
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
async fn sqlite_handle(path: &std::path::Path) -> Arc<dyn DedupeStore> {
    let store = courteous::store::sqlite::SqliteStore::open(path)
        .await
        .unwrap();
    Arc::new(store.dedupe())
}

#[cfg(feature = "redis")]
fn redis_handle(url: &str, prefix: &str) -> Arc<dyn DedupeStore> {
    let store = courteous::store::redis::RedisStore::builder(url)
        .prefix(prefix)
        .connect()
        .unwrap();
    Arc::new(store.dedupe())
}

/// In a child process: the store the parent's [`Backend::child_env`] describes.
pub async fn from_env() -> Arc<dyn DedupeStore> {
    let backend: String = child::param("BACKEND");
    match backend.as_str() {
        #[cfg(feature = "sqlite")]
        "sqlite" => sqlite_handle(std::path::Path::new(&child::param::<String>("DB_PATH"))).await,
        #[cfg(feature = "redis")]
        "redis" => redis_handle(
            &child::param::<String>("REDIS_URL"),
            &child::param::<String>("PREFIX"),
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
        test(backend).await;
    }
}

pub(crate) use crate::support::suites::{every_backend, shared_backends};

/// A clock the test sets by hand; clones share it.
#[derive(Debug, Clone, Default)]
pub struct HandClock(Arc<std::sync::atomic::AtomicU64>);

impl HandClock {
    /// A clock standing at `ms` after the epoch.
    pub fn at(ms: u64) -> Self {
        HandClock(Arc::new(std::sync::atomic::AtomicU64::new(ms)))
    }

    /// Moves the clock `by` forward.
    pub fn advance(&self, by: std::time::Duration) {
        let by = u64::try_from(by.as_millis()).unwrap();
        self.0.fetch_add(by, std::sync::atomic::Ordering::SeqCst);
    }
}

impl courteous::time::Clock for HandClock {
    fn now(&self) -> courteous::time::Timestamp {
        courteous::time::Timestamp::from_millis(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}
