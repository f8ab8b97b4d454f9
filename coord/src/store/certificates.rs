//! TLS certificates for ingress hostnames, shared by ingress replicas.

use postern_proto::{NodeId, UnixTime};

use super::row::RowRead;
use super::{CertificateOrderClaim, CertificateRecord, Store, StoreError, db_id, on_pool};

const COLUMNS: &str = "hostname, chain_pem, key_pem, not_after, updated_at";

impl Store {
    /// Stores the certificate for its hostname, replacing any older one.
    pub async fn put_certificate(&self, cert: &CertificateRecord) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO certificates (hostname, chain_pem, key_pem, not_after, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hostname) DO UPDATE SET \
                 chain_pem = excluded.chain_pem, key_pem = excluded.key_pem, \
                 not_after = excluded.not_after, updated_at = excluded.updated_at",
            )
            .bind(&cert.hostname)
            .bind(&cert.chain_pem)
            .bind(&cert.key_pem)
            .bind(cert.not_after.as_secs())
            .bind(cert.updated_at.as_secs())
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The certificate for `hostname`.
    pub async fn certificate(
        &self,
        hostname: &str,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE hostname = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(hostname)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(certificate_from_row).transpose()
        })
    }

    /// Certificates whose leaf expires before `before`, soonest first (to renew).
    pub async fn certificates_expiring_before(
        &self,
        before: UnixTime,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM certificates WHERE not_after < $1 ORDER BY not_after");
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(before.as_secs())
                .fetch_all(pool)
                .await?;
            rows.iter().map(certificate_from_row).collect()
        })
    }
}

impl Store {
    /// Claims the right to order `hostname`'s certificate for ingress node `node` until
    /// `until`, unless another node holds an unexpired claim at `now`; a node may renew
    /// its own claim. Answers the holder after the call: `node` itself when the claim was
    /// taken or renewed, the other node (and when its claim lapses) when not. Atomic, so
    /// two coord replicas on one PostgreSQL never grant the same hostname twice.
    pub async fn claim_certificate_order(
        &self,
        hostname: &str,
        node: NodeId,
        now: UnixTime,
        until: UnixTime,
    ) -> Result<CertificateOrderClaim, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO certificate_orders (hostname, node_id, expires_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (hostname) DO UPDATE SET \
                 node_id = excluded.node_id, expires_at = excluded.expires_at \
                 WHERE certificate_orders.node_id = excluded.node_id \
                 OR certificate_orders.expires_at <= $4",
            )
            .bind(hostname)
            .bind(db_id(node.0))
            .bind(until.as_secs())
            .bind(now.as_secs())
            .execute(pool)
            .await?;
            let row = sqlx::query(
                "SELECT node_id, expires_at FROM certificate_orders WHERE hostname = $1",
            )
            .bind(hostname)
            .fetch_one(pool)
            .await?;
            const T: &str = "certificate_orders";
            Ok(CertificateOrderClaim {
                node: NodeId(row.unsigned(T, "node_id")?),
                expires_at: row.time(T, "expires_at")?,
            })
        })
    }

    /// Removes `node`'s claim on ordering `hostname`'s certificate (it stored the
    /// certificate, so others need not wait for the claim to lapse). Another node's claim
    /// is left alone.
    pub async fn release_certificate_order(
        &self,
        hostname: &str,
        node: NodeId,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("DELETE FROM certificate_orders WHERE hostname = $1 AND node_id = $2")
                .bind(hostname)
                .bind(db_id(node.0))
                .execute(pool)
                .await?;
            Ok(())
        })
    }
}

fn certificate_from_row(row: &impl RowRead) -> Result<CertificateRecord, StoreError> {
    const T: &str = "certificates";
    Ok(CertificateRecord {
        hostname: row.text(T, "hostname")?,
        chain_pem: row.text(T, "chain_pem")?,
        key_pem: row.text(T, "key_pem")?,
        not_after: row.time(T, "not_after")?,
        updated_at: row.time(T, "updated_at")?,
    })
}
