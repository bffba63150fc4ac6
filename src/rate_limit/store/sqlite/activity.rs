//! User activity for the adaptive split: counted per resource and second by the runner, written
//! behind (one deferred write at a time takes everything pending), and read back from the file
//! at most once per recalculation interval (see "User activity" in the module docs).

use std::collections::HashMap;

use rusqlite::Connection;

use super::runner::Inner;
use super::sql::{Row, read_activity, write_activity};
use crate::rate_limit::adaptive::{Activity, AdaptiveConfig};
use crate::resource::Resource;
use crate::store::sqlite::SqliteStore;
use crate::time::duration_ms;

#[derive(Default)]
pub(super) struct PendingActivity {
    pub(super) users: HashMap<(Resource, u64), u32>,
    pub(super) last_user: HashMap<Resource, u64>,
    /// A deferred write is queued that will take everything pending when it runs.
    pub(super) queued: bool,
}

impl PendingActivity {
    pub(super) fn merge(
        &mut self,
        users: HashMap<(Resource, u64), u32>,
        last_user: HashMap<Resource, u64>,
    ) {
        for (key, n) in users {
            *self.users.entry(key).or_default() += n;
        }
        for (resource, at) in last_user {
            let last = self.last_user.entry(resource).or_default();
            *last = (*last).max(at);
        }
    }
}

impl Inner {
    pub(super) fn cached_activity(
        &self,
        conn: &Connection,
        resource: &Resource,
        row: &Row,
        config: &AdaptiveConfig,
        now: u64,
    ) -> rusqlite::Result<Activity> {
        let every = duration_ms(config.recalculation_interval);
        if let Some((at, activity)) = self.activity.lock().get(resource)
            && now.saturating_sub(*at) < every
            && *at <= now
            && activity.any_request
        {
            return Ok(*activity);
        }
        let activity = read_activity(conn, resource.as_str(), row, config, now)?;
        self.activity
            .lock()
            .insert(resource.clone(), (now, activity));
        Ok(activity)
    }

    /// Queues the batch's user activity for the write-behind writer, which commits it with
    /// other deferred writes within its flush interval.
    pub(super) fn flush_activity(&self, sqlite: &SqliteStore) {
        {
            let mut pending = self.activity_pending.lock();
            if pending.users.is_empty() || pending.queued {
                return;
            }
            pending.queued = true;
        }
        // One deferred write at a time takes everything accumulated until it runs, so the
        // writer does a few upserts per flush interval however many batches ran.
        let shared = self.activity_pending.clone();
        let result = sqlite.defer(move |conn| {
            let (users, last_user) = {
                let mut pending = shared.lock();
                pending.queued = false;
                (
                    std::mem::take(&mut pending.users),
                    std::mem::take(&mut pending.last_user),
                )
            };
            let result = write_activity(conn, &users, &last_user);
            if result.is_err() {
                // Kept for the retry of the writer's batch.
                shared.lock().merge(users, last_user);
            }
            result
        });
        if let Err(error) = result {
            self.activity_pending.lock().queued = false;
            tracing::debug!(%error, "user activity not queued for writing");
        }
    }
}
