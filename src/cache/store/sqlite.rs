//! The cache store in the shared SQLite file.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::cache::CacheEntry;
use crate::key::RequestKey;
use crate::store::StoreError;
use crate::store::sqlite::schema::Component;
use crate::store::sqlite::{SqliteError, SqliteStore};

use super::{CacheStore, CacheStoreStats, Invalidation};

/// The cache's tables in the shared file.
pub(crate) const CACHE: Component = Component {
    name: "cache",
    migrations: &[
        // 1: one row per entry (or `Vary` index); the body last, so the other columns are read
        // without walking its overflow pages.
        "CREATE TABLE cache_entries (
             key         BLOB PRIMARY KEY NOT NULL,
             url         TEXT NOT NULL,
             status      INTEGER NOT NULL,
             version     INTEGER NOT NULL,
             headers     BLOB NOT NULL,
             vary        TEXT NOT NULL,
             stored_at   INTEGER NOT NULL,
             age_ms      INTEGER NOT NULL,
             fresh_until INTEGER NOT NULL,
             expires_at  INTEGER NOT NULL,
             sliding_ms  INTEGER,
             size        INTEGER NOT NULL,
             body        BLOB NOT NULL
         ) STRICT;
         CREATE INDEX cache_entries_by_expiry ON cache_entries (expires_at);
         CREATE INDEX cache_entries_by_url ON cache_entries (url);",
    ],
};

/// At most this many written entries are kept in memory until the writer has run them.
const MAX_PENDING: usize = 1024;

/// How long a written entry is served from memory at most once the database has refused a
/// batch or dropped a write since it was put: a database that refuses writes (read-only, full)
/// is not masked for long by the pending entries. While the database accepts writes, an entry
/// stays until the transaction that writes it has committed, however long that takes.
const PENDING_FOR: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    purged: AtomicU64,
}

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
        }
    }
}

use crate::time::{epoch_ms as millis, from_epoch_ms as time};

fn version_code(v: Version) -> i64 {
    match v {
        Version::HTTP_09 => 9,
        Version::HTTP_10 => 10,
        Version::HTTP_2 => 20,
        Version::HTTP_3 => 30,
        _ => 11,
    }
}

fn version_of(code: i64) -> Version {
    match code {
        9 => Version::HTTP_09,
        10 => Version::HTTP_10,
        20 => Version::HTTP_2,
        30 => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

/// Headers as `count, (name len u16, name, value len u32, value)*`, little-endian.
fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + headers.len() * 48);
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.as_str().len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The inverse of [`encode_headers`]; `None` for damaged bytes.
///
/// The encoded headers are copied once; every value is a slice of that copy rather than an
/// allocation of its own (which cloning the map for a response would then share, too).
fn decode_headers(encoded: &[u8]) -> Option<HeaderMap> {
    fn take(bytes: &Bytes, at: &mut usize, n: usize) -> Option<Bytes> {
        let end = at.checked_add(n).filter(|&end| end <= bytes.len())?;
        let part = bytes.slice(*at..end);
        *at = end;
        Some(part)
    }
    fn number<const N: usize>(bytes: &Bytes, at: &mut usize) -> Option<[u8; N]> {
        take(bytes, at, N)?.as_ref().try_into().ok()
    }
    let bytes = Bytes::copy_from_slice(encoded);
    let at = &mut 0;
    let count = u32::from_le_bytes(number(&bytes, at)?) as usize;
    let mut headers = HeaderMap::with_capacity(count.min(256));
    for _ in 0..count {
        let n = u16::from_le_bytes(number(&bytes, at)?) as usize;
        let name = HeaderName::from_bytes(&take(&bytes, at, n)?).ok()?;
        let n = u32::from_le_bytes(number(&bytes, at)?) as usize;
        let value = HeaderValue::from_maybe_shared(take(&bytes, at, n)?).ok()?;
        headers.append(name, value);
    }
    Some(headers)
}

fn write_entry(conn: &Connection, key: &[u8; 32], entry: &CacheEntry) -> rusqlite::Result<()> {
    let vary = entry
        .vary
        .iter()
        .map(HeaderName::as_str)
        .collect::<Vec<_>>()
        .join(",");
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
        version_code(entry.version),
        encode_headers(&entry.headers),
        vary,
        millis(entry.stored_at),
        i64::try_from(entry.age_at_store.as_millis()).unwrap_or(i64::MAX),
        millis(entry.fresh_until),
        millis(entry.expires_at),
        entry
            .sliding
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        entry.size() as i64,
        &entry.body[..],
    ])
    .map(drop)
}

/// Bodies up to this size are copied into a buffer this thread reuses (see [`body_buffer`]).
const REUSE_MAX: usize = 1 << 20;

/// Bodies larger than this are read with SQLite's incremental blob I/O, straight from the
/// database pages into the body's buffer. Reading the column instead makes SQLite first gather
/// a body that spills onto overflow pages into a buffer of its own, then we copy it again;
/// opening the blob costs about a microsecond, which pays off from about 32 KiB
/// (measured with 64 KiB pages; with smaller pages bodies spill sooner).
const BLOB_READ_MIN: usize = 32 * 1024;

thread_local! {
    /// The allocation the last body read on this store thread was copied into, and its size.
    static BODY_BUFFER: RefCell<(BytesMut, usize)> = RefCell::new((BytesMut::new(), 0));
}

/// A body of `n` bytes, written by `fill` into an empty buffer of at least that capacity.
///
/// Bodies up to [`REUSE_MAX`] go into the allocation that held the previous body read on this
/// thread when nothing holds that one any more (the caller dropped the response) and it is not
/// more than twice the size needed; otherwise into a new allocation, which is kept for the next
/// read. Handing out a fresh allocation per hit and freeing it on another thread made the
/// allocator return the pages to the kernel and fault them in again on the next hit: a 100 KiB
/// hit cost 18 page faults, more than the read itself. At most one allocation of up to twice
/// [`REUSE_MAX`] stays with each store thread.
fn body_buffer(
    n: usize,
    fill: impl FnOnce(&mut BytesMut) -> rusqlite::Result<()>,
) -> rusqlite::Result<Bytes> {
    if n == 0 {
        return Ok(Bytes::new());
    }
    if n > REUSE_MAX {
        let mut buf = BytesMut::with_capacity(n);
        fill(&mut buf)?;
        return Ok(buf.freeze());
    }
    BODY_BUFFER.with_borrow_mut(|(buf, capacity)| {
        // `try_reclaim` of the whole allocation succeeds only when no earlier body shares it.
        let reusable = *capacity >= n && *capacity <= 2 * n && buf.try_reclaim(*capacity);
        if !reusable {
            *buf = BytesMut::with_capacity(n);
            *capacity = buf.capacity();
        }
        let filled = fill(buf);
        let body = buf.split().freeze();
        filled.map(|()| body)
    })
}

/// The body as [`Bytes`], copied once from the row's column.
fn body_bytes(body: &[u8]) -> Bytes {
    body_buffer(body.len(), |buf| {
        buf.extend_from_slice(body);
        Ok(())
    })
    .unwrap_or_else(|_| Bytes::copy_from_slice(body))
}

/// The body of row `rowid`, read straight from the pages (see [`BLOB_READ_MIN`]). Called while
/// the row's statement is active, so it reads the same snapshot.
fn blob_body(conn: &Connection, rowid: i64) -> rusqlite::Result<Bytes> {
    let blob = conn.blob_open(rusqlite::MAIN_DB, "cache_entries", "body", rowid, true)?;
    let n = blob.len();
    body_buffer(n, |buf| {
        buf.resize(n, 0);
        blob.read_at_exact(buf, 0)
    })
}

fn column_blob<'a>(row: &'a Row<'_>, index: usize) -> rusqlite::Result<&'a [u8]> {
    let value = row.get_ref(index)?;
    value
        .as_blob()
        .map_err(|_| rusqlite::Error::InvalidColumnType(index, String::new(), value.data_type()))
}

fn column_text<'a>(row: &'a Row<'_>, index: usize) -> rusqlite::Result<&'a str> {
    let value = row.get_ref(index)?;
    value
        .as_str()
        .map_err(|_| rusqlite::Error::InvalidColumnType(index, String::new(), value.data_type()))
}

/// Decodes the row where SQLite holds it: the headers, URL and `Vary` names are read without
/// intermediate copies, the body is copied once (see [`body_buffer`] and [`BLOB_READ_MIN`]).
fn decode_row(conn: &Connection, row: &Row<'_>) -> rusqlite::Result<Option<CacheEntry>> {
    let url = column_text(row, 0)?;
    // A row we cannot decode is treated as absent (and replaced by the next write).
    let Some(headers) = decode_headers(column_blob(row, 3)?) else {
        tracing::warn!(url, "undecodable cache entry headers; ignoring the entry");
        return Ok(None);
    };
    let Ok(status) = StatusCode::from_u16(u16::try_from(row.get::<_, i64>(1)?).unwrap_or(0)) else {
        return Ok(None);
    };
    let vary = column_text(row, 4)?
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .collect();
    // Column 10 holds the body when it is small; a large one is read from the pages.
    let body = match row.get_ref(10)? {
        ValueRef::Blob(body) => body_bytes(body),
        ValueRef::Null => blob_body(conn, row.get(11)?)?,
        other => {
            return Err(rusqlite::Error::InvalidColumnType(
                10,
                String::new(),
                other.data_type(),
            ));
        }
    };
    Ok(Some(CacheEntry {
        url: url.to_owned(),
        status,
        version: version_of(row.get(2)?),
        headers,
        body,
        vary,
        stored_at: time(row.get(5)?),
        age_at_store: Duration::from_millis(row.get::<_, i64>(6)?.max(0).unsigned_abs()),
        fresh_until: time(row.get(7)?),
        expires_at: time(row.get(8)?),
        sliding: row
            .get::<_, Option<i64>>(9)?
            .map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
    }))
}

fn read_entry(
    conn: &Connection,
    key: &[u8; 32],
    now: i64,
) -> Result<Option<CacheEntry>, SqliteError> {
    // `length(body)` reads the length from the record header, without touching the body.
    let entry = conn
        .prepare_cached(
            "SELECT url, status, version, headers, vary, stored_at, age_ms, fresh_until,
                    expires_at, sliding_ms, CASE WHEN length(body) <= ?3 THEN body END, rowid
             FROM cache_entries WHERE key = ?1 AND expires_at > ?2",
        )?
        .query_row(params![&key[..], now, BLOB_READ_MIN as i64], |row| {
            decode_row(conn, row)
        })
        .optional()?;
    Ok(entry.flatten())
}

fn write_key(key: &RequestKey) -> Box<[u8]> {
    let mut k = Vec::with_capacity(38);
    k.extend_from_slice(b"cache:");
    k.extend_from_slice(key.as_bytes());
    k.into_boxed_slice()
}

impl SqliteCacheStore {
    fn failed(&self, error: SqliteError) -> StoreError {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        error.into()
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

    fn pending(&self) -> std::sync::MutexGuard<'_, PendingMap> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl CacheStore for SqliteCacheStore {
    async fn get(&self, key: &RequestKey) -> Result<Option<Arc<CacheEntry>>, StoreError> {
        let now = SystemTime::now();
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
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(entry));
        }
        let hash = *key.as_bytes();
        let found = self
            .store
            .call(move |conn| read_entry(conn, &hash, millis(now)))
            .await
            .map_err(|e| self.failed(e))?;
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
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
                    let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
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
        let now = millis(SystemTime::now());
        let n = self
            .store
            .call(move |conn| {
                Ok(conn
                    .prepare_cached("DELETE FROM cache_entries WHERE expires_at <= ?1")?
                    .execute([now])? as u64)
            })
            .await
            .map_err(|e| self.failed(e))?;
        self.counters.purged.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    async fn stats(&self) -> Result<CacheStoreStats, StoreError> {
        let now = millis(SystemTime::now());
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
        Ok(CacheStoreStats {
            entries: entries as u64,
            bytes: bytes as u64,
            expired: expired as u64,
            purged: self.counters.purged.load(Ordering::Relaxed),
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
        })
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.store.flush().await.map_err(|e| self.failed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_of_every_size_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        for page_size in [4096, 65536] {
            let store = SqliteStore::builder(dir.path().join(format!("{page_size}.db")))
                .page_size(page_size)
                .open()
                .await
                .unwrap();
            let cache = store.cache();
            let now = SystemTime::now();
            let sizes = [
                0,
                1,
                1024,
                BLOB_READ_MIN,
                BLOB_READ_MIN + 1,
                100 * 1024,
                REUSE_MAX,
                REUSE_MAX + 1,
            ];
            for (i, &size) in sizes.iter().enumerate() {
                let key = RequestKey::from_parts([i as u8; 32], format!("GET http://h/{i}"));
                let body: Vec<u8> = (0..size).map(|b| (b % 251) as u8).collect();
                let entry = CacheEntry::new(
                    format!("http://h/{i}"),
                    StatusCode::OK,
                    Bytes::from(body),
                    now,
                )
                .fresh_for(Duration::from_secs(60), Duration::ZERO);
                cache.put(&key, Arc::new(entry)).await.unwrap();
            }
            // Read from the file, not from the entries pending in memory.
            store.flush().await.unwrap();
            cache.pending().clear();
            for _ in 0..2 {
                for (i, &size) in sizes.iter().enumerate() {
                    let key = RequestKey::from_parts([i as u8; 32], format!("GET http://h/{i}"));
                    let entry = cache.get(&key).await.unwrap().expect("stored");
                    assert_eq!(entry.body.len(), size, "size {size}, page {page_size}");
                    assert!(
                        entry
                            .body
                            .iter()
                            .enumerate()
                            .all(|(b, &v)| v == (b % 251) as u8),
                        "size {size}, page {page_size}"
                    );
                    assert_eq!(entry.url, format!("http://h/{i}"));
                }
            }
            store.close().await.unwrap();
        }
    }

    #[test]
    fn headers_survive_encoding_and_damaged_bytes_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        headers.append(http::header::SET_COOKIE, HeaderValue::from_static("a=1"));
        headers.append(http::header::SET_COOKIE, HeaderValue::from_static("b=2"));
        headers.insert("x-empty", HeaderValue::from_static(""));
        let encoded = encode_headers(&headers);
        assert_eq!(decode_headers(&encoded), Some(headers));
        for cut in 1..encoded.len() {
            assert_eq!(decode_headers(&encoded[..cut]), None, "cut at {cut}");
        }
        // A value with a byte no header value may hold.
        let mut bad_value = encoded.clone();
        let at = bad_value.windows(4).position(|w| w == b"text").unwrap();
        bad_value[at] = b'\n';
        assert_eq!(decode_headers(&bad_value), None);
    }

    #[test]
    fn a_body_still_held_is_never_overwritten_by_the_next_read() {
        let first = body_bytes(&[1; 1000]);
        let second = body_bytes(&[2; 1000]);
        assert!(first.iter().all(|&b| b == 1));
        assert!(second.iter().all(|&b| b == 2));
        assert_ne!(first.as_ptr(), second.as_ptr());
    }

    #[test]
    fn a_dropped_body_lends_its_allocation_to_the_next_read() {
        let first = body_bytes(&[1; 4000]);
        let at = first.as_ptr();
        drop(first);
        // Were the allocation freed, this one would likely take its place.
        let occupier = vec![0u8; 4000];
        let second = body_bytes(&[2; 3000]);
        assert_eq!(second.as_ptr(), at);
        assert_ne!(occupier.as_ptr(), at);
        assert_eq!(&second[..], &[2; 3000][..]);
        // Far smaller than the allocation: a new, fitting one instead of pinning the large one.
        drop(second);
        let small = body_bytes(&[3; 100]);
        assert_ne!(small.as_ptr(), at);
        assert_eq!(&small[..], &[3; 100][..]);
    }

    #[test]
    fn empty_and_oversized_bodies_are_plain_copies() {
        assert!(body_bytes(&[]).is_empty());
        let at = body_bytes(&[1; 5000]).as_ptr();
        let big = vec![7; REUSE_MAX + 1];
        assert_eq!(&body_bytes(&big)[..], &big[..]);
        let occupier = vec![0u8; 5000];
        // The oversized body did not replace the buffer kept for reuse.
        assert_eq!(body_bytes(&[2; 5000]).as_ptr(), at);
        assert_ne!(occupier.as_ptr(), at);
    }
}
