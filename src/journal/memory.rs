//! The memory backend: a bounded ring of rows in this process.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::store::StoreError;

use super::query::Summarizer;
use super::{GroupBy, JournalEntry, JournalQuery, JournalStats, JournalStore, JournalSummary};

/// The rows a [`MemoryJournalStore`] keeps by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A journal in this process's memory: the newest rows, up to a capacity (default
/// [`DEFAULT_CAPACITY`]); the oldest go to make room.
///
/// `record` takes a lock for a push; reads take it while they scan the ring, so keep the
/// capacity at a size a scan can afford. Clones share the ring.
///
/// # Example
///
/// ```
/// use courteous::journal::{JournalEntry, JournalQuery, JournalStore, MemoryJournalStore};
/// use courteous::{Resource, time::Timestamp};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::StoreError> {
/// let store = MemoryJournalStore::with_capacity(2);
/// for n in 0..3 {
///     let url = format!("http://h/{n}");
///     store.record(JournalEntry::new(Timestamp::from_millis(n), Resource::root(), http::Method::GET, url, http::StatusCode::OK));
/// }
/// let rows = store.query(&JournalQuery::all()).await?;
/// assert_eq!(rows.iter().map(|r| r.url.as_str()).collect::<Vec<_>>(), ["http://h/1", "http://h/2"]);
/// assert_eq!(store.stats().dropped, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryJournalStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    capacity: usize,
    rows: Mutex<VecDeque<JournalEntry>>,
    recorded: AtomicU64,
    dropped: AtomicU64,
}

impl MemoryJournalStore {
    /// A ring of [`DEFAULT_CAPACITY`] rows.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A ring of `capacity` rows (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        MemoryJournalStore {
            shared: Arc::new(Shared {
                capacity,
                // Grows as rows come, up to the capacity.
                rows: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
                recorded: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// How many rows it holds now.
    pub fn len(&self) -> usize {
        self.shared.rows.lock().len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryJournalStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl JournalStore for MemoryJournalStore {
    fn record(&self, entry: JournalEntry) {
        let evicted = {
            let mut rows = self.shared.rows.lock();
            let evicted = (rows.len() >= self.shared.capacity)
                .then(|| rows.pop_front())
                .flatten();
            rows.push_back(entry);
            evicted
        };
        self.shared.recorded.fetch_add(1, Ordering::Relaxed);
        if evicted.is_some() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        // The evicted row's strings are freed here, outside the lock.
        drop(evicted);
    }

    async fn query(&self, query: &JournalQuery) -> Result<Vec<JournalEntry>, StoreError> {
        let (start, end) = query.window();
        let limit = query.row_limit().unwrap_or(usize::MAX);
        let mut found: Vec<JournalEntry> = {
            let rows = self.shared.rows.lock();
            rows.iter()
                .rev()
                .filter(|entry| query.matches_in(entry, start, end))
                .take(limit)
                .cloned()
                .collect()
        };
        found.reverse();
        Ok(found)
    }

    async fn summary(
        &self,
        query: &JournalQuery,
        by: GroupBy,
    ) -> Result<JournalSummary, StoreError> {
        let (start, end) = query.window();
        let mut summarizer = Summarizer::new(by);
        {
            let rows = self.shared.rows.lock();
            for entry in rows.iter().filter(|e| query.matches_in(e, start, end)) {
                summarizer.add(entry);
            }
        }
        Ok(summarizer.finish())
    }

    fn stats(&self) -> JournalStats {
        JournalStats {
            recorded: self.shared.recorded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}
