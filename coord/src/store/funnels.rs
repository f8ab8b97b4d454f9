//! Funnels: a node's local port exposed publicly under a stable hostname.
//!
//! A funnel is keyed by (node, port): opening it again keeps its id, creation time and
//! (unless its name changes) its hostname. Closing it keeps the row with `is_open` false,
//! so the hostname and public port stay reserved for the same node and port; the row goes
//! when its node is deleted or an admin releases it.

use postern_proto::funnel::{FunnelProtocol, GateMode};
use postern_proto::{NodeId, UnixTime};

use super::row::{RowRead, to_json};
use super::{FunnelRecord, NewFunnel, Store, StoreError, db_id, on_pool};

const COLUMNS: &str = "id, node_id, name, port, hostname, protocol, public_port, ttl_secs, \
                       gates, gate_mode, rate_limit, is_open, opened_at, expires_at, created_at";

impl Store {
    /// Creates the funnel for (node, port), or replaces everything but its id and creation
    /// time. Fails with [`StoreError::Conflict`] if another funnel (open or closed) has the
    /// hostname (`funnels.hostname`) or the public port (`funnels.public_port`).
    pub async fn upsert_funnel(
        &self,
        funnel: &NewFunnel,
        now: UnixTime,
    ) -> Result<FunnelRecord, StoreError> {
        let sql = format!(
            "INSERT INTO funnels (node_id, name, port, hostname, protocol, public_port, ttl_secs, \
             gates, gate_mode, rate_limit, is_open, opened_at, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (node_id, port) DO UPDATE SET \
             name = excluded.name, hostname = excluded.hostname, protocol = excluded.protocol, \
             public_port = excluded.public_port, ttl_secs = excluded.ttl_secs, \
             gates = excluded.gates, gate_mode = excluded.gate_mode, \
             rate_limit = excluded.rate_limit, is_open = excluded.is_open, \
             opened_at = excluded.opened_at, expires_at = excluded.expires_at \
             RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(db_id(funnel.node_id.0))
                .bind(&funnel.name)
                .bind(i64::from(funnel.port))
                .bind(&funnel.hostname)
                .bind(protocol_text(funnel.protocol))
                .bind(funnel.public_port.map(i64::from))
                .bind(
                    funnel
                        .ttl_secs
                        .map(|ttl| i64::try_from(ttl).unwrap_or(i64::MAX)),
                )
                .bind(to_json(&funnel.gates))
                .bind(gate_mode_text(funnel.gate_mode))
                .bind(funnel.rate_limit.as_ref().map(to_json))
                .bind(funnel.is_open)
                .bind(funnel.opened_at.map(UnixTime::as_secs))
                .bind(funnel.expires_at.map(UnixTime::as_secs))
                .bind(now.as_secs())
                .fetch_one(pool)
                .await?;
            funnel_from_row(&row)
        })
    }

    /// Closes the open funnel for (node, port), keeping its row (and so its hostname).
    /// Returns the closed funnel; [`StoreError::NotFound`] if no such funnel is open.
    pub async fn close_funnel(&self, node: NodeId, port: u16) -> Result<FunnelRecord, StoreError> {
        let sql = format!(
            "UPDATE funnels SET is_open = FALSE WHERE node_id = $1 AND port = $2 AND is_open \
             RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(db_id(node.0))
                .bind(i64::from(port))
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => funnel_from_row(&row),
                None => Err(StoreError::NotFound {
                    what: format!("open funnel on {node} port {port}"),
                }),
            }
        })
    }

    /// Closes the funnel for (node, port) if it is open and was opened at `opened_at` (so a
    /// funnel reopened meanwhile stays open). [`StoreError::NotFound`] otherwise.
    pub async fn close_funnel_opened_at(
        &self,
        node: NodeId,
        port: u16,
        opened_at: UnixTime,
    ) -> Result<FunnelRecord, StoreError> {
        let sql = format!(
            "UPDATE funnels SET is_open = FALSE \
             WHERE node_id = $1 AND port = $2 AND is_open AND opened_at = $3 RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(db_id(node.0))
                .bind(i64::from(port))
                .bind(opened_at.as_secs())
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => funnel_from_row(&row),
                None => Err(StoreError::NotFound {
                    what: format!(
                        "open funnel on {node} port {port} opened at {}",
                        opened_at.0
                    ),
                }),
            }
        })
    }

    /// The funnels of one node, open and closed, by port.
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

    /// Every funnel, open and closed, by node and port.
    pub async fn list_funnels(&self) -> Result<Vec<FunnelRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM funnels ORDER BY node_id, port");
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter().map(funnel_from_row).collect()
        })
    }

    /// The funnel (open or closed) holding `hostname`.
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

    /// Removes the funnel for (node, port), releasing its hostname and public port.
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

fn protocol_text(protocol: FunnelProtocol) -> &'static str {
    match protocol {
        FunnelProtocol::Http => "http",
        FunnelProtocol::Tcp => "tcp",
        FunnelProtocol::TlsPassthrough => "tls_passthrough",
    }
}

fn gate_mode_text(mode: GateMode) -> &'static str {
    match mode {
        GateMode::All => "all",
        GateMode::Any => "any",
    }
}

fn funnel_from_row(row: &impl RowRead) -> Result<FunnelRecord, StoreError> {
    const T: &str = "funnels";
    let port_of = |column: &'static str, value: i64| {
        u16::try_from(value).map_err(|_| StoreError::Corrupt {
            table: T,
            column,
            detail: format!("{value} is not a port number"),
        })
    };
    let protocol = match row.text(T, "protocol")?.as_str() {
        "http" => FunnelProtocol::Http,
        "tcp" => FunnelProtocol::Tcp,
        "tls_passthrough" => FunnelProtocol::TlsPassthrough,
        other => {
            return Err(StoreError::Corrupt {
                table: T,
                column: "protocol",
                detail: format!("unknown protocol {other:?}"),
            });
        }
    };
    let gate_mode = match row.text(T, "gate_mode")?.as_str() {
        "all" => GateMode::All,
        "any" => GateMode::Any,
        other => {
            return Err(StoreError::Corrupt {
                table: T,
                column: "gate_mode",
                detail: format!("unknown gate mode {other:?}"),
            });
        }
    };
    let rate_limit = match row.opt_text(T, "rate_limit")? {
        Some(text) => Some(
            serde_json::from_str(&text).map_err(|err| StoreError::Corrupt {
                table: T,
                column: "rate_limit",
                detail: err.to_string(),
            })?,
        ),
        None => None,
    };
    Ok(FunnelRecord {
        id: row.unsigned(T, "id")?,
        funnel: NewFunnel {
            node_id: NodeId(row.unsigned(T, "node_id")?),
            name: row.text(T, "name")?,
            port: port_of("port", row.int(T, "port")?)?,
            hostname: row.text(T, "hostname")?,
            protocol,
            public_port: row
                .opt_int(T, "public_port")?
                .map(|port| port_of("public_port", port))
                .transpose()?,
            ttl_secs: row
                .opt_int(T, "ttl_secs")?
                .map(|ttl| u64::try_from(ttl).unwrap_or(0)),
            gates: row.json(T, "gates")?,
            gate_mode,
            rate_limit,
            is_open: row.flag(T, "is_open")?,
            opened_at: row.opt_time(T, "opened_at")?,
            expires_at: row.opt_time(T, "expires_at")?,
        },
        created_at: row.time(T, "created_at")?,
    })
}
