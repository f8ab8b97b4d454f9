//! The audit log: append-only records of who did what, when, from where.
//!
//! There is no method to change or delete a record, and the schema's triggers refuse
//! `UPDATE` and `DELETE` on the table in both backends.

use super::row::{RowRead, to_json};
use super::{AuditRecord, NewAuditRecord, Store, StoreError, on_pool};

const COLUMNS: &str = "id, at_ms, actor, action, target, source_addr, details";

impl Store {
    /// Appends a record and returns its sequence number. Durable when this returns.
    pub async fn append_audit(&self, record: &NewAuditRecord) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "INSERT INTO audit_records (at_ms, actor, action, target, source_addr, details) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(record.at_ms)
            .bind(&record.actor)
            .bind(&record.action)
            .bind(&record.target)
            .bind(record.source_addr.as_deref())
            .bind(to_json(&record.details))
            .fetch_one(pool)
            .await?;
            row.unsigned("audit_records", "id")
        })
    }

    /// Records with a sequence number greater than `after`, oldest first, at most `limit`.
    /// Page through the log by passing the last id seen.
    pub async fn audit_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM audit_records WHERE id > $1 ORDER BY id LIMIT $2");
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(i64::try_from(after).unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(audit_from_row).collect()
        })
    }

    /// Records made at or after `since_ms` (milliseconds since the Unix epoch), oldest
    /// first, at most `limit`.
    pub async fn audit_since(
        &self,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM audit_records WHERE at_ms >= $1 ORDER BY id LIMIT $2");
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(since_ms)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(audit_from_row).collect()
        })
    }
}

fn audit_from_row(row: &impl RowRead) -> Result<AuditRecord, StoreError> {
    const T: &str = "audit_records";
    Ok(AuditRecord {
        id: row.unsigned(T, "id")?,
        record: NewAuditRecord {
            at_ms: row.int(T, "at_ms")?,
            actor: row.text(T, "actor")?,
            action: row.text(T, "action")?,
            target: row.text(T, "target")?,
            source_addr: row.opt_text(T, "source_addr")?,
            details: row.json(T, "details")?,
        },
    })
}
