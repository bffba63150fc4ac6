//! Reading the journal: which rows ([`JournalQuery`]) and their sums ([`JournalSummary`]).

use std::collections::HashMap;
use std::time::Duration;

use crate::context::Priority;
use crate::resource::Resource;
use crate::time::{Clock, SystemClock, Timestamp};

use super::JournalEntry;

/// Which rows of the journal to read: a time window, a resource, a priority, a row limit.
///
/// # Example
///
/// ```
/// use courteous::journal::JournalQuery;
/// use courteous::{Priority, Resource};
/// use std::time::Duration;
///
/// // The last hour's background calls to `search`, at most 100 (the newest).
/// let query = JournalQuery::since(Duration::from_secs(3600))
///     .resource(Resource::new("search").unwrap())
///     .priority(Priority::Background)
///     .limit(100);
/// assert_eq!(query.row_limit(), Some(100));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalQuery {
    pub(crate) since: Option<Duration>,
    pub(crate) start: Option<Timestamp>,
    pub(crate) end: Option<Timestamp>,
    pub(crate) resource: Option<Resource>,
    pub(crate) priority: Option<Priority>,
    pub(crate) limit: Option<usize>,
}

impl JournalQuery {
    /// Every row.
    pub fn all() -> Self {
        Self::default()
    }

    /// The rows of the last `window`, up to now (on the [`Journal`](super::Journal)'s clock).
    pub fn since(window: Duration) -> Self {
        JournalQuery {
            since: Some(window),
            ..Self::default()
        }
    }

    /// The rows from `start` (included) to `end` (excluded).
    pub fn between(start: Timestamp, end: Timestamp) -> Self {
        JournalQuery {
            start: Some(start),
            end: Some(end),
            ..Self::default()
        }
    }

    /// Only the rows of this resource.
    #[must_use]
    pub fn resource(mut self, resource: Resource) -> Self {
        self.resource = Some(resource);
        self
    }

    /// Only the rows of this priority.
    #[must_use]
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// At most `rows` rows: the newest (summaries ignore it).
    #[must_use]
    pub fn limit(mut self, rows: usize) -> Self {
        self.limit = Some(rows);
        self
    }

    /// The same query with [`since`](Self::since) turned into a start time, counted back from
    /// `now`.
    ///
    /// ```
    /// use courteous::journal::JournalQuery;
    /// use courteous::time::Timestamp;
    /// use std::time::Duration;
    ///
    /// let query = JournalQuery::since(Duration::from_secs(60)).resolve(Timestamp::from_millis(100_000));
    /// assert_eq!(query.window().0, Timestamp::from_millis(40_000));
    /// ```
    #[must_use]
    pub fn resolve(&self, now: Timestamp) -> Self {
        let mut resolved = self.clone();
        if let Some(window) = resolved.since.take() {
            let start = now - window;
            resolved.start = Some(resolved.start.map_or(start, |s| s.max(start)));
        }
        resolved
    }

    /// The time window, `start` included, `end` excluded (a [`since`](Self::since) not yet
    /// [resolved](Self::resolve) is counted back from the wall clock).
    pub fn window(&self) -> (Timestamp, Timestamp) {
        let resolved;
        let query = if self.since.is_some() {
            resolved = self.resolve(SystemClock.now());
            &resolved
        } else {
            self
        };
        (
            query.start.unwrap_or_default(),
            query.end.unwrap_or(Timestamp::from_millis(u64::MAX)),
        )
    }

    /// The resource the rows must have, if any.
    pub fn resource_filter(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }

    /// The priority the rows must have, if any.
    pub fn priority_filter(&self) -> Option<Priority> {
        self.priority
    }

    /// The most rows to return, if limited.
    pub fn row_limit(&self) -> Option<usize> {
        self.limit
    }

    /// Whether `entry` is selected (its time in the [window](Self::window), its resource and
    /// priority as asked; the limit aside).
    pub fn matches(&self, entry: &JournalEntry) -> bool {
        let (start, end) = self.window();
        self.matches_in(entry, start, end)
    }

    pub(crate) fn matches_in(
        &self,
        entry: &JournalEntry,
        start: Timestamp,
        end: Timestamp,
    ) -> bool {
        entry.time >= start
            && entry.time < end
            && self.resource.as_ref().is_none_or(|r| *r == entry.resource)
            && self.priority.is_none_or(|p| p == entry.priority)
    }
}

/// How a [`JournalSummary`] groups the rows.
///
/// # Example
///
/// ```
/// use courteous::journal::GroupBy;
///
/// assert_eq!(GroupBy::Status.as_str(), "status");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GroupBy {
    /// By resource name.
    Resource,
    /// By the upstream's status code (`"200"`, `"429"`...).
    Status,
    /// By priority (`"user"`, `"background"`).
    Priority,
}

impl GroupBy {
    /// `"resource"`, `"status"` or `"priority"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            GroupBy::Resource => "resource",
            GroupBy::Status => "status",
            GroupBy::Priority => "priority",
        }
    }

    /// The group `entry` falls in.
    pub fn key(self, entry: &JournalEntry) -> String {
        match self {
            GroupBy::Resource => entry.resource.as_str().to_owned(),
            GroupBy::Status => entry.status.as_str().to_owned(),
            GroupBy::Priority => entry.priority.as_str().to_owned(),
        }
    }
}

/// The sums of one group of rows (or of all of them: [`JournalSummary::total`]).
///
/// # Example
///
/// ```
/// use courteous::journal::{GroupBy, JournalEntry, summarize};
/// # use courteous::{Resource, time::Timestamp};
/// # let entry = JournalEntry::new(Timestamp::from_millis(0), Resource::root(), http::Method::GET, "http://h/", http::StatusCode::OK);
/// let summary = summarize(&[entry], GroupBy::Status);
/// assert_eq!((summary.groups[0].key.as_str(), summary.groups[0].calls), ("200", 1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct JournalGroup {
    /// The resource, status or priority ([`GroupBy::key`]); `"total"` for the totals.
    pub key: String,
    /// Calls that reached the upstream.
    pub calls: u64,
    /// Calls that counted against a rate limit: every call that reached the upstream counts,
    /// whatever its answer (a 429 or a 500 too), so this is `calls`.
    pub quota_spent: u64,
    /// Bytes of the answers' bodies, of those whose size the upstream said.
    pub bytes: u64,
    /// The median latency (the lower median for an even count).
    pub latency_p50: Duration,
    /// The longest latency.
    pub latency_max: Duration,
    /// How long the rate limiter held these calls, added up.
    pub limiter_wait: Duration,
    /// Calls that revalidated a cached response.
    pub revalidations: u64,
    /// Dedupe followers served by these calls' answers.
    pub followers: u64,
}

/// The journal's rows grouped by resource, status or priority, from [`Journal::summary`].
///
/// [`Journal::summary`]: super::Journal::summary
///
/// # Example
///
/// ```
/// use courteous::journal::{GroupBy, summarize};
///
/// let summary = summarize(&[], GroupBy::Resource);
/// assert!(summary.groups.is_empty());
/// assert_eq!(summary.total.calls, 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalSummary {
    /// How the rows were grouped.
    pub by: GroupBy,
    /// One per group, most calls first (then by key).
    pub groups: Vec<JournalGroup>,
    /// Every selected row.
    pub total: JournalGroup,
}

impl JournalSummary {
    /// A summary of these groups and totals, the groups put in order (most calls first).
    pub fn new(by: GroupBy, mut groups: Vec<JournalGroup>, total: JournalGroup) -> Self {
        groups.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.key.cmp(&b.key)));
        JournalSummary { by, groups, total }
    }
}

/// Adds rows up, one group at a time.
#[derive(Debug, Default)]
pub(crate) struct Sums {
    calls: u64,
    bytes: u64,
    latencies: Vec<Duration>,
    wait: Duration,
    revalidations: u64,
    followers: u64,
}

impl Sums {
    pub(crate) fn add(&mut self, entry: &JournalEntry) {
        self.calls += 1;
        self.bytes = self.bytes.saturating_add(entry.bytes.unwrap_or(0));
        self.latencies.push(entry.latency);
        self.wait = self.wait.saturating_add(entry.limiter_wait);
        self.revalidations += u64::from(entry.revalidation);
        self.followers += u64::from(entry.followers);
    }

    pub(crate) fn finish(mut self, key: String) -> JournalGroup {
        self.latencies.sort_unstable();
        let p50 = match self.latencies.len() {
            0 => Duration::ZERO,
            n => self.latencies[(n - 1) / 2],
        };
        JournalGroup {
            key,
            calls: self.calls,
            quota_spent: self.calls,
            bytes: self.bytes,
            latency_p50: p50,
            latency_max: self.latencies.last().copied().unwrap_or_default(),
            limiter_wait: self.wait,
            revalidations: self.revalidations,
            followers: self.followers,
        }
    }
}

/// Groups and totals, added up row by row.
#[derive(Debug)]
pub(crate) struct Summarizer {
    by: GroupBy,
    groups: HashMap<String, Sums>,
    total: Sums,
}

impl Summarizer {
    pub(crate) fn new(by: GroupBy) -> Self {
        Summarizer {
            by,
            groups: HashMap::new(),
            total: Sums::default(),
        }
    }

    pub(crate) fn add(&mut self, entry: &JournalEntry) {
        self.total.add(entry);
        self.groups
            .entry(self.by.key(entry))
            .or_default()
            .add(entry);
    }

    pub(crate) fn finish(self) -> JournalSummary {
        let groups = self
            .groups
            .into_iter()
            .map(|(key, sums)| sums.finish(key))
            .collect();
        JournalSummary::new(self.by, groups, self.total.finish("total".to_owned()))
    }
}

/// The summary of `rows`, grouped `by`: what stores that cannot add up themselves (memory,
/// Redis) answer [`Journal::summary`](super::Journal::summary) with.
pub fn summarize(rows: &[JournalEntry], by: GroupBy) -> JournalSummary {
    let mut summarizer = Summarizer::new(by);
    for row in rows {
        summarizer.add(row);
    }
    summarizer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(resource: &str, status: u16, latency_ms: u64) -> JournalEntry {
        let mut e = JournalEntry::new(
            Timestamp::from_millis(1_000),
            Resource::new(resource).unwrap(),
            http::Method::GET,
            "http://h/",
            http::StatusCode::from_u16(status).unwrap(),
        );
        e.latency = Duration::from_millis(latency_ms);
        e.bytes = Some(10);
        e
    }

    #[test]
    fn groups_are_added_up_with_a_lower_median_and_totals() {
        let rows = [
            entry("a", 200, 1),
            entry("a", 200, 4),
            entry("a", 429, 2),
            entry("a", 200, 3),
            entry("b", 200, 9),
        ];
        let summary = summarize(&rows, GroupBy::Resource);
        let a = &summary.groups[0];
        assert_eq!(
            (a.key.as_str(), a.calls, a.quota_spent, a.bytes),
            ("a", 4, 4, 40)
        );
        assert_eq!(a.latency_p50, Duration::from_millis(2));
        assert_eq!(a.latency_max, Duration::from_millis(4));
        assert_eq!(summary.groups[1].key, "b");
        assert_eq!(summary.total.calls, 5);
        assert_eq!(summary.total.latency_p50, Duration::from_millis(3));
        let by_status = summarize(&rows, GroupBy::Status);
        assert_eq!(by_status.groups[1].key, "429");
    }

    #[test]
    fn since_resolves_against_now_and_keeps_a_later_start() {
        let now = Timestamp::from_millis(10_000);
        let q = JournalQuery::since(Duration::from_secs(5)).resolve(now);
        assert_eq!(q.window().0, Timestamp::from_millis(5_000));
        let mut later = JournalQuery::between(Timestamp::from_millis(8_000), now);
        later.since = Some(Duration::from_secs(5));
        assert_eq!(later.resolve(now).window().0, Timestamp::from_millis(8_000));
        assert!(!q.matches(&entry("a", 200, 1)));
    }
}
