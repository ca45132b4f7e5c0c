//! The followers waiting on this replica, by channel: a per-channel state
//! machine for the subscription, so SUBSCRIBE and UNSUBSCRIBE of one
//! channel never cross (each is sent and answered under the channel's own
//! lock, in order), and the last follower to leave a channel unsubscribes
//! it, whatever the breakers say, until it succeeds.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{PushInfo, PushKind, Value};
use tokio::sync::oneshot;

use crate::{
    base::expiring::lock,
    store::{BACKGROUND_BUDGET, Lane, Op, RedisMode, Store, StoreConn},
};

/// Pauses between tries to unsubscribe a channel nobody waits on while the
/// store fails, and how many tries (about two minutes in all, well past
/// the breaker's pause): it tries until it succeeds, a new follower comes,
/// the fleet is gone, or the tries run out (then its entry goes, and the
/// next follower subscribes afresh).
const UNSUBSCRIBE_PAUSE_MIN: Duration = Duration::from_millis(250);
const UNSUBSCRIBE_PAUSE_MAX: Duration = Duration::from_secs(5);
const UNSUBSCRIBE_TRIES: u32 = 30;

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

/// A channel's subscription, shared by its followers and by the task that
/// unsubscribes it.
#[derive(Default)]
struct Subscription {
    /// Held while SUBSCRIBE or UNSUBSCRIBE is in flight; whether the
    /// channel is subscribed.
    state: tokio::sync::Mutex<bool>,
    /// Cleared when the server drops the subscription.
    live: AtomicBool,
    /// Set while this replica's own UNSUBSCRIBE is in flight: its
    /// confirmation is not the server dropping the channel.
    leaving: AtomicBool,
}

/// One follower: its id, the flight it follows, and how to wake it.
type Waiting = (u64, String, Option<oneshot::Sender<Wake>>);

/// One channel: its subscription, and who waits on it for which flight.
#[derive(Default)]
struct Channel {
    subscription: Arc<Subscription>,
    waiting: Vec<Waiting>,
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
        let subscription = {
            let mut channels = lock(&self.channels);
            let entry = channels.entry(channel.to_owned()).or_default();
            entry.waiting.push((id, flight.to_owned(), Some(tx)));
            Arc::clone(&entry.subscription)
        };
        let waiter = Waiter {
            waiters: Arc::clone(self),
            store: store.clone(),
            channel: channel.to_owned(),
            id,
            subscription,
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
                let dropped = lock(&self.channels)
                    .get(std::str::from_utf8(channel).unwrap_or_default())
                    .is_some_and(|entry| {
                        let ours = entry.subscription.leaving.load(Ordering::Relaxed);
                        if !ours {
                            entry.subscription.live.store(false, Ordering::Relaxed);
                        }
                        !ours
                    });
                if dropped {
                    self.wake(channel, |_| true, || Wake::Dropped);
                }
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

    /// How many wait on `channel` (a test's view).
    #[cfg(test)]
    fn waiting(&self, channel: &str) -> usize {
        lock(&self.channels)
            .get(channel)
            .map_or(0, |entry| entry.waiting.len())
    }

    /// Whether `channel` (with `subscription`) has no follower; if so and
    /// `forget`, its entry goes.
    fn idle(&self, channel: &str, subscription: &Arc<Subscription>, forget: bool) -> bool {
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
    subscription: Arc<Subscription>,
}

impl Waiter {
    /// Subscribes the channel unless it is already, within `until`; whether
    /// it is (a follower that is not still looks for its result).
    pub(super) async fn subscribe(&self, conn: &mut StoreConn, until: Instant) -> bool {
        let subscription = &self.subscription;
        let Ok(mut subscribed) =
            tokio::time::timeout_at(until.into(), subscription.state.lock()).await
        else {
            return false;
        };
        if *subscribed && subscription.live.load(Ordering::Relaxed) {
            return true;
        }
        let mut refused = false;
        let subscribing = async {
            let result = conn.subscribe(&self.channel).await;
            if let Err(err) = &result {
                refused = !(err.is_io_error() || err.is_timeout() || err.is_connection_dropped());
            }
            result
        };
        let done = self
            .store
            .op(Op::Subscribe, Lane::Calls, until, subscribing)
            .await
            .is_some();
        // A SUBSCRIBE that timed out or was cut off may still land: counted
        // as subscribed, so the last follower out unsubscribes it. One the
        // server refused (an ACL) did not.
        *subscribed = done || !refused;
        subscription.live.store(*subscribed, Ordering::Relaxed);
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
        if !last {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(unsubscribe_when_idle(
            Arc::downgrade(&self.waiters),
            self.store.clone(),
            self.channel.clone(),
            Arc::clone(&self.subscription),
        ));
    }
}

/// Unsubscribes `channel` if nobody waits on it, under its lock (a new
/// follower's SUBSCRIBE waits for the UNSUBSCRIBE to be answered). Not
/// under either breaker, and tried again, a growing pause apart, for as long
/// as the store fails: a subscription left behind would outlive every
/// follower (and come back with every reconnection).
async fn unsubscribe_when_idle(
    waiters: Weak<Waiters>,
    store: Store,
    channel: String,
    subscription: Arc<Subscription>,
) {
    let mut pause = UNSUBSCRIBE_PAUSE_MIN;
    for _ in 0..UNSUBSCRIBE_TRIES {
        let Some(registry) = waiters.upgrade() else {
            return;
        };
        let mut subscribed = subscription.state.lock().await;
        if !registry.idle(&channel, &subscription, false) {
            return;
        }
        if *subscribed {
            subscription.leaving.store(true, Ordering::Relaxed);
            let done = match store.connected() {
                Some(mut conn) => store
                    .op(
                        Op::Unsubscribe,
                        Lane::Background,
                        Instant::now() + BACKGROUND_BUDGET,
                        conn.unsubscribe(&channel),
                    )
                    .await
                    .is_some(),
                None => false,
            };
            subscription.leaving.store(false, Ordering::Relaxed);
            if !done {
                // Whether it landed is not known: a follower that comes
                // meanwhile subscribes again (SUBSCRIBE may repeat).
                subscription.live.store(false, Ordering::Relaxed);
                drop((subscribed, registry));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(UNSUBSCRIBE_PAUSE_MAX);
                continue;
            }
            *subscribed = false;
        }
        registry.idle(&channel, &subscription, true);
        return;
    }
    tracing::warn!(
        "could not unsubscribe a flight's channel from the fleet store; giving up on it"
    );
    if let Some(registry) = waiters.upgrade() {
        registry.idle(&channel, &subscription, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_server::TestServer;

    fn push(kind: PushKind, data: &[&[u8]]) -> PushInfo {
        PushInfo {
            kind,
            data: data.iter().map(|d| Value::BulkString(d.to_vec())).collect(),
        }
    }

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
        let message = push(PushKind::Message, &[b"c", b"bbbb:sealed"]);
        waiters.deliver(RedisMode::Standalone, message);
        assert!(rx_a.try_recv().is_err(), "another flight's follower");
        assert!(matches!(rx_b.try_recv(), Ok(Wake::Message(m)) if m == b"bbbb:sealed"));
        assert_eq!(waiters.waiting("c"), 2, "each leaves by itself");
        waiters.deliver(RedisMode::Cluster, push(PushKind::Disconnection, &[]));
        assert!(rx_a.try_recv().is_err(), "a cluster node's disconnection");
        waiters.deliver(RedisMode::Standalone, push(PushKind::Disconnection, &[]));
        assert!(matches!(rx_a.try_recv(), Ok(Wake::Lost)));
    }

    #[test]
    fn a_dropped_subscription_wakes_its_followers_but_our_own_unsubscribe_does_not() {
        let waiters = Waiters::default();
        let (tx, mut rx) = oneshot::channel();
        let subscription = {
            let mut channels = lock(&waiters.channels);
            let entry = channels.entry("c".to_owned()).or_default();
            entry.waiting.push((1, "aaaa".to_owned(), Some(tx)));
            Arc::clone(&entry.subscription)
        };
        subscription.live.store(true, Ordering::Relaxed);
        subscription.leaving.store(true, Ordering::Relaxed);
        waiters.deliver(RedisMode::Cluster, push(PushKind::SUnsubscribe, &[b"c"]));
        assert!(rx.try_recv().is_err(), "this replica's own unsubscribe");
        assert!(subscription.live.load(Ordering::Relaxed));
        subscription.leaving.store(false, Ordering::Relaxed);
        waiters.deliver(RedisMode::Cluster, push(PushKind::SUnsubscribe, &[b"c"]));
        assert!(matches!(rx.try_recv(), Ok(Wake::Dropped)));
        assert!(!subscription.live.load(Ordering::Relaxed));
    }

    /// The number of subscribers of `channel`.
    async fn subscribers(server: &TestServer, channel: &str) -> i64 {
        match server.command(&["PUBSUB", "NUMSUB", channel]).await {
            Value::Array(reply) => match reply.as_slice() {
                [_, Value::Int(n)] => *n,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_follower_that_comes_while_the_channel_is_unsubscribed_waits_and_subscribes() {
        let server = TestServer::start();
        let waiters = Arc::new(Waiters::default());
        let store = server.store(|_| {}).await;
        let mut conn = store.connected().unwrap();
        let until = || Instant::now() + Duration::from_secs(2);
        let (first, _woken) = waiters.register(&store, "c", "aaaa");
        assert!(first.subscribe(&mut conn, until()).await);
        assert_eq!(subscribers(&server, "c").await, 1);
        // Redis holds every command for 400 ms: the last follower leaves,
        // and its UNSUBSCRIBE is sent but not yet answered.
        let pause = server.command(&["CLIENT", "PAUSE", "400", "ALL"]).await;
        assert_eq!(pause, Value::Okay);
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A new follower of the channel comes meanwhile. It must neither
        // take the channel for subscribed nor send SUBSCRIBE before the
        // UNSUBSCRIBE is answered.
        let (second, _woken) = waiters.register(&store, "c", "bbbb");
        let started = Instant::now();
        assert!(second.subscribe(&mut conn, until()).await);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "it did not wait for the UNSUBSCRIBE: {:?}",
            started.elapsed()
        );
        assert_eq!(subscribers(&server, "c").await, 1, "left unsubscribed");
        drop(second);
        let deadline = Instant::now() + Duration::from_secs(2);
        while subscribers(&server, "c").await != 0 {
            assert!(
                Instant::now() < deadline,
                "the last one out did not unsubscribe"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
