//! The write-behind writer: one thread that commits deferred writes in batches.
//!
//! Writes that need not be visible at once (cache puts, statistics, expiry cleanup) are queued
//! with [`SqliteStore::defer`](super::SqliteStore::defer) and committed by this thread, many to a
//! transaction: after `flush_interval`, when `max_batch` are pending, on `flush()`, and when the
//! store closes or its last handle is dropped. A keyed write replaces a pending write with the same
//! key (last write wins), the way a counter buffer merges increments. Each write runs in its own
//! savepoint: one that fails (a constraint, say) is dropped and counted without taking the batch
//! down. When the database as a whole refuses the batch (busy past the timeout, read-only, full)
//! the batch is kept and retried with back-off; nothing is lost unless the queue overflows, which
//! the caller is told about at once.
//!
//! The same thread runs passive WAL checkpoints, so no request ever pays for one (past
//! `max_wal_size` a restart checkpoint follows, which other writers wait for).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::error::SqliteError;
use super::{Config, Counters, Location, conn};

/// A deferred write. It may run more than once (a batch that failed as a whole is retried), so
/// it is `Fn`, and must be idempotent in effect when retried after a rollback (which it is:
/// a rolled-back attempt left nothing behind).
pub type DeferredWrite = Box<dyn Fn(&Connection) -> rusqlite::Result<()> + Send + 'static>;

/// Runs once the transaction that ran its write has committed (whether the write itself
/// succeeded or was dropped on its own). Never runs for a write that was replaced by a later one
/// with the same key, dropped from a full queue, or lost when the store closed.
pub(crate) type AfterCommit = Box<dyn FnOnce() + Send + 'static>;

/// A pending write and what to run once it is committed.
pub(super) struct Slot {
    write: DeferredWrite,
    after: Option<AfterCommit>,
}

/// The longest a transaction of the writer takes more writes (it commits the rest in the next).
const SLICE: Duration = Duration::from_millis(1);

/// The pause between two transactions of one commit: longer than the busy handler's longest
/// sleep (250 µs), so that a writer polling for the lock gets it.
const SLICE_GAP: Duration = Duration::from_micros(300);

pub(super) enum Message {
    Write {
        key: Option<Box<[u8]>>,
        write: DeferredWrite,
        after: Option<AfterCommit>,
    },
    Flush(oneshot::Sender<Result<(), SqliteError>>),
    Close(oneshot::Sender<Result<(), SqliteError>>),
}

#[derive(Default)]
struct Pending {
    writes: Vec<Option<Slot>>,
    keys: HashMap<Box<[u8]>, usize>,
    live: usize,
    oldest: Option<Instant>,
}

impl Pending {
    fn push(&mut self, key: Option<Box<[u8]>>, slot: Slot) -> bool {
        self.oldest.get_or_insert_with(Instant::now);
        if let Some(key) = key {
            if let Some(&index) = self.keys.get(&key) {
                self.writes[index] = Some(slot);
                return true;
            }
            self.keys.insert(key, self.writes.len());
        }
        self.writes.push(Some(slot));
        self.live += 1;
        false
    }

    /// Drops the oldest pending write; returns whether there was one.
    fn drop_oldest(&mut self) -> bool {
        let Some(index) = self.writes.iter().position(Option::is_some) else {
            return false;
        };
        self.writes[index] = None;
        self.keys.retain(|_, i| *i != index);
        self.live -= 1;
        true
    }

    fn clear(&mut self) {
        self.writes.clear();
        self.keys.clear();
        self.live = 0;
        self.oldest = None;
    }
}

/// Opens the writer's connection and brings the schema up to date.
pub(super) fn open_and_migrate(
    location: &Location,
    config: &Config,
) -> Result<Connection, SqliteError> {
    let mut conn = conn::open(location, config)?;
    conn::retry_busy(config.busy_timeout, || {
        super::schema::migrate(&mut conn, location.path(), super::schema::COMPONENTS)
            .map_err(|e| e.refine(location.path(), config.busy_timeout))
    })?;
    Ok(conn)
}

pub(super) struct Writer {
    conn: Connection,
    /// The identity of the file the connections opened, and when it was last compared with
    /// what the path names now.
    identity: Option<conn::FileId>,
    last_file_check: Instant,
    location: Location,
    config: Config,
    counters: Arc<Counters>,
    pending: Pending,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_checkpoint: Instant,
    dirty: bool,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        location: Location,
        config: Config,
        counters: Arc<Counters>,
    ) -> Self {
        let identity = conn::file_id(&location);
        Writer {
            conn,
            identity,
            last_file_check: Instant::now(),
            location,
            config,
            counters,
            pending: Pending::default(),
            retry_at: None,
            backoff: Duration::from_millis(10),
            last_checkpoint: Instant::now(),
            dirty: false,
        }
    }

    pub(super) fn run(mut self, messages: Receiver<Message>) {
        loop {
            // Due work first: `recv_deadline` hands over a waiting message before it reports a
            // deadline that has passed, so under a steady stream of writes it never times out,
            // and the flush interval and the checkpoints (with them `max_wal_size`) would wait
            // for a pause that never comes.
            if self.pending.live > 0
                && self.retry_due()
                && self
                    .pending
                    .oldest
                    .is_some_and(|t| t.elapsed() >= self.config.flush_interval)
            {
                let _ = self.commit();
            }
            if self.last_checkpoint.elapsed() >= self.config.checkpoint_interval {
                self.checkpoint();
            }
            if self.last_file_check.elapsed() >= self.config.file_check_interval {
                self.check_file();
            }
            let deadline = self.next_deadline();
            match messages.recv_deadline(deadline) {
                Ok(Message::Write { key, write, after }) => {
                    let replaced = self.pending.push(key, Slot { write, after });
                    if replaced {
                        self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.counters.pending.fetch_add(1, Ordering::Relaxed);
                    }
                    self.enforce_capacity();
                    if self.pending.live >= self.config.max_batch && self.retry_due() {
                        let _ = self.commit();
                    }
                }
                Ok(Message::Flush(reply)) => {
                    let _ = reply.send(self.commit());
                }
                Ok(Message::Close(reply)) => {
                    let result = self.commit();
                    self.checkpoint();
                    // Closed before answering, so that `close()` returns with the file at rest.
                    drop(self);
                    let _ = reply.send(result);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Every handle is gone: a last flush, retried a few times.
                    for _ in 0..5 {
                        if self.commit().is_ok() {
                            break;
                        }
                        std::thread::sleep(self.backoff);
                    }
                    self.checkpoint();
                    return;
                }
            }
        }
    }

    fn retry_due(&self) -> bool {
        self.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Reopens the file when the path no longer names the one the connections hold (deleted,
    /// or replaced by another file): see
    /// [`SqliteStoreBuilder::file_check_interval`](super::SqliteStoreBuilder::file_check_interval).
    fn check_file(&mut self) {
        self.last_file_check = Instant::now();
        let Location::File(path) = &self.location else {
            return;
        };
        let now = conn::file_id(&self.location);
        if self.identity.is_none() || now == self.identity {
            return;
        }
        let what = if now.is_none() { "deleted" } else { "replaced" };
        tracing::warn!(
            path = %path.display(),
            "sqlite database file was {what} while open; reopening it so that this process \
             shares limits, cache and dedupe with the others again"
        );
        conn::check_permissions(path, self.config.tighten_permissions);
        match open_and_migrate(&self.location, &self.config) {
            Ok(conn) => {
                // Closing a connection to a file that has moved neither checkpoints it nor
                // deletes `<path>-wal` and `<path>-shm` (SQLite checks, and those are the new
                // file's now).
                drop(std::mem::replace(&mut self.conn, conn));
                self.identity = conn::file_id(&self.location);
                self.counters.reopened.fetch_add(1, Ordering::Relaxed);
                self.counters.generation.fetch_add(1, Ordering::Release);
            }
            Err(error) => tracing::warn!(
                path = %path.display(),
                code = error.code(),
                %error,
                "could not reopen the sqlite database; will try again"
            ),
        }
    }

    fn next_deadline(&self) -> Instant {
        // Intervals are the user's: a huge one means "never", not an overflow.
        let after = |at: Instant, interval: Duration| {
            at.checked_add(interval)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86_400))
        };
        let checkpoint = after(self.last_checkpoint, self.config.checkpoint_interval)
            .min(after(self.last_file_check, self.config.file_check_interval));
        let Some(oldest) = self.pending.oldest else {
            return checkpoint;
        };
        let mut flush = after(oldest, self.config.flush_interval);
        if let Some(retry) = self.retry_at {
            flush = flush.max(retry);
        }
        flush.min(checkpoint)
    }

    fn enforce_capacity(&mut self) {
        while self.pending.live > self.config.max_pending {
            if !self.pending.drop_oldest() {
                break;
            }
            self.counters.pending.fetch_sub(1, Ordering::Relaxed);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                path = %self.location.path().display(),
                "sqlite write-behind queue full: dropped the oldest deferred write"
            );
        }
    }

    /// Commits every pending write, in transactions of at most [`SLICE`] each (at least one
    /// write), with a [`SLICE_GAP`] between them.
    ///
    /// One transaction for everything held the write lock for as long as the writes took: the
    /// pruning of a hundred rate-limited resources, due together, kept every process's rate
    /// limiter waiting 20 ms. Between slices the lock is free for longer than the busy handler's
    /// longest sleep, so that writers waiting for it get in.
    fn commit(&mut self) -> Result<(), SqliteError> {
        if self.pending.live == 0 {
            self.pending.clear();
            return Ok(());
        }
        let next = |writes: &[Option<Slot>], from: usize| {
            writes[from..]
                .iter()
                .position(Option::is_some)
                .map(|i| from + i)
        };
        let mut first = true;
        let mut cursor = 0;
        while let Some(start) = next(&self.pending.writes, cursor) {
            if !first {
                // A long commit (a backlog of large writes) must not keep the WAL from its
                // checkpoints, or it grows past `max_wal_size` by the whole backlog.
                if self.last_checkpoint.elapsed() >= self.config.checkpoint_interval {
                    self.checkpoint();
                }
                std::thread::sleep(SLICE_GAP);
            }
            first = false;
            let result = Self::run_batch(&mut self.conn, &self.pending.writes[start..]);
            let (failed, taken) = match result {
                Ok(done) => done,
                Err(error) => return Err(self.failed(error)),
            };
            let end = start + taken;
            let mut n = 0u64;
            // Committed: what waited for it (a cache entry kept readable in memory until now)
            // may go.
            for slot in self.pending.writes[start..end]
                .iter_mut()
                .filter_map(Option::take)
            {
                n += 1;
                if let Some(after) = slot.after {
                    after();
                }
            }
            self.pending.keys.retain(|_, i| *i >= end);
            self.pending.live -= n as usize;
            self.counters
                .committed
                .fetch_add(n - failed, Ordering::Relaxed);
            self.counters.failed.fetch_add(failed, Ordering::Relaxed);
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
            self.counters.pending.fetch_sub(n, Ordering::Relaxed);
            self.dirty = true;
            cursor = end;
        }
        self.pending.clear();
        self.retry_at = None;
        self.backoff = Duration::from_millis(10);
        Ok(())
    }

    /// Keeps what is left for a retry with back-off, and reports the failure.
    fn failed(&mut self, error: rusqlite::Error) -> SqliteError {
        let error = SqliteError::from(error).refine(self.location.path(), self.config.busy_timeout);
        if error.is_read_only() {
            // SQLite refuses writes to a file that was deleted or moved: check it now.
            self.last_file_check = Instant::now()
                .checked_sub(self.config.file_check_interval)
                .unwrap_or(self.last_file_check);
        }
        self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            path = %self.location.path().display(),
            code = error.code(),
            %error,
            pending = self.pending.live,
            retry_in = ?self.backoff,
            "sqlite write-behind batch not committed; kept for retry"
        );
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
        error
    }

    /// Runs writes from the start of `writes` in one transaction until [`SLICE`] has passed
    /// (at least one), and commits. Returns how many failed on their own, and how many slots of
    /// `writes` it took.
    fn run_batch(conn: &mut Connection, writes: &[Option<Slot>]) -> rusqlite::Result<(u64, usize)> {
        let mut failed = 0;
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let started = Instant::now();
        let mut taken = 0;
        for slot in writes {
            taken += 1;
            let Some(Slot { write, .. }) = slot else {
                continue;
            };
            let savepoint = tx.savepoint()?;
            match write(&savepoint) {
                Ok(()) => savepoint.commit()?,
                Err(error) if SqliteError::is_transient_code(&error) => return Err(error),
                Err(error) => {
                    // This write alone is at fault: drop it, keep the batch.
                    drop(savepoint);
                    failed += 1;
                    tracing::warn!(%error, "deferred sqlite write failed and was dropped");
                }
            }
            if started.elapsed() >= SLICE {
                break;
            }
        }
        tx.commit()?;
        Ok((failed, taken))
    }

    fn checkpoint(&mut self) {
        if self.dirty || self.last_checkpoint.elapsed() >= self.config.checkpoint_interval {
            if let Location::File(path) = &self.location
                && conn::checkpoint(&self.conn, path, self.config.max_wal_size)
            {
                self.counters.wal_restarts.fetch_add(1, Ordering::Relaxed);
            }
            self.dirty = false;
        }
        self.last_checkpoint = Instant::now();
    }
}
