//! A bounded cache of bearer tokens that verified, so that a client reusing a token pays
//! the signature check once.
//!
//! Keyed by the SHA-256 of the exact token bytes: a token that differs in one byte is a
//! different key and goes through the full check. Each entry holds what the check
//! concluded (the identity built from the validated claims) and the token's `exp` and
//! `nbf`, which are checked again, with the clock skew, against the `now` of every use.
//! Each entry also holds the generation of the key set it verified under: the owner bumps
//! its generation when its keys change, and entries of another generation never match.
//!
//! Only tokens that were admitted are inserted, so a forged token (bad signature, wrong
//! issuer or audience, missing claims) is never cached, and filling the cache needs tokens
//! the issuer signed. Bounded: at `capacity` entries, expired entries are dropped first,
//! then the entries closest to expiry.
//!
//! Sans-IO: time is the `now` (unix seconds) of each call.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use sha2::{Digest as _, Sha256};

use super::{Identity, ReasonCode};

/// The SHA-256 of a token's exact bytes: the cache key.
pub(crate) type TokenDigest = [u8; 32];

/// The digest of `token`.
pub(crate) fn token_digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The verified tokens of one gate. See the module documentation.
#[derive(Debug)]
pub(crate) struct VerifiedTokens {
    capacity: usize,
    inner: RwLock<Entries>,
}

/// What a verified token told the gate, and when it stops being usable.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedToken {
    /// The identity admitted (built from the validated claims).
    pub identity: Identity,
    /// The token's `exp`, unix seconds.
    pub expires: u64,
    /// The token's `nbf`, unix seconds, if it has one.
    pub not_before: Option<u64>,
}

#[derive(Debug, Default)]
struct Entries {
    by_digest: HashMap<TokenDigest, Entry>,
    /// (`exp` + skew, insertion sequence) -> digest: expiry and eviction order.
    by_expiry: BTreeMap<(u64, u64), TokenDigest>,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    token: VerifiedToken,
    generation: u64,
    dies_at: u64,
    seq: u64,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens; `0` caches nothing.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: RwLock::new(Entries::default()),
        }
    }

    /// Whether `digest` is held for key generation `generation` (whatever its times).
    pub(crate) fn contains(&self, digest: &TokenDigest, generation: u64) -> bool {
        self.inner.read().is_ok_and(|entries| {
            entries
                .by_digest
                .get(digest)
                .is_some_and(|entry| entry.generation == generation)
        })
    }

    /// The cached outcome for `digest` under key generation `generation` at `now`:
    /// `None` when not held (check the token in full), `Some(Ok(identity))` when it is
    /// held and inside its validity window (with `skew` seconds either side), and
    /// `Some(Err(TokenExpired))` when it is held but has expired or is not valid yet.
    pub(crate) fn get(
        &self,
        digest: &TokenDigest,
        generation: u64,
        now: u64,
        skew: u64,
    ) -> Option<Result<Identity, ReasonCode>> {
        let entries = self.inner.read().ok()?;
        let entry = entries.by_digest.get(digest)?;
        if entry.generation != generation {
            return None;
        }
        let token = &entry.token;
        if token.expires.saturating_add(skew) <= now
            || token
                .not_before
                .is_some_and(|nbf| nbf > now.saturating_add(skew))
        {
            return Some(Err(ReasonCode::TokenExpired));
        }
        Some(Ok(token.identity.clone()))
    }

    /// Remembers an admitted token. Call only after its signature and claims verified
    /// under key generation `generation`. Drops expired entries, and at capacity the
    /// entries closest to expiry.
    pub(crate) fn insert(
        &self,
        digest: TokenDigest,
        token: VerifiedToken,
        generation: u64,
        now: u64,
        skew: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut entries) = self.inner.write() else {
            return;
        };
        entries.expire(now);
        if let Some(old) = entries.by_digest.remove(&digest) {
            entries.by_expiry.remove(&(old.dies_at, old.seq));
        }
        while entries.by_digest.len() >= self.capacity {
            let Some((_, oldest)) = entries.by_expiry.pop_first() else {
                break;
            };
            entries.by_digest.remove(&oldest);
        }
        let dies_at = token.expires.saturating_add(skew);
        let seq = entries.next_seq;
        entries.next_seq = entries.next_seq.wrapping_add(1);
        entries.by_expiry.insert((dies_at, seq), digest);
        entries.by_digest.insert(
            digest,
            Entry {
                token,
                generation,
                dies_at,
                seq,
            },
        );
    }

    /// Forgets every token (the keys changed).
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.inner.write() {
            *entries = Entries::default();
        }
    }

    /// The number of tokens held.
    pub(crate) fn len(&self) -> usize {
        self.inner
            .read()
            .map_or(0, |entries| entries.by_digest.len())
    }
}

impl Entries {
    /// Drops the entries that are dead at `now` (`exp` + skew reached).
    fn expire(&mut self, now: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let digest = entry.remove();
            self.by_digest.remove(&digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, expires: u64, not_before: Option<u64>) -> VerifiedToken {
        VerifiedToken {
            identity: Identity::new(name),
            expires,
            not_before,
        }
    }

    #[test]
    fn a_held_token_is_checked_against_now_at_every_use() {
        let cache = VerifiedTokens::new(4);
        let digest = token_digest("a.b.c");
        cache.insert(digest, token("jwt:a", 1_000, Some(500)), 7, 600, 60);
        assert_eq!(
            cache.get(&digest, 7, 600, 60),
            Some(Ok(Identity::new("jwt:a")))
        );
        // Still valid inside the skew after exp, expired at exp + skew.
        assert!(matches!(cache.get(&digest, 7, 1_059, 60), Some(Ok(_))));
        assert_eq!(
            cache.get(&digest, 7, 1_060, 60),
            Some(Err(ReasonCode::TokenExpired))
        );
        // Before nbf - skew (a clock set back) it is not valid yet.
        assert_eq!(
            cache.get(&digest, 7, 439, 60),
            Some(Err(ReasonCode::TokenExpired))
        );
    }

    #[test]
    fn another_generation_or_another_token_misses() {
        let cache = VerifiedTokens::new(4);
        let digest = token_digest("a.b.c");
        cache.insert(digest, token("jwt:a", 1_000, None), 1, 0, 0);
        assert!(cache.contains(&digest, 1));
        assert!(!cache.contains(&digest, 2));
        assert_eq!(cache.get(&digest, 2, 0, 0), None);
        assert_eq!(cache.get(&token_digest("a.b.d"), 1, 0, 0), None);
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_expired_then_soonest_to_expire() {
        let cache = VerifiedTokens::new(3);
        for (n, expires) in [(0, 100), (1, 500), (2, 300)] {
            cache.insert(
                token_digest(&format!("t{n}")),
                token("x", expires, None),
                0,
                0,
                0,
            );
        }
        cache.insert(token_digest("t3"), token("x", 400, None), 0, 0, 0);
        assert_eq!(cache.len(), 3);
        assert!(!cache.contains(&token_digest("t0"), 0), "closest to expiry");
        // At 350, t2 (300) is dead and goes first: nothing alive is evicted.
        cache.insert(token_digest("t4"), token("x", 900, None), 0, 350, 0);
        assert_eq!(cache.len(), 3);
        for alive in ["t1", "t3", "t4"] {
            assert!(cache.contains(&token_digest(alive), 0), "{alive}");
        }
        let empty = VerifiedTokens::new(0);
        empty.insert(token_digest("t"), token("x", 900, None), 0, 0, 0);
        assert_eq!(empty.len(), 0);
    }
}
