//! A real local HTTP/1.1 server that answers with exactly the bytes a test scripts: any header
//! name spelling, duplicate headers, non-UTF-8 values, and a `Content-Length` that lies.
//!
//! The shared axum test server (`support::server`) cannot send those: hyper normalises header
//! names and checks the body against `Content-Length`. This one writes the response head by hand.
//! Every answer closes its connection, so a lying length ends in EOF (an error for the client),
//! never in a hang.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the answer states its length.
#[derive(Debug, Clone)]
pub enum Length {
    /// The true body length.
    True,
    /// No `Content-Length`: the body ends with the connection.
    Absent,
    /// This value, whatever the body is (a lie, garbage, or several values).
    Says(Vec<u8>),
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Header lines as raw bytes, written in order (`name: value`).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub length: Length,
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: b"{\"ok\":true}".to_vec(),
            length: Length::True,
        }
    }

    #[must_use]
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.as_bytes().to_vec(), value.as_ref().to_vec()));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} Scripted\r\n", self.status).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        match &self.length {
            Length::True => {
                out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes())
            }
            Length::Absent => {}
            Length::Says(value) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

#[derive(Default)]
struct Scripts {
    /// Path (without query) -> answers in order; the last one repeats.
    replies: HashMap<String, Vec<Reply>>,
    hits: HashMap<String, usize>,
}

/// The running server; it stops when dropped.
pub struct ScriptedServer {
    pub addr: SocketAddr,
    scripts: Arc<Mutex<Scripts>>,
    total: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    pub async fn start() -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scripts = Arc::new(Mutex::new(Scripts::default()));
        let total = Arc::new(AtomicU64::new(0));
        let (s, t) = (scripts.clone(), total.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    continue;
                };
                let (scripts, total) = (s.clone(), t.clone());
                tokio::spawn(async move {
                    let Some(path) = read_head(&mut socket).await else {
                        return;
                    };
                    total.fetch_add(1, Ordering::SeqCst);
                    let reply = {
                        let mut scripts = scripts.lock().unwrap();
                        let n = {
                            let hits = scripts.hits.entry(path.clone()).or_default();
                            *hits += 1;
                            *hits
                        };
                        scripts
                            .replies
                            .get(&path)
                            .and_then(|r| r.get(n - 1).or(r.last()))
                            .cloned()
                            .unwrap_or_else(|| Reply::new(404))
                    };
                    let _ = socket.write_all(&reply.bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        ScriptedServer {
            addr,
            scripts,
            total,
            task,
        }
    }

    /// Answers requests for `path` with `replies` in order (the last one repeats).
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.scripts
            .lock()
            .unwrap()
            .replies
            .insert(path.to_owned(), replies);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received in all.
    pub fn hits(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a request head; returns its path without the query.
async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next()?;
    let target = std::str::from_utf8(line).ok()?.split(' ').nth(1)?;
    Some(target.split('?').next()?.to_owned())
}
