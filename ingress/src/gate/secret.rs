//! A secret (webhook signing secret, token) that never shows in `Debug` output or logs.

use std::fmt;

use subtle::ConstantTimeEq;

/// Secret bytes: a webhook signing secret, a static token, an HMAC key.
///
/// `Debug` prints `Secret(<redacted, N bytes>)`; there is no `Display`. Compare with
/// [`Secret::ct_eq`], which takes the same time whatever the bytes are. The bytes are
/// overwritten with zeros when the secret is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The secret bytes, for computing a MAC. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty (configuration refuses empty secrets).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time comparison with presented bytes (a static token).
    pub fn ct_eq(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_slice().ct_eq(presented))
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(text.as_bytes().to_vec())
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text.into_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted, {} bytes>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for byte in self.0.iter_mut() {
            // A volatile-free best effort: the optimiser may keep copies elsewhere.
            *byte = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let secret = Secret::from("It's a Secret to Everybody");
        let shown = format!("{secret:?} {:?}", vec![secret.clone()]);
        assert!(!shown.contains("Secret to"), "{shown}");
        assert!(shown.contains("redacted, 26 bytes"), "{shown}");
    }

    #[test]
    fn ct_eq_compares_whole_values() {
        let secret = Secret::from("token");
        assert!(secret.ct_eq(b"token"));
        assert!(!secret.ct_eq(b"toke"));
        assert!(!secret.ct_eq(b"tokens"));
        assert!(!secret.ct_eq(b""));
    }
}
