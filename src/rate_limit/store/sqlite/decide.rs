//! One transaction: the re-stamps of settled in-flight admissions, then the decisions, each
//! counted on this process's copy of its windows and its admission inserted before the next
//! is decided. A transaction that fails or panics drops every copy.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior, params};

use super::queue::{Settling, Waiting};
use super::runner::Inner;
use super::sql::{Row, SqlLog, next_id, read_row, sql_time};
use super::window::{CachedLog, Windows};
use crate::context::Priority;
use crate::rate_limit::store::{Decision, InFlight, decide, retention};
use crate::resource::Resource;
use crate::time::{Timestamp, duration_ms};

impl Inner {
    pub(super) fn decide_all(
        &self,
        conn: &mut Connection,
        settles: &[Settling],
        batch: &[Waiting],
    ) -> rusqlite::Result<Vec<Decision>> {
        let phases = self.phases.get();
        let started = phases.map(|_| Instant::now());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let begun = Instant::now();
        let mut windows = self.windows.lock();
        // The file was deleted or replaced and this connection reopened it: the copies (and
        // the activity read) are the old file's, whatever their generations say.
        let epoch = crate::store::sqlite::file_epoch();
        if self.file_epoch.swap(epoch, Ordering::Relaxed) != epoch {
            windows.clear();
            self.activity.lock().clear();
        }
        let counts = windows.counts();
        // A panic rolls the transaction back too (the transaction's guard, and `call`): what it
        // added to the copies must go with it.
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.decide_in(&tx, &mut windows, settles, batch, begun)
        }))
        .unwrap_or_else(|panic| {
            windows.clear();
            std::panic::resume_unwind(panic)
        });
        let decided = decided.and_then(|decisions| {
            let decided = phases.map(|_| Instant::now());
            tx.commit().map(|()| (decisions, decided))
        });
        match decided {
            Ok((decisions, decided)) => {
                if let (Some(phases), Some(started), Some(decided)) = (phases, started, decided) {
                    phases.begin.record(begun - started);
                    phases.statements.record(decided - begun);
                    phases.commit.record(decided.elapsed());
                    phases.size.record_count(decisions.len());
                    let now = windows.counts();
                    phases
                        .from_log
                        .record_count((now.from_log - counts.from_log) as usize);
                    phases
                        .from_tail
                        .record_count((now.from_tail - counts.from_tail) as usize);
                    phases
                        .reads
                        .record_count((now.reads - counts.reads) as usize);
                }
                Ok(decisions)
            }
            Err(error) => {
                // What this transaction added to the copies was rolled back.
                windows.clear();
                Err(error)
            }
        }
    }

    /// Re-stamps `settles` and decides `batch` in order in the open transaction `tx`, until the
    /// budget has passed since `begun` (always at least one decision), recording each admission
    /// in the table and in the copies.
    fn decide_in(
        &self,
        tx: &Connection,
        windows: &mut Windows,
        settles: &[Settling],
        batch: &[Waiting],
        begun: Instant,
    ) -> rusqlite::Result<Vec<Decision>> {
        let mut rows: HashMap<&Resource, Row> = HashMap::new();
        for Settling { admission, at, .. } in settles {
            let resource = &admission.resource;
            let row = match rows.entry(resource) {
                std::collections::hash_map::Entry::Occupied(row) => row.into_mut(),
                std::collections::hash_map::Entry::Vacant(row) => {
                    row.insert(read_row(tx, resource.as_str())?)
                }
            };
            let old = sql_time(admission.expires_at);
            let new = sql_time(admission.settled_stamp(*at));
            // Only while it is still there with its expiry as its stamp: settled once, or
            // pruned, it is left alone. The trigger raises the generation by two and logs the
            // move.
            let changed = tx
                .prepare_cached(
                    "UPDATE rate_limit_admissions SET at = ?4
                     WHERE resource = ?1 AND at = ?2 AND id = ?3",
                )?
                .execute(params![resource.as_str(), old, admission.id as i64, new])?;
            if changed == 1 && row.exists {
                let background = admission.priority == Priority::Background;
                windows.restamp(resource, row.generation, old as u64, new as u64, background);
                row.generation += 2;
            }
        }
        let mut decisions = Vec::with_capacity(batch.len());
        for Waiting { request, .. } in batch {
            if !decisions.is_empty() && begun.elapsed() >= self.budget {
                break;
            }
            // The time of the decision, read inside the transaction.
            let stamp = request.clock.now();
            let now = stamp.as_millis();
            let resource = request.resource.as_str();
            #[cfg(test)]
            if resource == super::copy_tests::PANIC {
                panic!("a decision for {resource} panics");
            }
            let row = match rows.entry(&request.resource) {
                std::collections::hash_map::Entry::Occupied(row) => row.into_mut(),
                std::collections::hash_map::Entry::Vacant(row) => {
                    row.insert(read_row(tx, resource)?)
                }
            };
            let activity =
                self.cached_activity(tx, &request.resource, row, &request.adaptive, now)?;
            let keep = duration_ms(retention(&request.limits));
            let window = windows.get(
                tx,
                &request.resource,
                row.generation,
                now.saturating_sub(keep),
                now,
            )?;
            let mut log = CachedLog {
                window,
                table: SqlLog { conn: tx, resource },
            };
            let mut decision = decide(&mut log, request, stamp, &activity, &row.server)?;
            if let Decision::Admitted { in_flight, .. } = &mut decision {
                let background = request.priority == Priority::Background;
                // In flight: stamped with its expiry (see `InFlight`). Stamps past SQLite's
                // integers (absurd clocks) are stored as its largest.
                let expiry = request.stamp(stamp);
                let at = sql_time(expiry);
                let id = next_id();
                // The trigger raises the resource's generation (and creates its state row on
                // its first admission, which leaves the adaptive split's initial state); the
                // copy and the row follow.
                tx.prepare_cached(
                    "INSERT INTO rate_limit_admissions (resource, at, id, background)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![resource, at, id, i64::from(background)])?;
                window.record(at as u64, background);
                row.generation = window.generation();
                row.exists = true;
                if request.in_flight.is_some() {
                    *in_flight = Some(InFlight::new(
                        request.resource.clone(),
                        request.priority,
                        id as u64,
                        stamp,
                        Timestamp::from_millis(at as u64),
                    ));
                }
            }
            decisions.push(decision);
        }
        Ok(decisions)
    }
}
