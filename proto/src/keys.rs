//! Keys: machine, node and disco x25519 key pairs with typed text forms.
//!
//! Three kinds of key pair travel through Postern, and mixing them up is a security bug, so
//! each has its own type:
//!
//! - the **machine key** identifies the computer to the coordination server and
//!   authenticates the control channel;
//! - the **node key** is the WireGuard static key peers use to reach the node;
//! - the **disco key** seals the path-discovery messages nodes exchange for hole punching.
//!
//! Public keys are plain 32-byte values (`Copy`, hashable, ordered) with a text form that
//! names the kind, such as `nodekey:` followed by 64 lowercase hex digits; parsing a
//! `discokey:` where a `nodekey:` is expected fails with [`KeyParseError::WrongKind`]. They
//! serialize (serde) as that text form.
//!
//! Private keys wrap [`x25519::StaticSecret`] from `boringtun::x25519` (x25519-dalek 2.x,
//! the exact types the WireGuard data plane takes), which is zeroized when dropped. They
//! never print: `Debug` shows `[redacted]`, there is no `Display` and no serde; a key file
//! is written from [`NodePrivateKey::to_secret_text`] (and friends) and read back with
//! `parse_secret_text`.

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

pub use boringtun::x25519;

/// Length in bytes of every x25519 key, public or private.
pub const KEY_LEN: usize = 32;

/// Why a key's text form could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyParseError {
    /// The text has no `kind:` prefix at all.
    #[error(
        "not a {expected} key: expected text starting with \"{expected}:\" followed by 64 hex digits"
    )]
    MissingPrefix {
        /// The prefix that was expected, such as `nodekey`.
        expected: &'static str,
    },
    /// The text names another kind of key, e.g. a disco key where a node key belongs.
    #[error(
        "wrong kind of key: expected a \"{expected}:\" key, found \"{found}:\"; check which key was copied"
    )]
    WrongKind {
        /// The prefix that was expected.
        expected: &'static str,
        /// The prefix that was found (at most 32 characters of it).
        found: String,
    },
    /// The hex part is not 64 hex digits long.
    #[error("{kind} key has {found} hex digits after the prefix, expected 64")]
    WrongLength {
        /// The key kind being parsed.
        kind: &'static str,
        /// How many characters followed the prefix.
        found: usize,
    },
    /// The hex part contains something other than hex digits.
    #[error("{kind} key contains a character that is not a hex digit (0-9, a-f)")]
    NotHex {
        /// The key kind being parsed.
        kind: &'static str,
    },
}

macro_rules! public_key {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// The text prefix naming this kind of key (without the colon).
            pub const PREFIX: &'static str = $prefix;

            /// Wraps 32 raw key bytes. Any 32 bytes are a valid x25519 public key.
            pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// The 32 raw key bytes.
            pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }

            /// This key as boringtun's x25519 type, for the WireGuard data plane.
            pub fn to_x25519(&self) -> x25519::PublicKey {
                x25519::PublicKey::from(self.0)
            }

            /// A short form for logs and status output: the prefix and the first 8 hex
            /// digits. Not unique; never parse it back.
            pub fn short(&self) -> String {
                let hex = hex::encode(self.0);
                format!("{}:{}", $prefix, hex.get(..8).unwrap_or(&hex))
            }
        }

        impl From<x25519::PublicKey> for $name {
            fn from(key: x25519::PublicKey) -> Self {
                Self(key.to_bytes())
            }
        }

        impl From<$name> for x25519::PublicKey {
            fn from(key: $name) -> Self {
                key.to_x25519()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}:{}", $prefix, hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = KeyParseError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                parse_key_text(text, $prefix).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

macro_rules! private_key {
    ($(#[$meta:meta])* $name:ident, $public:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $name(x25519::StaticSecret);

        impl $name {
            /// The text prefix of this key's secret form (without the colon).
            pub const PREFIX: &'static str = $prefix;

            /// Makes a fresh random key from a cryptographic random number generator
            /// (pass `rand::rngs::OsRng`).
            pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
                Self(x25519::StaticSecret::random_from_rng(rng))
            }

            /// Wraps 32 raw secret bytes (clamping happens inside x25519).
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                let bytes = Zeroizing::new(bytes);
                Self(x25519::StaticSecret::from(*bytes))
            }

            /// The matching public key.
            pub fn public_key(&self) -> $public {
                $public::from(x25519::PublicKey::from(&self.0))
            }

            /// The key as boringtun's x25519 secret, for the WireGuard data plane.
            pub fn to_x25519(&self) -> x25519::StaticSecret {
                self.0.clone()
            }

            /// The secret text form ([`Self::PREFIX`], a colon and 64 hex digits) for a
            /// key file with mode 0600. The returned string is wiped from memory when
            /// dropped. Never log it.
            pub fn to_secret_text(&self) -> Zeroizing<String> {
                let bytes = Zeroizing::new(self.0.to_bytes());
                let hex = Zeroizing::new(hex::encode(*bytes));
                Zeroizing::new(format!("{}:{}", $prefix, hex.as_str()))
            }

            /// Parses the text written by `to_secret_text`; surrounding whitespace (a
            /// trailing newline in a key file) is ignored.
            pub fn parse_secret_text(text: &str) -> Result<Self, KeyParseError> {
                let bytes = Zeroizing::new(parse_key_text(text.trim(), $prefix)?);
                Ok(Self::from_bytes(*bytes))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }
    };
}

public_key!(
    /// The public half of a machine key: identifies a computer to the coordination server.
    MachinePublicKey,
    "mkey"
);
public_key!(
    /// The public half of a node key: the WireGuard static public key peers encrypt to.
    NodePublicKey,
    "nodekey"
);
public_key!(
    /// The public half of a disco key: seals path-discovery (hole punching) messages.
    DiscoPublicKey,
    "discokey"
);

private_key!(
    /// A machine private key. Never printed (`Debug` shows `[redacted]`), zeroized on drop.
    MachinePrivateKey,
    MachinePublicKey,
    "privmkey"
);
private_key!(
    /// A node private key (the WireGuard static secret). Never printed, zeroized on drop.
    NodePrivateKey,
    NodePublicKey,
    "privnodekey"
);
private_key!(
    /// A disco private key. Never printed (`Debug` shows `[redacted]`), zeroized on drop.
    DiscoPrivateKey,
    DiscoPublicKey,
    "privdiscokey"
);

/// Parses `PREFIX:` + 64 hex digits into 32 bytes.
fn parse_key_text(text: &str, expected: &'static str) -> Result<[u8; KEY_LEN], KeyParseError> {
    let Some((prefix, hex_part)) = text.split_once(':') else {
        return Err(KeyParseError::MissingPrefix { expected });
    };
    if prefix != expected {
        return Err(KeyParseError::WrongKind {
            expected,
            found: prefix.chars().take(32).collect(),
        });
    }
    if hex_part.len() != KEY_LEN * 2 {
        return Err(KeyParseError::WrongLength {
            kind: expected,
            found: hex_part.chars().count(),
        });
    }
    let mut bytes = [0u8; KEY_LEN];
    hex::decode_to_slice(hex_part, &mut bytes)
        .map_err(|_| KeyParseError::NotHex { kind: expected })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_form_round_trips_and_names_the_kind() {
        let key = NodePublicKey::from_bytes([0xab; 32]);
        let text = key.to_string();
        assert_eq!(text, format!("nodekey:{}", "ab".repeat(32)));
        assert_eq!(text.parse::<NodePublicKey>().unwrap(), key);
        assert_eq!(key.short(), "nodekey:abababab");
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let disco = DiscoPublicKey::from_bytes([1; 32]).to_string();
        let err = disco.parse::<NodePublicKey>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "wrong kind of key: expected a \"nodekey:\" key, found \"discokey:\"; check which key was copied"
        );
        let err = "abcdef".parse::<NodePublicKey>().unwrap_err();
        assert_eq!(
            err,
            KeyParseError::MissingPrefix {
                expected: "nodekey"
            }
        );
        let err = "nodekey:abcd".parse::<NodePublicKey>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "nodekey key has 4 hex digits after the prefix, expected 64"
        );
        let bad = format!("mkey:{}", "zz".repeat(32));
        let err = bad.parse::<MachinePublicKey>().unwrap_err();
        assert_eq!(err, KeyParseError::NotHex { kind: "mkey" });
        // Multi-byte characters must not trip slicing.
        let err = format!("nodekey:{}", "é".repeat(32))
            .parse::<NodePublicKey>()
            .unwrap_err();
        assert!(matches!(
            err,
            KeyParseError::WrongLength { .. } | KeyParseError::NotHex { .. }
        ));
    }

    #[test]
    fn private_keys_never_print() {
        let key = NodePrivateKey::generate(&mut rand::rngs::OsRng);
        assert_eq!(format!("{key:?}"), "NodePrivateKey([redacted])");
        let text = key.to_secret_text();
        assert!(text.starts_with("privnodekey:"));
        let back = NodePrivateKey::parse_secret_text(&format!("{}\n", text.as_str())).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert!(MachinePrivateKey::parse_secret_text(&text).is_err());
    }

    #[test]
    fn public_key_matches_boringtun_derivation() {
        let key = DiscoPrivateKey::from_bytes([7; 32]);
        let secret = x25519::StaticSecret::from([7u8; 32]);
        assert_eq!(
            key.public_key().to_x25519(),
            x25519::PublicKey::from(&secret)
        );
    }

    #[test]
    fn serde_uses_the_text_form() {
        let key = MachinePublicKey::from_bytes([0x10; 32]);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"mkey:{}\"", "10".repeat(32)));
        assert_eq!(
            serde_json::from_str::<MachinePublicKey>(&json).unwrap(),
            key
        );
        let err = serde_json::from_str::<NodePublicKey>(&json).unwrap_err();
        assert!(
            err.to_string().contains("expected a \"nodekey:\" key"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn any_public_key_round_trips(bytes in any::<[u8; 32]>()) {
            let key = NodePublicKey::from_bytes(bytes);
            prop_assert_eq!(key.to_string().parse::<NodePublicKey>().unwrap(), key);
        }

        #[test]
        fn parsing_never_panics(text in ".{0,80}") {
            let _ = text.parse::<DiscoPublicKey>();
        }
    }
}
