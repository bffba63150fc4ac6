//! Where a decision's time goes: per-phase latency histograms, for benchmarks and diagnosis.
//!
//! Compiled in with the cargo feature `diagnostics` (off by default): then every batch records
//! how long its runner waited for the turn lock, for `BEGIN IMMEDIATE`, in its statements and in
//! `COMMIT`, how many copies of a resource's admissions it read from the table or caught up, and
//! every request how long it was queued before a runner took it and how long it spent in the
//! store in all; `SqliteRateLimitStore::phase_report` prints them. Without the feature,
//! [`Histogram`] is empty, [`PhaseSlot::get`] is always `None`, and the timing code compiles
//! away.

#[cfg(feature = "diagnostics")]
use std::fmt::Write as _;
#[cfg(feature = "diagnostics")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Three significant bits per power of two: 8 buckets per octave, up to 2^40 ns (18 minutes).
#[cfg(feature = "diagnostics")]
const SUB: u32 = 3;
#[cfg(feature = "diagnostics")]
const BUCKETS: usize = (41 << SUB) as usize;

/// A lock-free log-linear histogram of durations (relative error under 12.5 %).
#[cfg(feature = "diagnostics")]
pub(super) struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
    sum: AtomicU64,
}

#[cfg(feature = "diagnostics")]
impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

#[cfg(feature = "diagnostics")]
fn bucket(ns: u64) -> usize {
    if ns < (1 << SUB) {
        return ns as usize;
    }
    let msb = 63 - ns.leading_zeros();
    let sub = (ns >> (msb - SUB)) & ((1 << SUB) - 1);
    (((msb - SUB + 1) << SUB) as u64 + sub).min(BUCKETS as u64 - 1) as usize
}

/// The largest value that falls in bucket `i`.
#[cfg(feature = "diagnostics")]
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < (1 << SUB) {
        return i;
    }
    let msb = (i >> SUB) + u64::from(SUB) - 1;
    let sub = i & ((1 << SUB) - 1);
    ((1 << msb) | (sub << (msb - u64::from(SUB)))) + (1 << (msb - u64::from(SUB))) - 1
}

#[cfg(feature = "diagnostics")]
impl Histogram {
    pub(super) fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
        self.sum.fetch_add(ns, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(super) fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    #[cfg(test)]
    pub(super) fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// A count recorded as if it were nanoseconds (batch sizes).
    pub(super) fn record_count(&self, n: usize) {
        self.record(Duration::from_nanos(n as u64));
    }

    fn line(&self, name: &str, unit: f64, out: &mut String) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let n: u64 = counts.iter().sum();
        if n == 0 {
            let _ = writeln!(out, "  {name:<22} (none)");
            return;
        }
        let at = |p: f64| {
            let rank = ((n as f64 * p).ceil() as u64).clamp(1, n);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return upper(i) as f64 / unit;
                }
            }
            f64::NAN
        };
        let _ = writeln!(
            out,
            "  {name:<22} n {n:>9}  mean {:>9.1}  p50 {:>9.1}  p99 {:>9.1}  p99.9 {:>9.1}  max {:>9.1}  total {:>8.1}",
            self.sum.load(Ordering::Relaxed) as f64 / n as f64 / unit,
            at(0.5),
            at(0.99),
            at(0.999),
            self.max.load(Ordering::Relaxed) as f64 / unit,
            self.sum.load(Ordering::Relaxed) as f64 / unit,
        );
    }
}

/// Without the `diagnostics` feature: records nothing.
#[cfg(not(feature = "diagnostics"))]
#[derive(Default)]
pub(super) struct Histogram;

#[cfg(not(feature = "diagnostics"))]
impl Histogram {
    #[inline(always)]
    pub(super) fn record(&self, _: Duration) {}

    #[inline(always)]
    pub(super) fn record_count(&self, _: usize) {}
}

/// Every phase of a decision (see the module docs).
#[derive(Default)]
pub(super) struct Phases {
    /// Request: queued until a runner took it into a batch.
    pub(super) queued: Histogram,
    /// Request: from `acquire` to its answer being sent.
    pub(super) in_store: Histogram,
    /// Batch: waiting for the cross-process turn.
    pub(super) turn: Histogram,
    /// Batch: the gap left for polling writers (holding the turn).
    pub(super) gap: Histogram,
    /// Batch: `BEGIN IMMEDIATE` (SQLite's write lock, busy handler included).
    pub(super) begin: Histogram,
    /// Batch: the statements.
    pub(super) statements: Histogram,
    /// Batch: `COMMIT`.
    pub(super) commit: Histogram,
    /// Batch: from taking the turn to releasing it.
    pub(super) held: Histogram,
    /// Batch: decisions per transaction.
    pub(super) size: Histogram,
    /// Batch: copies of a resource's admissions that were behind and caught up from the state
    /// row's log, from the admissions near their newest, or read whole (the rest were exact).
    pub(super) from_log: Histogram,
    pub(super) from_tail: Histogram,
    pub(super) reads: Histogram,
}

#[cfg(feature = "diagnostics")]
impl Phases {
    /// A table of the phases, in microseconds (sizes in decisions).
    pub(super) fn report(&self) -> String {
        let mut out = String::from("  phase (µs)\n");
        let us = 1000.0;
        self.queued.line("request queued", us, &mut out);
        self.in_store.line("request in store", us, &mut out);
        self.turn.line("batch turn wait", us, &mut out);
        self.gap.line("batch writer gap", us, &mut out);
        self.begin.line("batch BEGIN", us, &mut out);
        self.statements.line("batch statements", us, &mut out);
        self.commit.line("batch COMMIT", us, &mut out);
        self.held.line("batch turn held", us, &mut out);
        self.size.line("batch size (n)", 1.0, &mut out);
        self.from_log.line("batch copies from log", 1.0, &mut out);
        self.from_tail.line("batch copies from tail", 1.0, &mut out);
        self.reads.line("batch copies read", 1.0, &mut out);
        out
    }
}

/// Where a store keeps its phases: `Some` with the `diagnostics` feature (unless a test made it
/// empty), and nothing at all without it.
#[derive(Default)]
pub(super) struct PhaseSlot {
    #[cfg(feature = "diagnostics")]
    phases: Option<Box<Phases>>,
}

impl PhaseSlot {
    /// Histograms that record, when the `diagnostics` feature is on.
    pub(super) fn on() -> Self {
        PhaseSlot {
            #[cfg(feature = "diagnostics")]
            phases: Some(Box::default()),
        }
    }

    /// The histograms to record in, if any.
    #[inline(always)]
    pub(super) fn get(&self) -> Option<&Phases> {
        #[cfg(feature = "diagnostics")]
        return self.phases.as_deref();
        #[cfg(not(feature = "diagnostics"))]
        return None;
    }
}

#[cfg(all(test, feature = "diagnostics"))]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for ns in (0..100_000u64).chain([1 << 20, (1 << 30) + 12345, u64::from(u32::MAX)]) {
            let i = bucket(ns);
            assert!(upper(i) >= ns, "{ns} in {i} up to {}", upper(i));
            assert!(i == 0 || upper(i - 1) < ns, "{ns} belongs below {i}");
        }
    }

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let mut out = String::new();
        h.line("x", 1000.0, &mut out);
        // p50 of 1..=1000 µs is 500 µs, reported as its bucket's upper bound (within 12.5 %).
        let p50: f64 = out
            .split("p50")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((500.0..=563.0).contains(&p50), "{out}");
        assert!(out.contains("max    1000.0"), "{out}");
    }
}
