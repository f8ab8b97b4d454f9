//! Certificates for the edge: a static certificate, or one ACME certificate per funnel
//! hostname, chosen per connection by SNI.
//!
//! - [`CertResolver`] is the rustls [`ResolvesServerCert`]: it answers each TLS handshake
//!   with the certificate for the client's SNI, the static certificate, or (when the client
//!   offers `acme-tls/1`) the TLS-ALPN-01 challenge certificate for that name.
//! - [`CertStore`] keeps issued certificates on disk (`<state>/certs/<host>/`), so a restart
//!   issues nothing again.
//! - [`AcmeIssuer`] obtains certificates with `instant-acme` (HTTP-01 or TLS-ALPN-01).
//! - [`CoordCertificates`] shares funnel hostnames' certificates with other ingress
//!   replicas through the coordination server, so they order one per hostname.
//! - [`renewal_at`] says when a certificate is due for renewal: two thirds into its
//!   lifetime. It is a pure function, so the schedule is tested without a clock.

mod acme;
mod resolver;
mod shared;
mod store;

use std::time::{Duration, SystemTime};

pub use acme::{AcmeConfig, AcmeError, AcmeIssuer, ChallengeKind, HttpChallenges};
pub use resolver::CertResolver;
pub use shared::CoordCertificates;
pub use store::{CertError, CertStore, StoredCert, certified_key_from_pem};

/// The ALPN protocol id of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// When a certificate valid from `not_before` to `not_after` should be renewed: two thirds
/// into its lifetime (day 60 of a 90-day certificate). A certificate whose `not_after` is
/// not after its `not_before` is due at `not_before`.
pub fn renewal_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let two_thirds = lifetime
        .checked_mul(2)
        .map(|doubled| doubled / 3)
        .unwrap_or(lifetime);
    not_before.checked_add(two_thirds).unwrap_or(not_after)
}

/// Whether a certificate valid from `not_before` to `not_after` is due for renewal at
/// `now` (see [`renewal_at`]).
pub fn renewal_due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    now >= renewal_at(not_before, not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn ninety_day_certificate_renews_on_day_sixty() {
        let start = SystemTime::UNIX_EPOCH + 1_000 * DAY;
        let end = start + 90 * DAY;
        assert_eq!(renewal_at(start, end), start + 60 * DAY);
        assert!(!renewal_due(start, end, start + 59 * DAY));
        assert!(renewal_due(start, end, start + 60 * DAY));
        assert!(renewal_due(start, end, end + DAY));
    }

    #[test]
    fn short_lived_certificate_renews_two_thirds_in() {
        let start = SystemTime::UNIX_EPOCH + 5 * DAY;
        let end = start + Duration::from_secs(6 * 3600);
        assert_eq!(
            renewal_at(start, end),
            start + Duration::from_secs(4 * 3600)
        );
    }

    #[test]
    fn inverted_validity_is_due_immediately() {
        let start = SystemTime::UNIX_EPOCH + 5 * DAY;
        assert_eq!(renewal_at(start, start - DAY), start);
        assert!(renewal_due(start, start - DAY, start));
    }
}
