//! Turn-taking between processes: the *turn* and *gate* file locks beside the database, and
//! the write-gap policy of a runner that holds the turn for long (see the module docs).
//!
//! These stay with the rate limiter rather than the SQLite engine (`store::sqlite`): only the
//! admission runner takes turns (its lock files are named for it, `<file>-ratelimit.lock` and
//! `.gate`); every other writer on the file (the write-behind writer, the cache and dedupe
//! stores, a process opening the file) waits with the engine's busy handler, and the gap exists
//! so that those writers are not starved by a runner that holds the turn.

use std::fs::File;
use std::time::Duration;

/// A runner that has held the turn this long (in all, since its last gap) leaves the write lock
/// free for `GAP`, longer than the longest sleep of the busy handler (250 µs), so that a writer
/// polling for it gets in.
const HOLD_BEFORE_GAP: Duration = Duration::from_millis(10);
const GAP: Duration = Duration::from_micros(300);

/// Turn-taking between processes, fair under contention: two advisory locks on files beside the
/// database, a *turn* (held for one transaction) and a *gate* (held only while waiting for the
/// turn).
///
/// A process takes the gate, then the turn, then lets the gate go. The one waiting for the turn
/// holds the gate, so the process that hands the turn over cannot take it straight back: it
/// waits at the gate until the waiter has the turn. Two busy processes therefore alternate
/// transaction by transaction, where a bare lock lets the process that just released it win
/// again and again (the kernel wakes the waiter, but the releaser is already running) and starve
/// the other for tens of milliseconds. Uncontended, it costs two more system calls.
pub(super) struct TurnLock {
    turn: File,
    gate: File,
}

impl TurnLock {
    /// The lock files beside the database at `path`; `None` for `:memory:` or when they cannot
    /// be opened (SQLite's busy handler then orders the transactions alone).
    pub(super) fn beside(path: &std::path::Path) -> Option<Self> {
        if path == std::path::Path::new(":memory:") {
            return None;
        }
        match TurnLock::open(path) {
            Ok(turn) => Some(turn),
            Err(error) => {
                tracing::warn!(%error, "rate-limit lock files not opened; relying on sqlite's busy handler");
                None
            }
        }
    }

    pub(super) fn open(database: &std::path::Path) -> std::io::Result<Self> {
        let open = |suffix: &str| {
            let mut name = database.as_os_str().to_owned();
            name.push(suffix);
            let mut options = std::fs::OpenOptions::new();
            options.read(true).write(true).create(true).truncate(false);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options.open(name)
        };
        Ok(TurnLock {
            turn: open("-ratelimit.lock")?,
            gate: open("-ratelimit.gate")?,
        })
    }

    /// Waits for the turn; `false` if the lock failed (SQLite's own locking still applies).
    pub(super) fn take(&self) -> bool {
        let gated = self.gate.lock().is_ok();
        let taken = self.turn.lock().is_ok();
        if gated {
            let _ = self.gate.unlock();
        }
        taken
    }

    pub(super) fn give(&self) {
        let _ = self.turn.unlock();
    }
}

/// The write-gap policy: a runner that has held the turn for [`HOLD_BEFORE_GAP`] in all since
/// its last gap leaves the write lock free for [`GAP`] before its next transaction.
#[derive(Debug, Default)]
pub(super) struct Gaps {
    held_since_gap: Duration,
}

impl Gaps {
    /// Before a transaction, with the turn held: leaves the gap when it is due (`true` if it
    /// slept).
    pub(super) fn leave_if_due(&mut self) -> bool {
        if self.held_since_gap < HOLD_BEFORE_GAP {
            return false;
        }
        std::thread::sleep(GAP);
        self.held_since_gap = Duration::ZERO;
        true
    }

    /// After a transaction: how long it held the write lock (from the end of any gap).
    pub(super) fn held(&mut self, held: Duration) {
        self.held_since_gap += held;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    #[test]
    fn a_process_handing_the_turn_over_cannot_take_it_straight_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("turns.db");
        // Each open file description is locked on its own, as another process's would be.
        let (a, b, probe) = (
            TurnLock::open(&db).unwrap(),
            TurnLock::open(&db).unwrap(),
            TurnLock::open(&db).unwrap(),
        );
        assert!(a.take());
        let (order, seen) = mpsc::channel();
        let waiter = {
            let order = order.clone();
            std::thread::spawn(move || {
                assert!(b.take());
                order.send("b").unwrap();
                b.give();
            })
        };
        // Wait until the other side holds the gate, i.e. waits for the turn (bounded, so that
        // a lock without a gate fails the assertion below instead of hanging here).
        let started = Instant::now();
        while probe.gate.try_lock().is_ok() && started.elapsed() < Duration::from_secs(2) {
            let _ = probe.gate.unlock();
            std::thread::yield_now();
        }
        // Hand the turn over and ask for it again at once: the waiter goes first.
        a.give();
        assert!(a.take());
        order.send("a").unwrap();
        a.give();
        waiter.join().unwrap();
        let order: Vec<_> = seen.try_iter().collect();
        assert_eq!(order, ["b", "a"]);
    }
}
