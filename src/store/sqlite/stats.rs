//! The write-behind writer's counters: [`Counters`], shared with the writer and the workers,
//! and the [`SqliteStats`] snapshot a [`SqliteStore`] hands out.

use std::sync::atomic::{AtomicU64, Ordering};

use super::SqliteStore;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(super) pending: AtomicU64,
    pub(super) committed: AtomicU64,
    pub(super) coalesced: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) failed_batches: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) wal_restarts: AtomicU64,
    pub(super) reopened: AtomicU64,
    /// Bumped by the writer each time it has reopened the file; each worker reopens its
    /// connection when it sees a new value.
    pub(crate) generation: AtomicU64,
}

/// Counters of a [`SqliteStore`]'s write-behind writer, since it was opened in this process.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::sqlite::SqliteError> {
/// let store = courteous::store::sqlite::SqliteStore::open(":memory:").await?;
/// store.defer(|conn| conn.execute_batch("CREATE TABLE IF NOT EXISTS t (x)"))?;
/// store.flush().await?;
/// let stats = store.stats();
/// assert_eq!((stats.committed, stats.pending), (1, 0));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SqliteStats {
    /// Deferred writes queued and not yet committed.
    pub pending: u64,
    /// Deferred writes committed.
    pub committed: u64,
    /// Deferred writes replaced by a later write with the same key before they were committed.
    pub coalesced: u64,
    /// Transactions the writer committed.
    pub batches: u64,
    /// Deferred writes that failed on their own and were dropped (their error was logged).
    pub failed: u64,
    /// Batches the database refused as a whole and that were kept for a retry.
    pub failed_batches: u64,
    /// Deferred writes dropped because the queue was full.
    pub dropped: u64,
    /// Checkpoints that started the WAL over because it had grown past
    /// [`max_wal_size`](super::SqliteStoreBuilder::max_wal_size).
    pub wal_restarts: u64,
    /// Times the database file was found deleted or replaced while open, and reopened (see
    /// [`file_check_interval`](super::SqliteStoreBuilder::file_check_interval)).
    pub reopened: u64,
}

impl SqliteStore {
    /// The write-behind writer's counters.
    pub fn stats(&self) -> SqliteStats {
        let c = &self.shared.counters;
        SqliteStats {
            pending: c.pending.load(Ordering::Relaxed),
            committed: c.committed.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            wal_restarts: c.wal_restarts.load(Ordering::Relaxed),
            reopened: c.reopened.load(Ordering::Relaxed),
        }
    }
}
