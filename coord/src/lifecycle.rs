//! Node lifecycle: key expiry, device approval and the removal of offline ephemeral nodes.
//!
//! - **Key expiry.** An untagged node's key expires [`ControlConfig::key_expiry`] after it
//!   registers (180 days by default); tagged nodes' keys never expire. An expired node
//!   vanishes from every peer's netmap and its own netmap is emptied; registering again
//!   (with an auth key or a login) renews the key. An admin can expire a node at once.
//! - **Approval.** With [`ControlConfig::require_approval`], a new node is stored
//!   unapproved and answered `NeedsApproval` until an admin approves it; a machine that was
//!   approved stays approved when it registers again.
//! - **Ephemeral nodes** are deleted once they have been offline for
//!   [`ControlConfig::ephemeral_timeout`].
//!
//! - **Funnels** close when they expire or the policy stops allowing them
//!   ([`Coord::close_ended_funnels`], `funnel.expire` / `funnel.revoke`).
//!
//! [`run`] is the background task that notices expiries (so netmaps change at the moment a
//! key expires), removes offline ephemeral nodes and closes ended funnels; [`registration_terms`] decides the
//! expiry and approval of a registration.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use postern_node::control::ControlConnection;
use postern_proto::control::{ControlMessage, MapRequest, MapResponse};
use postern_proto::{NodeId, UnixTime};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::audit;
use crate::control::session::SessionError;
use crate::control::tailnet::now;
use crate::control::{ControlConfig, Coord};
use crate::netmap::is_expired;
use crate::store::NodeRecord;

/// What a registration gets: when its key expires and whether it is approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationTerms {
    /// Key expiry; `None` for tagged nodes or when expiry is off.
    pub key_expiry: Option<UnixTime>,
    /// Approved now (approval not required, or the machine was approved before).
    pub approved: bool,
}

/// The terms of a registration at `now` of a node with `tags`, `existing` being the
/// machine's node if it registered before.
pub fn registration_terms(
    config: &ControlConfig,
    existing: Option<&NodeRecord>,
    tags: &[String],
    now: UnixTime,
) -> RegistrationTerms {
    let tagged = !tags.is_empty() || existing.is_some_and(|node| !node.tags.is_empty());
    let key_expiry = match config.key_expiry {
        Some(lifetime) if !tagged => Some(now.saturating_add_secs(secs(lifetime))),
        _ => None,
    };
    RegistrationTerms {
        key_expiry,
        approved: !config.require_approval || existing.is_some_and(|node| node.approved),
    }
}

/// Runs until the coord shuts down: every [`ControlConfig::lifecycle_interval`], records
/// keys that expired since the last look (an audit record, and a netmap change for their
/// peers) and deletes ephemeral nodes offline for longer than the timeout.
pub async fn run(coord: Coord) {
    let token = coord.shutdown_token();
    let mut state = LifecycleState::default();
    let mut first = true;
    let mut tick = tokio::time::interval(coord.config.lifecycle_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // With several replicas on one PostgreSQL, one of them (the holder of an advisory
    // lock) runs the lifecycle, so expiries and deletions are recorded once. The others
    // try to take over at every tick; on SQLite the lease is always granted.
    let mut lease: Option<crate::store::Lease> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return,
        }
        if let Some(held) = &mut lease
            && !held.is_alive().await
        {
            tracing::warn!(
                "lost the node lifecycle lease (database connection); trying to take it again"
            );
            lease = None;
        }
        if lease.is_none() {
            match coord
                .registry
                .store()
                .try_lease(crate::store::LIFECYCLE_LOCK_KEY)
                .await
            {
                Ok(Some(taken)) => {
                    lease = Some(taken);
                    // What happened while another replica held it was recorded there.
                    first = true;
                }
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(%err, "cannot take the node lifecycle lease; trying again");
                    continue;
                }
            }
        }
        if let Err(err) = state.step(&coord, first).await {
            tracing::warn!(%err, "node lifecycle check failed; trying again");
        }
        first = false;
    }
}

#[derive(Debug, Default)]
struct LifecycleState {
    /// Nodes known expired (recorded once).
    expired: HashSet<NodeId>,
    /// Ephemeral nodes seen offline, since when.
    offline_since: HashMap<NodeId, Instant>,
}

impl LifecycleState {
    async fn step(&mut self, coord: &Coord, first: bool) -> Result<(), crate::store::StoreError> {
        let store = coord.registry.store();
        let nodes = store.list_nodes().await?;
        let now = now();
        let mut online = coord.hub.online();
        if store.backend_kind() == crate::store::BackendKind::Postgres {
            // Nodes streaming from another replica: it stamps their last_seen.
            let recent = now.0.saturating_sub(crate::replicas::PRESENCE_WINDOW_SECS);
            online.extend(
                nodes
                    .iter()
                    .filter(|node| node.last_seen.is_some_and(|seen| seen.0 >= recent))
                    .map(|node| node.id),
            );
        }
        let mut changed = false;
        let expired_now: HashSet<NodeId> = nodes
            .iter()
            .filter(|node| is_expired(node, now))
            .map(|node| node.id)
            .collect();
        for node in nodes.iter().filter(|n| expired_now.contains(&n.id)) {
            if self.expired.contains(&node.id) {
                continue;
            }
            changed = true;
            // Expiries from before this coord started were recorded by an earlier run.
            if !first {
                tracing::info!(node = %node.id, name = %node.name, "node key expired");
                coord
                    .audit(
                        audit::ACTOR_COORD,
                        audit::NODE_EXPIRE,
                        &node_target(node),
                        json!({"name": node.name, "key_expiry": node.key_expiry.map(|t| t.0)}),
                    )
                    .await;
            }
        }
        self.expired = expired_now;

        let timeout = coord.config.ephemeral_timeout;
        let ticked = Instant::now();
        let ephemeral_offline: HashSet<NodeId> = nodes
            .iter()
            .filter(|node| node.ephemeral && !online.contains(&node.id))
            .map(|node| node.id)
            .collect();
        self.offline_since
            .retain(|id, _| ephemeral_offline.contains(id));
        for node in nodes.iter().filter(|n| ephemeral_offline.contains(&n.id)) {
            let since = *self.offline_since.entry(node.id).or_insert(ticked);
            if ticked.duration_since(since) < timeout {
                continue;
            }
            match store.delete_node(node.id).await {
                Ok(()) => {
                    tracing::info!(node = %node.id, name = %node.name, "ephemeral node offline too long: removed");
                    coord
                        .audit(
                            audit::ACTOR_COORD,
                            audit::NODE_DELETE,
                            &node_target(node),
                            json!({"name": node.name, "reason": "ephemeral node offline", "offline_secs": timeout.as_secs()}),
                        )
                        .await;
                    self.offline_since.remove(&node.id);
                    changed = true;
                }
                Err(crate::store::StoreError::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        if changed {
            coord.hub.notify();
        }
        // Funnels that expired or lost their grant (each close notifies the netmaps).
        coord.close_ended_funnels(now).await?;
        Ok(())
    }
}

/// Keeps the connection of unapproved node `node_id` open until an admin approves it:
/// a keepalive every keepalive interval, and a look at the node on every tailnet change
/// (and at every keepalive, in case a change was missed). Map requests the node sends
/// meanwhile replace `request`. Returns `true` once the node is approved, `false` if it
/// hung up or was deleted, or the coord is shutting down.
///
/// This is what makes a waiting node quiet: it does not redial in a loop, and it gets its
/// netmap the moment it is approved.
pub async fn wait_for_approval<S: AsyncRead + AsyncWrite + Unpin>(
    coord: &Coord,
    conn: &mut ControlConnection<S>,
    node_id: NodeId,
    request: &mut MapRequest,
) -> Result<bool, SessionError> {
    let mut changes = coord.hub.subscribe();
    let keepalive = coord.config.keepalive_interval;
    let shutdown = coord.shutdown_token();
    tracing::info!(node = node_id.0, "node waits for approval");
    loop {
        match coord.registry.store().node(node_id).await? {
            None => return Ok(false),
            Some(node) if node.approved => return Ok(true),
            Some(_) => {}
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(false);
                }
            }
            message = conn.recv() => match message? {
                None => return Ok(false),
                Some(ControlMessage::MapRequest(update)) => *request = update,
                Some(_) => {
                    return Err(SessionError::Protocol("unexpected message while waiting for approval"));
                }
            },
            () = tokio::time::sleep(keepalive) => {
                conn.send(&ControlMessage::MapResponse(MapResponse::KeepAlive)).await?;
            }
            () = shutdown.cancelled() => return Ok(false),
        }
    }
}

/// The audit target naming a node: `node:ID`.
pub fn node_target(node: &NodeRecord) -> String {
    format!("node:{}", node.id.0)
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(tags: &[&str], approved: bool) -> NodeRecord {
        let rng = &mut rand::rngs::OsRng;
        NodeRecord {
            id: NodeId(1),
            machine_key: postern_proto::MachinePrivateKey::generate(rng).public_key(),
            node_key: postern_proto::NodePrivateKey::generate(rng).public_key(),
            name: "n".into(),
            ipv4: "100.64.0.1".parse().unwrap(),
            ipv6: "fd00::1".parse().unwrap(),
            user_id: postern_proto::UserId(1),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            created_at: UnixTime(0),
            last_seen: None,
            key_expiry: None,
            ephemeral: false,
            approved,
            is_ingress: false,
            endpoints: Vec::new(),
            disco_key: None,
            home_relay: None,
        }
    }

    #[test]
    fn untagged_keys_expire_tagged_ones_do_not() {
        let config = ControlConfig::new("/tmp/x", "example.test");
        let now = UnixTime(1_000);
        let terms = registration_terms(&config, None, &[], now);
        assert_eq!(terms.key_expiry, Some(UnixTime(1_000 + 180 * 24 * 60 * 60)));
        assert!(terms.approved);
        let tagged = registration_terms(&config, None, &["tag:ci".into()], now);
        assert_eq!(tagged.key_expiry, None);
        let was_tagged = registration_terms(&config, Some(&node(&["tag:ci"], true)), &[], now);
        assert_eq!(was_tagged.key_expiry, None);
    }

    #[test]
    fn approval_is_needed_once_per_machine() {
        let mut config = ControlConfig::new("/tmp/x", "example.test");
        config.require_approval = true;
        let now = UnixTime(1_000);
        assert!(!registration_terms(&config, None, &[], now).approved);
        assert!(!registration_terms(&config, Some(&node(&[], false)), &[], now).approved);
        assert!(registration_terms(&config, Some(&node(&[], true)), &[], now).approved);
    }
}
