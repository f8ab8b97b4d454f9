//! TLS certificates for ingress hostnames, shared by ingress replicas.

use postern_proto::UnixTime;

use super::row::RowRead;
use super::{CertificateRecord, Store, StoreError, on_pool};

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
