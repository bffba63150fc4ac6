//! [`RedisError`], and how a failure of the `redis` crate is classified.

use std::time::Duration;

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
    /// next probe (see [`RedisStoreBuilder::circuit_breaker`](super::RedisStoreBuilder::circuit_breaker)): the operation was not sent.
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

    pub(super) fn from_redis(operation: &'static str, source: redis::RedisError) -> Self {
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
