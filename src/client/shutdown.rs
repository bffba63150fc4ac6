//! [`ClosesOnDrop`]: closes the SQLite store the builder opened itself when the last clone of
//! the stack is dropped, so that a program that builds with `.sqlite(path)` and exits keeps
//! what it cached.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// The longest the last drop of a stack waits for its SQLite store to commit and close.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Held by a [`CourteousLayer`](super::CourteousLayer) and every service it makes; the last one
/// dropped closes the store.
///
/// The SQLite store defers cache writes (write-behind) and commits them from its own thread;
/// dropping its last handle makes that thread commit, but nothing waits for it, so a process
/// that exits right after would lose them. [`Courteous::sqlite`](super::Courteous::sqlite)
/// gives the user no handle to `close()`, hence this guard. A store given with
/// [`Courteous::sqlite_store`](super::Courteous::sqlite_store) stays the user's to close.
pub(super) struct ClosesOnDrop {
    sqlite: Option<crate::store::sqlite::SqliteStore>,
}

impl ClosesOnDrop {
    /// A guard that closes `store` when dropped.
    pub(super) fn new(store: crate::store::sqlite::SqliteStore) -> Self {
        ClosesOnDrop {
            sqlite: Some(store),
        }
    }
}

impl Drop for ClosesOnDrop {
    fn drop(&mut self) {
        if let Some(store) = self.sqlite.take() {
            // Every await in `close` is answered by the store's own threads, never by a tokio
            // task, so it completes on this thread whatever runtime (if any) drops the stack.
            match block_on_for(store.close(), CLOSE_LIMIT) {
                Some(Ok(())) => {}
                Some(Err(error)) => tracing::warn!(
                    target: "courteous",
                    %error,
                    "closing the SQLite store on drop failed; deferred cache writes may be lost"
                ),
                None => tracing::warn!(
                    target: "courteous",
                    limit_ms = crate::time::duration_ms(CLOSE_LIMIT),
                    "the SQLite store did not close in time on drop; deferred cache writes may be lost"
                ),
            }
        }
    }
}

/// Wakes the thread that polls.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` on this thread, parking between polls, until it is ready or `limit` passed.
fn block_on_for<F: Future>(future: F, limit: Duration) -> Option<F::Output> {
    let started = Instant::now();
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return None;
        }
        std::thread::park_timeout(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_for_waits_for_another_thread_and_gives_up_at_the_limit() {
        let (send, receive) = tokio::sync::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let _ = send.send(7);
        });
        assert_eq!(block_on_for(receive, Duration::from_secs(5)), Some(Ok(7)));
        let _ = sender.join();

        let never = std::future::pending::<()>();
        let started = Instant::now();
        assert_eq!(block_on_for(never, Duration::from_millis(30)), None);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
