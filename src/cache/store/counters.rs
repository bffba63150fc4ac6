//! What every cache store counts for [`CacheStoreStats`] in this process: lookups that found
//! an entry or none, failed operations, expired entries removed.

use std::sync::atomic::{AtomicU64, Ordering};

use super::CacheStoreStats;

/// A store's counts in this process, shared by its clones (behind an `Arc` or the store's
/// shared state).
#[derive(Debug, Default)]
pub(super) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    purged: AtomicU64,
}

impl Counters {
    /// Counts one lookup: a hit when it `found` an entry, else a miss.
    pub(super) fn lookup(&self, found: bool) {
        let counter = if found { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed operation.
    #[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
    pub(super) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` expired entries removed.
    pub(super) fn purged(&self, n: u64) {
        self.purged.fetch_add(n, Ordering::Relaxed);
    }

    /// `stats` (what the store holds) with this process's counts filled in.
    pub(super) fn fill(&self, stats: CacheStoreStats) -> CacheStoreStats {
        CacheStoreStats {
            purged: self.purged.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            ..stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fill_the_stats_and_keep_what_the_store_holds() {
        let counters = Counters::default();
        counters.lookup(true);
        counters.lookup(false);
        counters.lookup(false);
        counters.error();
        counters.purged(5);
        let held = CacheStoreStats {
            entries: 3,
            bytes: 100,
            expired: 1,
            ..CacheStoreStats::default()
        };
        let stats = counters.fill(held);
        assert_eq!(
            (stats.entries, stats.bytes, stats.expired),
            (3, 100, 1),
            "{stats:?}"
        );
        assert_eq!(
            (stats.hits, stats.misses, stats.errors, stats.purged),
            (1, 2, 1, 5),
            "{stats:?}"
        );
    }
}
