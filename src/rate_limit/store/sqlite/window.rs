//! Each process's copy of the admissions in its windows, so that most decisions read no rows.
//!
//! A decision needs the admissions of its resource's windows: how many there are (of which
//! background), and the time of the k-th oldest when the window is full. Counting them in SQL
//! visits every row of the window, for every decision; refusals, the most common decision of a
//! saturated limiter, write nothing and would read the same rows again and again.
//!
//! Instead the runner keeps, per resource, the times of the admissions after some point (`from`)
//! in memory, tagged with the resource's *generation*: a counter in `rate_limit_state` that a
//! trigger (`rate_limit_admission_generation`, schema `rate_limit` v3) raises with every
//! admission inserted, by any process and any version of this crate, in the same transaction as
//! the insert. A decision reads the resource's state row anyway (server feedback); when the
//! generation there is the one the copy was made at, no other process has admitted anything
//! since, and the copy is exact: the decision is made in memory, inside the same `BEGIN
//! IMMEDIATE` transaction as before, and an admission is inserted as before and added to the
//! copy (whose generation follows the trigger's).
//!
//! When the generation is ahead by `d`, other processes inserted exactly `d` admissions since,
//! and the copy catches up:
//!
//! 1. from the state row itself, which the trigger also keeps the last [`LOGGED`] admissions in
//!    (`recent`: fixed-width entries, newest last, so the last `d` entries are the ones missed).
//!    The row is on a page the decision has just read: this costs no other page, which matters
//!    because SQLite drops a connection's whole page cache whenever another process has written,
//!    so every other page a decision touches is read again (a system call and a copy);
//! 2. when more were missed, from the admissions after [`CATCH_UP_MS`] before the copy's newest
//!    (a short range read at the end of the resource's rows): if there are exactly `d` more of
//!    them than the copy holds after that point, they are the copy's own plus all `d` new ones
//!    (rows are only added by inserts, which the generation counts; a row deleted there, or a
//!    re-stamp, would make the count fall short);
//! 3. otherwise it is read again whole (a range scan of the window).
//!
//! A re-stamp (an in-flight admission settled: an `UPDATE` of its `at`, schema `rate_limit` v4)
//! raises the generation by two, and its trigger logs two entries: the removal of the old stamp
//! (the entry's top bit set) and the new stamp. Catching up from the log applies both; a removal
//! of a stamp the copy does not hold means the copy is wrong, and it is read again. Catching up
//! from the tail stays sound: a re-stamp raises the generation without adding a row, so the
//! count of new rows falls short of `d` and the copy is read again.
//!
//! A transaction that fails or panics drops every copy, since what it added to them was rolled
//! back.
//!
//! Only inserts and re-stamps raise the generation, and it must only grow: deleting admissions or state rows
//! by hand (to "reset" a limit), or putting back an older copy of the file, while processes
//! have it open, can leave their copies counting what is gone, or taken as exact when the
//! counter climbs back to their generation. Restart the processes after doing either. (Pruning
//! deletes only rows older than every window still in use, which the copies drop themselves.)

use std::collections::{HashMap, VecDeque};

use rusqlite::{Connection, params};

use super::sql::SqlLog;
use crate::rate_limit::adaptive::WindowUsage;
use crate::rate_limit::store::AdmissionLog;
use crate::resource::Resource;

/// Most resources with a copy; past it the least recently used copy is dropped (it is read
/// again when needed).
const MAX_WINDOWS: usize = 4096;

/// How far before its newest admission a copy that is behind looks for the ones it missed,
/// before reading the whole window again.
const CATCH_UP_MS: u64 = 100;

/// How much earlier than the latest request's window a copy starts, so that requests stamped
/// a little earlier than the one decided before them (stamps are taken before requests queue,
/// so a queue is not quite in stamp order) are decided on the copy instead of reading it again.
const KEEP_EARLIER_MS: u64 = 1000;

/// How many entries the state row logs (`recent`, kept by the triggers of schema `rate_limit`
/// v4), and the width of one entry: `at * 2 + background` in 16 hex digits, with the top bit
/// set for the removal of a re-stamped admission's old stamp.
pub(super) const LOGGED: usize = 64;
const ENTRY: usize = 16;

/// The admissions of one resource after `from`, as of a generation.
#[derive(Debug, Default)]
pub(super) struct Window {
    generation: i64,
    /// Holds every admission of the resource stamped after `from` (ms).
    from: u64,
    /// Their times, oldest first.
    all: VecDeque<u64>,
    /// The times of the background ones, oldest first.
    background: VecDeque<u64>,
    /// The last time it was used (`now` of a request), for eviction.
    used: u64,
}

impl Window {
    /// Adds this process's admission, inserted in the current transaction (where the trigger
    /// raised the generation by one).
    pub(super) fn record(&mut self, at: u64, background: bool) {
        self.add(at, background);
        self.generation += 1;
    }

    fn add(&mut self, at: u64, background: bool) {
        if at <= self.from {
            return;
        }
        insert_sorted(&mut self.all, at);
        if background {
            insert_sorted(&mut self.background, at);
        }
    }

    /// Removes one admission stamped `at` (a re-stamp's old stamp); `false` when the copy
    /// should hold it and does not (it is then inconsistent: read it again).
    fn remove(&mut self, at: u64, background: bool) -> bool {
        if at <= self.from {
            return true;
        }
        let mut found = remove_one(&mut self.all, at);
        if background {
            found &= remove_one(&mut self.background, at);
        }
        found
    }

    /// Re-stamps this process's in-flight admission from `old` to `new`, updated in the current
    /// transaction (where the trigger raised the generation by two); `false` when the copy did
    /// not hold it (drop the copy).
    pub(super) fn restamp(&mut self, old: u64, new: u64, background: bool) -> bool {
        if !self.remove(old, background) {
            return false;
        }
        self.add(new, background);
        self.generation += 2;
        true
    }

    /// Brings the copy from its generation to `generation` from the admissions logged in the
    /// state row (see the module docs): `Some(true)` when it caught up, `Some(false)` (and the
    /// copy unchanged) when they are not all there, `None` when the log contradicts the copy (a
    /// re-stamp of an admission it does not hold): the copy must be read again.
    fn catch_up_from_log(
        &mut self,
        conn: &Connection,
        resource: &str,
        generation: i64,
    ) -> rusqlite::Result<Option<bool>> {
        let missed = usize::try_from(generation - self.generation).unwrap_or(usize::MAX);
        if missed > LOGGED {
            return Ok(Some(false));
        }
        let mut stmt = conn.prepare_cached(
            "SELECT generation, recent FROM rate_limit_state WHERE resource = ?1",
        )?;
        let mut rows = stmt.query([resource])?;
        let Some(row) = rows.next()? else {
            return Ok(Some(false));
        };
        let (logged_at, recent): (i64, &str) = (row.get(0)?, row.get_ref(1)?.as_str()?);
        if logged_at != generation || recent.len() % ENTRY != 0 || recent.len() / ENTRY < missed {
            return Ok(Some(false));
        }
        let Some(entries) = recent.as_bytes()[recent.len() - missed * ENTRY..]
            .chunks(ENTRY)
            .map(|entry| parse_entry(std::str::from_utf8(entry).ok()?))
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(Some(false));
        };
        for entry in entries {
            match entry {
                Entry::Added { at, background } => self.add(at, background),
                Entry::Removed { at, background } => {
                    if !self.remove(at, background) {
                        return Ok(None);
                    }
                }
            }
        }
        self.generation = generation;
        Ok(Some(true))
    }

    /// Brings the copy from its generation to `generation` from the admissions near its
    /// newest (see the module docs); `false` (and the copy unchanged) when they are not all
    /// there.
    fn catch_up_from_tail(
        &mut self,
        conn: &Connection,
        resource: &str,
        generation: i64,
    ) -> rusqlite::Result<bool> {
        let missed = usize::try_from(generation - self.generation).unwrap_or(usize::MAX);
        let newest = self.all.back().copied().unwrap_or(self.from);
        let after = newest.saturating_sub(CATCH_UP_MS).max(self.from);
        let held = |times: &VecDeque<u64>| times.len() - times.partition_point(|at| *at <= after);
        let expected = held(&self.all).saturating_add(missed);
        let Some(tail) = rows_after(conn, resource, after, expected)? else {
            return Ok(false);
        };
        if tail.len() != expected {
            return Ok(false);
        }
        let (all, background) = (held(&self.all), held(&self.background));
        self.all.truncate(self.all.len() - all);
        self.background.truncate(self.background.len() - background);
        for (at, bg) in tail {
            self.all.push_back(at);
            if bg {
                self.background.push_back(at);
            }
        }
        self.generation = generation;
        Ok(true)
    }

    /// The generation the copy is at.
    pub(super) fn generation(&self) -> i64 {
        self.generation
    }

    /// Forgets admissions at or before `from` (which must not be before the current `from`).
    fn advance(&mut self, from: u64) {
        while self.all.front().is_some_and(|at| *at <= from) {
            self.all.pop_front();
        }
        while self.background.front().is_some_and(|at| *at <= from) {
            self.background.pop_front();
        }
        self.from = from;
    }

    fn usage(&self, since: u64) -> WindowUsage {
        let count = |times: &VecDeque<u64>| {
            let n = times.len() - times.partition_point(|at| *at <= since);
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        WindowUsage {
            total: count(&self.all),
            background: count(&self.background),
        }
    }

    fn kth_oldest(&self, since: u64, k: u32) -> Option<u64> {
        let start = self.all.partition_point(|at| *at <= since);
        self.all.get(start + k.max(1) as usize - 1).copied()
    }
}

/// One entry of the state row's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Added { at: u64, background: bool },
    Removed { at: u64, background: bool },
}

const REMOVED: u64 = 1 << 63;

/// `at * 2 + background` in 16 hex digits, the top bit set for a removal; `None` when the time
/// is unknown: `at * 2` past SQLite's integers (stamps from 2^62 ms on) turns into a REAL,
/// which printf clamps to `i64::MAX`.
fn parse_entry(entry: &str) -> Option<Entry> {
    let value = u64::from_str_radix(entry, 16).ok()?;
    let payload = value & !REMOVED;
    if payload >= i64::MAX as u64 {
        return None;
    }
    let (at, background) = (payload >> 1, payload & 1 == 1);
    Some(if value & REMOVED != 0 {
        Entry::Removed { at, background }
    } else {
        Entry::Added { at, background }
    })
}

fn remove_one(times: &mut VecDeque<u64>, at: u64) -> bool {
    let i = times.partition_point(|t| *t < at);
    if times.get(i) == Some(&at) {
        times.remove(i);
        true
    } else {
        false
    }
}

fn insert_sorted(times: &mut VecDeque<u64>, at: u64) {
    // Usually the newest: the search ends at the back.
    let i = times.partition_point(|t| *t <= at);
    times.insert(i, at);
}

/// A copy as tests see it: its start, the times of its admissions and of its background ones,
/// and its generation.
#[cfg(test)]
pub(super) type CopyView = (u64, (Vec<u64>, Vec<u64>), i64);

/// The copies, per resource. Used by the runner only (one per process at a time).
#[derive(Debug, Default)]
pub(super) struct Windows {
    map: HashMap<Resource, Window>,
    counts: Counts,
}

/// What the copies did, for diagnosis.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counts {
    /// Copies caught up from the admissions logged in the state row.
    pub(super) from_log: u64,
    /// Copies caught up from the admissions near their newest.
    pub(super) from_tail: u64,
    /// Copies read whole from the admissions table.
    pub(super) reads: u64,
}

impl Windows {
    /// The copy of `resource` at `generation` holding at least the admissions after `from`:
    /// the one kept, caught up when it is behind, or read from the table when there is none,
    /// it cannot catch up or it starts later.
    pub(super) fn get(
        &mut self,
        conn: &Connection,
        resource: &Resource,
        generation: i64,
        from: u64,
        now: u64,
    ) -> rusqlite::Result<&mut Window> {
        let mut fresh = false;
        if let Some(window) = self.map.get_mut(resource)
            && window.from <= from
        {
            if window.generation == generation {
                fresh = true;
            } else if window.generation < generation {
                match window.catch_up_from_log(conn, resource.as_str(), generation)? {
                    Some(true) => {
                        self.counts.from_log += 1;
                        fresh = true;
                    }
                    Some(false)
                        if window.catch_up_from_tail(conn, resource.as_str(), generation)? =>
                    {
                        self.counts.from_tail += 1;
                        fresh = true;
                    }
                    // Not caught up, or partly changed and inconsistent: read again below.
                    _ => {}
                }
            }
        }
        if !fresh {
            let window = read(
                conn,
                resource.as_str(),
                generation,
                from.saturating_sub(KEEP_EARLIER_MS),
            )?;
            self.counts.reads += 1;
            if !self.map.contains_key(resource) && self.map.len() >= MAX_WINDOWS {
                self.evict();
            }
            self.map.insert(resource.clone(), window);
        }
        let window = self
            .map
            .get_mut(resource)
            .expect("inserted above when missing");
        if window.from.saturating_add(KEEP_EARLIER_MS) < from {
            window.advance(from - KEEP_EARLIER_MS);
        }
        window.used = window.used.max(now);
        Ok(window)
    }

    /// Applies this process's re-stamp of an admission of `resource` from `old` to `new`, made
    /// in the current transaction, to its copy if that copy is at `generation` (the one before
    /// the update); a copy behind catches up from the log later, one that does not hold the
    /// admission is dropped.
    pub(super) fn restamp(
        &mut self,
        resource: &Resource,
        generation: i64,
        old: u64,
        new: u64,
        background: bool,
    ) {
        if let Some(window) = self.map.get_mut(resource)
            && window.generation == generation
            && !window.restamp(old, new, background)
        {
            self.map.remove(resource);
        }
    }

    /// Drops every copy (after a transaction that added to them rolled back).
    pub(super) fn clear(&mut self) {
        self.map.clear();
    }

    /// What the copies did so far.
    pub(super) fn counts(&self) -> Counts {
        self.counts
    }

    /// The copy of `resource` (see [`CopyView`]).
    #[cfg(test)]
    pub(super) fn copy_of(&self, resource: &str) -> Option<CopyView> {
        let window = self.map.get(&Resource::new(resource).ok()?)?;
        let times = |times: &VecDeque<u64>| times.iter().copied().collect();
        Some((
            window.from,
            (times(&window.all), times(&window.background)),
            window.generation,
        ))
    }

    fn evict(&mut self) {
        if let Some(oldest) = self
            .map
            .iter()
            .min_by_key(|(_, w)| w.used)
            .map(|(r, _)| r.clone())
        {
            self.map.remove(&oldest);
        }
    }
}

/// The admissions of `resource` after `after` (time, background), oldest first; `None` when
/// there are more than `most`.
fn rows_after(
    conn: &Connection,
    resource: &str,
    after: u64,
    most: usize,
) -> rusqlite::Result<Option<Vec<(u64, bool)>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, background FROM rate_limit_admissions
         WHERE resource = ?1 AND at > ?2 ORDER BY at",
    )?;
    let mut rows = stmt.query(params![resource, i64::try_from(after).unwrap_or(i64::MAX)])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        if out.len() == most {
            return Ok(None);
        }
        out.push((
            row.get::<_, i64>(0)?.max(0) as u64,
            row.get::<_, i64>(1)? != 0,
        ));
    }
    Ok(Some(out))
}

fn read(conn: &Connection, resource: &str, generation: i64, from: u64) -> rusqlite::Result<Window> {
    let mut window = Window {
        generation,
        from,
        ..Window::default()
    };
    for (at, background) in rows_after(conn, resource, from, usize::MAX)?.unwrap_or_default() {
        window.all.push_back(at);
        if background {
            window.background.push_back(at);
        }
    }
    Ok(window)
}

/// A resource's admissions for [`decide`](crate::rate_limit::store::decide): from the copy, and
/// from the table for anything older than the copy holds.
pub(super) struct CachedLog<'a> {
    pub(super) window: &'a Window,
    pub(super) table: SqlLog<'a>,
}

impl AdmissionLog for CachedLog<'_> {
    type Error = rusqlite::Error;

    fn usage(&mut self, since: u64) -> rusqlite::Result<WindowUsage> {
        if since >= self.window.from {
            Ok(self.window.usage(since))
        } else {
            self.table.usage(since)
        }
    }

    fn kth_oldest(&mut self, since: u64, k: u32) -> rusqlite::Result<Option<u64>> {
        if since >= self.window.from {
            Ok(self.window.kth_oldest(since, k))
        } else {
            self.table.kth_oldest(since, k)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(times: &[(u64, bool)], from: u64) -> Window {
        let mut w = Window {
            from,
            ..Window::default()
        };
        for &(at, bg) in times {
            w.record(at, bg);
        }
        w
    }

    #[test]
    fn counts_and_ranks_what_is_after_since_in_any_order_of_recording() {
        // Recorded out of order, as admissions of processes with different clocks are.
        let w = window(&[(10, false), (30, true), (20, true), (40, false)], 0);
        assert_eq!(w.generation(), 4);
        assert_eq!(
            w.usage(15),
            WindowUsage {
                total: 3,
                background: 2
            }
        );
        assert_eq!(w.usage(40).total, 0);
        assert_eq!(w.kth_oldest(15, 1), Some(20));
        assert_eq!(w.kth_oldest(15, 3), Some(40));
        assert_eq!(w.kth_oldest(15, 4), None);
    }

    #[test]
    fn advancing_forgets_only_what_is_at_or_before_the_new_start() {
        let mut w = window(&[(10, true), (20, false), (30, true)], 0);
        w.advance(20);
        assert_eq!(w.all, [30]);
        assert_eq!(w.background, [30]);
        assert_eq!(w.from, 20);
    }
}
