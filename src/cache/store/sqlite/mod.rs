//! The cache store in the shared SQLite file.
//!
//! * `mod.rs`: [`SqliteCacheStore`], its write-behind with the pending entries kept in memory,
//!   and the [`CacheStore`] implementation.
//! * `read.rs`: reading one entry, the body copied once into a buffer each store thread reuses.
//! * `schema.rs`: the `cache_entries` table and its migrations (version 2 re-encoded the headers
//!   into the byte form of `crate::store::codec`, which every store shares).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, MutexGuard};
use rusqlite::{Connection, params};

use crate::cache::CacheEntry;
use crate::key::RequestKey;
use crate::store::StoreError;
use crate::store::codec::{encode_headers, encode_vary, version_code};
use crate::store::sqlite::{SqliteError, SqliteStore};
use crate::time::{Clock, SystemClock, duration_ms_i64, epoch_ms as millis};

use super::counters::Counters;
use super::{CacheStore, CacheStoreStats, Invalidation};

mod read;
mod schema;

use read::read_entry;
pub(crate) use schema::{CACHE, reencode_headers};

/// At most this many written entries are kept in memory until the writer has run them.
const MAX_PENDING: usize = 1024;

/// How long a written entry is served from memory at most once the database has refused a
/// batch or dropped a write since it was put: a database that refuses writes (read-only, full)
/// is not masked for long by the pending entries. While the database accepts writes, an entry
/// stays until the transaction that writes it has committed, however long that takes.
const PENDING_FOR: Duration = Duration::from_secs(1);

/// A written entry not yet committed.
#[derive(Debug)]
struct PendingEntry {
    entry: Arc<CacheEntry>,
    /// Which put it came from: a commit removes only its own put's entry (a `touch` keeps it).
    put: u64,
    since: Instant,
    /// The store's count of refused batches and dropped writes when it was put.
    troubles: u64,
}

impl PendingEntry {
    /// Whether to stop serving it: the database has been in trouble since it was put, a while
    /// ago.
    fn given_up(&self, troubles: u64) -> bool {
        troubles > self.troubles && self.since.elapsed() > PENDING_FOR
    }
}

type PendingMap = HashMap<[u8; 32], PendingEntry>;
type Pending = Arc<Mutex<PendingMap>>;

/// Cache entries in the shared SQLite file: they survive restarts and are shared by every
/// process that opens the file. Made by [`SqliteStore::cache`].
///
/// Reads run on the store's threads ([`SqliteStore::call`]); writes are write-behind
/// ([`SqliteStore::defer_keyed`], one key per entry, so a later write of the same entry replaces a
/// pending one) and are visible to this process at once: the entry is kept in memory until the
/// transaction that writes it has committed (or for at most a second, so that a database that
/// refuses writes is not masked for long). Deletes and invalidations first commit
/// what is pending, so a pending write never brings back an invalidated entry.
///
/// [`close`](CacheStore::close) commits pending writes; it does not close the shared
/// [`SqliteStore`], which other stores may use (close that yourself before the process exits).
///
/// # Example
///
/// ```
/// use courteous::cache::CacheLayer;
/// use courteous::store::sqlite::SqliteStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::sqlite::SqliteError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::builder(dir.path().join("courteous.db"))
///     .page_size(65536) // faster reads of large bodies
///     .open()
///     .await?;
/// let layer = CacheLayer::new(store.cache());
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteCacheStore {
    store: SqliteStore,
    pending: Pending,
    counters: Arc<Counters>,
    /// Where "now" is read, for expiry checks and purges ([`clock`](Self::clock)).
    clock: Arc<dyn Clock>,
}

/// Shows how many entries are pending, never their headers or bodies (`Set-Cookie`, private
/// responses): a `CacheLayer` printed in a log must not leak them.
impl std::fmt::Debug for SqliteCacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteCacheStore")
            .field("path", &self.store.path())
            .field("pending", &self.pending().len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// The cache store in this file.
    pub fn cache(&self) -> SqliteCacheStore {
        SqliteCacheStore {
            store: self.clone(),
            pending: Arc::default(),
            counters: Arc::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

fn write_entry(conn: &Connection, key: &[u8; 32], entry: &CacheEntry) -> rusqlite::Result<()> {
    let vary = encode_vary(&entry.vary);
    conn.prepare_cached(
        "INSERT OR REPLACE INTO cache_entries
         (key, url, status, version, headers, vary, stored_at, age_ms, fresh_until, expires_at,
          sliding_ms, size, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        &key[..],
        entry.url,
        i64::from(entry.status.as_u16()),
        i64::from(version_code(entry.version)),
        encode_headers(&entry.headers),
        vary,
        millis(entry.stored_at),
        duration_ms_i64(entry.age_at_store),
        millis(entry.fresh_until),
        millis(entry.expires_at),
        entry.sliding.map(duration_ms_i64),
        entry.size() as i64,
        &entry.body[..],
    ])
    .map(drop)
}

fn write_key(key: &RequestKey) -> Box<[u8]> {
    let mut k = Vec::with_capacity(38);
    k.extend_from_slice(b"cache:");
    k.extend_from_slice(key.as_bytes());
    k.into_boxed_slice()
}

impl SqliteCacheStore {
    fn failed(&self, error: SqliteError) -> StoreError {
        self.counters.error();
        error.into()
    }

    /// The clock entries are checked against (expired entries are misses, and purged): the
    /// cache layer's ([`CacheLayer::clock`](crate::cache::CacheLayer::clock)); the system clock
    /// by default.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::store::sqlite::SqliteStore;
    /// use courteous::time::TokioClock;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courteous::store::sqlite::SqliteError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = SqliteStore::open(dir.path().join("courteous.db")).await?;
    /// let cache = store.cache().clock(TokioClock::new());
    /// # let _ = cache;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The shared store this cache lives in.
    pub fn sqlite(&self) -> &SqliteStore {
        &self.store
    }

    /// Batches the database refused and writes it dropped, so far.
    fn troubles(&self) -> u64 {
        let stats = self.store.stats();
        stats.failed_batches.saturating_add(stats.dropped)
    }

    fn pending(&self) -> MutexGuard<'_, PendingMap> {
        self.pending.lock()
    }
}

#[async_trait::async_trait]
impl CacheStore for SqliteCacheStore {
    async fn get(&self, key: &RequestKey) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        let now = self.clock.system_time();
        let pending = {
            let mut pending = self.pending();
            match pending.get(key.as_bytes()) {
                Some(p) if p.given_up(self.troubles()) => {
                    pending.remove(key.as_bytes());
                    None
                }
                found => found.map(|p| p.entry.clone()),
            }
        };
        if let Some(entry) = pending.filter(|e| !e.is_expired(now)) {
            self.counters.lookup(true);
            return Ok(Some(entry));
        }
        let hash = *key.as_bytes();
        let found = self
            .store
            .call(move |conn| read_entry(conn, &hash, millis(now)))
            .await
            .map_err(|e| self.failed(e))?;
        self.counters.lookup(found.is_some());
        Ok(found.map(Arc::new))
    }

    async fn put(&self, key: &RequestKey, entry: Arc<CacheEntry>) -> Result<(), StoreError> {
        let hash = *key.as_bytes();
        static PUTS: AtomicU64 = AtomicU64::new(0);
        let put = PUTS.fetch_add(1, Ordering::Relaxed);
        {
            let troubles = self.troubles();
            let mut pending = self.pending();
            if pending.len() >= MAX_PENDING {
                // Entries whose writes the database refused or dropped make room.
                pending.retain(|_, p| !p.given_up(troubles));
            }
            if pending.len() < MAX_PENDING {
                pending.insert(
                    hash,
                    PendingEntry {
                        entry: entry.clone(),
                        put,
                        since: Instant::now(),
                        troubles,
                    },
                );
            }
        }
        let pending = self.pending.clone();
        // The copy in memory stays readable until the transaction that writes it has committed:
        // until then readers on the other connections see the old row (read-your-writes).
        self.store
            .defer_keyed_then(
                write_key(key),
                move |conn| write_entry(conn, &hash, &entry),
                move || {
                    let mut pending = pending.lock();
                    if pending.get(&hash).is_some_and(|p| p.put == put) {
                        pending.remove(&hash);
                    }
                },
            )
            .map_err(|e| {
                self.pending().remove(&hash);
                self.failed(e)
            })
    }

    async fn touch(
        &self,
        key: &RequestKey,
        fresh_until: SystemTime,
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        let hash = *key.as_bytes();
        {
            let mut pending = self.pending();
            if let Some(PendingEntry { entry, .. }) = pending.get_mut(&hash) {
                let mut moved = CacheEntry::clone(entry);
                moved.fresh_until = fresh_until;
                moved.expires_at = expires_at;
                *entry = Arc::new(moved);
            }
        }
        let (fresh, expires) = (millis(fresh_until), millis(expires_at));
        let mut touch_key = b"cache-touch:".to_vec();
        touch_key.extend_from_slice(&hash);
        self.store
            .defer_keyed(touch_key, move |conn| {
                conn.prepare_cached(
                    "UPDATE cache_entries SET fresh_until = ?2, expires_at = ?3 WHERE key = ?1",
                )?
                .execute(params![&hash[..], fresh, expires])
                .map(drop)
            })
            .map_err(|e| self.failed(e))
    }

    async fn delete(&self, key: &RequestKey) -> Result<(), StoreError> {
        let hash = *key.as_bytes();
        self.pending().remove(&hash);
        self.store
            .defer_keyed(write_key(key), move |conn| {
                conn.prepare_cached("DELETE FROM cache_entries WHERE key = ?1")?
                    .execute([&hash[..]])
                    .map(drop)
            })
            .map_err(|e| self.failed(e))
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.pending().clear();
        self.store.flush().await.map_err(|e| self.failed(e))?;
        self.store
            .call(|conn| Ok(conn.execute("DELETE FROM cache_entries", [])?))
            .await
            .map(drop)
            .map_err(|e| self.failed(e))
    }

    async fn invalidate(&self, target: &Invalidation) -> Result<u64, StoreError> {
        self.pending().retain(|_, p| !target.matches(&p.entry.url));
        self.store.flush().await.map_err(|e| self.failed(e))?;
        let target = target.clone();
        self.store
            .call(move |conn| {
                let n = match &target {
                    Invalidation::Prefix(prefix) => conn.execute(
                        "DELETE FROM cache_entries WHERE url >= ?1 AND url < ?2",
                        params![prefix, format!("{prefix}\u{10FFFF}")],
                    )?,
                    Invalidation::Path(path) => conn.execute(
                        "DELETE FROM cache_entries WHERE url = ?1 OR (url >= ?2 AND url < ?3)",
                        params![path, format!("{path}?"), format!("{path}?\u{10FFFF}")],
                    )?,
                };
                Ok(n as u64)
            })
            .await
            .map_err(|e| self.failed(e))
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let now = millis(self.clock.system_time());
        let n = self
            .store
            .call(move |conn| {
                Ok(conn
                    .prepare_cached("DELETE FROM cache_entries WHERE expires_at <= ?1")?
                    .execute([now])? as u64)
            })
            .await
            .map_err(|e| self.failed(e))?;
        self.counters.purged(n);
        Ok(n)
    }

    async fn stats(&self) -> Result<CacheStoreStats, StoreError> {
        let now = millis(self.clock.system_time());
        let (entries, bytes, expired) = self
            .store
            .call(move |conn| {
                Ok(conn.query_row(
                    "SELECT count(*), coalesce(sum(size), 0),
                            coalesce(sum(expires_at <= ?1), 0)
                     FROM cache_entries",
                    [now],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    },
                )?)
            })
            .await
            .map_err(|e| self.failed(e))?;
        Ok(self.counters.fill(CacheStoreStats {
            entries: entries as u64,
            bytes: bytes as u64,
            expired: expired as u64,
            ..CacheStoreStats::default()
        }))
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.store.flush().await.map_err(|e| self.failed(e))
    }
}

#[cfg(test)]
mod tests;
