//! Funnel certificates shared by ingress replicas: an ingress that obtained a certificate
//! for a funnel hostname stores it at the coord ([`FunnelChange::PutCertificate`]), and
//! another ingress asks for it ([`FunnelChange::GetCertificate`]) before ordering its own,
//! so several ingresses serving the same funnels present one certificate and the CA sees
//! one order per hostname.
//!
//! The chain and key are kept in the store's `certificates` table (the SQLite file is
//! 0600, like the funnels' gate secrets; PostgreSQL's access is the operator's), travel
//! only inside the encrypted control channel, and are handed to ingress nodes only (the
//! coord marked them with `keys create --ingress`). Only hostnames under the funnel domain
//! are accepted. Stores are audited (`certificate.store`, without the key).
//!
//! [`FunnelChange::PutCertificate`]: postern_proto::funnel::FunnelChange::PutCertificate
//! [`FunnelChange::GetCertificate`]: postern_proto::funnel::FunnelChange::GetCertificate

use std::time::Duration;

use postern_proto::funnel::{FunnelRefusal, HostCertificate};
use postern_proto::{NodeId, UnixTime};
use serde_json::json;

use super::check::{INVALID, NO_INGRESS, NOT_FOUND, refusal};
use super::internal;
use crate::control::Coord;
use crate::control::tailnet::now;
use crate::store::CertificateRecord;

/// Refusal code: only ingress nodes may get or store certificates.
pub const NOT_INGRESS: &str = "not_ingress";
/// Refusal code: another ingress holds the claim on ordering that certificate.
pub const ORDER_IN_PROGRESS: &str = "order_in_progress";
/// How long a claim on ordering a certificate lasts: long enough for an ACME order with
/// its validations, short enough that an ingress that died mid-order blocks the others
/// only briefly. The holder renews it before each retry.
pub const CERTIFICATE_ORDER_CLAIM: Duration = Duration::from_secs(300);
/// Audit action: an ingress stored a funnel certificate.
pub const CERTIFICATE_STORE: &str = "certificate.store";
/// The largest certificate chain accepted, in bytes.
pub const MAX_CHAIN_PEM_LEN: usize = 64 * 1024;
/// The largest private key accepted, in bytes.
pub const MAX_KEY_PEM_LEN: usize = 16 * 1024;

impl Coord {
    /// The stored certificate of `hostname`, for ingress node `node_id` (`None` when none
    /// is stored). Refused for other nodes and for hostnames outside the funnel domain.
    pub async fn funnel_certificate(
        &self,
        node_id: NodeId,
        hostname: &str,
    ) -> Result<Option<HostCertificate>, FunnelRefusal> {
        self.check_certificate_access(node_id, hostname).await?;
        let stored = self
            .registry
            .store()
            .certificate(&hostname.to_ascii_lowercase())
            .await
            .map_err(internal)?;
        Ok(stored.map(|record| HostCertificate {
            hostname: record.hostname,
            chain_pem: record.chain_pem,
            key_pem: record.key_pem,
            not_after: record.not_after,
        }))
    }

    /// Stores `cert` from ingress node `node_id` for the other ingress nodes, replacing an
    /// older one of its hostname; audited as `certificate.store`.
    pub async fn store_funnel_certificate(
        &self,
        node_id: NodeId,
        cert: HostCertificate,
    ) -> Result<(), FunnelRefusal> {
        let node = self
            .check_certificate_access(node_id, &cert.hostname)
            .await?;
        let pem_ok = |pem: &str, max: usize| pem.len() <= max && pem.contains("-----BEGIN ");
        if !pem_ok(&cert.chain_pem, MAX_CHAIN_PEM_LEN) || !pem_ok(&cert.key_pem, MAX_KEY_PEM_LEN) {
            return Err(refusal(
                INVALID,
                format!(
                    "the certificate for {} is not a PEM chain of at most {MAX_CHAIN_PEM_LEN} bytes with a PEM key of at most {MAX_KEY_PEM_LEN} bytes",
                    cert.hostname
                ),
            ));
        }
        let hostname = cert.hostname.to_ascii_lowercase();
        let record = CertificateRecord {
            hostname: hostname.clone(),
            chain_pem: cert.chain_pem,
            key_pem: cert.key_pem,
            not_after: cert.not_after,
            updated_at: now(),
        };
        self.registry
            .store()
            .put_certificate(&record)
            .await
            .map_err(internal)?;
        self.registry
            .store()
            .release_certificate_order(&hostname, node_id)
            .await
            .map_err(internal)?;
        tracing::info!(node = %node_id, %hostname, "funnel certificate stored for the ingress nodes");
        self.audit(
            &format!("node:{}", node_id.0),
            CERTIFICATE_STORE,
            &hostname,
            json!({ "node": node, "not_after": record.not_after.0 }),
        )
        .await;
        Ok(())
    }

    /// Lets ingress node `node_id` order `hostname`'s certificate for
    /// [`CERTIFICATE_ORDER_CLAIM`] (renewing its own claim), or refuses with
    /// [`ORDER_IN_PROGRESS`] when another ingress holds an unexpired claim, naming it and
    /// when its claim lapses.
    pub async fn claim_certificate_order(
        &self,
        node_id: NodeId,
        hostname: &str,
    ) -> Result<(), FunnelRefusal> {
        self.check_certificate_access(node_id, hostname).await?;
        let hostname = hostname.to_ascii_lowercase();
        let now = now();
        let until = UnixTime::from_secs(
            now.as_secs().saturating_add(
                CERTIFICATE_ORDER_CLAIM
                    .as_secs()
                    .try_into()
                    .unwrap_or(i64::MAX),
            ),
        );
        let store = self.registry.store();
        let claim = store
            .claim_certificate_order(&hostname, node_id, now, until)
            .await
            .map_err(internal)?;
        if claim.node == node_id {
            tracing::debug!(node = %node_id, %hostname, "certificate order claimed");
            return Ok(());
        }
        let holder = match store.node(claim.node).await.map_err(internal)? {
            Some(node) => node.name,
            None => format!("node {}", claim.node.0),
        };
        let left = claim
            .expires_at
            .as_secs()
            .saturating_sub(now.as_secs())
            .max(0);
        Err(refusal(
            ORDER_IN_PROGRESS,
            format!(
                "ingress {holder} is ordering the certificate for {hostname}; its claim lapses in {left} s: wait for the certificate it stores"
            ),
        ))
    }

    /// Checks that `node_id` is an ingress node and `hostname` a funnel hostname; returns
    /// the node's name.
    async fn check_certificate_access(
        &self,
        node_id: NodeId,
        hostname: &str,
    ) -> Result<String, FunnelRefusal> {
        let Some(domain) = self.config.funnel_domain.as_deref() else {
            return Err(refusal(
                NO_INGRESS,
                "this coord serves no funnels: its operator must start it with --funnel-domain DOMAIN (docs/coord.md)",
            ));
        };
        let node = self
            .registry
            .store()
            .node(node_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| refusal(NOT_FOUND, "this node is not registered"))?;
        if !node.is_ingress {
            return Err(refusal(
                NOT_INGRESS,
                "only ingress nodes (registered with a key from `postern-coord keys create --ingress`) may get or store funnel certificates",
            ));
        }
        let host = hostname.to_ascii_lowercase();
        let suffix = format!(".{}", domain.to_ascii_lowercase());
        if !host.ends_with(&suffix) || host.len() == suffix.len() {
            return Err(refusal(
                INVALID,
                format!("{hostname} is not a funnel hostname under {domain}"),
            ));
        }
        Ok(node.name)
    }
}
