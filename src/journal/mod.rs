//! The journal of upstream calls: what spent the quota.
//!
//! With a [`Journal`] on its [`ContextLayer`](crate::ContextLayer), the stack writes one
//! [`JournalEntry`] for each request whose own call reached the upstream (the response's
//! [`Report`] has an [`upstream`](crate::Report::upstream) part): not for cache
//! hits, nor for dedupe followers. A row says when, which resource and priority, the method and
//! the URL (secret query parameters and userinfo masked, cut at [`MAX_URL_LEN`] bytes), the status, the latency, the bytes of
//! the answer when the upstream said, whether it was a revalidation, how long the rate limiter
//! held it and how many dedupe followers it served.
//!
//! [`Journal::record`] never blocks nor waits: each store queues the row and writes it off the
//! request path, dropping (and counting) rows it cannot keep up with. The journal is then read
//! with [`Journal::query`] (the rows) and [`Journal::summary`] (calls, quota spent, bytes,
//! latency and limiter waits per resource, status or priority, and the totals).
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`Journal`] (the handle a layer holds), [`JournalStore`] (the storage seam), [`JournalEntry`] |
//! | `mask.rs` | the URL a row keeps: secrets masked, cut at [`MAX_URL_LEN`] bytes |
//! | `query.rs` | [`JournalQuery`], [`GroupBy`], [`JournalSummary`] and [`JournalGroup`] |
//! | `memory.rs` | [`MemoryJournalStore`]: a bounded ring in this process (default 100,000 rows) |
//! | `sqlite.rs` | `SqliteJournalStore`: a table in the shared file, written by its write-behind writer, with retention by age and row count |
//! | `redis.rs` | `RedisJournalStore`: a capped stream per prefix (`XADD MAXLEN ~`), fed by a background task |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use courteous::journal::{GroupBy, Journal, JournalQuery, MemoryJournalStore};
//! use courteous::ContextLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courteous::store::StoreError> {
//! let journal = Journal::new(MemoryJournalStore::new());
//! let service = ServiceBuilder::new()
//!     .layer(ContextLayer::new().journal(journal.clone()))
//!     .service(service_fn(|_req: http::Request<String>| async move {
//!         // The transport (`HttpClient`) writes this part of the report for a real call.
//!         let mut response = http::Response::new(String::new());
//!         courteous::Report::record(response.extensions_mut()).upstream = Some(
//!             courteous::UpstreamReport::new(http::StatusCode::OK, Duration::from_millis(20)),
//!         );
//!         Ok::<_, std::convert::Infallible>(response)
//!     }));
//!
//! let request = http::Request::get("http://h/api/issues/?api_key=s3cret").body(String::new()).unwrap();
//! service.oneshot(request).await.unwrap();
//!
//! let rows = journal.query(&JournalQuery::since(Duration::from_secs(3600))).await?;
//! assert_eq!(rows.len(), 1);
//! assert_eq!(rows[0].url, "http://h/api/issues/?api_key=REDACTED");
//! let summary = journal.summary(&JournalQuery::all(), GroupBy::Resource).await?;
//! assert_eq!(summary.groups[0].key, "issues");
//! assert_eq!(summary.total.calls, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Note on what is not journaled
//!
//! A call that failed without an answer (connection refused, timeout) has no status and no
//! row. Background revalidations of `stale-while-revalidate` run below the
//! [`ContextLayer`](crate::ContextLayer) on nobody's request, and have no row either; a request
//! that the rate limiter sent twice ([`retry_once`](crate::RateLimitLayer::retry_once)) has one
//! row, for the answer it returned.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::context::{Priority, Report};
use crate::key::KeyExtractor;
use crate::resource::Resource;
use crate::store::StoreError;
use crate::time::{Clock, SystemClock, Timestamp};

mod mask;
pub mod memory;
mod query;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use mask::MAX_URL_LEN;
pub use memory::MemoryJournalStore;
pub use query::{GroupBy, JournalGroup, JournalQuery, JournalSummary, summarize};
#[cfg(feature = "redis")]
pub use redis::RedisJournalStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteJournalStore;

/// One upstream call, as the journal keeps it.
///
/// # Example
///
/// ```
/// use courteous::journal::JournalEntry;
/// use courteous::time::Timestamp;
/// use courteous::Resource;
///
/// let mut entry = JournalEntry::new(
///     Timestamp::from_millis(1_700_000_000_000),
///     Resource::new("issues").unwrap(),
///     http::Method::GET,
///     "https://api.example/issues/?page=2",
///     http::StatusCode::OK,
/// );
/// entry.bytes = Some(2_048);
/// assert!(!entry.revalidation);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalEntry {
    /// When the upstream's answer arrived.
    pub time: Timestamp,
    /// The resource the call was counted in.
    pub resource: Resource,
    /// The priority it ran with.
    pub priority: Priority,
    /// The request method.
    pub method: http::Method,
    /// The URL, with secret query parameters and userinfo masked, at most [`MAX_URL_LEN`]
    /// bytes when the [`ContextLayer`](crate::ContextLayer) wrote it.
    pub url: String,
    /// The status of the upstream's answer.
    pub status: http::StatusCode,
    /// From sending the request to the answer's head.
    pub latency: Duration,
    /// The size of the answer's body, when the upstream said (`Content-Length`).
    pub bytes: Option<u64>,
    /// Whether the call revalidated a cached response.
    pub revalidation: bool,
    /// How long the rate limiter held the call.
    pub limiter_wait: Duration,
    /// How many dedupe followers the call's answer served.
    pub followers: u32,
}

impl JournalEntry {
    /// A call at `time`, with priority [`Priority::User`], no latency, bytes, wait or followers,
    /// not a revalidation. `url` is kept as given: mask its secrets first.
    pub fn new(
        time: Timestamp,
        resource: Resource,
        method: http::Method,
        url: impl Into<String>,
        status: http::StatusCode,
    ) -> Self {
        JournalEntry {
            time,
            resource,
            priority: Priority::User,
            method,
            url: url.into(),
            status,
            latency: Duration::ZERO,
            bytes: None,
            revalidation: false,
            limiter_wait: Duration::ZERO,
            followers: 0,
        }
    }
}

/// What a journal store did in this process.
///
/// # Example
///
/// ```
/// use courteous::journal::{JournalStore, MemoryJournalStore};
///
/// let stats = MemoryJournalStore::new().stats();
/// assert_eq!((stats.recorded, stats.dropped), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct JournalStats {
    /// Rows handed to the store for writing.
    pub recorded: u64,
    /// Rows the store could not keep: a full queue, a failed write, a closed store (the memory
    /// ring counts the old rows it let go to make room).
    pub dropped: u64,
}

/// Where a [`Journal`] keeps its rows: a small, backend-neutral contract.
///
/// [`record`](Self::record) is called on the request path and must return at once: a store
/// queues the row and writes it elsewhere, and drops it (counting it in
/// [`JournalStats::dropped`]) rather than wait. Reads see what was written: after
/// [`flush`](Self::flush), everything recorded before it.
#[async_trait::async_trait]
pub trait JournalStore: fmt::Debug + Send + Sync + 'static {
    /// Queues one row; never blocks, never waits.
    fn record(&self, entry: JournalEntry);

    /// The rows `query` selects, oldest first; with a [`limit`](JournalQuery::limit), the
    /// newest `limit` of them.
    async fn query(&self, query: &JournalQuery) -> Result<Vec<JournalEntry>, StoreError>;

    /// The rows `query` selects, grouped `by` (its limit is ignored). The default reads the
    /// rows with [`query`](Self::query) and adds them up.
    async fn summary(
        &self,
        query: &JournalQuery,
        by: GroupBy,
    ) -> Result<JournalSummary, StoreError> {
        let mut all = query.clone();
        all.limit = None;
        Ok(summarize(&self.query(&all).await?, by))
    }

    /// Writes what was recorded before this call (default: nothing to do).
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Counts of rows recorded and dropped in this process.
    fn stats(&self) -> JournalStats;
}

#[async_trait::async_trait]
impl<T: JournalStore + ?Sized> JournalStore for Arc<T> {
    fn record(&self, entry: JournalEntry) {
        (**self).record(entry);
    }
    async fn query(&self, query: &JournalQuery) -> Result<Vec<JournalEntry>, StoreError> {
        (**self).query(query).await
    }
    async fn summary(
        &self,
        query: &JournalQuery,
        by: GroupBy,
    ) -> Result<JournalSummary, StoreError> {
        (**self).summary(query, by).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        (**self).flush().await
    }
    fn stats(&self) -> JournalStats {
        (**self).stats()
    }
}

/// The journal a [`ContextLayer`](crate::ContextLayer) writes to, and reads of it.
///
/// Cheap to clone: clones share the store. It stamps rows with its [`Clock`] (default
/// [`SystemClock`]) and resolves [`JournalQuery::since`] against it.
///
/// # Example
///
/// ```
/// use courteous::journal::{Journal, JournalQuery, MemoryJournalStore};
/// use courteous::time::TokioClock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courteous::store::StoreError> {
/// let journal = Journal::new(MemoryJournalStore::with_capacity(10_000)).clock(TokioClock::new());
/// assert!(journal.query(&JournalQuery::all()).await?.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Journal {
    store: Arc<dyn JournalStore>,
    clock: Arc<dyn Clock>,
    mask: Option<Arc<MaskFn>>,
}

/// A masking of the URL of a row, on top of the secrets masked by default.
type MaskFn = dyn Fn(&str) -> String + Send + Sync;

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("store", &self.store)
            .field("clock", &self.clock)
            .field("mask", &self.mask.is_some())
            .finish()
    }
}

impl Journal {
    /// A journal kept in `store`.
    pub fn new(store: impl JournalStore) -> Self {
        Journal {
            store: Arc::new(store),
            clock: Arc::new(SystemClock),
            mask: None,
        }
    }

    /// Masks what else of a request's URL is secret before its row keeps it: a token in the
    /// path, say, which no query parameter name gives away. `mask` gets the URL with its
    /// userinfo and secret query parameters already masked (see the
    /// [`KeyExtractor`]'s `is_secret_param`), and returns what the row
    /// keeps (cut at [`MAX_URL_LEN`] bytes). It runs on the request's task when it finishes:
    /// keep it quick.
    ///
    /// ```
    /// use courteous::journal::{Journal, MemoryJournalStore};
    ///
    /// // The bot API of a chat service puts the token in the path: `/bot<token>/sendMessage`.
    /// let journal = Journal::new(MemoryJournalStore::new()).mask_url(|url| {
    ///     match url.split_once("/bot") {
    ///         Some((head, tail)) => {
    ///             let rest = tail.find('/').map_or("", |i| &tail[i..]);
    ///             format!("{head}/botREDACTED{rest}")
    ///         }
    ///         None => url.to_owned(),
    ///     }
    /// });
    /// # let _ = journal;
    /// ```
    #[must_use]
    pub fn mask_url(mut self, mask: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.mask = Some(Arc::new(mask));
        self
    }

    /// Where "now" is read, for the rows' time and for [`JournalQuery::since`] (default
    /// [`SystemClock`]).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Now, on the journal's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn JournalStore> {
        &self.store
    }

    /// Queues `entry` as it is; returns at once (see [`JournalStore::record`]).
    pub fn record(&self, entry: JournalEntry) {
        self.store.record(entry);
    }

    /// The rows `query` selects, oldest first (see [`JournalStore::query`]).
    pub async fn query(&self, query: &JournalQuery) -> Result<Vec<JournalEntry>, StoreError> {
        self.store.query(&query.resolve(self.now())).await
    }

    /// The rows `query` selects, grouped `by`, with the totals.
    pub async fn summary(
        &self,
        query: &JournalQuery,
        by: GroupBy,
    ) -> Result<JournalSummary, StoreError> {
        self.store.summary(&query.resolve(self.now()), by).await
    }

    /// Writes what was recorded before this call.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }

    /// The store's counts of rows recorded and dropped in this process.
    pub fn stats(&self) -> JournalStats {
        self.store.stats()
    }

    /// What [`ContextLayer`](crate::ContextLayer) keeps of a request while it runs, to write
    /// its row when it finishes.
    pub(crate) fn capture<B>(
        &self,
        request: &http::Request<B>,
        keys: &Arc<dyn KeyExtractor>,
    ) -> Box<Capture> {
        Box::new(Capture {
            journal: self.clone(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            keys: keys.clone(),
        })
    }
}

/// A request's method and URL, kept by [`ContextLayer`](crate::ContextLayer) until the request
/// finishes (only when it has a journal).
pub(crate) struct Capture {
    journal: Journal,
    method: http::Method,
    uri: http::Uri,
    keys: Arc<dyn KeyExtractor>,
}

impl Capture {
    /// Writes the row of a finished request, if its own call reached the upstream.
    pub(crate) fn finish(self, report: &Report) {
        let Some(upstream) = report.upstream else {
            return;
        };
        // A follower's response carries its leader's reports, upstream part included: the call
        // was the leader's, and the leader's row counts it.
        if report.dedupe.is_some_and(crate::DedupeRole::is_follower) {
            return;
        }
        let keys = &self.keys;
        let mut url = mask::mask_url(&self.uri, |name| keys.is_secret_param(name));
        if let Some(custom) = &self.journal.mask {
            url = mask::cap(custom(&url));
        }
        let entry = JournalEntry {
            time: self.journal.now(),
            resource: report.resource.clone().unwrap_or_else(Resource::root),
            priority: report.priority.unwrap_or(Priority::User),
            method: self.method,
            url,
            status: upstream.status,
            latency: upstream.latency,
            bytes: upstream.bytes,
            revalidation: report.cache == Some(crate::cache::CacheStatus::Revalidated),
            limiter_wait: report
                .rate_limit
                .as_ref()
                .map_or(Duration::ZERO, |r| r.waited),
            followers: upstream.followers,
        };
        self.journal.record(entry);
    }
}
