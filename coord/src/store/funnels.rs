//! Funnels: a node's local port exposed publicly under a stable hostname.
//!
//! A funnel is keyed by (node, port): setting it again keeps its id and creation time, so
//! a node gets the same hostname for the same port across restarts.

use postern_proto::{NodeId, UnixTime};

use super::row::{RowRead, to_json};
use super::{FunnelRecord, NewFunnel, Store, StoreError, db_id, on_pool};

const COLUMNS: &str = "id, node_id, name, port, hostname, ttl_secs, gates, created_at";

impl Store {
    /// Creates the funnel for (node, port), or updates its name, hostname, TTL and gates.
    /// Fails with [`StoreError::Conflict`] if another funnel has the hostname.
    pub async fn upsert_funnel(
        &self,
        funnel: &NewFunnel,
        now: UnixTime,
    ) -> Result<FunnelRecord, StoreError> {
        let sql = format!(
            "INSERT INTO funnels (node_id, name, port, hostname, ttl_secs, gates, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (node_id, port) DO UPDATE SET \
             name = excluded.name, hostname = excluded.hostname, ttl_secs = excluded.ttl_secs, \
             gates = excluded.gates RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(db_id(funnel.node_id.0))
                .bind(&funnel.name)
                .bind(i64::from(funnel.port))
                .bind(&funnel.hostname)
                .bind(
                    funnel
                        .ttl_secs
                        .map(|ttl| i64::try_from(ttl).unwrap_or(i64::MAX)),
                )
                .bind(to_json(&funnel.gates))
                .bind(now.as_secs())
                .fetch_one(pool)
                .await?;
            funnel_from_row(&row)
        })
    }

    /// The funnels of one node, by port.
    pub async fn funnels_of_node(&self, node: NodeId) -> Result<Vec<FunnelRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM funnels WHERE node_id = $1 ORDER BY port");
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(db_id(node.0))
                .fetch_all(pool)
                .await?;
            rows.iter().map(funnel_from_row).collect()
        })
    }

    /// Every funnel, by node and port.
    pub async fn list_funnels(&self) -> Result<Vec<FunnelRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM funnels ORDER BY node_id, port");
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter().map(funnel_from_row).collect()
        })
    }

    /// The funnel serving `hostname`.
    pub async fn funnel_by_hostname(
        &self,
        hostname: &str,
    ) -> Result<Option<FunnelRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM funnels WHERE hostname = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(hostname)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(funnel_from_row).transpose()
        })
    }

    /// Removes the funnel for (node, port).
    pub async fn delete_funnel(&self, node: NodeId, port: u16) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM funnels WHERE node_id = $1 AND port = $2")
                .bind(db_id(node.0))
                .bind(i64::from(port))
                .execute(pool)
                .await?;
            if done.rows_affected() == 0 {
                Err(StoreError::NotFound {
                    what: format!("funnel on {node} port {port}"),
                })
            } else {
                Ok(())
            }
        })
    }
}

fn funnel_from_row(row: &impl RowRead) -> Result<FunnelRecord, StoreError> {
    const T: &str = "funnels";
    let port = row.int(T, "port")?;
    Ok(FunnelRecord {
        id: row.unsigned(T, "id")?,
        funnel: NewFunnel {
            node_id: NodeId(row.unsigned(T, "node_id")?),
            name: row.text(T, "name")?,
            port: u16::try_from(port).map_err(|_| StoreError::Corrupt {
                table: T,
                column: "port",
                detail: format!("{port} is not a port number"),
            })?,
            hostname: row.text(T, "hostname")?,
            ttl_secs: row
                .opt_int(T, "ttl_secs")?
                .map(|ttl| u64::try_from(ttl).unwrap_or(0)),
            gates: row.json(T, "gates")?,
        },
        created_at: row.time(T, "created_at")?,
    })
}
