//! Growth: write-behind jobs, coalesced per resource, that delete the admissions no window in
//! use (in any process) counts any more and old user activity (see "Growth" in the module docs).

use rusqlite::params;

use super::runner::Inner;
use crate::rate_limit::store::{AdmissionRequest, retention};
use crate::store::sqlite::SqliteStore;
use crate::time::duration_ms;

/// How often a process prunes one resource's old rows.
const PRUNE_EVERY_MS: u64 = 5000;

impl Inner {
    /// Queues pruning of the rows that no window in use (in any process) needs any more, at
    /// most once every `PRUNE_EVERY_MS` per resource (coalesced in the write-behind queue).
    pub(super) fn schedule_pruning(&self, sqlite: &SqliteStore, request: &AdmissionRequest) {
        let now = request.clock.now().as_millis();
        let window = duration_ms(retention(&request.limits));
        let keep = {
            let mut pruning = self.pruning.lock();
            let entry = pruning.entry(request.resource.clone()).or_insert((now, 0));
            entry.1 = entry.1.max(window);
            if now.saturating_sub(entry.0) < PRUNE_EVERY_MS {
                return;
            }
            entry.0 = now;
            entry.1
        };
        let resource = request.resource.as_str().to_owned();
        // Bounded so that their sum stays an INTEGER in SQLite (it turns to REAL on overflow).
        const BOUND: u64 = 1 << 61;
        let keep_ms = keep.min(BOUND) as i64;
        let now_ms = now.min(BOUND) as i64;
        let activity_before =
            (now.saturating_sub(request.adaptive.monitoring_ms()) / 1000).saturating_sub(1) as i64;
        let mut key = b"rate_limit.prune:".to_vec();
        key.extend_from_slice(resource.as_bytes());
        let result = sqlite.defer_keyed(key, move |conn| {
            // Note this process's window: it stands until one window after its last note, unless
            // a process notes a window at least as long.
            conn.prepare_cached(
                "INSERT INTO rate_limit_retention (resource, keep_ms, until_ms)
                 VALUES (?1, ?2, ?3 + ?2)
                 ON CONFLICT (resource) DO UPDATE SET
                     keep_ms = CASE WHEN excluded.keep_ms >= keep_ms OR until_ms <= ?3
                                    THEN excluded.keep_ms ELSE keep_ms END,
                     until_ms = CASE WHEN excluded.keep_ms >= keep_ms OR until_ms <= ?3
                                     THEN excluded.until_ms ELSE until_ms END",
            )?
            .execute(params![resource, keep_ms, now_ms])?;
            // Keep what the longest window still standing counts, and, while a server's budget
            // applies, every admission since it was observed, however old (until it resets).
            conn.prepare_cached(
                "DELETE FROM rate_limit_admissions
                 WHERE resource = ?1
                   AND at < ?3 - 1000 - max(?2, COALESCE(
                       (SELECT keep_ms FROM rate_limit_retention
                        WHERE resource = ?1 AND until_ms > ?3), 0))
                   AND at < COALESCE(
                       (SELECT budget_observed FROM rate_limit_state
                        WHERE resource = ?1 AND budget_reset > ?3),
                       ?3)",
            )?
            .execute(params![resource, keep_ms, now_ms])?;
            conn.prepare_cached(
                "DELETE FROM rate_limit_activity WHERE resource = ?1 AND second < ?2",
            )?
            .execute(params![resource, activity_before])?;
            Ok(())
        });
        if let Err(error) = result {
            tracing::debug!(%error, "rate-limit pruning not queued");
        }
    }
}
