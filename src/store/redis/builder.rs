//! [`RedisStoreBuilder`]: the options of a [`RedisStore`], and the connection it makes.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::breaker::Breaker;
use super::{Inner, RedisError, RedisStore};

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
                    state: parking_lot::Mutex::default(),
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
