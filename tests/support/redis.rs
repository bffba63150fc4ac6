//! Redis for the tests: the shared server at `COURTEOUS_REDIS_URL` (default
//! `redis://127.0.0.1:6379/`), and private `redis-server` processes for fault tests.
//!
//! Without a reachable Redis the Redis tests print `SKIPPED: ...` and pass, unless
//! `COURTEOUS_REQUIRE_REDIS=1` (set by `.ci/run`), which turns a missing Redis into a failure.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courteous::store::redis::RedisStore;

pub const URL_ENV: &str = "COURTEOUS_REDIS_URL";
pub const REQUIRE_ENV: &str = "COURTEOUS_REQUIRE_REDIS";

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

fn skip<T>(why: &str) -> Option<T> {
    assert!(!required(), "{REQUIRE_ENV}=1 but {why}");
    eprintln!("SKIPPED: {why}; start Redis or set {URL_ENV} to run the Redis tests");
    None
}

/// The shared Redis server's URL, or `None` (after printing why) when it does not answer.
pub async fn shared_url() -> Option<String> {
    let url = std::env::var(URL_ENV).unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let store = match RedisStore::builder(&url)
        .operation_timeout(Duration::from_millis(500))
        .connect()
    {
        Ok(store) => store,
        Err(e) => return skip(&format!("{URL_ENV}={url} is not a Redis URL ({e})")),
    };
    match store.ping().await {
        Ok(()) => Some(url),
        Err(e) => skip(&format!("no Redis answers at {url} ({e})")),
    }
}

/// A key prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "courteous-test:{test}:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `redis-server` of the test's own, on a free port, that the test may stop and restart.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts one, or returns `None` (after printing why) without a `redis-server` binary.
    pub fn start() -> Option<OwnRedis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            return skip("no redis-server binary for the fault tests");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut own = OwnRedis { port, child: None };
        own.restart();
        Some(own)
    }

    /// The server's process id while it runs (to pause it with SIGSTOP, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Pauses the server (SIGSTOP): it keeps its connections but answers nothing, like a
    /// stalled server or a half-open connection.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the server runs").to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (SIGKILL: as abrupt as a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
