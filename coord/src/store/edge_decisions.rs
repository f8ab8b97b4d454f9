//! The edge log: the request decisions ingress nodes report for funnels, kept for the
//! funnels' owners (`postern funnel log`) within a bound.
//!
//! Unlike the audit log, rows are deleted: each append keeps only the newest
//! [`EdgeRetention::per_funnel`] rows of each funnel it touched and drops rows received
//! before [`EdgeRetention::received_before_ms`]. A funnel's rows go with the funnel (and so
//! with its node).

use postern_proto::NodeId;
use postern_proto::funnel::EdgeDecision;

use super::row::RowRead;
use super::{
    EdgeDecisionFilter, EdgeRetention, NewEdgeDecision, Store, StoreError, db_id, on_pool,
};

const COLUMNS: &str = "id, at_ms, hostname, client, method, path, gate, result, reason, status, \
                       bytes, duration_ms";

impl Store {
    /// Appends `decisions` and applies `retention`, in one transaction (durable when this
    /// returns). Returns how many rows were appended.
    pub async fn append_edge_decisions(
        &self,
        decisions: &[NewEdgeDecision],
        retention: EdgeRetention,
    ) -> Result<u64, StoreError> {
        let mut funnels: Vec<u64> = decisions.iter().map(|d| d.funnel_id).collect();
        funnels.sort_unstable();
        funnels.dedup();
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            for new in decisions {
                let d = &new.decision;
                sqlx::query(
                    "INSERT INTO edge_decisions (funnel_id, node_id, ingress_id, received_ms, \
                     at_ms, hostname, client, method, path, gate, result, reason, status, bytes, \
                     duration_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .bind(db_id(new.funnel_id))
                .bind(db_id(new.node_id.0))
                .bind(db_id(new.ingress_id.0))
                .bind(new.received_ms)
                .bind(d.at_ms)
                .bind(&d.funnel)
                .bind(&d.client)
                .bind(&d.method)
                .bind(&d.path)
                .bind(d.gate.as_deref())
                .bind(&d.result)
                .bind(d.reason.as_deref())
                .bind(i64::from(d.status))
                .bind(i64::try_from(d.bytes).unwrap_or(i64::MAX))
                .bind(i64::try_from(d.duration_ms).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            }
            for funnel in &funnels {
                sqlx::query(
                    "DELETE FROM edge_decisions WHERE funnel_id = $1 AND id < \
                     (SELECT MIN(id) FROM (SELECT id FROM edge_decisions WHERE funnel_id = $1 \
                     ORDER BY id DESC LIMIT $2) AS kept)",
                )
                .bind(db_id(*funnel))
                .bind(i64::from(retention.per_funnel.max(1)))
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM edge_decisions WHERE received_ms < $1")
                .bind(retention.received_before_ms)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(decisions.len() as u64)
        })
    }

    /// The stored decisions matching `filter`, newest first.
    pub async fn edge_decisions(
        &self,
        filter: &EdgeDecisionFilter,
    ) -> Result<Vec<EdgeDecision>, StoreError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut next = 1;
        let mut param = || {
            let p = format!("${next}");
            next += 1;
            p
        };
        if filter.node_id.is_some() {
            clauses.push(format!("node_id = {}", param()));
        }
        if !filter.hostnames.is_empty() {
            let list: Vec<String> = filter.hostnames.iter().map(|_| param()).collect();
            clauses.push(format!("hostname IN ({})", list.join(", ")));
        }
        if filter.since_ms.is_some() {
            clauses.push(format!("at_ms >= {}", param()));
        }
        if filter.after_id.is_some() {
            clauses.push(format!("id > {}", param()));
        }
        if filter.denied_only {
            clauses.push("result = 'deny'".to_owned());
        }
        let limit = param();
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM edge_decisions {filter_sql} ORDER BY id DESC LIMIT {limit}"
        );
        on_pool!(self, |pool| {
            let mut query = sqlx::query(&sql);
            if let Some(node) = filter.node_id {
                query = query.bind(db_id(node.0));
            }
            for hostname in &filter.hostnames {
                query = query.bind(hostname);
            }
            if let Some(since) = filter.since_ms {
                query = query.bind(since);
            }
            if let Some(after) = filter.after_id {
                query = query.bind(i64::try_from(after).unwrap_or(i64::MAX));
            }
            let rows = query.bind(i64::from(filter.limit)).fetch_all(pool).await?;
            rows.iter().map(decision_from_row).collect()
        })
    }

    /// How many decisions are stored for `node`'s funnels (for tests and metrics).
    pub async fn count_edge_decisions(&self, node: NodeId) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM edge_decisions WHERE node_id = $1")
                .bind(db_id(node.0))
                .fetch_one(pool)
                .await?;
            row.unsigned("edge_decisions", "n")
        })
    }
}

fn decision_from_row(row: &impl RowRead) -> Result<EdgeDecision, StoreError> {
    const T: &str = "edge_decisions";
    Ok(EdgeDecision {
        id: row.unsigned(T, "id")?,
        at_ms: row.int(T, "at_ms")?,
        funnel: row.text(T, "hostname")?,
        client: row.text(T, "client")?,
        method: row.text(T, "method")?,
        path: row.text(T, "path")?,
        gate: row.opt_text(T, "gate")?,
        result: row.text(T, "result")?,
        reason: row.opt_text(T, "reason")?,
        status: u16::try_from(row.int(T, "status")?).unwrap_or(0),
        bytes: row.unsigned(T, "bytes")?,
        duration_ms: row.unsigned(T, "duration_ms")?,
    })
}
