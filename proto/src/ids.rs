//! Stable identifiers for nodes and users, and the wall-clock timestamp used on the wire.
//!
//! Ids are assigned by the coordination server's store and never reused, so a node keeps its
//! id across key rotation, renames and restarts. They travel as JSON numbers and print as
//! `node:42` / `user:7` in logs.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A node's stable id, assigned by the coordination server when the node first registers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

/// A user's stable id, assigned by the coordination server on the user's first login.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub u64);

/// A point in wall-clock time as whole seconds since the Unix epoch (UTC).
///
/// This crate never reads the clock: callers build values with [`UnixTime::from_system_time`]
/// or [`UnixTime::from_secs`]. Negative values (before 1970) are representable so that
/// decoding never fails on them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixTime(pub i64);

impl UnixTime {
    /// The time `secs` seconds after the Unix epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs)
    }

    /// Seconds since the Unix epoch.
    pub const fn as_secs(self) -> i64 {
        self.0
    }

    /// Converts a `SystemTime` (e.g. `SystemTime::now()` read by the caller), truncating to
    /// whole seconds and saturating outside the `i64` range.
    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Self(i64::try_from(after.as_secs()).unwrap_or(i64::MAX)),
            Err(before) => Self(
                i64::try_from(before.duration().as_secs())
                    .map(|secs| -secs)
                    .unwrap_or(i64::MIN),
            ),
        }
    }

    /// The equivalent `SystemTime`, or `None` if the platform cannot represent it.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let magnitude = Duration::from_secs(self.0.unsigned_abs());
        if self.0 >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// This time plus `secs` seconds, saturating.
    pub const fn saturating_add_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node:{}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user:{}", self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_numbers_on_the_wire_and_named_in_logs() {
        assert_eq!(serde_json::to_string(&NodeId(42)).unwrap(), "42");
        assert_eq!(serde_json::from_str::<UserId>("7").unwrap(), UserId(7));
        assert_eq!(NodeId(42).to_string(), "node:42");
        assert_eq!(format!("{:?}", UserId(7)), "user:7");
        assert!(serde_json::from_str::<NodeId>("-1").is_err());
    }

    #[test]
    fn unix_time_converts_both_ways() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(UnixTime::from_system_time(t), UnixTime(1_700_000_000));
        assert_eq!(UnixTime(1_700_000_000).to_system_time(), Some(t));
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(UnixTime::from_system_time(before), UnixTime(-5));
        assert_eq!(UnixTime(-5).to_system_time(), Some(before));
        assert_eq!(
            UnixTime(i64::MAX).saturating_add_secs(1),
            UnixTime(i64::MAX)
        );
    }
}
