//! Following a pub/sub channel ([`RedisStore::follow`]), for the stores that wake up on
//! messages.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::RedisStore;

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
