//! Nodes: the registry's rows. Allocation of names and addresses lives in
//! [`crate::registry`]; this is storage only.

use std::net::{Ipv4Addr, Ipv6Addr};

use postern_proto::{MachinePublicKey, NodeId, NodePublicKey, UnixTime, UserId};

use super::row::{RowRead, to_json};
use postern_proto::netmap::RegionId;

use super::{NewNode, NodePaths, NodeRecord, Store, StoreError, db_id, on_pool};

const COLUMNS: &str = "id, machine_key, node_key, name, ipv4, ipv6, user_id, tags, created_at, \
                       last_seen, key_expiry, ephemeral, approved, is_ingress, endpoints, disco_key, home_relay";

impl Store {
    /// Inserts a node. Fails with [`StoreError::Conflict`] if its machine key, node key,
    /// name or an address is already in use.
    pub async fn insert_node(&self, node: &NewNode) -> Result<NodeRecord, StoreError> {
        let sql = format!(
            "INSERT INTO nodes (machine_key, node_key, name, ipv4, ipv6, user_id, tags, created_at, \
             key_expiry, ephemeral, approved, is_ingress) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(node.machine_key.to_string())
                .bind(node.node_key.to_string())
                .bind(&node.name)
                .bind(node.ipv4.to_string())
                .bind(node.ipv6.to_string())
                .bind(db_id(node.user_id.0))
                .bind(to_json(&node.tags))
                .bind(node.created_at.as_secs())
                .bind(node.key_expiry.map(UnixTime::as_secs))
                .bind(node.ephemeral)
                .bind(node.approved)
                .bind(node.is_ingress)
                .fetch_one(pool)
                .await?;
            node_from_row(&row)
        })
    }

    /// The node with this id.
    pub async fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM nodes WHERE id = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(db_id(id.0))
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(node_from_row).transpose()
        })
    }

    /// The node registered from this machine.
    pub async fn node_by_machine_key(
        &self,
        key: &MachinePublicKey,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM nodes WHERE machine_key = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(key.to_string())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(node_from_row).transpose()
        })
    }

    /// The node currently using this node key.
    pub async fn node_by_node_key(
        &self,
        key: &NodePublicKey,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM nodes WHERE node_key = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(key.to_string())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(node_from_row).transpose()
        })
    }

    /// Every node, by id.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM nodes ORDER BY id");
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter().map(node_from_row).collect()
        })
    }

    /// The nodes of one user, by id.
    pub async fn nodes_of_user(&self, user: UserId) -> Result<Vec<NodeRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM nodes WHERE user_id = $1 ORDER BY id");
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(db_id(user.0))
                .fetch_all(pool)
                .await?;
            rows.iter().map(node_from_row).collect()
        })
    }

    /// Nodes whose key expires before `before`, soonest first (to notify or cut them off).
    pub async fn nodes_with_key_expiring_before(
        &self,
        before: UnixTime,
    ) -> Result<Vec<NodeRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM nodes WHERE key_expiry IS NOT NULL AND key_expiry < $1 \
             ORDER BY key_expiry, id"
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(before.as_secs())
                .fetch_all(pool)
                .await?;
            rows.iter().map(node_from_row).collect()
        })
    }

    /// The names and addresses in use, for allocating new ones.
    pub async fn node_names_and_addresses(
        &self,
    ) -> Result<Vec<(String, Ipv4Addr, Ipv6Addr)>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT name, ipv4, ipv6 FROM nodes")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.text("nodes", "name")?,
                        row.parsed("nodes", "ipv4")?,
                        row.parsed("nodes", "ipv6")?,
                    ))
                })
                .collect()
        })
    }

    /// Gives a node a new node key (re-login or key rotation), expiry and approval.
    pub async fn rekey_node(
        &self,
        id: NodeId,
        node_key: &NodePublicKey,
        key_expiry: Option<UnixTime>,
        approved: bool,
    ) -> Result<NodeRecord, StoreError> {
        let sql = format!(
            "UPDATE nodes SET node_key = $2, key_expiry = $3, approved = $4 WHERE id = $1 \
             RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(db_id(id.0))
                .bind(node_key.to_string())
                .bind(key_expiry.map(UnixTime::as_secs))
                .bind(approved)
                .fetch_optional(pool)
                .await?;
            row.as_ref()
                .map(node_from_row)
                .transpose()?
                .ok_or_else(|| not_found(id))
        })
    }

    /// Renames a node. Fails with [`StoreError::Conflict`] if the name is taken.
    pub async fn set_node_name(&self, id: NodeId, name: &str) -> Result<NodeRecord, StoreError> {
        let sql = format!("UPDATE nodes SET name = $2 WHERE id = $1 RETURNING {COLUMNS}");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(db_id(id.0))
                .bind(name)
                .fetch_optional(pool)
                .await?;
            row.as_ref()
                .map(node_from_row)
                .transpose()?
                .ok_or_else(|| not_found(id))
        })
    }

    /// Replaces a node's tags.
    pub async fn set_node_tags(
        &self,
        id: NodeId,
        tags: &[String],
    ) -> Result<NodeRecord, StoreError> {
        let sql = format!("UPDATE nodes SET tags = $2 WHERE id = $1 RETURNING {COLUMNS}");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(db_id(id.0))
                .bind(to_json(tags))
                .fetch_optional(pool)
                .await?;
            row.as_ref()
                .map(node_from_row)
                .transpose()?
                .ok_or_else(|| not_found(id))
        })
    }

    /// Records what a node reported in its map request (endpoints, disco key, home relay)
    /// and when it was last seen.
    pub async fn set_node_paths(
        &self,
        id: NodeId,
        paths: &NodePaths,
        last_seen: UnixTime,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query(
                "UPDATE nodes SET endpoints = $2, last_seen = $3, disco_key = $4, home_relay = $5 \
                 WHERE id = $1",
            )
            .bind(db_id(id.0))
            .bind(to_json(&paths.endpoints))
            .bind(last_seen.as_secs())
            .bind(paths.disco_key.map(|key| key.to_string()))
            .bind(paths.home_relay.map(|region| i64::from(region.0)))
            .execute(pool)
            .await?;
            if done.rows_affected() == 0 {
                Err(not_found(id))
            } else {
                Ok(())
            }
        })
    }

    /// Sets whether a node is approved and whether it is an ingress.
    pub async fn set_node_flags(
        &self,
        id: NodeId,
        approved: bool,
        is_ingress: bool,
    ) -> Result<NodeRecord, StoreError> {
        let sql = format!(
            "UPDATE nodes SET approved = $2, is_ingress = $3 WHERE id = $1 RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql)
                .bind(db_id(id.0))
                .bind(approved)
                .bind(is_ingress)
                .fetch_optional(pool)
                .await?;
            row.as_ref()
                .map(node_from_row)
                .transpose()?
                .ok_or_else(|| not_found(id))
        })
    }

    /// Deletes a node (and, through the schema, its funnels). Its name and addresses become
    /// free for later nodes.
    pub async fn delete_node(&self, id: NodeId) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM nodes WHERE id = $1")
                .bind(db_id(id.0))
                .execute(pool)
                .await?;
            if done.rows_affected() == 0 {
                Err(not_found(id))
            } else {
                Ok(())
            }
        })
    }
}

fn not_found(id: NodeId) -> StoreError {
    StoreError::NotFound {
        what: id.to_string(),
    }
}

fn node_from_row(row: &impl RowRead) -> Result<NodeRecord, StoreError> {
    const T: &str = "nodes";
    Ok(NodeRecord {
        id: NodeId(row.unsigned(T, "id")?),
        machine_key: row.parsed(T, "machine_key")?,
        node_key: row.parsed(T, "node_key")?,
        name: row.text(T, "name")?,
        ipv4: row.parsed(T, "ipv4")?,
        ipv6: row.parsed(T, "ipv6")?,
        user_id: UserId(row.unsigned(T, "user_id")?),
        tags: row.json(T, "tags")?,
        created_at: row.time(T, "created_at")?,
        last_seen: row.opt_time(T, "last_seen")?,
        key_expiry: row.opt_time(T, "key_expiry")?,
        ephemeral: row.flag(T, "ephemeral")?,
        approved: row.flag(T, "approved")?,
        is_ingress: row.flag(T, "is_ingress")?,
        endpoints: row.json(T, "endpoints")?,
        disco_key: row
            .opt_text(T, "disco_key")?
            .map(|text| {
                text.parse().map_err(|e| StoreError::Corrupt {
                    table: T,
                    column: "disco_key",
                    detail: format!("{e}"),
                })
            })
            .transpose()?,
        home_relay: row
            .opt_int(T, "home_relay")?
            .map(|region| {
                u16::try_from(region)
                    .map(RegionId)
                    .map_err(|_| StoreError::Corrupt {
                        table: T,
                        column: "home_relay",
                        detail: format!("{region} is not a region id"),
                    })
            })
            .transpose()?,
    })
}
