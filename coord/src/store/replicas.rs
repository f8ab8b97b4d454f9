//! What several coord replicas on one PostgreSQL database share besides the tables: a
//! change signal (`LISTEN`/`NOTIFY`) and a lease for work only one replica may do (an
//! advisory lock). On SQLite there is one coord, so the signal goes nowhere and the lease
//! is always granted.

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgListener, Postgres};

use super::{Backend, Store, StoreError};

/// The `NOTIFY` channel on which replicas announce that the tailnet changed.
pub const CHANGES_CHANNEL: &str = "postern_tailnet_changes";

/// Key of the advisory lock held by the replica that runs the node lifecycle (key
/// expiry, ephemeral cleanup): "pstn" in ASCII.
pub const LIFECYCLE_LOCK_KEY: i64 = 0x7073_746e;

/// A subscription to other replicas' change announcements (PostgreSQL only).
#[derive(Debug)]
pub struct ChangeListener {
    listener: PgListener,
}

impl ChangeListener {
    /// Waits for the next announcement and returns its payload (the announcing replica's
    /// id). Fails when the connection is lost; sqlx reconnects on the next call, and
    /// announcements sent meanwhile are lost, so treat an error as "something may have
    /// changed".
    pub async fn recv(&mut self) -> Result<String, StoreError> {
        Ok(self.listener.recv().await?.payload().to_owned())
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

    /// Subscribes to the replicas' change announcements; `None` on SQLite.
    pub async fn listen_for_changes(&self) -> Result<Option<ChangeListener>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await?;
                listener.listen(CHANGES_CHANNEL).await?;
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
