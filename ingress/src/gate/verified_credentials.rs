//! A bounded cache of credentials that verified, so that a client reusing one pays the
//! signature checks once: bearer tokens for the JWT gate ([`token_digest`]), client
//! certificate chains for the mTLS gate ([`chain_digest`]), session cookies for the OIDC
//! gate ([`token_digest`] of the cookie's value).
//!
//! Keyed by the SHA-256 of the credential's exact bytes: a credential that differs in one
//! byte is a different key and goes through the full check. Each entry holds what the
//! check concluded (the identity admitted, or for a session the claims the gate decides
//! on: the type parameter `T`) and the credential's validity window (a token's `exp` and
//! `nbf`; the tightest `notAfter` and `notBefore` of a chain; a session's expiry), which
//! is checked again, with the clock skew, against the `now` of every use. Each entry also
//! holds the generation of the key set it verified under: the owner bumps its generation
//! when its keys change, and entries of another generation never match.
//!
//! Only credentials that were admitted are inserted, so a forged one (bad signature, wrong
//! issuer, audience or CA, missing claims) is never cached, and filling the cache needs
//! credentials the issuer signed. Bounded: at `capacity` entries, expired entries are
//! dropped first, then the entries closest to expiry.
//!
//! Sans-IO: time is the `now` (unix seconds) of each call.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use sha2::{Digest as _, Sha256};

use super::{Identity, ReasonCode};

/// The SHA-256 of a credential's exact bytes: the cache key.
pub(crate) type CredentialDigest = [u8; 32];

/// The digest of a bearer `token`.
pub(crate) fn token_digest(token: &str) -> CredentialDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The digest of a certificate chain (leaf first): each certificate's DER with its length
/// in front, so no two different chains share an encoding.
pub(crate) fn chain_digest<C: AsRef<[u8]>>(chain: &[C]) -> CredentialDigest {
    let mut hash = Sha256::new();
    for cert in chain {
        let der = cert.as_ref();
        hash.update((der.len() as u64).to_be_bytes());
        hash.update(der);
    }
    hash.finalize().into()
}

/// The verified credentials of one gate, each remembered as a `T` (by default the
/// [`Identity`] it admitted). See the module documentation.
#[derive(Debug)]
pub(crate) struct VerifiedCredentials<T = Identity> {
    capacity: usize,
    inner: RwLock<Entries<T>>,
}

/// What a verified credential told the gate, and when it stops being usable.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedCredential<T = Identity> {
    /// What the check concluded: the identity admitted (built from the validated claims),
    /// or what the gate still decides on at each use (a session's claims).
    pub admitted: T,
    /// When it expires (a token's `exp`, a chain's earliest `notAfter`), unix seconds.
    pub expires: u64,
    /// When it becomes valid (a token's `nbf`, a chain's latest `notBefore`), unix seconds,
    /// if it says.
    pub not_before: Option<u64>,
}

#[derive(Debug)]
struct Entries<T> {
    by_digest: HashMap<CredentialDigest, Entry<T>>,
    /// (`exp` + skew, insertion sequence) -> digest: expiry and eviction order.
    by_expiry: BTreeMap<(u64, u64), CredentialDigest>,
    next_seq: u64,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Self {
            by_digest: HashMap::new(),
            by_expiry: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

#[derive(Debug)]
struct Entry<T> {
    token: VerifiedCredential<T>,
    generation: u64,
    dies_at: u64,
    seq: u64,
}

impl<T: Clone> VerifiedCredentials<T> {
    /// A cache of at most `capacity` credentials; `0` caches nothing.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: RwLock::new(Entries::default()),
        }
    }

    /// Whether `digest` is held for key generation `generation` (whatever its times).
    pub(crate) fn contains(&self, digest: &CredentialDigest, generation: u64) -> bool {
        self.inner.read().is_ok_and(|entries| {
            entries
                .by_digest
                .get(digest)
                .is_some_and(|entry| entry.generation == generation)
        })
    }

    /// The cached outcome for `digest` under key generation `generation` at `now`:
    /// `None` when not held (check the credential in full), `Some(Ok(admitted))` (a clone;
    /// make `T` an `Arc` when that is dear) when it is held and inside its validity window
    /// (with `skew` seconds either side), and `Some(Err(TokenExpired))` when it is held but
    /// has expired or is not valid yet.
    pub(crate) fn get(
        &self,
        digest: &CredentialDigest,
        generation: u64,
        now: u64,
        skew: u64,
    ) -> Option<Result<T, ReasonCode>> {
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
        Some(Ok(token.admitted.clone()))
    }

    /// Remembers an admitted credential. Call only after its signatures and claims verified
    /// under key generation `generation`. Drops expired entries, and at capacity the
    /// entries closest to expiry.
    pub(crate) fn insert(
        &self,
        digest: CredentialDigest,
        token: VerifiedCredential<T>,
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

    /// Forgets every credential (the keys changed).
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.inner.write() {
            *entries = Entries::default();
        }
    }

    /// The number of credentials held.
    pub(crate) fn len(&self) -> usize {
        self.inner
            .read()
            .map_or(0, |entries| entries.by_digest.len())
    }
}

impl<T> Entries<T> {
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

    fn token(name: &str, expires: u64, not_before: Option<u64>) -> VerifiedCredential {
        VerifiedCredential {
            admitted: Identity::new(name),
            expires,
            not_before,
        }
    }

    #[test]
    fn a_held_token_is_checked_against_now_at_every_use() {
        let cache = VerifiedCredentials::new(4);
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
        let cache = VerifiedCredentials::new(4);
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
        let cache = VerifiedCredentials::new(3);
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
        let empty = VerifiedCredentials::new(0);
        empty.insert(token_digest("t"), token("x", 900, None), 0, 0, 0);
        assert_eq!(empty.len(), 0);
    }
}
