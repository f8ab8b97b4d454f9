//! A bounded cache of admitted delivery ids, to refuse replays inside the window.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::Mutex;

/// Delivery ids admitted recently, keyed by provider and id, each with an expiry in unix
/// seconds.
///
/// Sans-IO: expiry is driven by the `now` given to [`ReplayCache::check_and_insert`].
/// Bounded: at `capacity` entries, the entries admitted first are dropped first (expired
/// ones before any other, since the window is the same for every delivery). Only
/// requests whose signature verified are inserted, so an attacker cannot flood it
/// without the provider's secret.
///
/// Keys are held as 64-bit SipHash digests under a per-process random key (no allocation
/// per entry, and no collisions an outsider could aim for). Two different ids colliding
/// among 100 000 held has a chance of about one in 10⁹; the cost would be one delivery
/// refused as a replay, which the provider retries.
///
/// Each call hashes its key once: the table is indexed by the digest itself, and expiry
/// follows the order of admission (a queue) rather than a sorted index. An entry whose
/// expiry is later than that of entries admitted after it (a signed timestamp ahead of
/// the clock) may leave the queue late; the table checks every entry's own expiry, so it
/// is never refused past it.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    hasher: RandomState,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    /// Digest → expiry (unix seconds).
    by_key: HashMap<u64, u64, BuildHasherDefault<DigestHasher>>,
    /// (expiry, digest) in the order of admission. May hold entries that
    /// [`ReplayCache::forget`] removed or a later admission replaced: those are skipped
    /// when they reach the front.
    by_admission: VecDeque<(u64, u64)>,
}

/// The table's hasher: its keys are already uniformly distributed keyed SipHash digests,
/// so it passes them through instead of hashing them a second time.
#[derive(Debug, Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are `u64`); any other input is folded in.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, digest: u64) {
        self.0 = digest;
    }
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
        if entries.by_key.get(&key).is_some_and(|&expiry| expiry > now) {
            return false;
        }
        while entries.by_key.len() >= self.capacity && entries.drop_first() {}
        entries.by_key.insert(key, expires_at);
        entries.by_admission.push_back((expires_at, key));
        // Stale queue entries (forgotten or replaced ids) are bounded too.
        while entries.by_admission.len() > self.capacity.saturating_mul(2) && entries.drop_first() {
        }
        true
    }

    /// Forgets `key`, so that the provider's retry is admitted. Call when an admitted
    /// request could not be delivered to the target at all.
    pub fn forget<K: Hash + ?Sized>(&self, key: &K) {
        let key = self.hasher.hash_one(key);
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .by_key
            .remove(&key);
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
    /// Drops the queue's expired front entries.
    fn expire(&mut self, now: u64) {
        while self
            .by_admission
            .front()
            .is_some_and(|&(expiry, _)| expiry <= now)
        {
            self.drop_first();
        }
    }

    /// Drops the entry admitted first (from the table too, unless a later admission of
    /// the same key replaced it). Returns `false` when the queue is empty.
    fn drop_first(&mut self) -> bool {
        let Some((expiry, key)) = self.by_admission.pop_front() else {
            return false;
        };
        if self.by_key.get(&key) == Some(&expiry) {
            self.by_key.remove(&key);
        }
        true
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
    fn capacity_is_bounded_and_evicts_the_first_admitted() {
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
        assert!(!cache.check_and_insert("k", 5, 15));
    }

    #[test]
    fn an_entry_expiring_after_later_ones_is_refused_until_its_own_expiry_only() {
        let cache = ReplayCache::new(10);
        // Admitted first with a signed timestamp ahead of the clock: expires at 900.
        assert!(cache.check_and_insert("ahead", 100, 900));
        assert!(cache.check_and_insert("plain", 100, 400));
        // At 500 "plain" has expired, though it sits behind "ahead" in the queue.
        assert!(cache.check_and_insert("plain", 500, 800));
        assert!(!cache.check_and_insert("ahead", 899, 1199));
        assert!(cache.check_and_insert("ahead", 900, 1200));
    }

    #[test]
    fn forgotten_and_replaced_entries_do_not_grow_the_queue_without_bound() {
        let cache = ReplayCache::new(3);
        for round in 0..100u64 {
            assert!(cache.check_and_insert("retried", round, round + 1000));
            cache.forget("retried");
        }
        let entries = cache.inner.lock().unwrap();
        assert!(
            entries.by_admission.len() <= 6,
            "{}",
            entries.by_admission.len()
        );
        assert!(entries.by_key.is_empty());
    }

    #[test]
    fn a_replaced_entry_is_not_dropped_by_its_old_queue_slot() {
        let cache = ReplayCache::new(10);
        assert!(cache.check_and_insert("k", 0, 10));
        // Expired at 10 and admitted again until 30; the old slot (expiry 10) leaves the
        // queue without taking the new entry with it.
        assert!(cache.check_and_insert("k", 10, 30));
        assert!(cache.check_and_insert("other", 11, 31));
        assert!(!cache.check_and_insert("k", 20, 40));
    }
}
