//! The identities of in-flight admissions, and the settlement of one whose reply was lost.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use super::RedisRateLimitStore;
use crate::rate_limit::store::{InFlight, RateLimitStore};
use crate::time::Timestamp;

/// A random admission identity below 2^53 (exact as a Lua number), far above the counter's.
///
/// The randomness is `RandomState`'s keys (drawn from the operating system for each process and
/// thread, and stepped for each instance), over the process id and a counter; the clock adds
/// nothing to it. A collision only costs a counter id (the script checks the proposal).
pub(super) fn proposed_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), n));
    (1 << 52) | (random & ((1 << 52) - 1))
}

/// Settles, in the background, an admission whose acquire reply never arrived (see
/// [`RedisRateLimitStore::decide`]); disarmed by taking `admission`.
pub(super) struct LostReply {
    pub(super) store: RedisRateLimitStore,
    pub(super) admission: Option<InFlight>,
    pub(super) at: Timestamp,
}

impl Drop for LostReply {
    fn drop(&mut self) {
        let Some(admission) = self.admission.take() else {
            return;
        };
        let (store, at) = (self.store.clone(), self.at);
        match tokio::runtime::Handle::try_current() {
            // Sent after the acquire on the same connection, so Redis runs it after the
            // acquire, once it answers again; if the acquire recorded nothing, it finds
            // nothing to settle.
            Ok(handle) => drop(handle.spawn(async move {
                if let Err(error) = store.settle(&admission, at).await {
                    tracing::debug!(resource = %admission.resource, %error, "could not settle an admission whose reply was lost; it holds its slot until its expiry");
                }
            })),
            Err(_) => tracing::debug!(
                resource = %admission.resource,
                "no async runtime to settle an admission whose reply was lost on"
            ),
        }
    }
}
