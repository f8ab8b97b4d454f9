//! Several coord replicas on one PostgreSQL database.
//!
//! Every replica serves its own nodes' streams from the shared tables. A change made on
//! one replica (a registration, an admin command, a node connecting) is announced with
//! `NOTIFY` ([`crate::store::CHANGES_CHANNEL`]); every other replica `LISTEN`s and wakes its
//! sessions, which re-read the tailnet and send their nodes the deltas. Bursts coalesce:
//! one announcement covers every change made while the previous one was being sent. The
//! node lifecycle (key expiry records, ephemeral cleanup) runs on the one replica holding
//! an advisory lock ([`crate::lifecycle`]). On SQLite none of this runs.
//!
//! Each replica reads its own policy file: give every replica the same file.

use rand::RngCore;

use crate::control::Coord;

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
    let (announcer, listener) = (coord.clone(), coord.clone());
    let own = replica.clone();
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
        loop {
            let received = tokio::select! {
                received = listener.recv() => received,
                () = token.cancelled() => return,
            };
            match received {
                Ok(from) if from == replica => {}
                Ok(_) => coord.hub.notify_local(),
                Err(err) => {
                    tracing::warn!(%err, "lost the other replicas' change feed; reconnecting");
                    coord.hub.notify_local();
                    tokio::time::sleep(retry).await;
                    break;
                }
            }
        }
    }
}
