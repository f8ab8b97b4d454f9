//! Several coord replicas on one PostgreSQL database.
//!
//! Every replica serves its own nodes' streams from the shared tables. A change made on
//! one replica (a registration, an admin command, a node connecting) is announced with
//! `NOTIFY` ([`crate::store::CHANGES_CHANNEL`]); every other replica `LISTEN`s and wakes its
//! sessions, which re-read the tailnet and send their nodes the deltas. Bursts coalesce:
//! one announcement covers every change made while the previous one was being sent.
//! Edge decisions stored on one replica are announced the same way, with their funnels'
//! owners ([`crate::store::EDGE_LOG_CHANNEL`]), so that an owner's edge log read waiting
//! on another replica is answered at once. The
//! node lifecycle (key expiry records, ephemeral cleanup) runs on the one replica holding
//! an advisory lock ([`crate::lifecycle`]). On SQLite none of this runs.
//!
//! Each replica reads its own policy file: give every replica the same file.

use rand::RngCore;

use crate::control::Coord;
use crate::store::Announcement;

/// Starts announcing this replica's changes and listening for the others' (PostgreSQL
/// only; on SQLite it returns at once). Ends with the coord.
pub fn spawn(coord: &Coord) {
    if coord.registry.store().backend_kind() != crate::store::BackendKind::Postgres {
        return;
    }
    let mut id = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let replica = hex::encode(id);
    tracing::info!(%replica, "fanning tailnet changes out to the other replicas through PostgreSQL");
    let (announcer, listener, edge_log) = (coord.clone(), coord.clone(), coord.clone());
    let own = replica.clone();
    let edge_log_replica = replica.clone();
    tokio::spawn(async move { announce_edge_log(edge_log, edge_log_replica).await });
    tokio::spawn(async move { announce(announcer, replica).await });
    tokio::spawn(async move { listen(listener, own).await });
    let presence = coord.clone();
    tokio::spawn(async move { heartbeat(presence).await });
}

/// How often each replica records which nodes stream from it.
pub const PRESENCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);

/// How recent a node's `last_seen` must be for the lifecycle to count it online on some
/// replica: a little over three heartbeats.
pub const PRESENCE_WINDOW_SECS: i64 = 10;

/// Every [`PRESENCE_INTERVAL`], stamps `last_seen` on the nodes streaming from this
/// replica, so the replica running the lifecycle does not take them for offline.
async fn heartbeat(coord: Coord) {
    let token = coord.shutdown_token();
    let mut tick = tokio::time::interval(PRESENCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return,
        }
        let online: Vec<_> = coord.hub.online().into_iter().collect();
        let now = crate::control::tailnet::now();
        if let Err(err) = coord.registry.store().touch_nodes(&online, now).await {
            tracing::warn!(%err, "cannot record which nodes stream from this replica");
        }
    }
}

async fn announce(coord: Coord, replica: String) {
    let token = coord.shutdown_token();
    loop {
        tokio::select! {
            () = coord.hub.local_change() => {}
            () = token.cancelled() => return,
        }
        if let Err(err) = coord.registry.store().announce_change(&replica).await {
            tracing::warn!(%err, "cannot announce a change to the other replicas");
        }
    }
}

/// Announces the owners of the edge decisions this replica stores, so that their edge log
/// reads waiting on other replicas are answered ([`crate::funnel::edge_log`]). Owners
/// stored while an announcement is being sent go out together in the next.
async fn announce_edge_log(coord: Coord, replica: String) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let token = coord.shutdown_token();
    let mut stored = coord.edge_log.stored_here();
    loop {
        let first = tokio::select! {
            first = stored.recv() => first,
            () = token.cancelled() => return,
        };
        // Lagged: some owners are unknown, so announce "anyone's" (no owners).
        let mut owners = match first {
            Ok(owner) => vec![owner],
            Err(RecvError::Lagged(_)) => Vec::new(),
            Err(RecvError::Closed) => return,
        };
        let mut anyone = owners.is_empty();
        loop {
            match stored.try_recv() {
                Ok(owner) => owners.push(owner),
                Err(TryRecvError::Lagged(_)) => anyone = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if anyone {
            owners.clear();
        }
        owners.sort_unstable();
        owners.dedup();
        if let Err(err) = coord
            .registry
            .store()
            .announce_edge_log(&replica, &owners)
            .await
        {
            tracing::warn!(%err, "cannot announce stored edge decisions to the other replicas");
        }
    }
}

async fn listen(coord: Coord, replica: String) {
    let token = coord.shutdown_token();
    let retry = std::time::Duration::from_secs(1);
    loop {
        let listener = tokio::select! {
            listener = coord.registry.store().listen_for_changes() => listener,
            () = token.cancelled() => return,
        };
        let mut listener = match listener {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(%err, "cannot listen for the other replicas' changes; retrying");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        // Anything may have changed while nobody listened.
        coord.hub.notify_local();
        coord.edge_log.anything();
        loop {
            let received = tokio::select! {
                received = listener.recv() => received,
                () = token.cancelled() => return,
            };
            match received {
                Ok(Announcement::Changes { replica: from }) if from == replica => {}
                Ok(Announcement::Changes { .. }) => coord.hub.notify_local(),
                Ok(Announcement::EdgeLog { replica: from, .. }) if from == replica => {}
                Ok(Announcement::EdgeLog { owners, .. }) => {
                    coord.edge_log.stored_elsewhere(&owners);
                }
                Err(err) => {
                    tracing::warn!(%err, "lost the other replicas' change feed; reconnecting");
                    coord.hub.notify_local();
                    coord.edge_log.anything();
                    tokio::time::sleep(retry).await;
                    break;
                }
            }
        }
    }
}
