//! A bounded cache of admitted delivery ids, to refuse replays inside the window.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;

/// Delivery ids admitted recently, keyed by provider and id, each with an expiry in unix
/// seconds.
///
/// Sans-IO: expiry is driven by the `now` given to [`ReplayCache::check_and_insert`].
/// Bounded: at `capacity` entries, expired entries are dropped first, then the entries
/// closest to expiry. Only requests whose signature verified are inserted, so an attacker
/// cannot flood it without the provider's secret.
///
/// Keys are held as 64-bit SipHash digests under a per-process random key (no allocation
/// per entry, and no collisions an outsider could aim for). Two different ids colliding
/// among 100 000 held has a chance of about one in 10⁹; the cost would be one delivery
/// refused as a replay, which the provider retries.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    hasher: RandomState,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<u64, (u64, u64)>,
    by_expiry: BTreeMap<(u64, u64), u64>,
    next_seq: u64,
}

impl ReplayCache {
    /// A cache holding at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            inner: Mutex::new(Entries::default()),
        }
    }

    /// Records `key` until `expires_at` (unix seconds) and returns `true`, or returns
    /// `false` when `key` is already recorded and not yet expired at `now` (a replay).
    /// Any hashable key will do (a string, or a tuple of the parts that name a delivery,
    /// which spares formatting one); the same key must be given to [`ReplayCache::forget`].
    ///
    /// Call only after the request's signature verified.
    pub fn check_and_insert<K: Hash + ?Sized>(&self, key: &K, now: u64, expires_at: u64) -> bool {
        let key = self.hasher.hash_one(key);
        let mut entries = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.expire(now);
        if entries.by_key.contains_key(&key) {
            return false;
        }
        while entries.by_key.len() >= self.capacity {
            let Some((_, oldest)) = entries.by_expiry.pop_first() else {
                break;
            };
            entries.by_key.remove(&oldest);
        }
        let seq = entries.next_seq;
        entries.next_seq = entries.next_seq.wrapping_add(1);
        entries.by_key.insert(key, (expires_at, seq));
        entries.by_expiry.insert((expires_at, seq), key);
        true
    }

    /// Forgets `key`, so that the provider's retry is admitted. Call when an admitted
    /// request could not be delivered to the target at all.
    pub fn forget<K: Hash + ?Sized>(&self, key: &K) {
        let key = self.hasher.hash_one(key);
        let mut entries = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = entries.by_key.remove(&key) {
            entries.by_expiry.remove(&slot);
        }
    }

    /// The number of ids held (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .by_key
            .len()
    }

    /// Whether the cache holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Entries {
    fn expire(&mut self, now: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.by_key.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_sighting_inside_the_window_is_refused() {
        let cache = ReplayCache::new(10);
        assert!(cache.check_and_insert("github/1", 100, 400));
        assert!(!cache.check_and_insert("github/1", 399, 699));
        assert!(cache.check_and_insert("stripe/1", 399, 699));
        // Expired at 400: seen again later, it is new.
        assert!(cache.check_and_insert("github/1", 400, 700));
    }

    #[test]
    fn capacity_is_bounded_and_evicts_closest_to_expiry() {
        let cache = ReplayCache::new(2);
        assert!(cache.check_and_insert("a", 0, 50));
        assert!(cache.check_and_insert("b", 0, 100));
        assert!(cache.check_and_insert("c", 0, 100));
        assert_eq!(cache.len(), 2);
        assert!(cache.check_and_insert("a", 0, 50), "a was evicted");
        assert!(!cache.check_and_insert("c", 0, 100));
    }

    #[test]
    fn forget_lets_a_retry_in() {
        let cache = ReplayCache::new(4);
        assert!(cache.check_and_insert("k", 0, 10));
        cache.forget("k");
        assert!(cache.check_and_insert("k", 0, 10));
    }
}
