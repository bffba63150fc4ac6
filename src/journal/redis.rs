//! The Redis backend: a capped stream per prefix, fed by a background task.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use crate::context::Priority;
use crate::resource::Resource;
use crate::store::redis::RedisStore;
use crate::store::{StoreError, StoreErrorKind};
use crate::time::Timestamp;

use super::{JournalEntry, JournalQuery, JournalStats, JournalStore};

/// The default cap of the stream (`XADD MAXLEN ~`): about 100,000 rows.
pub const DEFAULT_MAX_LEN: u64 = 100_000;

/// The default number of rows that may wait for the background task.
pub const DEFAULT_QUEUE: usize = 10_000;

/// The most rows sent to Redis in one round trip.
const BATCH: usize = 256;

/// Rows read per `XRANGE`.
const PAGE: usize = 1_000;

/// How far the stream's IDs (Redis's clock) may be from the rows' times (the application's
/// clock) and still be found by a time window.
const SKEW: Duration = Duration::from_secs(300);

impl RedisStore {
    /// A [`JournalStore`] in a stream of this Redis (`{prefix}:journal`), shared by every
    /// process using the server and prefix.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use courteous::journal::Journal;
    /// use courteous::store::redis::RedisStore;
    ///
    /// # fn run() -> Result<(), courteous::store::redis::RedisError> {
    /// let redis = RedisStore::connect("redis://127.0.0.1:6379/")?;
    /// let journal = Journal::new(redis.journal().max_len(50_000));
    /// # let _ = journal;
    /// # Ok(())
    /// # }
    /// ```
    pub fn journal(&self) -> RedisJournalStore {
        RedisJournalStore {
            redis: self.clone(),
            key: self.key("journal"),
            max_len: DEFAULT_MAX_LEN,
            queue: DEFAULT_QUEUE,
            shared: Arc::new(Shared::default()),
        }
    }
}

enum Message {
    Row(JournalEntry),
    /// Answered once the rows queued before it were sent: the kind and text of the error.
    Flush(oneshot::Sender<Result<(), (StoreErrorKind, String)>>),
}

#[derive(Default)]
struct Shared {
    /// The background task's queue, started by the first row (in the runtime of its caller),
    /// and started again if that runtime has gone.
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    /// Rows handed to the task and not yet written nor counted dropped: lost, and counted, if
    /// the task's runtime goes before it writes them.
    queued: AtomicU64,
    recorded: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    /// Counts as dropped the rows a task that has gone (with its runtime) never wrote.
    fn count_lost(&self) {
        let lost = self.queued.swap(0, Ordering::Relaxed);
        self.dropped.fetch_add(lost, Ordering::Relaxed);
    }
}

/// A [`JournalStore`] in a Redis stream: `XADD {prefix}:journal MAXLEN ~ N`, so Redis keeps
/// about the newest [`max_len`](Self::max_len) rows (trimming whole stream nodes: a few more).
///
/// `record` hands the row to a background task through a bounded queue
/// ([`queue`](Self::queue)); when it is full, or the task cannot run (no Tokio runtime), the row
/// is dropped and counted. The task runs in the runtime of the first row's caller: rows it had
/// not written when that runtime shut down are counted dropped too, and the next row starts it
/// again in its caller's runtime. The task sends rows in batches of up to 256 per round trip (one Lua
/// script call); a batch
/// Redis refuses is dropped and counted, with a warning. Reads page through the stream with
/// `XRANGE`, starting at the window's start less five minutes (the stream's IDs follow
/// Redis's clock, the rows' times the application's), and filter the rows by their own time.
///
/// # Example
///
/// ```no_run
/// use courteous::journal::{GroupBy, Journal, JournalQuery};
/// use courteous::store::redis::RedisStore;
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let journal = Journal::new(RedisStore::connect("redis://127.0.0.1:6379/")?.journal());
/// let last_hour = journal.summary(&JournalQuery::since(Duration::from_secs(3600)), GroupBy::Resource).await?;
/// println!("{} calls", last_hour.total.calls);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisJournalStore {
    redis: RedisStore,
    key: String,
    max_len: u64,
    queue: usize,
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisJournalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisJournalStore")
            .field("key", &self.key)
            .field("max_len", &self.max_len)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl RedisJournalStore {
    /// About how many rows the stream keeps (default [`DEFAULT_MAX_LEN`], at least 1).
    #[must_use]
    pub fn max_len(mut self, rows: u64) -> Self {
        self.max_len = rows.max(1);
        self
    }

    /// How many rows may wait for the background task before new ones are dropped (default
    /// [`DEFAULT_QUEUE`], at least 1). Set it before the first row.
    #[must_use]
    pub fn queue(mut self, rows: usize) -> Self {
        self.queue = rows.max(1);
        self
    }

    /// The stream's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Starts the background task in the current runtime; `None` outside one.
    fn start(&self) -> Option<mpsc::Sender<Message>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (sender, receiver) = mpsc::channel(self.queue);
        let task = Task {
            redis: self.redis.clone(),
            key: self.key.clone(),
            max_len: self.max_len,
            shared: self.shared.clone(),
        };
        runtime.spawn(task.run(receiver));
        Some(sender)
    }

    /// Queues `entry` for the task (starting it if needed); `false` when it cannot (a full
    /// queue, no runtime).
    fn send(&self, entry: JournalEntry) -> bool {
        let mut sender = self.shared.sender.lock();
        // Counted before it is sent, so that the task, counting it off, never goes below 0.
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        let message = match sender.as_ref() {
            Some(s) => match s.try_send(Message::Row(entry)) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(message)) => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    self.shared.count_lost();
                    self.shared.queued.fetch_add(1, Ordering::Relaxed);
                    message
                }
            },
            None => Message::Row(entry),
        };
        // Never started, or its runtime is gone: start it here.
        *sender = self.start();
        let sent = sender.as_ref().is_some_and(|s| s.try_send(message).is_ok());
        if !sent {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }
}

struct Task {
    redis: RedisStore,
    key: String,
    max_len: u64,
    shared: Arc<Shared>,
}

impl Task {
    async fn run(self, mut receiver: mpsc::Receiver<Message>) {
        let mut batch = Vec::with_capacity(BATCH);
        while receiver.recv_many(&mut batch, BATCH).await > 0 {
            let mut invocation = XADD.prepare_invoke();
            invocation.key(&self.key).arg(self.max_len);
            let mut rows = 0;
            let mut flushes = Vec::new();
            for message in batch.drain(..) {
                match message {
                    Message::Row(entry) => {
                        push_row(&mut invocation, &entry);
                        rows += 1;
                    }
                    Message::Flush(reply) => flushes.push(reply),
                }
            }
            let result = if rows == 0 {
                Ok(())
            } else {
                self.redis
                    .script::<u64>("journal xadd", invocation)
                    .await
                    .map(drop)
            };
            self.shared.queued.fetch_sub(rows, Ordering::Relaxed);
            if let Err(error) = &result {
                self.shared.dropped.fetch_add(rows, Ordering::Relaxed);
                crate::store::warn::store_warn!(&*self.shared, %error, rows, "could not write journal rows to redis; they are dropped");
            }
            for reply in flushes {
                let _ = reply.send(
                    result
                        .as_ref()
                        .map_err(|error| {
                            let kind = if error.is_unavailable() {
                                StoreErrorKind::Unavailable
                            } else {
                                StoreErrorKind::Other
                            };
                            (kind, error.to_string())
                        })
                        .copied(),
                );
            }
        }
    }
}

/// Appends a batch of rows to the capped stream (see the script's header).
static XADD: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("xadd.lua")));

/// Adds `e`'s fields to the script's arguments: their count, then names and values.
fn push_row(invocation: &mut redis::ScriptInvocation<'_>, e: &JournalEntry) {
    let mut fields: Vec<(&str, String)> = vec![
        ("t", e.time.as_millis().to_string()),
        ("r", e.resource.as_str().to_owned()),
        ("p", e.priority.as_str().to_owned()),
        ("m", e.method.as_str().to_owned()),
        ("u", e.url.clone()),
        ("s", e.status.as_u16().to_string()),
        ("l", micros(e.latency).to_string()),
        ("v", u8::from(e.revalidation).to_string()),
        ("w", micros(e.limiter_wait).to_string()),
        ("f", e.followers.to_string()),
    ];
    if let Some(bytes) = e.bytes {
        fields.push(("b", bytes.to_string()));
    }
    invocation.arg(fields.len() * 2);
    for (name, value) in fields {
        invocation.arg(name).arg(value);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A stream entry's fields, as a journal row; `None` for an entry no build of courteous wrote.
fn parse_entry(fields: &[Value]) -> Option<JournalEntry> {
    let mut row = JournalEntry::new(
        Timestamp::default(),
        Resource::root(),
        http::Method::GET,
        String::new(),
        http::StatusCode::OK,
    );
    let (mut time, mut resource, mut status, mut url) = (None, None, None, None);
    for pair in fields.chunks_exact(2) {
        let (Some(name), Some(value)) = (text(&pair[0]), text(&pair[1])) else {
            continue;
        };
        match name.as_str() {
            "t" => time = value.parse().ok().map(Timestamp::from_millis),
            "r" => resource = Resource::new(&value).ok(),
            "p" => {
                row.priority = match value.as_str() {
                    "background" => Priority::Background,
                    _ => Priority::User,
                }
            }
            "m" => row.method = http::Method::from_bytes(value.as_bytes()).ok()?,
            "u" => url = Some(value),
            "s" => {
                status = value
                    .parse()
                    .ok()
                    .and_then(|s| http::StatusCode::from_u16(s).ok())
            }
            "l" => row.latency = Duration::from_micros(value.parse().unwrap_or(0)),
            "b" => row.bytes = value.parse().ok(),
            "v" => row.revalidation = value == "1",
            "w" => row.limiter_wait = Duration::from_micros(value.parse().unwrap_or(0)),
            "f" => row.followers = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    row.time = time?;
    row.resource = resource?;
    row.status = status?;
    row.url = url?;
    Some(row)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The entries of an `XRANGE` reply: (id, fields).
fn entries(reply: Value) -> Vec<(String, Vec<Value>)> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut parts) = item else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let fields = match parts.pop() {
                Some(Value::Array(fields)) => fields,
                _ => return None,
            };
            let id = parts.pop().as_ref().and_then(text)?;
            Some((id, fields))
        })
        .collect()
}

#[async_trait::async_trait]
impl JournalStore for RedisJournalStore {
    fn record(&self, entry: JournalEntry) {
        self.shared.recorded.fetch_add(1, Ordering::Relaxed);
        if !self.send(entry) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn query(&self, query: &JournalQuery) -> Result<Vec<JournalEntry>, StoreError> {
        let (start, end) = query.window();
        let from = (start - SKEW).as_millis();
        // No upper bound by ID: a row may be written long after its time (never before it, but
        // for the skew between clocks).
        let to = "+";
        let mut cursor = from.to_string();
        let mut found = Vec::new();
        loop {
            let reply: Value = self
                .redis
                .query(
                    "journal xrange",
                    redis::cmd("XRANGE")
                        .arg(&self.key)
                        .arg(&cursor)
                        .arg(to)
                        .arg("COUNT")
                        .arg(PAGE),
                )
                .await?;
            let page = entries(reply);
            let full = page.len() == PAGE;
            let mut last = None;
            for (id, fields) in page {
                if let Some(row) = parse_entry(&fields)
                    && query.matches_in(&row, start, end)
                {
                    found.push(row);
                }
                last = Some(id);
            }
            match last {
                // The next page starts after the last ID read.
                Some(id) if full => cursor = format!("({id}"),
                _ => break,
            }
        }
        // Rows from several processes are appended in arrival order: sort them by time.
        found.sort_by_key(|row| row.time);
        if let Some(limit) = query.row_limit() {
            let skip = found.len().saturating_sub(limit);
            found.drain(..skip);
        }
        Ok(found)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        // Unlike a row, a flush may wait for room in the queue.
        let sender = self.shared.sender.lock().clone();
        let Some(sender) = sender else {
            return Ok(());
        };
        if sender.send(Message::Flush(reply)).await.is_err() {
            return Ok(());
        }
        match done.await {
            Ok(Err((kind, message))) => Err(StoreError::new("redis", kind, message)),
            Ok(Ok(())) | Err(_) => Ok(()),
        }
    }

    fn stats(&self) -> JournalStats {
        {
            let sender = self.shared.sender.lock();
            if sender.as_ref().is_some_and(mpsc::Sender::is_closed) {
                self.shared.count_lost();
            }
        }
        JournalStats {
            recorded: self.shared.recorded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}
