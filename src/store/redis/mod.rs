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
//!
//! # Source layout
//!
//! `mod.rs` holds [`RedisStore`] and the bounded running of every command (the request's
//! budget, the retry on a broken connection); `builder.rs` [`RedisStoreBuilder`] and the
//! connection it makes; `error.rs` [`RedisError`]; `breaker.rs` the circuit breaker; `pubsub.rs`
//! the channel subscriptions the dedupe and cache stores wake up on. The stores themselves live
//! with their layers (`rate_limit::store::redis`, `cache::store::redis`, `dedupe::store::redis`).

mod breaker;
mod builder;
mod error;
mod pubsub;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use breaker::{Breaker, Outcome};

use redis::aio::ConnectionManager;
use redis::{FromRedisValue, Value};

use crate::store::budget::{Charge, StoreBudget};

pub use builder::RedisStoreBuilder;
pub use error::RedisError;
pub(crate) use pubsub::Subscription;

struct Inner {
    client: redis::Client,
    manager: ConnectionManager,
    prefix: String,
    operation_timeout: Duration,
    breaker: Breaker,
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

impl RedisStore {
    /// The key namespace.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Checks that Redis answers within the operation timeout.
    pub async fn ping(&self) -> Result<(), RedisError> {
        // Any string will do: what the server says is not checked with a panic.
        let _pong: String = self.query("ping", redis::cmd("PING")).await?;
        Ok(())
    }

    /// The server's clock, which every machine agrees on (at most the end of the year 9999,
    /// whatever the server says).
    pub async fn server_time(&self) -> Result<SystemTime, RedisError> {
        let (secs, micros): (u64, u64) = self.query("time", redis::cmd("TIME")).await?;
        let since_epoch = Duration::from_secs(secs).saturating_add(Duration::from_micros(micros));
        Ok(crate::time::add(SystemTime::UNIX_EPOCH, since_epoch))
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

    /// One step of `SCAN cursor MATCH pattern COUNT 500`: the next cursor (0 at the end) and the
    /// keys of this step, which may repeat keys of earlier steps. Build `pattern` with
    /// [`glob_escape`] around the parts that come from the prefix or a key.
    pub(crate) async fn scan(
        &self,
        operation: &'static str,
        pattern: &str,
        cursor: u64,
    ) -> Result<(u64, Vec<String>), RedisError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        self.query(operation, scan).await
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

/// Keys one [`RedisStore::scan`] step looks at.
pub(crate) const SCAN_COUNT: u64 = 500;

/// `s` with the `SCAN MATCH` glob characters (`*`, `?`, `[`, `]`, `\`) escaped, so that a prefix
/// such as `a*` matches only itself.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\:rl:{"), "a\\*b\\?\\[c\\]\\\\:rl:{");
        assert_eq!(glob_escape("courteous:dedupe"), "courteous:dedupe");
    }
}
