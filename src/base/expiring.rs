//! The one mechanism for remembering things about a token: a key that is an
//! HMAC-SHA256 of the token under a key drawn at start-up (the token itself
//! is never a map key and never kept; a collision would hand one user
//! another's answer, so it is a full 256-bit MAC rather than a 64-bit hash),
//! and a bounded map whose entries expire. Also the one lock helper.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use aws_lc_rs::{hmac, rand::SystemRandom};

/// A lock that survives a panic elsewhere. Every critical section in this
/// crate leaves its data consistent at each step (single inserts, gets and
/// removes, or plain assignments), so a poisoned lock's data is still good.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What identifies a token in this process's maps: its MAC.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey([u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// Its first 64 bits: enough to tell tokens apart where a rare
    /// collision costs nothing but a little precision.
    pub(crate) fn short(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(first)
    }
}

/// The operating system's random source failed: without it the maps' keys
/// would be guessable, so the service does not start.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed; cannot draw a secret key")]
pub struct RandomError;

/// Makes [`TokenKey`]s under one secret key, drawn at start-up.
#[derive(Clone)]
pub(crate) struct TokenKeyer {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeyer").finish_non_exhaustive()
    }
}

impl TokenKeyer {
    /// A keyer with a new random key.
    pub(crate) fn random() -> Result<Self, RandomError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| RandomError)?;
        Ok(Self { key })
    }

    /// The key of `token` (or of any text keyed like one).
    pub(crate) fn key(&self, token: impl AsRef<[u8]>) -> TokenKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(hmac::sign(&self.key, token.as_ref()).as_ref());
        TokenKey(key)
    }
}

/// Values by token key, each until its own expiry, and at most
/// `max_entries` of them. A queue in insertion order finds the oldest
/// entries (evicted first when full) and, from the front, expired ones; an
/// expired entry further back is never served (`get` checks) and leaves when
/// it reaches the front or is asked for.
#[derive(Debug)]
pub(crate) struct ExpiringMap<V> {
    max_entries: usize,
    entries: Mutex<Entries<V>>,
}

#[derive(Debug)]
struct Entries<V> {
    by_key: HashMap<TokenKey, (Instant, V)>,
    order: VecDeque<(TokenKey, Instant)>,
}

impl<V: Clone> ExpiringMap<V> {
    /// An empty map holding at most `max_entries` (0 holds nothing).
    pub(crate) fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            entries: Mutex::new(Entries {
                by_key: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// The value under `key`, if it has not expired by `now`.
    pub(crate) fn get(&self, key: &TokenKey, now: Instant) -> Option<V> {
        let mut entries = lock(&self.entries);
        match entries.by_key.get(key) {
            Some((expires, value)) if *expires > now => Some(value.clone()),
            Some(_) => {
                entries.by_key.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` under `key` until `expires`, making room first: expired
    /// entries go, then the oldest while the map is full.
    pub(crate) fn insert(&self, key: TokenKey, value: V, expires: Instant) {
        let now = Instant::now();
        let mut guard = lock(&self.entries);
        let entries = &mut *guard;
        while let Some((old_key, old_expires)) = entries.order.front().copied() {
            let expired = old_expires <= now;
            // The queue may hold slots of entries `get` already dropped: it
            // is bounded too, at twice the entries, at the price of dropping
            // a live entry early now and then.
            let full = entries.by_key.len() >= self.max_entries
                || entries.order.len() >= 2 * self.max_entries;
            if !expired && !full {
                break;
            }
            entries.order.pop_front();
            // Only remove the entry this queue slot stands for, not a newer
            // insert under the same key.
            if entries
                .by_key
                .get(&old_key)
                .is_some_and(|(at, _)| *at == old_expires)
            {
                entries.by_key.remove(&old_key);
            }
        }
        if self.max_entries == 0 || expires <= now {
            return;
        }
        entries.by_key.insert(key, (expires, value));
        entries.order.push_back((key, expires));
    }

    /// Forgets `key` (its queue slot goes when it reaches the front).
    pub(crate) fn remove(&self, key: &TokenKey) {
        lock(&self.entries).by_key.remove(key);
    }

    /// Forgets `key`, and gives its value and expiry if it had not expired
    /// by `now`.
    pub(crate) fn take(&self, key: &TokenKey, now: Instant) -> Option<(V, Instant)> {
        let (expires, value) = lock(&self.entries).by_key.remove(key)?;
        (expires > now).then_some((value, expires))
    }

    /// How many entries are held, expired ones not yet removed included.
    pub(crate) fn len(&self) -> usize {
        lock(&self.entries).by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(n: u8) -> TokenKey {
        TokenKey([n; 32])
    }

    #[test]
    fn entries_expire() {
        let map = ExpiringMap::new(10);
        let now = Instant::now();
        map.insert(key(1), "a", now + Duration::from_secs(5));
        assert_eq!(map.get(&key(1), now), Some("a"));
        assert_eq!(map.get(&key(1), now + Duration::from_secs(6)), None);
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn it_is_bounded_and_drops_the_oldest() {
        let map = ExpiringMap::new(3);
        let later = Instant::now() + Duration::from_secs(60);
        for n in 0..10 {
            map.insert(key(n), n, later + Duration::from_millis(n.into()));
        }
        assert_eq!(map.len(), 3);
        assert!(lock(&map.entries).order.len() <= 3);
        let now = Instant::now();
        assert_eq!(map.get(&key(9), now), Some(9));
        assert_eq!(map.get(&key(0), now), None);
    }

    #[test]
    fn the_queue_stays_bounded_when_gets_drop_expired_entries() {
        let map = ExpiringMap::new(4);
        let now = Instant::now();
        // A long-lived entry at the front, then many that expire and are
        // dropped by `get`, leaving their slots behind.
        map.insert(key(0), 0, now + Duration::from_secs(3600));
        for n in 1..=100u8 {
            map.insert(key(n), n, Instant::now() + Duration::from_millis(1));
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(map.get(&key(n), Instant::now()), None);
        }
        assert!(lock(&map.entries).order.len() <= 8);
    }

    #[test]
    fn a_zero_bound_or_a_past_expiry_keeps_nothing() {
        let map = ExpiringMap::new(0);
        map.insert(key(1), (), Instant::now() + Duration::from_secs(5));
        assert_eq!(map.len(), 0);
        let map = ExpiringMap::new(10);
        map.insert(key(1), (), Instant::now());
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn a_newer_insert_under_the_same_key_outlives_the_old_ones_slot() {
        let map = ExpiringMap::new(10);
        let now = Instant::now();
        map.insert(key(1), "old", now + Duration::from_millis(1));
        map.insert(key(1), "new", now + Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
        // The old slot, expired, leaves the queue; the newer entry stays.
        map.insert(key(2), "other", now + Duration::from_secs(60));
        assert_eq!(map.get(&key(1), Instant::now()), Some("new"));
        assert_eq!(lock(&map.entries).order.len(), 2);
    }

    #[test]
    fn keys_are_macs_under_the_keyers_own_key() {
        let one = TokenKeyer::random().unwrap();
        let other = TokenKeyer::random().unwrap();
        assert_eq!(one.key("token"), one.key("token"));
        assert_ne!(one.key("token"), one.key("token2"));
        assert_ne!(one.key("token"), other.key("token"));
        assert_eq!(format!("{:?}", one.key("token")), "TokenKey(..)");
    }
}
