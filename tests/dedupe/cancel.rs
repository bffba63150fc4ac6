//! Cancellation while the store is still granting the lead, on every backend: the layer's
//! caller is dropped after the store took the lease but before its answer arrived (a slow
//! reply, or a backend that retried the step after a lost reply). The lease must be given back
//! at once, not left to run out its 30 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courteous::dedupe::{Completion, DedupeLayer, DedupeStore, DedupeStoreStats, KeyState, Lead};
use courteous::store::StoreError;
use courteous::{BoxError, RequestKey};
use tower::{ServiceBuilder, ServiceExt};

use crate::backend::{Backend, every_backend};

every_backend!(
    a_leader_cancelled_before_the_lead_was_answered_releases_it,
    a_leader_cancelled_while_a_retried_lead_finds_its_own_lease_releases_it,
);

/// How the wrapped store answers `try_lead`.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// The step lands at once; its answer arrives late.
    Slow,
    /// The step lands, its reply is lost, and the retry (late) finds the lease under the
    /// caller's own id (`Lead::Pending` with its owner), as Redis after a broken connection.
    Retried,
}

/// A store whose `try_lead` answers late, delegating everything to `inner`.
#[derive(Debug)]
struct LateReply {
    inner: Arc<dyn DedupeStore>,
    reply: Reply,
}

#[async_trait::async_trait]
impl DedupeStore for LateReply {
    async fn try_lead(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Lead, StoreError> {
        let first = self.inner.try_lead(key, owner, lease).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        match self.reply {
            Reply::Slow => Ok(first),
            Reply::Retried => self.inner.try_lead(key, owner, lease).await,
        }
    }
    async fn renew(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.renew(key, owner, lease).await
    }
    async fn publish(
        &self,
        key: &RequestKey,
        owner: &str,
        completion: Completion,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner.publish(key, owner, completion, ttl).await
    }
    async fn release(&self, key: &RequestKey, owner: &str) -> Result<(), StoreError> {
        self.inner.release(key, owner).await
    }
    async fn poll(&self, key: &RequestKey) -> Result<KeyState, StoreError> {
        self.inner.poll(key).await
    }
    async fn invalidate(&self, path: &str) -> Result<u64, StoreError> {
        self.inner.invalidate(path).await
    }
    async fn cleanup(&self) -> Result<u64, StoreError> {
        self.inner.cleanup().await
    }
    async fn stats(&self) -> Result<DedupeStoreStats, StoreError> {
        self.inner.stats().await
    }
}

fn get(url: &str) -> http::Request<reqwest::Body> {
    http::Request::get(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

/// Starts a request through a layer over `store` with `reply`, cancels it while its lead is
/// unanswered, and waits (up to 5 s) for the key to be vacant again in `observer`.
async fn cancel_while_leading(backend: Backend, reply: Reply) {
    let (store, observer) = (backend.handle().await, backend.handle().await);
    let layer = DedupeLayer::new(LateReply {
        inner: store,
        reply,
    });
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(
            |_req: http::Request<reqwest::Body>| async {
                Ok::<_, BoxError>(http::Response::new(reqwest::Body::from("answer")))
            },
        ));
    let url = "http://h/cancelled-while-leading";
    let mut request = get(url);
    let key = courteous::dedupe::store_key(&mut request).unwrap();
    let call = tokio::spawn(service.oneshot(request));
    // The lease is taken; the answer has not arrived.
    let started = Instant::now();
    while !matches!(observer.poll(&key).await.unwrap(), KeyState::Pending { .. }) {
        assert!(started.elapsed() < Duration::from_secs(5), "never led");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let started = Instant::now();
    loop {
        match observer.poll(&key).await.unwrap() {
            KeyState::Vacant => break,
            state => assert!(
                started.elapsed() < Duration::from_secs(5),
                "the cancelled leader's lease is still held: {state:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The store's answer (`Acquired`) arrives after the caller was cancelled: the spawned task
/// that finishes the call releases the lease.
async fn a_leader_cancelled_before_the_lead_was_answered_releases_it(backend: Backend) {
    cancel_while_leading(backend, Reply::Slow).await;
}

/// The retried step answers `Pending` under the caller's own id, which the layer reads as its
/// own lead: the cancelled call's task must read it so too and release it. Before, it released
/// only on `Acquired`, and the lease held the key for its whole 30 s.
async fn a_leader_cancelled_while_a_retried_lead_finds_its_own_lease_releases_it(backend: Backend) {
    cancel_while_leading(backend, Reply::Retried).await;
}
