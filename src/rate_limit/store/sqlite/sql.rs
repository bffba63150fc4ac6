//! The statements of the SQLite rate-limit store: the admission log as SQL (what a decision
//! reads when its copy cannot answer), the per-resource state row, user activity, and how
//! times and ids are stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};

use crate::rate_limit::adaptive::{Activity, AdaptiveConfig, WindowUsage, activity_from_buckets};
use crate::rate_limit::store::{AdmissionLog, ServerState};
use crate::resource::Resource;
use crate::time::Timestamp;

/// Distinguishes admissions stamped in the same millisecond (primary key).
pub(super) fn next_id() -> i64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    ((u64::from(std::process::id()) << 40) ^ n) as i64
}

pub(super) struct SqlLog<'a> {
    pub(super) conn: &'a Connection,
    pub(super) resource: &'a str,
}

impl AdmissionLog for SqlLog<'_> {
    type Error = rusqlite::Error;

    fn usage(&mut self, since: u64) -> rusqlite::Result<WindowUsage> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT count(*), coalesce(sum(background), 0) FROM rate_limit_admissions
             WHERE resource = ?1 AND at > ?2",
        )?;
        stmt.query_row(params![self.resource, since as i64], |r| {
            Ok(WindowUsage {
                total: r.get::<_, i64>(0)? as u32,
                background: r.get::<_, i64>(1)? as u32,
            })
        })
    }

    fn kth_oldest(&mut self, since: u64, k: u32) -> rusqlite::Result<Option<u64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at FROM rate_limit_admissions WHERE resource = ?1 AND at > ?2
             ORDER BY at LIMIT 1 OFFSET ?3",
        )?;
        stmt.query_row(
            params![self.resource, since as i64, i64::from(k.max(1) - 1)],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map(|v| v.map(|v| v as u64))
    }
}

/// The per-resource row, as read in a transaction.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Row {
    pub(super) exists: bool,
    pub(super) last_user_at: Option<u64>,
    pub(super) server: ServerState,
    /// Raised with every admission of the resource (by a trigger).
    pub(super) generation: i64,
}

pub(super) fn read_row(conn: &Connection, resource: &str) -> rusqlite::Result<Row> {
    let mut stmt = conn.prepare_cached(
        "SELECT last_user_at, blocked_until, budget_remaining, budget_observed, budget_reset,
                generation
         FROM rate_limit_state WHERE resource = ?1",
    )?;
    let row = stmt
        .query_row([resource], |r| {
            let budget = match (
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ) {
                (Some(left), Some(observed), Some(reset)) => {
                    Some((left.max(0) as u32, observed as u64, reset as u64))
                }
                _ => None,
            };
            Ok(Row {
                exists: true,
                last_user_at: r.get::<_, Option<i64>>(0)?.map(|v| v as u64),
                server: ServerState {
                    blocked_until: r.get::<_, i64>(1)?.max(0) as u64,
                    budget,
                },
                generation: r.get(5)?,
            })
        })
        .optional()?;
    Ok(row.unwrap_or_default())
}

pub(super) fn read_activity(
    conn: &Connection,
    resource: &str,
    row: &Row,
    config: &AdaptiveConfig,
    now: u64,
) -> rusqlite::Result<Activity> {
    let since = now.saturating_sub(config.monitoring_ms()) / 1000;
    let mut stmt = conn.prepare_cached(
        "SELECT second, users FROM rate_limit_activity WHERE resource = ?1 AND second >= ?2",
    )?;
    let buckets = stmt
        .query_map(params![resource, since as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u32))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(activity_from_buckets(
        buckets.into_iter(),
        config,
        now,
        row.last_user_at,
        row.exists,
    ))
}

pub(super) fn write_activity(
    conn: &Connection,
    users: &HashMap<(Resource, u64), u32>,
    last_user: &HashMap<Resource, u64>,
) -> rusqlite::Result<()> {
    let mut add = conn.prepare_cached(
        "INSERT INTO rate_limit_activity (resource, second, users) VALUES (?1, ?2, ?3)
         ON CONFLICT (resource, second) DO UPDATE SET users = users + excluded.users",
    )?;
    for ((resource, second), n) in users {
        add.execute(params![resource.as_str(), *second as i64, i64::from(*n)])?;
    }
    let mut last = conn.prepare_cached(
        "INSERT INTO rate_limit_state (resource, first_at, last_user_at) VALUES (?1, ?2, ?2)
         ON CONFLICT (resource) DO UPDATE SET last_user_at =
             max(coalesce(last_user_at, 0), excluded.last_user_at)",
    )?;
    for (resource, at) in last_user {
        last.execute(params![resource.as_str(), *at as i64])?;
    }
    Ok(())
}

/// A time as SQLite stores it: times past `i64::MAX` ms (a `Retry-After` of centuries) are
/// clamped to it, rather than wrapping to a negative that reads as "never".
pub(super) fn sql_time(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}
