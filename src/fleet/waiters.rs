//! The followers waiting on this replica, by channel: a per-channel state
//! machine for the subscription, so SUBSCRIBE and UNSUBSCRIBE of one
//! channel never cross (each is sent and answered under the channel's own
//! lock, in order), and the last follower to leave a channel unsubscribes
//! it, whatever the calls' breaker says.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{PushInfo, PushKind, Value};
use tokio::sync::oneshot;

use crate::{
    expiring::lock,
    store::{BACKGROUND_BUDGET, Lane, Op, RedisMode, Store, StoreConn},
};

/// Tries to unsubscribe a channel nobody waits on, a pause apart.
const UNSUBSCRIBE_TRIES: u32 = 5;
const UNSUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// What wakes a follower.
#[derive(Debug)]
pub(super) enum Wake {
    /// A message on its flight: `flight:` then the sealed result.
    Message(Vec<u8>),
    /// The server dropped the channel's subscription (a cluster slot
    /// moved): join again.
    Dropped,
    /// The connection, and every subscription with it, was lost.
    Lost,
}

/// One channel: its subscription, and who waits on it for which flight.
#[derive(Default)]
struct Channel {
    /// Held while SUBSCRIBE or UNSUBSCRIBE is in flight; whether the
    /// channel is subscribed.
    subscription: Arc<tokio::sync::Mutex<bool>>,
    /// Cleared when the server drops the subscription.
    live: Arc<AtomicBool>,
    waiting: Vec<(u64, String, Option<oneshot::Sender<Wake>>)>,
}

/// Followers by channel.
#[derive(Default)]
pub(super) struct Waiters {
    channels: Mutex<HashMap<String, Channel>>,
    next: AtomicU64,
}

impl Waiters {
    /// Registers a follower of `flight` on `channel`.
    pub(super) fn register(
        self: &Arc<Self>,
        store: &Store,
        channel: &str,
        flight: &str,
    ) -> (Waiter, oneshot::Receiver<Wake>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (subscription, live) = {
            let mut channels = lock(&self.channels);
            let entry = channels.entry(channel.to_owned()).or_default();
            entry.waiting.push((id, flight.to_owned(), Some(tx)));
            (Arc::clone(&entry.subscription), Arc::clone(&entry.live))
        };
        let waiter = Waiter {
            waiters: Arc::clone(self),
            store: store.clone(),
            channel: channel.to_owned(),
            id,
            subscription,
            live,
        };
        (waiter, rx)
    }

    /// Routes a push: a message to the followers of its flight; a dropped
    /// subscription or a lost connection to every follower it concerns.
    pub(super) fn deliver(&self, mode: RedisMode, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let [Value::BulkString(channel), Value::BulkString(payload)] = push.data.as_slice()
                else {
                    return;
                };
                let Some(flight) = payload.split(|b| *b == b':').next() else {
                    return;
                };
                self.wake(
                    channel,
                    |waiting| waiting.as_bytes() == flight,
                    || Wake::Message(payload.clone()),
                );
            }
            PushKind::SUnsubscribe => {
                let Some(Value::BulkString(channel)) = push.data.first() else {
                    return;
                };
                if let Some(entry) =
                    lock(&self.channels).get(std::str::from_utf8(channel).unwrap_or_default())
                {
                    entry.live.store(false, Ordering::Relaxed);
                }
                self.wake(channel, |_| true, || Wake::Dropped);
            }
            // One connection carries every subscription of a standalone
            // store. A cluster's connection to one node is not told apart
            // here (redis-rs drops the address), so its followers are not
            // woken: the node's subscriptions come back with it, and a
            // follower looks for its result itself meanwhile.
            PushKind::Disconnection if mode == RedisMode::Standalone => {
                let mut channels = lock(&self.channels);
                for entry in channels.values_mut() {
                    for (_, _, tx) in &mut entry.waiting {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Wake::Lost);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn wake(&self, channel: &[u8], which: impl Fn(&str) -> bool, wake: impl Fn() -> Wake) {
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
        let mut channels = lock(&self.channels);
        let Some(entry) = channels.get_mut(channel) else {
            return;
        };
        for (_, flight, tx) in &mut entry.waiting {
            if which(flight)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(wake());
            }
        }
    }

    /// Whether anyone waits on `channel` (a test's view).
    #[cfg(test)]
    fn waiting(&self, channel: &str) -> usize {
        lock(&self.channels)
            .get(channel)
            .map_or(0, |entry| entry.waiting.len())
    }

    /// Whether `channel` has no follower; if so and `forget`, its entry goes.
    fn idle(
        &self,
        channel: &str,
        subscription: &Arc<tokio::sync::Mutex<bool>>,
        forget: bool,
    ) -> bool {
        let mut channels = lock(&self.channels);
        let Some(entry) = channels.get(channel) else {
            return true;
        };
        if !Arc::ptr_eq(&entry.subscription, subscription) || !entry.waiting.is_empty() {
            return false;
        }
        if forget {
            channels.remove(channel);
        }
        true
    }
}

/// One follower's place: leaving, it takes itself out, and the last one out
/// of a channel unsubscribes it.
pub(super) struct Waiter {
    waiters: Arc<Waiters>,
    store: Store,
    channel: String,
    id: u64,
    subscription: Arc<tokio::sync::Mutex<bool>>,
    live: Arc<AtomicBool>,
}

impl Waiter {
    /// Subscribes the channel unless it is already, within `until`.
    pub(super) async fn subscribe(&self, conn: &mut StoreConn, until: Instant) -> bool {
        let Ok(mut subscribed) =
            tokio::time::timeout_at(until.into(), self.subscription.lock()).await
        else {
            return false;
        };
        if *subscribed && self.live.load(Ordering::Relaxed) {
            return true;
        }
        let done = self
            .store
            .op(
                Op::Subscribe,
                Lane::Calls,
                until,
                conn.subscribe(&self.channel),
            )
            .await
            .is_some();
        // A SUBSCRIBE that timed out may still land: counted as subscribed,
        // so the last follower out unsubscribes it.
        *subscribed = true;
        self.live.store(true, Ordering::Relaxed);
        done
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let last = {
            let mut channels = lock(&self.waiters.channels);
            match channels.get_mut(&self.channel) {
                Some(entry) => {
                    entry.waiting.retain(|(id, _, _)| *id != self.id);
                    entry.waiting.is_empty()
                }
                None => false,
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !last {
            return;
        }
        let (waiters, store, channel, subscription) = (
            Arc::clone(&self.waiters),
            self.store.clone(),
            self.channel.clone(),
            Arc::clone(&self.subscription),
        );
        runtime.spawn(unsubscribe_when_idle(waiters, store, channel, subscription));
    }
}

/// Unsubscribes `channel` if nobody waits on it, under its lock (a new
/// follower's SUBSCRIBE waits for the UNSUBSCRIBE to be answered); tries
/// again a little later while the store fails. Not under the calls'
/// breaker: a subscription left behind would outlive every follower.
async fn unsubscribe_when_idle(
    waiters: Arc<Waiters>,
    store: Store,
    channel: String,
    subscription: Arc<tokio::sync::Mutex<bool>>,
) {
    for _ in 0..UNSUBSCRIBE_TRIES {
        let mut subscribed = subscription.lock().await;
        if !waiters.idle(&channel, &subscription, false) {
            return;
        }
        if *subscribed {
            let done = match store.connection(Lane::Background) {
                Ok(mut conn) => store
                    .op(
                        Op::Unsubscribe,
                        Lane::Background,
                        Instant::now() + BACKGROUND_BUDGET,
                        conn.unsubscribe(&channel),
                    )
                    .await
                    .is_some(),
                Err(_) => false,
            };
            if !done {
                drop(subscribed);
                tokio::time::sleep(UNSUBSCRIBE_PAUSE).await;
                continue;
            }
            *subscribed = false;
        }
        waiters.idle(&channel, &subscription, true);
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_wakes_only_its_own_flights_followers() {
        let waiters = Waiters::default();
        let (tx_a, mut rx_a) = oneshot::channel();
        let (tx_b, mut rx_b) = oneshot::channel();
        {
            let mut channels = lock(&waiters.channels);
            let entry = channels.entry("c".to_owned()).or_default();
            entry.waiting.push((1, "aaaa".to_owned(), Some(tx_a)));
            entry.waiting.push((2, "bbbb".to_owned(), Some(tx_b)));
        }
        let message = PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(b"c".to_vec()),
                Value::BulkString(b"bbbb:sealed".to_vec()),
            ],
        };
        waiters.deliver(RedisMode::Standalone, message);
        assert!(rx_a.try_recv().is_err(), "another flight's follower");
        assert!(matches!(rx_b.try_recv(), Ok(Wake::Message(m)) if m == b"bbbb:sealed"));
        assert_eq!(waiters.waiting("c"), 2, "each leaves by itself");
        waiters.deliver(
            RedisMode::Cluster,
            PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert!(rx_a.try_recv().is_err(), "a cluster node's disconnection");
        waiters.deliver(
            RedisMode::Standalone,
            PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert!(matches!(rx_a.try_recv(), Ok(Wake::Lost)));
    }
}
