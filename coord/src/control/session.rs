//! One node's control session on the coord: registration, then the netmap stream.

use std::time::SystemTime;

use postern_node::control::ControlConnection;
use postern_proto::control::{ControlMessage, MapRequest, MapResponse, RegisterResponse};
use postern_proto::funnel::{FunnelLogResponse, FunnelResponse};
use postern_proto::netmap::Netmap;
use postern_proto::{NodeId, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Coord;
use super::auth::register;
use crate::netmap::diff;
use crate::store::NodePaths;

/// The most log requests one session holds waiting for new decisions at once; a node that
/// asks for more waits gets the others answered at once.
pub const MAX_HELD_LOG_REQUESTS: usize = 4;

/// Why a session ended abnormally (a clean close by the node is `Ok`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The connection failed.
    #[error(transparent)]
    Connection(#[from] postern_node::control::ConnectionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Registration failed inside the coord.
    #[error(transparent)]
    Register(#[from] super::auth::RegisterError),
    /// The node broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

/// Serves one authenticated connection until it closes or the coord shuts down.
pub async fn run_session<S: AsyncRead + AsyncWrite + Unpin>(
    coord: Coord,
    mut conn: ControlConnection<S>,
) -> Result<(), SessionError> {
    let machine = conn
        .remote_machine_key()
        .ok_or(SessionError::Protocol("no machine key after the handshake"))?;
    // Phase 1: registration until a map request.
    let (node_id, request) = loop {
        let Some(message) = conn.recv().await? else {
            return Ok(());
        };
        match message {
            ControlMessage::RegisterRequest(request) => {
                let answer = match &coord.login {
                    Some(login) if crate::login::wants_login(&request) => {
                        let login = login.clone();
                        let waited = crate::login::wait_for_login(
                            &coord, &login, &mut conn, machine, &request,
                        );
                        match waited.await? {
                            Some(answer) => answer,
                            None => return Ok(()),
                        }
                    }
                    _ => register(&coord.registry, &coord.config, machine, &request, now()).await?,
                };
                let authorized = matches!(answer, RegisterResponse::Authorized { .. });
                let awaits_approval = matches!(answer, RegisterResponse::NeedsApproval { .. });
                audit_registration(&coord, &request.hostname, &answer).await;
                if authorized {
                    coord.metrics.registrations.inc();
                    coord.hub.notify();
                } else {
                    coord.metrics.registrations_rejected.inc();
                }
                conn.send(&ControlMessage::RegisterResponse(answer)).await?;
                // A node told to wait for approval sends its map request next and waits
                // on this connection (below).
                if !authorized && !awaits_approval {
                    return Ok(());
                }
            }
            ControlMessage::MapRequest(mut request) => {
                let node = coord.registry.store().node_by_machine_key(&machine).await?;
                match node {
                    Some(node) if node.node_key == request.node_key && !node.approved => {
                        let answer = RegisterResponse::NeedsApproval {
                            node_id: node.id,
                            name: node.name.clone(),
                        };
                        conn.send(&ControlMessage::RegisterResponse(answer)).await?;
                        // The node waits on this connection until an admin approves it.
                        let approval = crate::lifecycle::wait_for_approval(
                            &coord,
                            &mut conn,
                            node.id,
                            &mut request,
                        );
                        if !approval.await? {
                            return Ok(());
                        }
                        break (node.id, request);
                    }
                    Some(node)
                        if node.node_key == request.node_key
                            && crate::netmap::is_expired(&node, now()) =>
                    {
                        let reason = "this node's key has expired; register again (log in or use an auth key) to renew it";
                        let answer = RegisterResponse::Rejected {
                            reason: reason.into(),
                        };
                        conn.send(&ControlMessage::RegisterResponse(answer)).await?;
                        return Ok(());
                    }
                    Some(node) if node.node_key == request.node_key => break (node.id, request),
                    _ => {
                        let reason =
                            "this machine is not registered with that node key; register first";
                        let answer = RegisterResponse::Rejected {
                            reason: reason.into(),
                        };
                        conn.send(&ControlMessage::RegisterResponse(answer)).await?;
                        return Ok(());
                    }
                }
            }
            ControlMessage::FunnelRequest(request) => {
                // Funnels are changed on the map stream, once the node is known.
                let answer = FunnelResponse {
                    request_id: request.request_id,
                    result: Err(crate::funnel::check::refusal(
                        crate::funnel::check::INVALID,
                        "send a map request first: funnels are changed on the netmap stream of a registered node",
                    )),
                    certificate: None,
                };
                conn.send(&ControlMessage::FunnelResponse(answer)).await?;
            }
            _ => return Err(SessionError::Protocol("the node sent a server message")),
        }
    };
    // Phase 2: the stream.
    // Endpoints first, so peers learn the node online with its endpoints in one delta.
    record_endpoints(&coord, node_id, &request).await?;
    coord.metrics.connected_nodes.inc();
    coord.hub.connected(node_id);
    let result = stream(&coord, &mut conn, node_id, request).await;
    coord.hub.disconnected(node_id);
    coord.metrics.connected_nodes.dec();
    result
}

async fn stream<S: AsyncRead + AsyncWrite + Unpin>(
    coord: &Coord,
    conn: &mut ControlConnection<S>,
    node_id: NodeId,
    request: MapRequest,
) -> Result<(), SessionError> {
    let mut changes = coord.hub.subscribe();
    let Some(mut sent) = current_netmap(coord, node_id).await? else {
        return Ok(());
    };
    send_map(
        coord,
        conn,
        MapResponse::Full {
            netmap: Box::new(sent.clone()),
        },
    )
    .await?;
    if !request.stream {
        return Ok(());
    }
    let keepalive = coord.config.keepalive_interval;
    let mut next_keepalive = tokio::time::Instant::now() + keepalive;
    // Log requests that wait for new decisions (a long poll), answered when they resolve;
    // aborted when the session ends.
    let mut held_logs: tokio::task::JoinSet<FunnelLogResponse> = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(answered) = held_logs.join_next(), if !held_logs.is_empty() => {
                match answered {
                    Ok(answer) => conn.send(&ControlMessage::FunnelLogResponse(answer)).await?,
                    // The node's read times out unanswered; say why here.
                    Err(err) => tracing::warn!(node = %node_id, %err, "a held edge log read failed"),
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let Some(fresh) = current_netmap(coord, node_id).await? else {
                    // The node was deleted: end its stream.
                    return Ok(());
                };
                let delta = diff(&sent, &fresh);
                if !delta.is_empty() {
                    send_map(coord, conn, MapResponse::Delta { delta: Box::new(delta) }).await?;
                    next_keepalive = tokio::time::Instant::now() + keepalive;
                    sent = fresh;
                }
            }
            message = conn.recv() => match message? {
                None => return Ok(()),
                Some(ControlMessage::MapRequest(update)) => {
                    record_endpoints(coord, node_id, &update).await?;
                }
                Some(ControlMessage::FunnelRequest(request)) => {
                    let answer = coord.handle_funnel_request(node_id, request).await;
                    conn.send(&ControlMessage::FunnelResponse(answer)).await?;
                }
                Some(ControlMessage::EdgeDecisions(batch)) => {
                    let answer = coord.handle_edge_decisions(node_id, batch).await;
                    conn.send(&ControlMessage::EdgeDecisionsAck(answer)).await?;
                }
                Some(ControlMessage::FunnelLogRequest(mut request)) => {
                    if request.query.wait_ms.is_some_and(|ms| ms > 0)
                        && held_logs.len() < MAX_HELD_LOG_REQUESTS
                    {
                        let coord = coord.clone();
                        held_logs.spawn(async move { coord.handle_funnel_log(node_id, request).await });
                    } else {
                        // Past the bound, a request that asked to wait is answered at once.
                        request.query.wait_ms = None;
                        let answer = coord.handle_funnel_log(node_id, request).await;
                        conn.send(&ControlMessage::FunnelLogResponse(answer)).await?;
                    }
                }
                Some(_) => return Err(SessionError::Protocol("unexpected message on a map stream")),
            },
            () = tokio::time::sleep_until(next_keepalive) => {
                conn.send(&ControlMessage::MapResponse(MapResponse::KeepAlive)).await?;
                coord.metrics.keepalives_sent.inc();
                next_keepalive = tokio::time::Instant::now() + keepalive;
            }
            () = coord.shutdown.cancelled() => return Ok(()),
        }
    }
}

async fn send_map<S: AsyncRead + AsyncWrite + Unpin>(
    coord: &Coord,
    conn: &mut ControlConnection<S>,
    response: MapResponse,
) -> Result<(), SessionError> {
    conn.send(&ControlMessage::MapResponse(response)).await?;
    coord.metrics.netmap_frames_sent.inc();
    Ok(())
}

async fn record_endpoints(
    coord: &Coord,
    node_id: NodeId,
    request: &MapRequest,
) -> Result<(), SessionError> {
    let store = coord.registry.store();
    let before = store.node(node_id).await?;
    let paths = NodePaths {
        endpoints: request.endpoints.clone(),
        disco_key: Some(request.disco_key),
        home_relay: request.home_relay,
    };
    store.set_node_paths(node_id, &paths, now()).await?;
    if before.is_some_and(|node| node.paths() != paths) {
        coord.hub.notify();
    }
    Ok(())
}

async fn current_netmap(coord: &Coord, node_id: NodeId) -> Result<Option<Netmap>, SessionError> {
    Ok(coord.netmap_for(node_id).await?)
}

/// Writes the audit record of a registration that was accepted (or waits for approval).
async fn audit_registration(coord: &Coord, hostname: &str, answer: &RegisterResponse) {
    let (node_id, details) = match answer {
        RegisterResponse::Authorized {
            node_id,
            name,
            user,
            key_expiry,
            ..
        } => (
            node_id,
            serde_json::json!({
                "name": name,
                "hostname": hostname,
                "user": user.login,
                "approved": true,
                "key_expiry": key_expiry.map(|t| t.0),
            }),
        ),
        RegisterResponse::NeedsApproval { node_id, .. } => (
            node_id,
            serde_json::json!({"hostname": hostname, "approved": false}),
        ),
        _ => return,
    };
    let target = format!("node:{}", node_id.0);
    coord
        .audit(&target, crate::audit::NODE_REGISTER, &target, details)
        .await;
}

fn now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}
