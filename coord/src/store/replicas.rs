//! What several coord replicas on one PostgreSQL database share besides the tables: a
//! change signal (`LISTEN`/`NOTIFY`) and a lease for work only one replica may do (an
//! advisory lock). On SQLite there is one coord, so the signal goes nowhere and the lease
//! is always granted.

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgListener, Postgres};

use postern_proto::NodeId;

use super::{Backend, Store, StoreError};

/// The `NOTIFY` channel on which replicas announce that the tailnet changed.
pub const CHANGES_CHANNEL: &str = "postern_tailnet_changes";

/// The `NOTIFY` channel on which replicas announce that they stored edge decisions, and of
/// whose funnels (so that a node's edge log read waiting on another replica is answered).
pub const EDGE_LOG_CHANNEL: &str = "postern_edge_log";

/// The most node ids one edge log announcement carries (PostgreSQL caps a payload at
/// 8000 bytes); more are split over several.
const OWNERS_PER_ANNOUNCEMENT: usize = 300;

/// What another replica (or this one) announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// The tailnet changed on the replica with this id.
    Changes {
        /// The announcing replica's id.
        replica: String,
    },
    /// The replica with this id stored edge decisions of these nodes' funnels.
    EdgeLog {
        /// The announcing replica's id.
        replica: String,
        /// The funnels' owners; empty when the payload could not be read (then any
        /// node's may have new decisions).
        owners: Vec<NodeId>,
    },
}

/// Key of the advisory lock held by the replica that runs the node lifecycle (key
/// expiry, ephemeral cleanup): "pstn" in ASCII.
pub const LIFECYCLE_LOCK_KEY: i64 = 0x7073_746e;

/// A subscription to other replicas' change announcements (PostgreSQL only).
#[derive(Debug)]
pub struct ChangeListener {
    listener: PgListener,
}

impl ChangeListener {
    /// Waits for the next announcement. Fails when the connection is lost; sqlx
    /// reconnects on the next call, and announcements sent meanwhile are lost, so treat an
    /// error as "something may have changed".
    pub async fn recv(&mut self) -> Result<Announcement, StoreError> {
        let notification = self.listener.recv().await?;
        let payload = notification.payload();
        Ok(if notification.channel() == EDGE_LOG_CHANNEL {
            parse_edge_log(payload)
        } else {
            Announcement::Changes {
                replica: payload.to_owned(),
            }
        })
    }
}

/// A held lease: while it lives (and [`Lease::is_alive`] says so), no other replica holds
/// the same one. Dropping it closes its connection, which releases the lock.
#[derive(Debug)]
pub struct Lease {
    connection: Option<PoolConnection<Postgres>>,
}

impl Lease {
    /// Whether the lease still holds: on PostgreSQL, whether its connection still answers
    /// (a lost connection means the server released the lock, and another replica may
    /// have taken it). Always true on SQLite.
    pub async fn is_alive(&mut self) -> bool {
        match &mut self.connection {
            None => true,
            Some(connection) => sqlx::query("SELECT 1")
                .execute(&mut **connection)
                .await
                .is_ok(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A session-level advisory lock lives as long as its connection: detach it from the
        // pool so that it closes instead of going back, locked, for reuse.
        if let Some(connection) = self.connection.take() {
            drop(connection.detach());
        }
    }
}

impl Store {
    /// Announces to the other replicas that the tailnet changed; `replica` is this
    /// replica's id, so it can ignore its own announcement. Does nothing on SQLite.
    pub async fn announce_change(&self, replica: &str) -> Result<(), StoreError> {
        if let Backend::Postgres(pool) = &self.backend {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(replica)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Records that the nodes `ids` hold a stream on this replica now (their `last_seen`
    /// becomes `now`), so that the replica running the lifecycle knows they are online.
    /// Does nothing on SQLite, where the one coord knows its own streams.
    pub async fn touch_nodes(
        &self,
        ids: &[postern_proto::NodeId],
        now: postern_proto::UnixTime,
    ) -> Result<(), StoreError> {
        if let Backend::Postgres(pool) = &self.backend
            && !ids.is_empty()
        {
            let ids: Vec<i64> = ids.iter().map(|id| super::db_id(id.0)).collect();
            sqlx::query("UPDATE nodes SET last_seen = $1 WHERE id = ANY($2)")
                .bind(now.as_secs())
                .bind(ids)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Announces that replica `replica` stored edge decisions of `owners`' funnels (several
    /// `NOTIFY`s for many owners). Does nothing on SQLite.
    pub async fn announce_edge_log(
        &self,
        replica: &str,
        owners: &[NodeId],
    ) -> Result<(), StoreError> {
        if let Backend::Postgres(pool) = &self.backend {
            for chunk in owners.chunks(OWNERS_PER_ANNOUNCEMENT) {
                let mut payload = replica.to_owned();
                for owner in chunk {
                    payload.push(' ');
                    payload.push_str(&owner.0.to_string());
                }
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(EDGE_LOG_CHANNEL)
                    .bind(payload)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Subscribes to the replicas' change announcements; `None` on SQLite.
    pub async fn listen_for_changes(&self) -> Result<Option<ChangeListener>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await?;
                listener
                    .listen_all([CHANGES_CHANNEL, EDGE_LOG_CHANNEL])
                    .await?;
                Ok(Some(ChangeListener { listener }))
            }
        }
    }

    /// Tries to take the lease `key` without waiting: `Some` if this replica now holds it
    /// (always on SQLite), `None` if another replica does.
    pub async fn try_lease(&self, key: i64) -> Result<Option<Lease>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Some(Lease { connection: None })),
            Backend::Postgres(pool) => {
                let mut connection = pool.acquire().await?;
                let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut *connection)
                    .await?;
                Ok(got.then_some(Lease {
                    connection: Some(connection),
                }))
            }
        }
    }
}

/// An edge log announcement's payload: the replica's id, then the owners' node ids, all
/// separated by spaces. Owners that do not read leave the list empty: anyone's may have
/// changed.
fn parse_edge_log(payload: &str) -> Announcement {
    let mut words = payload.split(' ');
    let replica = words.next().unwrap_or_default().to_owned();
    let owners: Result<Vec<NodeId>, _> = words.map(|w| w.parse().map(NodeId)).collect();
    Announcement::EdgeLog {
        replica,
        owners: owners.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_log_announcements_read_back() {
        assert_eq!(
            parse_edge_log("ab12 7 42"),
            Announcement::EdgeLog {
                replica: "ab12".into(),
                owners: vec![NodeId(7), NodeId(42)],
            }
        );
        // Unreadable owners: anyone's may have changed.
        assert_eq!(
            parse_edge_log("ab12 7 x"),
            Announcement::EdgeLog {
                replica: "ab12".into(),
                owners: Vec::new(),
            }
        );
        assert_eq!(
            parse_edge_log(""),
            Announcement::EdgeLog {
                replica: String::new(),
                owners: Vec::new(),
            }
        );
    }
}
