//! The memory backend: a bounded ring of rows in this process.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::store::StoreError;

use super::query::Summarizer;
use super::{GroupBy, JournalEntry, JournalQuery, JournalStats, JournalStore, JournalSummary};

/// Rows a read looks at per turn of the lock: a read never holds `record` up for longer.
const SCAN_CHUNK: usize = 1_024;

/// The rows, and how many were ever pushed (the newest row's number, counting from 1).
#[derive(Debug, Default)]
struct Ring {
    rows: VecDeque<JournalEntry>,
    pushed: u64,
}

impl Ring {
    /// The number of the oldest row held.
    fn first(&self) -> u64 {
        self.pushed - self.rows.len() as u64
    }
}

/// The rows a [`MemoryJournalStore`] keeps by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A journal in this process's memory: the newest rows, up to a capacity (default
/// [`DEFAULT_CAPACITY`]); the oldest go to make room.
///
/// `record` takes a lock for a push; reads take it for 1,024 rows at a time, so a read holds a
/// `record` up for a few microseconds at most. Clones share the ring.
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
    rows: Mutex<Ring>,
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
                rows: Mutex::new(Ring {
                    rows: VecDeque::with_capacity(capacity.min(1024)),
                    pushed: 0,
                }),
                recorded: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// How many rows it holds now.
    pub fn len(&self) -> usize {
        self.shared.rows.lock().rows.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MemoryJournalStore {
    /// Shows `visit` every row held when the scan started (and those pushed meanwhile, unless
    /// evicted first), oldest first, taking the lock for [`SCAN_CHUNK`] rows at a time.
    fn scan(&self, mut visit: impl FnMut(&JournalEntry)) {
        let mut next = self.shared.rows.lock().first();
        loop {
            let ring = self.shared.rows.lock();
            // Rows evicted since the last turn are skipped.
            next = next.max(ring.first());
            let offset = (next - ring.first()) as usize;
            if offset >= ring.rows.len() {
                return;
            }
            for entry in ring.rows.range(offset..).take(SCAN_CHUNK) {
                visit(entry);
                next += 1;
            }
        }
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
            let mut ring = self.shared.rows.lock();
            let evicted = (ring.rows.len() >= self.shared.capacity)
                .then(|| ring.rows.pop_front())
                .flatten();
            ring.rows.push_back(entry);
            ring.pushed += 1;
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
        let mut found = VecDeque::new();
        self.scan(|entry| {
            if limit > 0 && query.matches_in(entry, start, end) {
                if found.len() == limit {
                    found.pop_front();
                }
                found.push_back(entry.clone());
            }
        });
        Ok(found.into())
    }

    async fn summary(
        &self,
        query: &JournalQuery,
        by: GroupBy,
    ) -> Result<JournalSummary, StoreError> {
        let (start, end) = query.window();
        let mut summarizer = Summarizer::new(by);
        self.scan(|entry| {
            if query.matches_in(entry, start, end) {
                summarizer.add(entry);
            }
        });
        Ok(summarizer.finish())
    }

    fn stats(&self) -> JournalStats {
        JournalStats {
            recorded: self.shared.recorded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}
