//! The Redis backend: the same stores for fleets of machines.
//!
//! A SQLite file can be shared by the processes of one machine; when an application runs on several
//! machines, [`RedisStore`] takes its place. One `RedisStore` (a URL, a key prefix, timeouts) is
//! shared by the cache, dedupe and rate-limit stores built from it.
//!
//! The connection is made lazily and re-made after failures by a `redis` connection manager, so an
//! application starts, and keeps serving, while Redis is down: every operation is bounded by the
//! operation timeout and fails with a typed [`RedisError`], which the layers treat as their
//! configuration says (the cache and dedupe layers pass through; the rate limiter fails closed by
//! default).
//!
//! # Note on outages
//!
//! A request that crosses several layers sends Redis several commands (a cache lookup, a dedupe
//! claim, a rate-limit decision, writes afterwards). The [operation
//! timeout](RedisStoreBuilder::operation_timeout) is **one budget per request** across all of
//! them, not one per command: a command waits at most what the request has left of it, and one
//! whose request has spent it all fails at once without being sent. So a stalled Redis costs a
//! request about one timeout, whatever the number of layers. Work done outside a request
//! (background writes, cleanup) gets the whole timeout per command.
//!
//! After [`circuit_breaker`](RedisStoreBuilder::circuit_breaker) failures in a row (default 3:
//! Redis unreachable, or silent for a whole timeout), the store stops asking Redis for a while
//! (default 1 s): every operation fails at once with [`RedisError::CircuitOpen`]. Then one
//! operation goes through as a probe (the others still fail at once): if Redis answers, the
//! circuit closes; if not, it stays open for another while. The cache, dedupe and rate-limit
//! stores made from one [`RedisStore`] share its connection and its breaker.
//!
//! # Example
//!
//! ```no_run
//! use courteous::store::redis::RedisStore;
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), courteous::store::redis::RedisError> {
//! let redis = RedisStore::builder("redis://127.0.0.1:6379/")
//!     .prefix("myapp:courteous")
//!     .operation_timeout(Duration::from_millis(250))
//!     .connect()?;
//! redis.ping().await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Value};

use crate::store::budget::{Charge, StoreBudget};
use crate::store::{StoreError, StoreErrorKind};

/// A failure of the Redis backend.
///
/// # Example
///
/// ```
/// use courteous::store::redis::RedisStore;
///
/// let err = RedisStore::connect("http://not-redis/").unwrap_err();
/// assert_eq!(err.code(), "redis_invalid_url");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The URL could not be parsed.
    #[error("invalid redis url: {source}; expected redis://host:port/db")]
    InvalidUrl {
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer within the operation timeout.
    #[error("redis did not answer {operation} within {after:?}; is it running and reachable?")]
    Timeout {
        /// What was attempted.
        operation: &'static str,
        /// The timeout that ran out.
        after: Duration,
    },
    /// Redis could not be reached, the connection broke, or the server refuses commands for a
    /// while (loading its data after a restart, busy with a script, failing over, out of
    /// memory): retrying later may succeed.
    #[error("redis is unavailable during {operation}: {source}")]
    Unavailable {
        /// What was attempted.
        operation: &'static str,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// Redis failed repeatedly, and the store does not ask it again until the circuit breaker's
    /// next probe (see [`RedisStoreBuilder::circuit_breaker`]): the operation was not sent.
    #[error(
        "redis failed repeatedly: {operation} was not sent; it is asked again in {retry_in:?} (circuit breaker open)"
    )]
    CircuitOpen {
        /// What was attempted.
        operation: &'static str,
        /// When the next probe may go.
        retry_in: Duration,
    },
    /// Redis answered with an error (a script error, a wrong type...).
    #[error("redis refused {operation}: {source}")]
    Command {
        /// What was attempted.
        operation: &'static str,
        /// The server's error.
        #[source]
        source: redis::RedisError,
    },
}

/// Error codes with which a running Redis refuses a command for a while, not for good: loading
/// its data after a restart, busy with a long script, a replica during a failover (its master
/// down, or read-only until promoted), a cluster resharding, out of memory until keys expire.
/// They are reported as [`RedisError::Unavailable`], like a connection that fails.
const TRANSIENT: [&str; 7] = [
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "READONLY",
    "OOM",
    "CLUSTERDOWN",
];

impl RedisError {
    /// A short, stable code for logs.
    pub const fn code(&self) -> &'static str {
        match self {
            RedisError::InvalidUrl { .. } => "redis_invalid_url",
            RedisError::Timeout { .. } => "redis_timeout",
            RedisError::Unavailable { .. } => "redis_unavailable",
            RedisError::Command { .. } => "redis_command",
            RedisError::CircuitOpen { .. } => "redis_circuit_open",
        }
    }

    /// Redis could not be reached in time (unreachable or slow), or failed so often that the
    /// circuit breaker is open.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RedisError::Timeout { .. }
                | RedisError::Unavailable { .. }
                | RedisError::CircuitOpen { .. }
        )
    }

    fn from_redis(operation: &'static str, source: redis::RedisError) -> Self {
        if source.is_io_error()
            || source.is_connection_dropped()
            || source.is_connection_refusal()
            || source.is_timeout()
            || source.code().is_some_and(|code| TRANSIENT.contains(&code))
        {
            RedisError::Unavailable { operation, source }
        } else {
            RedisError::Command { operation, source }
        }
    }
}

impl From<RedisError> for StoreError {
    fn from(error: RedisError) -> Self {
        let kind = match &error {
            RedisError::InvalidUrl { .. }
            | RedisError::Unavailable { .. }
            | RedisError::CircuitOpen { .. } => StoreErrorKind::Unavailable,
            RedisError::Timeout { .. } => StoreErrorKind::Busy,
            RedisError::Command { .. } => StoreErrorKind::Other,
        };
        StoreError::new("redis", kind, error)
    }
}

struct Inner {
    client: redis::Client,
    manager: ConnectionManager,
    prefix: String,
    operation_timeout: Duration,
    breaker: Breaker,
}

/// Stops asking a failing Redis for a while (see the module's "Note on outages").
#[derive(Debug)]
struct Breaker {
    /// Failures in a row that open it (0: never).
    failures: u32,
    open_for: Duration,
    state: std::sync::Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    /// Failures in a row.
    failed: u32,
    /// Set while open: when the next probe may go.
    open_until: Option<tokio::time::Instant>,
    /// A probe in flight, until this time (a probe that is dropped stops counting then).
    probing_until: Option<tokio::time::Instant>,
}

/// What the breaker let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Closed,
    Probe,
}

/// How an attempt went, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Redis answered (an error reply included: it is up).
    Answered,
    /// Redis could not be reached, or was silent for a whole operation timeout.
    Failed,
    /// Silent for less than a whole timeout (the request's budget was nearly spent): says
    /// nothing either way.
    Inconclusive,
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an operation may go now; `Err(retry_in)` while open.
    fn pass(&self, timeout: Duration) -> Result<Pass, Duration> {
        if self.failures == 0 {
            return Ok(Pass::Closed);
        }
        let now = tokio::time::Instant::now();
        let mut state = self.lock();
        let Some(open_until) = state.open_until else {
            return Ok(Pass::Closed);
        };
        if now < open_until {
            return Err(open_until - now);
        }
        if let Some(probing) = state.probing_until
            && now < probing
        {
            return Err(probing - now);
        }
        state.probing_until = Some(now + timeout);
        Ok(Pass::Probe)
    }

    fn record(&self, pass: Pass, outcome: Outcome) {
        if self.failures == 0 {
            return;
        }
        let mut state = self.lock();
        if pass == Pass::Probe {
            state.probing_until = None;
        }
        match outcome {
            Outcome::Answered => {
                if state.open_until.take().is_some() {
                    tracing::info!("redis answers again; circuit breaker closed");
                }
                state.failed = 0;
            }
            Outcome::Failed => {
                state.failed = state.failed.saturating_add(1);
                if state.open_until.is_some() || state.failed >= self.failures {
                    if state.open_until.is_none() {
                        tracing::warn!(
                            failures = state.failed,
                            open_for = ?self.open_for,
                            "redis failed repeatedly; circuit breaker open: operations fail at once until a probe succeeds"
                        );
                    }
                    state.open_until = Some(tokio::time::Instant::now() + self.open_for);
                }
            }
            Outcome::Inconclusive => {}
        }
    }
}

/// A Redis server shared by the cache, dedupe and rate-limit stores of every machine.
///
/// Cheap to clone; clones share one multiplexed connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("operation_timeout", &self.inner.operation_timeout)
            .finish_non_exhaustive()
    }
}

/// Options for a [`RedisStore`].
///
/// # Example
///
/// ```
/// use courteous::store::redis::RedisStore;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = RedisStore::builder("redis://127.0.0.1:6379/")
///     .prefix("tests")
///     .connect_timeout(Duration::from_millis(200))
///     .connect()
///     .unwrap();
/// assert_eq!(store.prefix(), "tests");
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    connect_timeout: Duration,
    operation_timeout: Duration,
    breaker_failures: u32,
    breaker_open_for: Duration,
}

impl RedisStoreBuilder {
    /// The namespace of every key (default `courteous`); keys are `{prefix}:{store}:...`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one connection attempt may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one operation may take, connection included, before it fails with
    /// [`RedisError::Timeout`] (default 1 s). Within a request this is one budget for all the
    /// request's operations, across every layer (see the module's "Note on outages").
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// After `failures` failed operations in a row (Redis unreachable, or silent for a whole
    /// operation timeout), fail every operation at once with [`RedisError::CircuitOpen`] for
    /// `open_for`, then let one through as a probe, and close when one succeeds (default 3
    /// failures, 1 s). `failures` of 0 turns the breaker off.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::store::redis::RedisStore;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = RedisStore::builder("redis://127.0.0.1:6379/")
    ///     .operation_timeout(Duration::from_millis(250))
    ///     .circuit_breaker(5, Duration::from_secs(2))
    ///     .connect()
    ///     .unwrap();
    /// # let _ = store;
    /// # }
    /// ```
    pub fn circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.breaker_failures = failures;
        self.breaker_open_for = open_for;
        self
    }

    /// Creates the store. The connection is made on first use (and re-made after failures), so
    /// this succeeds while Redis is down; use [`RedisStore::ping`] to check it. Connections
    /// send TCP keepalive probes (after 15 s idle), so one to a server that vanished without
    /// closing it is noticed and made again.
    ///
    /// Must be called within a Tokio runtime.
    pub fn connect(self) -> Result<RedisStore, RedisError> {
        let client = redis::Client::open(self.url.as_str())
            .map_err(|source| RedisError::InvalidUrl { source })?;
        let info = client
            .get_connection_info()
            .clone()
            .set_tcp_settings(tcp_settings());
        let client =
            redis::Client::open(info).map_err(|source| RedisError::InvalidUrl { source })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.operation_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|source| RedisError::from_redis("connect", source))?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                manager,
                prefix: self.prefix,
                operation_timeout: self.operation_timeout,
                breaker: Breaker {
                    failures: self.breaker_failures,
                    open_for: self.breaker_open_for,
                    state: std::sync::Mutex::default(),
                },
            }),
        })
    }
}

/// TCP keepalive probes on every connection, so that a connection whose server vanished
/// without closing it (a machine powered off, a network partition, a NAT entry dropped) is
/// noticed and made again, rather than kept until the operating system gives up (hours):
/// first probe after 15 s idle, then every 5 s. On Linux, data left unacknowledged for 30 s
/// (`TCP_USER_TIMEOUT`) also ends it.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
    let keepalive = TcpKeepalive::new().with_time(Duration::from_secs(15));
    #[cfg(any(
        target_os = "android",
        target_os = "freebsd",
        target_os = "fuchsia",
        target_os = "ios",
        target_os = "linux",
        target_os = "macos",
        target_os = "netbsd",
        target_os = "windows",
    ))]
    let keepalive = keepalive.with_interval(Duration::from_secs(5));
    let settings = TcpSettings::default().set_keepalive(keepalive);
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let settings = settings.set_user_timeout(Duration::from_secs(30));
    settings
}

impl RedisStore {
    /// Options for the Redis server at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "courteous".to_owned(),
            connect_timeout: Duration::from_secs(1),
            operation_timeout: Duration::from_secs(1),
            breaker_failures: 3,
            breaker_open_for: Duration::from_secs(1),
        }
    }

    /// The store for `url` with the default options.
    pub fn connect(url: impl Into<String>) -> Result<RedisStore, RedisError> {
        Self::builder(url).connect()
    }

    /// The key namespace.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Checks that Redis answers within the operation timeout.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let pong: String = self.query("ping", redis::cmd("PING")).await?;
        debug_assert_eq!(pong, "PONG");
        Ok(())
    }

    /// The server's clock, which every machine agrees on.
    pub async fn server_time(&self) -> Result<SystemTime, RedisError> {
        let (secs, micros): (u64, u64) = self.query("time", redis::cmd("TIME")).await?;
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
    }

    /// `{prefix}:{part}`.
    pub(crate) fn key(&self, part: impl fmt::Display) -> String {
        format!("{}:{part}", self.inner.prefix)
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    pub(crate) fn operation_timeout(&self) -> Duration {
        self.inner.operation_timeout
    }

    /// Runs one command, bounded by the operation timeout.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: impl std::borrow::Borrow<redis::Cmd>,
    ) -> Result<T, RedisError> {
        let cmd = cmd.borrow();
        let value: Value = self
            .bounded(operation, |mut conn| async move {
                cmd.query_async(&mut conn).await
            })
            .await?;
        T::from_redis_value(value).map_err(|source| RedisError::Command {
            operation,
            source: source.into(),
        })
    }

    /// Runs a Lua script (by SHA, loading it when Redis does not know it yet), bounded by the
    /// operation timeout.
    pub(crate) async fn script<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let invocation = &invocation;
        self.bounded(operation, |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    /// Runs `attempt` on the shared connection, bounded by the operation timeout (less what the
    /// current request already spent on stores: see [`StoreBudget`]), unless the circuit
    /// breaker is open.
    ///
    /// When the connection turns out to be broken (after a Redis restart the first command on
    /// the old connection fails), the connection manager starts a new one and the attempt is
    /// made once more, within the same timeout. A command that Redis ran just before its
    /// connection broke (the reply lost) may so run twice: callers' operations must tolerate
    /// that (reads and idempotent writes do; a rate-limit admission counted twice only
    /// over-counts, which never lets the API see more than its limit).
    async fn bounded<T, F, Fut>(
        &self,
        operation: &'static str,
        mut attempt: F,
    ) -> Result<T, RedisError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let timeout = self.inner.operation_timeout;
        let budget = StoreBudget::current();
        let after = budget.as_ref().map_or(timeout, |b| b.left(timeout));
        if after.is_zero() {
            // The request spent its budget on earlier operations: not sent, and not a sign
            // about Redis either way.
            return Err(RedisError::Timeout {
                operation,
                after: timeout,
            });
        }
        let pass =
            self.inner
                .breaker
                .pass(timeout)
                .map_err(|retry_in| RedisError::CircuitOpen {
                    operation,
                    retry_in,
                })?;
        let _charge = Charge::start(budget);
        let run = async {
            match attempt(self.inner.manager.clone()).await {
                Err(error) if error.is_connection_dropped() || error.is_io_error() => {
                    tracing::debug!(operation, %error, "redis connection broken; trying once more on a new one");
                    attempt(self.inner.manager.clone()).await
                }
                result => result,
            }
        };
        let (result, outcome) = match tokio::time::timeout(after, run).await {
            Ok(Ok(value)) => (Ok(value), Outcome::Answered),
            Ok(Err(source)) => {
                let error = RedisError::from_redis(operation, source);
                let outcome = if error.is_unavailable() {
                    Outcome::Failed
                } else {
                    Outcome::Answered
                };
                (Err(error), outcome)
            }
            Err(_) if after == timeout => (
                Err(RedisError::Timeout { operation, after }),
                Outcome::Failed,
            ),
            Err(_) => (
                Err(RedisError::Timeout {
                    operation,
                    after: timeout,
                }),
                Outcome::Inconclusive,
            ),
        };
        self.inner.breaker.record(pass, outcome);
        result
    }
}

/// How often a subscription checks that Redis still answers on it (a `PING`, which must be
/// answered within the operation timeout): a connection can die silently (a stalled server, a
/// half-open TCP connection), and no message would ever say so.
const SUBSCRIPTION_PING: Duration = Duration::from_secs(1);

/// What a [`RedisStore::follow`] subscription reports.
pub(crate) enum Subscription<'a> {
    /// Subscribed (again): messages from now on are delivered.
    Up,
    /// A message's payload.
    Message(&'a [u8]),
    /// The subscription broke (or stopped answering pings): messages may be missed until the next
    /// [`Up`](Subscription::Up).
    Lost,
}

impl RedisStore {
    /// Follows `channel` until `stopped` resolves (its sender is dropped with the store that owns
    /// it): reports what happens to `on`, pings the subscription every second (a missed pong
    /// counts as [`Subscription::Lost`]), and subscribes again 250 ms after every failure.
    /// `subscribed` says whether the subscription is up. Run it in a task of its own.
    pub(crate) async fn follow(
        self,
        what: &'static str,
        channel: String,
        subscribed: Arc<std::sync::atomic::AtomicBool>,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
        mut on: impl FnMut(Subscription<'_>) + Send,
    ) {
        use futures_util::StreamExt;
        use std::sync::atomic::Ordering;
        let timeout = self.operation_timeout();
        loop {
            let connect = async {
                let mut pubsub = tokio::time::timeout(timeout, self.client().get_async_pubsub())
                    .await
                    .map_err(|_| "timed out connecting".to_owned())?
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(timeout, pubsub.subscribe(&channel))
                    .await
                    .map_err(|_| "timed out subscribing".to_owned())?
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(pubsub)
            };
            let pubsub = tokio::select! {
                _ = &mut stopped => return,
                pubsub = connect => pubsub,
            };
            match pubsub {
                Ok(pubsub) => {
                    subscribed.store(true, Ordering::SeqCst);
                    on(Subscription::Up);
                    tracing::debug!(%channel, "{what} subscription is up");
                    let (mut sink, mut messages) = pubsub.split();
                    let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
                    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ping.tick().await;
                    loop {
                        let message = tokio::select! {
                            _ = &mut stopped => {
                                subscribed.store(false, Ordering::SeqCst);
                                return;
                            }
                            message = messages.next() => message,
                            _ = ping.tick() => {
                                // Messages arriving meanwhile wait in the stream.
                                match tokio::time::timeout(timeout, sink.ping::<Value>()).await {
                                    Ok(Ok(_)) => continue,
                                    Ok(Err(error)) => {
                                        tracing::debug!(%channel, %error, "{what} subscription ping failed");
                                    }
                                    Err(_) => {
                                        tracing::debug!(%channel, "{what} subscription ping timed out");
                                    }
                                }
                                break;
                            }
                        };
                        let Some(message) = message else { break };
                        on(Subscription::Message(message.get_payload_bytes()));
                    }
                    subscribed.store(false, Ordering::SeqCst);
                    on(Subscription::Lost);
                    tracing::debug!(%channel, "{what} subscription lost; subscribing again");
                }
                Err(error) => {
                    tracing::debug!(%channel, %error, "{what} subscription failed; retrying");
                }
            }
            tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(reply: &str) -> redis::RedisError {
        match redis::parse_redis_value(reply.as_bytes()).unwrap() {
            redis::Value::ServerError(error) => error.into(),
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn a_server_refusing_for_a_while_is_unavailable_not_a_failed_command() {
        for reply in [
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.\r\n",
            "-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
            "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            "-CLUSTERDOWN The cluster is down\r\n",
        ] {
            let error = RedisError::from_redis("op", server_error(reply));
            assert!(error.is_unavailable(), "{reply}: {error:?}");
            assert_eq!(error.code(), "redis_unavailable");
            assert!(error.to_string().contains("unavailable"), "{error}");
            let store = StoreError::from(error);
            assert_eq!(store.kind(), StoreErrorKind::Unavailable, "{reply}");
        }
        for reply in [
            "-ERR Error running script: bad argument\r\n",
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "-NOPERM this user has no permissions to run the 'eval' command\r\n",
        ] {
            let error = RedisError::from_redis("op", server_error(reply));
            assert!(!error.is_unavailable(), "{reply}: {error:?}");
            assert_eq!(StoreError::from(error).kind(), StoreErrorKind::Other);
        }
    }
}
