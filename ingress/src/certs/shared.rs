//! Certificates shared with other ingress replicas through the coordination server
//! (issue #8 item 7): before ordering a certificate for a funnel hostname, the ingress asks
//! the coord for one another ingress stored; after ordering, it stores its own there. Two
//! ingresses serving the same funnels thus present the same certificate and the CA sees one
//! order per hostname. Between the two, it claims the order at the coord
//! ([`CoordCertificates::claim_order`]): when two ingresses meet a new hostname at the same
//! moment, one orders and the other waits for the certificate it stores.
//!
//! The coord hands certificates to ingress nodes only, inside the encrypted control
//! channel (coord/src/funnel/certificates.rs). A failure to reach it is logged and the
//! ingress orders (or keeps) its own certificate as before.

use std::time::{Duration, SystemTime};

use postern_node::daemon::serves::{ControlFunnels, FunnelCallError};
use postern_proto::UnixTime;
use postern_proto::funnel::{FunnelChange, HostCertificate};

use super::{StoredCert, renewal_due};

/// How long an ingress waits before looking again for the certificate another ingress is
/// ordering.
pub const CLAIM_POLL: Duration = Duration::from_secs(3);

/// The coord's refusal code when another ingress holds the order claim.
const ORDER_IN_PROGRESS: &str = "order_in_progress";

/// The coordination server's certificate store, as the embedded node reaches it.
#[derive(Debug, Clone)]
pub struct CoordCertificates {
    control: ControlFunnels,
}

impl CoordCertificates {
    /// The certificate store of the coord the embedded node `control` talks to.
    pub fn new(control: ControlFunnels) -> Self {
        Self { control }
    }

    /// A certificate for `host` stored at the coord by an ingress, if there is one that
    /// parses and is not due for renewal at `now`. Failures (the coord unreachable, a bad
    /// stored certificate) are logged and answered `None`: the caller then orders.
    pub async fn fetch(&self, host: &str, now: SystemTime) -> Option<StoredCert> {
        let change = FunnelChange::GetCertificate {
            hostname: host.to_owned(),
        };
        let shared = match self.control.certificate(change).await {
            Ok(shared) => shared?,
            Err(error) => {
                tracing::warn!(%host, %error, "cannot ask the coordination server for a shared certificate; ordering one");
                return None;
            }
        };
        let cert = match StoredCert::from_pem(shared.chain_pem, shared.key_pem, host) {
            Ok(cert) => cert,
            Err(error) => {
                tracing::warn!(%host, %error, "the certificate the coordination server holds is unusable; ordering one");
                return None;
            }
        };
        if renewal_due(cert.not_before, cert.not_after, now) {
            tracing::info!(%host, "the shared certificate is due for renewal; ordering one");
            return None;
        }
        Some(cert)
    }

    /// Claims the order of `host`'s certificate at the coord; call it after [`Self::fetch`]
    /// found nothing usable and before each order attempt. `None`: order now (the claim is
    /// this ingress's, or the coord cannot arbitrate: it is unreachable or older than
    /// claims, which is logged). `Some(wait)`: another ingress is ordering; call
    /// [`Self::fetch`] again after `wait` and it will usually hand over that certificate.
    pub async fn claim_order(&self, host: &str) -> Option<Duration> {
        let change = FunnelChange::ClaimCertificateOrder {
            hostname: host.to_owned(),
        };
        match self.control.certificate(change).await {
            Ok(_) => None,
            Err(FunnelCallError::Refused(refusal)) if refusal.code == ORDER_IN_PROGRESS => {
                tracing::info!(%host, reason = %refusal.message, "another ingress is ordering this certificate; waiting for it");
                Some(CLAIM_POLL)
            }
            Err(error) => {
                tracing::warn!(%host, %error, "cannot claim the certificate order at the coordination server; ordering anyway");
                None
            }
        }
    }

    /// Stores `cert` for `host` at the coord for the other ingresses; a failure is logged
    /// (this ingress keeps serving its certificate either way).
    pub async fn publish(&self, host: &str, cert: &StoredCert) {
        let not_after = cert
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let change = FunnelChange::PutCertificate(HostCertificate {
            hostname: host.to_owned(),
            chain_pem: cert.chain_pem.clone(),
            key_pem: cert.key_pem.clone(),
            not_after: UnixTime::from_secs(not_after),
        });
        match self.control.certificate(change).await {
            Ok(_) => {
                tracing::info!(%host, "certificate shared with the other ingresses through the coordination server")
            }
            Err(error) => {
                tracing::warn!(%host, %error, "cannot share the certificate through the coordination server");
            }
        }
    }
}
