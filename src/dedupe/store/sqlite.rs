//! The SQLite backend: every process that opens the file coalesces with the others.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::dedupe::SharedResponse;
use crate::key::RequestKey;
use crate::store::sqlite::schema::Component;
use crate::store::sqlite::{SqliteError, SqliteStore};
use crate::time::{Clock, SystemClock, Timestamp};

use crate::store::StoreError;

use super::{
    Completion, DedupeStore, DedupeStoreStats, KeyState, Lead, decode_headers, encode_headers,
};

/// The dedupe tables.
pub(crate) const DEDUPE: Component = Component {
    name: "dedupe",
    migrations: &[
        // 1: one row per key: a pending lease, or a result kept for `result_ttl`.
        "CREATE TABLE courteous_dedupe (
             key        BLOB PRIMARY KEY NOT NULL,
             display    TEXT NOT NULL,
             owner      TEXT NOT NULL,
             state      INTEGER NOT NULL,  -- 0 pending, 1 response, 2 failed, 3 too large
             started_at INTEGER NOT NULL,  -- ms since the Unix epoch
             updated_at INTEGER NOT NULL,  -- when the lease was renewed or the result published
             deadline   INTEGER NOT NULL,  -- end of the lease (pending) or of the result (others)
             status     INTEGER,
             headers    BLOB,
             body       BLOB,
             error      TEXT
         ) STRICT;
         CREATE INDEX courteous_dedupe_deadline ON courteous_dedupe (deadline);",
    ],
};

const PENDING: i64 = 0;
const RESPONSE: i64 = 1;
const FAILED: i64 = 2;
const TOO_LARGE: i64 = 3;

const CLEANUP_KEY: &[u8] = b"courteous-dedupe-cleanup";

impl SqliteStore {
    /// A [`DedupeStore`] in this file, shared with every process that opens it.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::dedupe::DedupeLayer;
    /// use courteous::store::sqlite::SqliteStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courteous::store::sqlite::SqliteError> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SqliteStore::open(dir.path().join("courteous.db")).await?;
    /// let layer = DedupeLayer::new(store.dedupe());
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn dedupe(&self) -> SqliteDedupeStore {
        SqliteDedupeStore {
            store: self.clone(),
            cleaned: Arc::new(AtomicU64::new(0)),
            last_cleanup: Arc::new(AtomicU64::new(SystemClock.now().as_millis())),
            cleanup_interval: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
        }
    }
}

/// A [`DedupeStore`] in a [`SqliteStore`] file: leaders and results are rows that every process
/// opening the file sees.
///
/// Taking the lead is one `BEGIN IMMEDIATE` transaction (insert, or take over an expired lease),
/// so two processes never lead one key. Renewals, results and releases are committed before the
/// call returns (followers poll for them); the sweep of expired rows is a write-behind write, at
/// most once per [`cleanup_interval`](Self::cleanup_interval), coalesced with itself.
/// [`stats`](DedupeStore::stats) counts the rows of every process sharing the file, but
/// [`cleaned`](DedupeStoreStats::cleaned) the sweeps of this process only, shared by the clones
/// of this value.
///
/// Leases and results expire by the store's [`Clock`] ([`SystemClock`] unless set with
/// [`clock`](Self::clock)); every process sharing the file must read the same time line.
///
/// # Example
///
/// ```
/// use courteous::dedupe::{DedupeStore, KeyState};
/// use courteous::store::sqlite::SqliteStore;
/// use courteous::RequestKey;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::StoreError> {
/// let store = SqliteStore::open(":memory:").await?;
/// let dedupe = store.dedupe().cleanup_interval(Duration::from_secs(30));
/// let key = RequestKey::from_parts([1; 32], "GET http://h/x");
/// dedupe.try_lead(&key, "me", Duration::from_secs(30)).await?;
/// assert!(matches!(dedupe.poll(&key).await?, KeyState::Pending { .. }));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteDedupeStore {
    store: SqliteStore,
    /// Expired rows removed in this process, for [`DedupeStoreStats::cleaned`].
    cleaned: Arc<AtomicU64>,
    /// When expired rows were last swept (ms since the epoch).
    last_cleanup: Arc<AtomicU64>,
    cleanup_interval: Duration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SqliteDedupeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDedupeStore")
            .field("path", &self.store.path())
            .field("cleanup_interval", &self.cleanup_interval)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl SqliteDedupeStore {
    /// How often expired rows are swept, at most (default 10 s).
    #[must_use]
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// Where leases and results read the time (default [`SystemClock`]).
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::dedupe::{DedupeStore, KeyState};
    /// use courteous::store::sqlite::SqliteStore;
    /// use courteous::time::Timestamp;
    /// use courteous::RequestKey;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), courteous::store::StoreError> {
    /// let store = SqliteStore::open(":memory:").await?;
    /// let key = RequestKey::from_parts([1; 32], "GET http://h/x");
    /// let before = store.dedupe().clock(Timestamp::from_millis(1_000));
    /// before.try_lead(&key, "me", Duration::from_secs(30)).await?;
    /// let after = store.dedupe().clock(Timestamp::from_millis(31_000));
    /// assert!(matches!(after.poll(&key).await?, KeyState::Expired { .. }));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.last_cleanup = Arc::new(AtomicU64::new(clock.now().as_millis()));
        self.clock = Arc::new(clock);
        self
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Queues a sweep of expired rows if the last one is older than the cleanup interval.
    fn maybe_cleanup(&self) {
        let now = self.now();
        let last = self.last_cleanup.load(Ordering::Relaxed);
        if now.saturating_since(Timestamp::from_millis(last)) < self.cleanup_interval
            || self
                .last_cleanup
                .compare_exchange(last, now.as_millis(), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (cleaned, clock) = (self.cleaned.clone(), self.clock.clone());
        let queued = self.store.defer_keyed(CLEANUP_KEY, move |conn| {
            let removed = sweep(conn, clock.now())?;
            cleaned.fetch_add(removed, Ordering::Relaxed);
            Ok(())
        });
        if let Err(error) = queued {
            tracing::debug!(%error, "could not queue the dedupe cleanup");
        }
    }
}

fn sweep(conn: &Connection, now: Timestamp) -> rusqlite::Result<u64> {
    conn.execute(
        "DELETE FROM courteous_dedupe WHERE deadline <= ?1",
        [column(now)],
    )
    .map(|n| n as u64)
}

/// A time as the table keeps it: ms since the epoch, saturating at `i64::MAX`.
fn column(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

/// A time the table kept (another process wrote it; the epoch for negative values).
fn stamp(ms: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn corrupt(column: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Blob, what.to_owned().into())
}

/// Reads a completion from columns `state, status, headers, body, error` starting at `at`.
fn completion(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Completion> {
    let state: i64 = row.get(at)?;
    Ok(match state {
        RESPONSE => {
            let status: u16 = row.get(at + 1)?;
            let status =
                StatusCode::from_u16(status).map_err(|_| corrupt(at + 1, "bad status code"))?;
            let headers: Vec<u8> = row.get(at + 2)?;
            let headers = decode_headers(&headers).ok_or_else(|| corrupt(at + 2, "bad headers"))?;
            let body: Vec<u8> = row.get(at + 3)?;
            Completion::Response(Arc::new(SharedResponse::new(
                status,
                headers,
                Bytes::from(body),
            )))
        }
        FAILED => {
            let error: Option<String> = row.get(at + 4)?;
            Completion::Failed(error.unwrap_or_default().into())
        }
        _ => Completion::TooLarge,
    })
}

#[async_trait::async_trait]
impl DedupeStore for SqliteDedupeStore {
    async fn try_lead(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Lead, StoreError> {
        let (hash, display, owner) = (
            key.as_bytes().to_vec(),
            key.display().to_owned(),
            owner.to_owned(),
        );
        let clock = self.clock.clone();
        self.maybe_cleanup();
        let lead = self
            .store
            .call(move |conn| {
                // One transaction holding the write lock: read, then insert or take over.
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = clock.now();
                let found = tx
                    .query_row(
                        "SELECT owner, started_at, deadline, state, status, headers, body, error
                         FROM courteous_dedupe WHERE key = ?1",
                        [&hash],
                        |row| {
                            let owner: String = row.get(0)?;
                            let started: i64 = row.get(1)?;
                            let deadline: i64 = row.get(2)?;
                            let state: i64 = row.get(3)?;
                            let lead = if stamp(deadline) <= now {
                                None
                            } else if state == PENDING {
                                Some(Lead::Pending {
                                    owner,
                                    age: now.saturating_since(stamp(started)),
                                })
                            } else {
                                Some(Lead::Completed(completion(row, 3)?))
                            };
                            Ok((lead, state))
                        },
                    )
                    .optional()?;
                let lead = match found {
                    Some((Some(lead), _)) => lead,
                    expired_or_vacant => {
                        tx.execute(
                            "INSERT INTO courteous_dedupe
                                 (key, display, owner, state, started_at, updated_at, deadline)
                             VALUES (?1, ?2, ?3, 0, ?4, ?4, ?5)
                             ON CONFLICT (key) DO UPDATE SET
                                 display = excluded.display, owner = excluded.owner,
                                 state = 0, started_at = excluded.started_at,
                                 updated_at = excluded.updated_at,
                                 deadline = excluded.deadline,
                                 status = NULL, headers = NULL, body = NULL, error = NULL",
                            params![hash, display, owner, column(now), column(now + lease)],
                        )?;
                        Lead::Acquired {
                            takeover: matches!(expired_or_vacant, Some((None, PENDING))),
                        }
                    }
                };
                tx.commit()?;
                Ok(lead)
            })
            .await?;
        Ok(lead)
    }

    async fn renew(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let (hash, owner) = (key.as_bytes().to_vec(), owner.to_owned());
        let clock = self.clock.clone();
        let renewed = self
            .store
            .call(move |conn| {
                let now = clock.now();
                Ok(conn.execute(
                    "UPDATE courteous_dedupe SET deadline = ?3, updated_at = ?4
                     WHERE key = ?1 AND owner = ?2 AND state = 0",
                    params![hash, owner, column(now + lease), column(now)],
                )? == 1)
            })
            .await?;
        Ok(renewed)
    }

    async fn publish(
        &self,
        key: &RequestKey,
        owner: &str,
        completion: Completion,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let (hash, owner) = (key.as_bytes().to_vec(), owner.to_owned());
        let clock = self.clock.clone();
        self.maybe_cleanup();
        self.store
            .call(move |conn| {
                let now = clock.now();
                let (state, status, headers, body, error) = match &completion {
                    Completion::Response(r) => (
                        RESPONSE,
                        Some(r.status.as_u16()),
                        Some(encode_headers(&r.headers)),
                        Some(&r.body[..]),
                        None,
                    ),
                    Completion::Failed(message) => (FAILED, None, None, None, Some(&message[..])),
                    Completion::TooLarge => (TOO_LARGE, None, None, None, None),
                };
                conn.execute(
                    "UPDATE courteous_dedupe
                     SET state = ?3, updated_at = ?4, deadline = ?5,
                         status = ?6, headers = ?7, body = ?8, error = ?9
                     WHERE key = ?1 AND owner = ?2 AND state = 0",
                    params![
                        hash,
                        owner,
                        state,
                        column(now),
                        column(now + ttl),
                        status,
                        headers,
                        body,
                        error
                    ],
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn release(&self, key: &RequestKey, owner: &str) -> Result<(), StoreError> {
        let (hash, owner) = (key.as_bytes().to_vec(), owner.to_owned());
        self.store
            .call(move |conn| {
                conn.execute(
                    "DELETE FROM courteous_dedupe WHERE key = ?1 AND owner = ?2 AND state = 0",
                    params![hash, owner],
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn poll(&self, key: &RequestKey) -> Result<KeyState, StoreError> {
        let hash = key.as_bytes().to_vec();
        let clock = self.clock.clone();
        let state = self
            .store
            .call(move |conn| {
                let now = clock.now();
                let state = conn
                    .query_row(
                        "SELECT owner, started_at, updated_at, deadline,
                                state, status, headers, body, error
                         FROM courteous_dedupe WHERE key = ?1",
                        [&hash],
                        |row| {
                            let deadline = stamp(row.get(3)?);
                            let state: i64 = row.get(4)?;
                            let live = deadline > now;
                            Ok(match state {
                                PENDING => {
                                    let owner = row.get(0)?;
                                    let age = now.saturating_since(stamp(row.get(1)?));
                                    if live {
                                        KeyState::Pending { owner, age }
                                    } else {
                                        KeyState::Expired { owner, age }
                                    }
                                }
                                _ if !live => KeyState::Vacant,
                                _ => KeyState::Completed {
                                    completion: completion(row, 4)?,
                                    age: now.saturating_since(stamp(row.get(2)?)),
                                    expires_in: deadline.saturating_since(now),
                                },
                            })
                        },
                    )
                    .optional()?;
                Ok::<_, SqliteError>(state.unwrap_or(KeyState::Vacant))
            })
            .await?;
        Ok(state)
    }

    async fn invalidate(&self, path: &str) -> Result<u64, StoreError> {
        let path = path.to_owned();
        let removed = self
            .store
            .call(move |conn| {
                // The URL is the display form after the method, as `url_of` reads it; the
                // table holds only live and recently finished keys, so a scan is short.
                Ok(conn.execute(
                    "DELETE FROM courteous_dedupe
                     WHERE substr(display, instr(display, ' ') + 1) = ?1
                        OR substr(substr(display, instr(display, ' ') + 1), 1, length(?1) + 1)
                           = ?1 || '?'",
                    [&path],
                )? as u64)
            })
            .await?;
        Ok(removed)
    }

    async fn cleanup(&self) -> Result<u64, StoreError> {
        let clock = self.clock.clone();
        self.last_cleanup
            .store(clock.now().as_millis(), Ordering::Relaxed);
        let removed = self
            .store
            .call(move |conn| Ok(sweep(conn, clock.now())?))
            .await?;
        self.cleaned.fetch_add(removed, Ordering::Relaxed);
        Ok(removed)
    }

    async fn stats(&self) -> Result<DedupeStoreStats, StoreError> {
        let clock = self.clock.clone();
        let (pending, completed, expired) = self
            .store
            .call(move |conn| {
                // One pass over the table (it holds only live and recently finished keys).
                Ok(conn.query_row(
                    "SELECT
                         COALESCE(SUM(deadline > ?1 AND state = 0), 0),
                         COALESCE(SUM(deadline > ?1 AND state <> 0), 0),
                         COALESCE(SUM(deadline <= ?1), 0)
                     FROM courteous_dedupe",
                    [column(clock.now())],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    },
                )?)
            })
            .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(DedupeStoreStats {
            pending: count(pending),
            completed: count(completed),
            expired: count(expired),
            cleaned: self.cleaned.load(Ordering::Relaxed),
        })
    }
}
