//! The SQLite backend: a table in the shared file, written by the write-behind writer, with
//! retention by age and by row count.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{Connection, Row, params};

use crate::context::Priority;
use crate::resource::Resource;
use crate::store::StoreError;
use crate::store::sqlite::schema::Component;
use crate::store::sqlite::{SqliteError, SqliteStore};
use crate::time::{Clock, SystemClock, Timestamp};

use super::{
    GroupBy, JournalEntry, JournalGroup, JournalQuery, JournalStats, JournalStore, JournalSummary,
};

/// The journal's table.
pub(crate) const JOURNAL: Component = Component {
    name: "journal",
    migrations: &[
        // 1: one row per upstream call.
        "CREATE TABLE courteous_journal (
             id           INTEGER PRIMARY KEY,
             time         INTEGER NOT NULL,  -- ms since the Unix epoch, when the answer came
             resource     TEXT NOT NULL,
             priority     TEXT NOT NULL,     -- 'user' or 'background'
             method       TEXT NOT NULL,
             url          TEXT NOT NULL,     -- secrets masked
             status       INTEGER NOT NULL,
             latency_us   INTEGER NOT NULL,
             bytes        INTEGER,           -- NULL when the upstream did not say
             revalidation INTEGER NOT NULL,  -- 0 or 1
             wait_us      INTEGER NOT NULL,  -- time held by the rate limiter
             followers    INTEGER NOT NULL   -- dedupe followers served
         ) STRICT;
         CREATE INDEX courteous_journal_time ON courteous_journal (time);",
    ],
};

/// The key of the pending prune job: at most one waits in the writer's queue.
const PRUNE_KEY: &[u8] = b"courteous-journal-prune";

/// The default retention by age: 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The default retention by row count: 1,000,000 rows.
pub const DEFAULT_MAX_ROWS: u64 = 1_000_000;

impl SqliteStore {
    /// A [`JournalStore`] in this file: rows every process opening it writes and reads.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::journal::Journal;
    /// use courteous::store::sqlite::SqliteStore;
    /// use courteous::ContextLayer;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courteous::store::sqlite::SqliteError> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SqliteStore::open(dir.path().join("courteous.db")).await?;
    /// let journal = Journal::new(store.journal().max_age(Duration::from_secs(24 * 3600)));
    /// let layer = ContextLayer::new().journal(journal);
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn journal(&self) -> SqliteJournalStore {
        SqliteJournalStore {
            store: self.clone(),
            clock: Arc::new(SystemClock),
            max_age: DEFAULT_MAX_AGE,
            max_rows: DEFAULT_MAX_ROWS,
            prune_interval: Duration::from_secs(60),
            shared: Arc::new(Shared::default()),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// Rows recorded since the writer last took them: the first row of a batch queues one
    /// deferred write, which takes every row recorded until it runs.
    rows: Mutex<Vec<JournalEntry>>,
    /// Rows in memory: listed, or taken by a batch not yet committed nor dropped. A batch the
    /// database refuses (full, read-only) is kept by the writer and retried, and each retry
    /// takes the rows listed since in another batch: the bound is on all of them.
    held: AtomicU64,
    recorded: AtomicU64,
    dropped: AtomicU64,
    /// Batches queued, to key each one apart.
    batches: AtomicU64,
    /// When the last prune was queued (ms since the epoch; 0: never, so the first row prunes).
    last_prune: AtomicU64,
}

impl Shared {
    /// Lists `entry` for the writer: `None` when [`MAX_WAITING`] rows are held already (the row
    /// dropped and counted), else whether it is the first of the list (which must queue a
    /// batch).
    fn list(&self, entry: JournalEntry) -> Option<bool> {
        let mut rows = self.rows.lock();
        if self.held.load(Ordering::Relaxed) >= MAX_WAITING as u64 {
            drop(rows);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        rows.push(entry);
        self.held.fetch_add(1, Ordering::Relaxed);
        Some(rows.len() == 1)
    }

    /// `n` rows left memory (written, or dropped).
    fn release(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(n as u64))
            });
    }
}

/// The most rows in memory, waiting for the writer or in batches it has not committed; more
/// are dropped (and counted).
const MAX_WAITING: usize = 100_000;

/// One deferred write: the rows listed from the first until the writer runs it.
struct Batch {
    shared: Arc<Shared>,
    /// Taken from the list when the write first runs; kept for a retry of a refused batch.
    rows: Mutex<Option<Vec<JournalEntry>>>,
    committed: std::sync::atomic::AtomicBool,
}

impl Batch {
    fn new(shared: &Arc<Shared>) -> Arc<Self> {
        Arc::new(Batch {
            shared: shared.clone(),
            rows: Mutex::new(None),
            committed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Queues the write of the rows listed from now on (one message, one wake-up of the writer,
    /// per batch of rows); `false` (the rows dropped and counted) when the store refuses it.
    fn queue(store: &SqliteStore, shared: &Arc<Shared>) -> bool {
        let batch = Batch::new(shared);
        let n = shared.batches.fetch_add(1, Ordering::Relaxed);
        let write = batch.clone();
        store
            .defer_keyed_then(
                format!("courteous-journal-rows-{n}").into_bytes(),
                move |conn| write.write(conn),
                move || batch.commit(),
            )
            .is_ok()
    }

    fn write(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut rows = self.rows.lock();
        let rows = rows.get_or_insert_with(|| std::mem::take(&mut *self.shared.rows.lock()));
        rows.iter().try_for_each(|row| insert(conn, row))
    }

    /// The write was committed: its rows leave memory.
    fn commit(&self) {
        self.committed.store(true, Ordering::Relaxed);
        let written = self.rows.lock().take().map_or(0, |rows| rows.len());
        self.shared.release(written);
    }
}

impl Drop for Batch {
    /// A write dropped before it was committed (a full queue, a closed store) loses its rows:
    /// count them, and empty the list so that the next row queues a new write.
    fn drop(&mut self) {
        if self.committed.load(Ordering::Relaxed) {
            return;
        }
        let lost = match self.rows.get_mut().take() {
            Some(rows) => rows.len(),
            None => std::mem::take(&mut *self.shared.rows.lock()).len(),
        };
        self.shared.release(lost);
        self.shared
            .dropped
            .fetch_add(lost as u64, Ordering::Relaxed);
    }
}

/// A [`JournalStore`] in a [`SqliteStore`] file.
///
/// Rows are written behind ([`SqliteStore::defer`]): `record` adds the row to a list, and the
/// first row of a list queues one deferred write that inserts every row listed by the time the
/// writer thread runs it, in the writer's next transaction. So a busy stack costs the writer
/// one message per batch, not per row. Up to 100,000 rows are held in memory (waiting, or in
/// batches the file refused, full or read-only, which the writer retries); more, or rows the
/// writer's queue refuses, are dropped and counted. Rows older than
/// [`max_age`](Self::max_age), and the oldest past [`max_rows`](Self::max_rows), are deleted by
/// a prune job the writer runs with the rows, queued at most once per
/// [`prune_interval`](Self::prune_interval) (so the table may briefly hold a few rows more).
///
/// Reads run on the store's threads and see what was committed, by any process: another
/// `SqliteStore` opened on the file (a command-line tool, an admin page) reads the rows this one
/// wrote once they are flushed. A read is one statement on a WAL snapshot: it takes no write
/// lock and never holds up the applications writing the file (nor they it).
///
/// # Example
///
/// ```
/// use courteous::journal::{JournalEntry, JournalQuery, JournalStore};
/// use courteous::store::sqlite::SqliteStore;
/// use courteous::{Resource, time::Timestamp};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::StoreError> {
/// let store = SqliteStore::open(":memory:").await?;
/// let journal = store.journal().max_rows(10_000);
/// let now = Timestamp::from_system_time(std::time::SystemTime::now());
/// journal.record(JournalEntry::new(now, Resource::root(), http::Method::GET, "http://h/", http::StatusCode::OK));
/// journal.flush().await?;
/// assert_eq!(journal.query(&JournalQuery::all()).await?.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteJournalStore {
    store: SqliteStore,
    clock: Arc<dyn Clock>,
    max_age: Duration,
    max_rows: u64,
    prune_interval: Duration,
    shared: Arc<Shared>,
}

impl fmt::Debug for SqliteJournalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteJournalStore")
            .field("path", &self.store.path())
            .field("max_age", &self.max_age)
            .field("max_rows", &self.max_rows)
            .field("prune_interval", &self.prune_interval)
            .finish_non_exhaustive()
    }
}

impl SqliteJournalStore {
    /// Rows older than this are deleted (default [`DEFAULT_MAX_AGE`], 7 days).
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// The oldest rows past this many are deleted (default [`DEFAULT_MAX_ROWS`], 1,000,000):
    /// a row goes once this many were written after it (so, where rows were deleted by age in
    /// between, the table holds fewer).
    #[must_use]
    pub fn max_rows(mut self, rows: u64) -> Self {
        self.max_rows = rows;
        self
    }

    /// How often a prune is queued, at most (default 60 s).
    #[must_use]
    pub fn prune_interval(mut self, interval: Duration) -> Self {
        self.prune_interval = interval;
        self
    }

    /// Where the age of rows is measured from (default [`SystemClock`]).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Deletes the rows past the retention now; returns how many.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let (cutoff, max_rows) = self.retention();
        Ok(self
            .store
            .call(move |conn| Ok(prune(conn, cutoff, max_rows)?))
            .await?)
    }

    /// The time before which rows are too old, and the row cap, as SQL integers.
    fn retention(&self) -> (i64, i64) {
        let cutoff = self.clock.now() - self.max_age;
        (sql_int(cutoff.as_millis()), sql_int(self.max_rows))
    }

    /// Queues a prune if the last one is older than the prune interval.
    fn maybe_prune(&self) {
        let now = self.clock.now().as_millis();
        let last = self.shared.last_prune.load(Ordering::Relaxed);
        let interval = crate::time::duration_ms(self.prune_interval);
        if (last != 0 && now.saturating_sub(last) < interval)
            || self
                .shared
                .last_prune
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (cutoff, max_rows) = self.retention();
        let queued = self.store.defer_keyed(PRUNE_KEY, move |conn| {
            prune(conn, cutoff, max_rows).map(drop)
        });
        if let Err(error) = queued {
            tracing::debug!(%error, "could not queue the journal's prune; the next row will try again");
            self.shared.last_prune.store(last, Ordering::Relaxed);
        }
    }
}

/// `n` as an SQLite integer (saturating).
fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn from_micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// Deletes rows older than `cutoff` and the oldest past `max_rows`.
fn prune(conn: &Connection, cutoff: i64, max_rows: i64) -> rusqlite::Result<u64> {
    let by_age = conn
        .prepare_cached("DELETE FROM courteous_journal WHERE time < ?1")?
        .execute([cutoff])?;
    let by_count = conn.prepare_cached(PRUNE_BY_COUNT)?.execute([max_rows])?;
    Ok((by_age + by_count) as u64)
}

/// Deletes the rows that `?1` rows or more were written after.
///
/// Each insert takes the largest id plus one, so a row's id counts the rows written before it;
/// the rows deleted by age are the oldest (the ids left form about one run). Counting from the
/// largest id costs a lookup and the deletions, where counting `?1` rows back with `OFFSET`
/// stepped over all of them (50 ms for a million, with the file's write lock held).
const PRUNE_BY_COUNT: &str = "DELETE FROM courteous_journal
     WHERE id <= (SELECT max(id) FROM courteous_journal) - ?1";

fn insert(conn: &Connection, e: &JournalEntry) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO courteous_journal (time, resource, priority, method, url, status,
             latency_us, bytes, revalidation, wait_us, followers)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        sql_int(e.time.as_millis()),
        e.resource.as_str(),
        e.priority.as_str(),
        e.method.as_str(),
        e.url,
        e.status.as_u16(),
        micros(e.latency),
        e.bytes.map(sql_int),
        e.revalidation,
        micros(e.limiter_wait),
        e.followers,
    ])
    .map(drop)
}

/// A column of a row that no build of courteous writes.
fn corrupt(column: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        Type::Text,
        format!("not a journal {what}").into(),
    )
}

fn entry(row: &Row<'_>) -> rusqlite::Result<JournalEntry> {
    let resource: String = row.get(1)?;
    let priority: String = row.get(2)?;
    let method: String = row.get(3)?;
    let status: i64 = row.get(5)?;
    Ok(JournalEntry {
        time: Timestamp::from_millis(u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0)),
        resource: Resource::new(resource).map_err(|_| corrupt(1, "resource"))?,
        priority: match priority.as_str() {
            "user" => Priority::User,
            "background" => Priority::Background,
            _ => return Err(corrupt(2, "priority")),
        },
        method: http::Method::from_bytes(method.as_bytes()).map_err(|_| corrupt(3, "method"))?,
        url: row.get(4)?,
        status: u16::try_from(status)
            .ok()
            .and_then(|s| http::StatusCode::from_u16(s).ok())
            .ok_or_else(|| corrupt(5, "status"))?,
        latency: from_micros(row.get(6)?),
        bytes: row
            .get::<_, Option<i64>>(7)?
            .map(|b| u64::try_from(b).unwrap_or(0)),
        revalidation: row.get::<_, i64>(8)? != 0,
        limiter_wait: from_micros(row.get(9)?),
        followers: u32::try_from(row.get::<_, i64>(10)?).unwrap_or(0),
    })
}

/// The query's filters as SQL parameters: start, end, resource, priority.
fn filters(query: &JournalQuery) -> (i64, i64, Option<String>, Option<&'static str>) {
    let (start, end) = query.window();
    (
        sql_int(start.as_millis()),
        sql_int(end.as_millis()),
        query.resource_filter().map(|r| r.as_str().to_owned()),
        query.priority_filter().map(Priority::as_str),
    )
}

const WHERE: &str = "time >= ?1 AND time < ?2 AND (?3 IS NULL OR resource = ?3)
                     AND (?4 IS NULL OR priority = ?4)";

/// Sums per group (`key` an SQL expression), with the lower median of the latencies.
fn groups(
    conn: &Connection,
    key: &str,
    filters: &(i64, i64, Option<String>, Option<&'static str>),
) -> rusqlite::Result<Vec<JournalGroup>> {
    let sql = format!(
        "WITH selected AS (
             SELECT {key} AS grp, latency_us, bytes, wait_us, revalidation, followers,
                    row_number() OVER (PARTITION BY {key} ORDER BY latency_us) AS rank,
                    count(*) OVER (PARTITION BY {key}) AS n
             FROM courteous_journal WHERE {WHERE})
         SELECT grp, count(*), total(bytes), max(CASE WHEN rank = (n + 1) / 2 THEN latency_us END),
                max(latency_us), total(wait_us), total(revalidation), total(followers)
         FROM selected GROUP BY grp"
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let (start, end, resource, priority) = filters;
    let rows = statement.query_map(params![start, end, resource, priority], |row| {
        let key: rusqlite::types::Value = row.get(0)?;
        let key = match key {
            rusqlite::types::Value::Text(text) => text,
            rusqlite::types::Value::Integer(n) => n.to_string(),
            _ => String::new(),
        };
        let calls = u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0);
        Ok(JournalGroup {
            key,
            calls,
            quota_spent: calls,
            bytes: real_u64(row.get(2)?),
            latency_p50: from_micros(row.get::<_, Option<i64>>(3)?.unwrap_or(0)),
            latency_max: from_micros(row.get::<_, Option<i64>>(4)?.unwrap_or(0)),
            limiter_wait: Duration::from_micros(real_u64(row.get(5)?)),
            revalidations: real_u64(row.get(6)?),
            followers: real_u64(row.get(7)?),
        })
    })?;
    rows.collect()
}

/// A sum from SQLite's `total()` (a float, so that it never overflows), saturated.
fn real_u64(x: f64) -> u64 {
    // `as` saturates, and takes NaN to 0.
    x as u64
}

#[async_trait::async_trait]
impl JournalStore for SqliteJournalStore {
    fn record(&self, entry: JournalEntry) {
        self.shared.recorded.fetch_add(1, Ordering::Relaxed);
        let Some(first) = self.shared.list(entry) else {
            return;
        };
        if first && !Batch::queue(&self.store, &self.shared) {
            return;
        }
        self.maybe_prune();
    }

    async fn query(&self, query: &JournalQuery) -> Result<Vec<JournalEntry>, StoreError> {
        let (start, end, resource, priority) = filters(query);
        let limit = query.row_limit().map_or(-1, |n| sql_int(n as u64));
        let rows = self
            .store
            .call(move |conn| {
                let mut statement = conn.prepare_cached(&format!(
                    "SELECT time, resource, priority, method, url, status, latency_us, bytes,
                            revalidation, wait_us, followers
                     FROM courteous_journal WHERE {WHERE}
                     ORDER BY time DESC, id DESC LIMIT ?5"
                ))?;
                let rows = statement
                    .query_map(params![start, end, resource, priority, limit], entry)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok::<_, SqliteError>(rows)
            })
            .await?;
        Ok(rows.into_iter().rev().collect())
    }

    async fn summary(
        &self,
        query: &JournalQuery,
        by: GroupBy,
    ) -> Result<JournalSummary, StoreError> {
        let filters = filters(query);
        let column = match by {
            GroupBy::Resource => "resource",
            GroupBy::Status => "status",
            GroupBy::Priority => "priority",
        };
        let (groups, total) = self
            .store
            .call(move |conn| {
                let found = groups(conn, column, &filters)?;
                let total = groups(conn, "'total'", &filters)?;
                Ok::<_, SqliteError>((found, total))
            })
            .await?;
        let total = total.into_iter().next().unwrap_or_else(|| JournalGroup {
            key: "total".to_owned(),
            ..JournalGroup::default()
        });
        Ok(JournalSummary::new(by, groups, total))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(self.store.flush().await?)
    }

    fn stats(&self) -> JournalStats {
        JournalStats {
            recorded: self.shared.recorded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> JournalEntry {
        JournalEntry::new(
            Timestamp::from_millis(1_000),
            Resource::root(),
            http::Method::GET,
            "http://h/",
            http::StatusCode::OK,
        )
    }

    /// A full disk: the writer runs the batch (which takes the rows), the commit fails, and
    /// the writer keeps the batch for a retry. Meanwhile rows are listed for the next batch:
    /// those the refused batch holds count against the bound.
    #[test]
    fn rows_of_a_refused_batch_count_against_the_bound() {
        let shared = Arc::new(Shared::default());
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(JOURNAL.migrations[0]).unwrap();
        for _ in 0..MAX_WAITING {
            assert!(shared.list(row()).is_some());
        }
        let refused = Batch::new(&shared);
        conn.execute_batch("BEGIN").unwrap();
        refused.write(&conn).unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
        assert!(shared.rows.lock().is_empty(), "the batch took the rows");

        assert_eq!(shared.list(row()), None, "100,000 rows are held already");
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);

        // Committed at last: the rows leave memory, and new ones are listed again.
        conn.execute_batch("BEGIN").unwrap();
        refused.write(&conn).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        refused.commit();
        drop(refused);
        assert_eq!(shared.list(row()), Some(true));
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
        let written: i64 = conn
            .query_row("SELECT count(*) FROM courteous_journal", [], |r| r.get(0))
            .unwrap();
        assert_eq!(written, MAX_WAITING as i64);
    }

    #[test]
    fn a_batch_dropped_unwritten_counts_and_releases_its_rows() {
        let shared = Arc::new(Shared::default());
        for _ in 0..3 {
            shared.list(row());
        }
        drop(Batch::new(&shared));
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(shared.held.load(Ordering::Relaxed), 0);
        assert_eq!(shared.list(row()), Some(true));
    }

    /// The prune runs in the writer's transaction, holding the file's write lock that every
    /// process's rate limiter waits for: at the cap, its cost is the rows it deletes, not the
    /// million it keeps.
    #[test]
    fn a_prune_at_the_cap_steps_over_the_rows_it_deletes_only() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(JOURNAL.migrations[0]).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100010)
             INSERT INTO courteous_journal (time, resource, priority, method, url, status,
                 latency_us, bytes, revalidation, wait_us, followers)
             SELECT i, 'a', 'user', 'GET', 'http://h/', 200, 1, NULL, 0, 0, 0 FROM n",
        )
        .unwrap();
        let mut statement = conn.prepare(PRUNE_BY_COUNT).unwrap();
        assert_eq!(statement.execute([100_000]).unwrap(), 10);
        let steps = statement.get_status(rusqlite::StatementStatus::VmStep);
        assert!(steps < 1_000, "{steps} steps to delete 10 rows");
        let (count, min): (i64, i64) = conn
            .query_row("SELECT count(*), min(id) FROM courteous_journal", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((count, min), (100_000, 11), "the newest rows kept");
        assert_eq!(prune(&conn, 0, 0).unwrap(), 100_000);
        assert_eq!(prune(&conn, 0, 0).unwrap(), 0, "an empty table");
    }
}
