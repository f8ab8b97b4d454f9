//! Token-bucket rate limits per client address, per funnel or per admitted identity.
//!
//! The bucket is GCRA (the generic cell rate algorithm, the same arithmetic as a token
//! bucket refilled continuously): each key keeps one "theoretical arrival time". Time is
//! the `now` passed in, so tests drive it with a fake clock. `governor` implements the
//! same algorithm but reads its own clock; the gates are sans-IO, so this small copy of the
//! arithmetic takes `now` instead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use super::{Decision, ReasonCode};

/// What a [`RateLimit`] counts requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitKey {
    /// The client address as the edge saw it (the TCP peer).
    ClientIp,
    /// The whole funnel: one bucket for everyone.
    Funnel,
    /// The principal a gate admitted (`user:alice@example.com`, `jwt:svc-1`).
    Identity,
}

impl RateLimitKey {
    /// The name used in configuration and gate names: `client-ip`, `funnel`, `identity`.
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitKey::ClientIp => "client-ip",
            RateLimitKey::Funnel => "funnel",
            RateLimitKey::Identity => "identity",
        }
    }
}

/// How fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// What to count by.
    pub key: RateLimitKey,
    /// Requests allowed per `per`, on average.
    pub requests: u32,
    /// The period of `requests`.
    pub per: Duration,
    /// How many requests may come at once after a quiet spell (the bucket size); at
    /// least 1.
    pub burst: u32,
    /// How many keys are remembered at most; when full, keys whose bucket is full again
    /// are forgotten first, then the oldest. 100 000 by default.
    pub max_keys: usize,
}

impl RateLimitConfig {
    /// `requests` per `per` with a burst of the same size, keyed by `key`.
    pub fn new(key: RateLimitKey, requests: u32, per: Duration) -> Self {
        Self {
            key,
            requests,
            per,
            burst: requests,
            max_keys: 100_000,
        }
    }
}

/// Why a rate limit could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// `requests`, `per`, `burst` or `max_keys` is zero.
    #[error(
        "a rate limit needs requests, per_secs, burst and max_keys above zero (got requests = {requests}, per = {per:?}, burst = {burst}, max_keys = {max_keys})"
    )]
    Zero {
        /// Configured requests.
        requests: u32,
        /// Configured period.
        per: Duration,
        /// Configured burst.
        burst: u32,
        /// Configured key bound.
        max_keys: usize,
    },
}

/// A rate limit: one GCRA bucket per key, bounded in the number of keys.
///
/// Wrap a chain with it through [`super::GateChain::rate_limited`]. A refused request gets
/// `429 rate_limited` with `Retry-After` (whole seconds, at least 1).
#[derive(Debug)]
pub struct RateLimit {
    name: String,
    key: RateLimitKey,
    /// Nanoseconds between two requests on average.
    interval: u128,
    /// How far ahead of `now` a key's arrival time may run (burst - 1 intervals).
    tolerance: u128,
    max_keys: usize,
    buckets: Mutex<HashMap<String, u128>>,
}

impl RateLimit {
    /// A rate limit from its settings; refuses zeros.
    pub fn new(config: RateLimitConfig) -> Result<Self, RateLimitError> {
        if config.requests == 0 || config.per.is_zero() || config.burst == 0 || config.max_keys == 0
        {
            return Err(RateLimitError::Zero {
                requests: config.requests,
                per: config.per,
                burst: config.burst,
                max_keys: config.max_keys,
            });
        }
        let interval = (config.per.as_nanos() / u128::from(config.requests)).max(1);
        Ok(Self {
            name: format!("rate-limit:{}", config.key.as_str()),
            key: config.key,
            interval,
            tolerance: interval.saturating_mul(u128::from(config.burst - 1)),
            max_keys: config.max_keys,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The name used in traces and audit records, e.g. `rate-limit:client-ip`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What this limit counts by.
    pub fn key(&self) -> RateLimitKey {
        self.key
    }

    /// Spends one token of `key`'s bucket at `now`. Returns the `429` denial, with
    /// `Retry-After`, when the bucket is empty; a refused request spends nothing.
    pub fn charge(&self, key: &str, now: SystemTime) -> Result<(), Decision> {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let Ok(mut buckets) = self.buckets.lock() else {
            // A poisoned lock means a panic elsewhere; refusing would turn that into an
            // outage, so admit.
            return Ok(());
        };
        let arrival = buckets.get(key).copied().unwrap_or(now).max(now);
        let earliest = arrival.saturating_sub(self.tolerance);
        if now < earliest {
            let wait_nanos = earliest - now;
            let secs = wait_nanos.div_ceil(1_000_000_000).max(1);
            let value = HeaderValue::from_str(&secs.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("1"));
            return Err(Decision::deny_with_header(
                ReasonCode::RateLimited,
                http::header::RETRY_AFTER,
                value,
            ));
        }
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            buckets.retain(|_, at| *at > now);
            if buckets.len() >= self.max_keys {
                let oldest = buckets
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    buckets.remove(&oldest);
                }
            }
        }
        buckets.insert(key.to_string(), arrival + self.interval);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_secs_f64(secs)
    }

    fn retry_after(decision: &Decision) -> String {
        match decision {
            Decision::Deny {
                reason, headers, ..
            } => {
                assert_eq!(*reason, ReasonCode::RateLimited);
                headers[0].1.to_str().unwrap().to_string()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn burst_then_steady_rate_with_retry_after() {
        let mut config = RateLimitConfig::new(RateLimitKey::ClientIp, 1, Duration::from_secs(2));
        config.burst = 3;
        let limit = RateLimit::new(config).unwrap();
        for _ in 0..3 {
            limit.charge("a", at(0.0)).unwrap();
        }
        let refused = limit.charge("a", at(0.0)).unwrap_err();
        assert_eq!(retry_after(&refused), "2");
        assert_eq!(refused.deny_reason(), Some(ReasonCode::RateLimited));
        // another key has its own bucket
        limit.charge("b", at(0.0)).unwrap();
        // one token back after 2 s, not before
        assert_eq!(retry_after(&limit.charge("a", at(1.5)).unwrap_err()), "1");
        limit.charge("a", at(2.0)).unwrap();
        assert!(limit.charge("a", at(2.0)).is_err());
        // a long quiet spell refills to the burst, no more
        for _ in 0..3 {
            limit.charge("a", at(100.0)).unwrap();
        }
        assert!(limit.charge("a", at(100.0)).is_err());
    }

    #[test]
    fn keys_are_bounded() {
        let mut config = RateLimitConfig::new(RateLimitKey::ClientIp, 1, Duration::from_secs(60));
        config.max_keys = 2;
        let limit = RateLimit::new(config).unwrap();
        limit.charge("a", at(0.0)).unwrap();
        limit.charge("b", at(1.0)).unwrap();
        limit.charge("c", at(2.0)).unwrap();
        assert_eq!(limit.buckets.lock().unwrap().len(), 2);
        // "a" was forgotten (oldest), so it has a full bucket again
        limit.charge("a", at(3.0)).unwrap();
    }

    #[test]
    fn zeros_are_refused() {
        let config = RateLimitConfig::new(RateLimitKey::Funnel, 0, Duration::from_secs(1));
        let error = RateLimit::new(config).unwrap_err().to_string();
        assert!(error.contains("above zero"), "{error}");
    }
}
