//! The admin API: a separate HTTP listener (loopback by default) for the operator's
//! commands, `postern-coord nodes ...` and `postern-coord audit`.
//!
//! Every request carries `Authorization: Bearer TOKEN`, the admin token kept in the state
//! directory ([`ADMIN_TOKEN_FILE`], mode 0600, made on first start); it is compared in
//! constant time. The listener's bound address is written to [`ADMIN_ADDR_FILE`] so the
//! commands find it. Every change is written to the audit log and reaches the netmaps at
//! once (the hub is notified). The routes, all JSON:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/nodes` | every node ([`NodeInfo`]) |
//! | `GET /v1/nodes/{node}` | one node, by id or name |
//! | `POST /v1/nodes/{node}/rename` `{"name": N}` | rename |
//! | `POST /v1/nodes/{node}/tags` `{"tags": [..]}` | replace the tags |
//! | `POST /v1/nodes/{node}/expire` | expire its key now |
//! | `POST /v1/nodes/{node}/approve` | approve it |
//! | `DELETE /v1/nodes/{node}` | delete it |
//! | `POST /v1/nodes/{node}/ingress` `{"ingress": B}` | mark (or unmark) it as an ingress |
//! | `GET /v1/funnels` | every funnel, open and closed ([`FunnelAdminInfo`], no secrets) |
//! | `POST /v1/funnels/{hostname}/close` `{"release": B}` | close it; `release` also frees its hostname |
//! | `GET /v1/funnels/{hostname}/log?limit=N&denied=true` | the edge's recent decisions for it, newest first (`EdgeDecision`s; see [`crate::funnel::edge_log`]) |
//! | `GET /v1/audit?since_ms=T&limit=N` | audit records at or after T ([`AuditEntry`]) |
//! | `POST /v1/policy/reload` | re-read the policy file now |

pub mod client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use postern_proto::{NodeId, UnixTime};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::audit::{self, ACTOR_ADMIN};
use crate::control::Coord;
use crate::control::tailnet::now;
use crate::lifecycle::node_target;
use crate::netmap::is_expired;
use crate::policy::ReloadOutcome;
use crate::registry::RegistryError;
use crate::store::{AuditRecord, NodeRecord, StoreError};

/// The admin token's file in the state directory (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The file in the state directory holding the admin listener's address.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";
/// Prefix of admin tokens, so a leaked one is recognisable.
pub const ADMIN_TOKEN_PREFIX: &str = "pstn-admin-";
/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8444";
/// The most audit records one request returns.
pub const MAX_AUDIT_RECORDS: u32 = 10_000;

/// A node as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Fully qualified name.
    pub fqdn: String,
    /// Tailnet IPv4.
    pub ipv4: String,
    /// Tailnet IPv6.
    pub ipv6: String,
    /// Owner's login.
    pub user: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Holds a map stream now.
    pub online: bool,
    /// Approved.
    pub approved: bool,
    /// Key expired.
    pub expired: bool,
    /// Key expiry (Unix seconds), if any.
    pub key_expiry: Option<i64>,
    /// Ephemeral.
    pub ephemeral: bool,
    /// An ingress.
    pub is_ingress: bool,
    /// Registration time (Unix seconds).
    pub created_at: i64,
    /// Last seen (Unix seconds).
    pub last_seen: Option<i64>,
    /// The node's WireGuard public key.
    pub node_key: String,
    /// Reported endpoints.
    pub endpoints: Vec<String>,
}

impl NodeInfo {
    /// One word for the node's state: `online`, `offline`, `expired` or `needs-approval`.
    pub fn status(&self) -> &'static str {
        if !self.approved {
            "needs-approval"
        } else if self.expired {
            "expired"
        } else if self.online {
            "online"
        } else {
            "offline"
        }
    }
}

/// A funnel as the admin API shows it: gate kinds, never their secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelAdminInfo {
    /// The public hostname.
    pub hostname: String,
    /// The public URL.
    pub url: String,
    /// Open (served) or closed (hostname kept in reserve).
    pub open: bool,
    /// The funnelling node's id.
    pub node_id: u64,
    /// Its name.
    pub node: String,
    /// Its owner's login.
    pub owner: String,
    /// The node's local port.
    pub port: u16,
    /// The funnel's label.
    pub name: String,
    /// `http`, `tcp` or `tls_passthrough`.
    pub protocol: postern_proto::funnel::FunnelProtocol,
    /// The public port of a TCP funnel.
    pub public_port: Option<u16>,
    /// The gate kinds, in order.
    pub gates: Vec<String>,
    /// How the gates combine.
    pub gate_mode: postern_proto::funnel::GateMode,
    /// When it was last opened (Unix seconds).
    pub opened_at: Option<i64>,
    /// When it closes by itself (Unix seconds).
    pub expires_at: Option<i64>,
}

/// An audit record as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub target: String,
    /// From which network address (a node's control connection, a browser), if known.
    #[serde(default)]
    pub source_addr: Option<String>,
    /// More, as JSON.
    pub details: serde_json::Value,
}

impl From<AuditRecord> for AuditEntry {
    fn from(record: AuditRecord) -> Self {
        Self {
            id: record.id,
            at_ms: record.record.at_ms,
            actor: record.record.actor,
            action: record.record.action,
            target: record.record.target,
            source_addr: record.record.source_addr,
            details: record.record.details,
        }
    }
}

/// The admin token: loaded or created (mode 0600) in the state directory. `Debug` hides it.
#[derive(Clone)]
pub struct AdminToken(zeroize::Zeroizing<String>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

impl AdminToken {
    /// Loads `STATE_DIR/admin.token`, creating it (random, mode 0600) if absent.
    pub fn load_or_create(state_dir: &Path) -> std::io::Result<Self> {
        let path = state_dir.join(ADMIN_TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(Self(zeroize::Zeroizing::new(text.trim().to_owned()))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut_slice());
        let token = format!("{ADMIN_TOKEN_PREFIX}{}", hex::encode(*bytes));
        write_private(&path, &format!("{token}\n"))?;
        Ok(Self(zeroize::Zeroizing::new(token)))
    }

    /// Reads the token from a file (the commands' side).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        Ok(Self(zeroize::Zeroizing::new(
            std::fs::read_to_string(path)?.trim().to_owned(),
        )))
    }

    /// The secret, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `offered` is this token, in constant time.
    pub fn matches(&self, offered: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(offered.as_bytes()))
    }
}

/// An admin API server started by [`serve_admin`].
#[derive(Debug)]
pub struct AdminHandle {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl AdminHandle {
    /// Waits until it stops (on the coord's shutdown).
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(std::io::Error::other(err)),
        }
    }
}

/// Serves the admin API on `listener` until the coord shuts down; loads or creates the
/// admin token and writes the bound address to `STATE_DIR/admin.addr`.
pub fn serve_admin(coord: Coord, listener: TcpListener) -> std::io::Result<AdminHandle> {
    let local_addr = listener.local_addr()?;
    let state_dir = coord.config.state_dir.clone();
    let token = AdminToken::load_or_create(&state_dir)?;
    write_private(&state_dir.join(ADMIN_ADDR_FILE), &format!("{local_addr}\n"))?;
    let shutdown = coord.shutdown_token();
    let app = router(coord, token);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    tracing::info!(%local_addr, "admin API listening");
    Ok(AdminHandle { local_addr, task })
}

/// The admin API's routes, behind the token check.
pub fn router(coord: Coord, token: AdminToken) -> Router {
    Router::new()
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{node}", get(show_node).delete(delete_node))
        .route("/v1/nodes/{node}/rename", post(rename_node))
        .route("/v1/nodes/{node}/tags", post(tag_node))
        .route("/v1/nodes/{node}/expire", post(expire_node))
        .route("/v1/nodes/{node}/approve", post(approve_node))
        .route("/v1/nodes/{node}/ingress", post(set_ingress))
        .route("/v1/funnels", get(list_funnels))
        .route("/v1/funnels/{hostname}/close", post(close_funnel))
        .route("/v1/funnels/{hostname}/log", get(funnel_log))
        .route("/v1/audit", get(audit_log))
        .route("/v1/policy/reload", post(reload_policy))
        .layer(axum::middleware::from_fn_with_state(token, check_token))
        .with_state(coord)
}

/// An admin API error: a status and a message for the operator.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { .. } => ApiError(StatusCode::NOT_FOUND, err.to_string()),
            StoreError::Conflict { .. } => ApiError(StatusCode::CONFLICT, err.to_string()),
            other => {
                tracing::error!(err = %other, "admin API: store error");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::Store(store) => store.into(),
            RegistryError::UnknownNode(_) => ApiError(StatusCode::NOT_FOUND, err.to_string()),
            RegistryError::NameTaken { .. } => ApiError(StatusCode::CONFLICT, err.to_string()),
            other => ApiError(StatusCode::BAD_REQUEST, other.to_string()),
        }
    }
}

async fn check_token(State(token): State<AdminToken>, request: Request, next: Next) -> Response {
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match offered {
        Some(offered) if token.matches(offered.trim()) => next.run(request).await,
        _ => ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token; use the token in the state directory's admin.token"
                .into(),
        )
        .into_response(),
    }
}

async fn list_nodes(State(coord): State<Coord>) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    let nodes = coord.registry.store().list_nodes().await?;
    let mut out = Vec::with_capacity(nodes.len());
    for node in &nodes {
        out.push(node_info(&coord, node).await?);
    }
    Ok(Json(out))
}

async fn show_node(
    State(coord): State<Coord>,
    UrlPath(node): UrlPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let node = find_node(&coord, &node).await?;
    Ok(Json(node_info(&coord, &node).await?))
}

#[derive(Debug, Deserialize)]
struct RenameBody {
    name: String,
}

async fn rename_node(
    State(coord): State<Coord>,
    UrlPath(node): UrlPath<String>,
    Json(body): Json<RenameBody>,
) -> Result<Json<NodeInfo>, ApiError> {
    let before = find_node(&coord, &node).await?;
    let after = coord.registry.rename(before.id, &body.name).await?;
    coord
        .audit(
            ACTOR_ADMIN,
            audit::NODE_RENAME,
            &node_target(&after),
            json!({"from": before.name, "to": after.name}),
        )
        .await;
    coord.hub.notify();
    Ok(Json(node_info(&coord, &after).await?))
}

#[derive(Debug, Deserialize)]
struct TagsBody {
    tags: Vec<String>,
}

async fn tag_node(
    State(coord): State<Coord>,
    UrlPath(node): UrlPath<String>,
    Json(body): Json<TagsBody>,
) -> Result<Json<NodeInfo>, ApiError> {
    let before = find_node(&coord, &node).await?;
    let after = coord.registry.set_tags(before.id, &body.tags).await?;
    coord
        .audit(
            ACTOR_ADMIN,
            audit::NODE_TAG,
            &node_target(&after),
            json!({"from": before.tags, "to": after.tags}),
        )
        .await;
    coord.hub.notify();
    Ok(Json(node_info(&coord, &after).await?))
}

async fn expire_node(
    State(coord): State<Coord>,
    UrlPath(node): UrlPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let node = find_node(&coord, &node).await?;
    let at = now();
    let after = coord
        .registry
        .store()
        .rekey_node(node.id, &node.node_key, Some(at), node.approved)
        .await?;
    coord
        .audit(
            ACTOR_ADMIN,
            audit::NODE_EXPIRE,
            &node_target(&after),
            json!({"name": after.name, "key_expiry": at.0}),
        )
        .await;
    coord.hub.notify();
    Ok(Json(node_info(&coord, &after).await?))
}

async fn approve_node(
    State(coord): State<Coord>,
    UrlPath(node): UrlPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let node = find_node(&coord, &node).await?;
    let after = coord
        .registry
        .store()
        .set_node_flags(node.id, true, node.is_ingress)
        .await?;
    if !node.approved {
        coord
            .audit(
                ACTOR_ADMIN,
                audit::NODE_APPROVE,
                &node_target(&after),
                json!({"name": after.name}),
            )
            .await;
        coord.hub.notify();
    }
    Ok(Json(node_info(&coord, &after).await?))
}

async fn delete_node(
    State(coord): State<Coord>,
    UrlPath(node): UrlPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let node = find_node(&coord, &node).await?;
    let info = node_info(&coord, &node).await?;
    coord.registry.delete(node.id).await?;
    coord
        .audit(
            ACTOR_ADMIN,
            audit::NODE_DELETE,
            &node_target(&node),
            json!({"name": node.name, "ipv4": node.ipv4.to_string()}),
        )
        .await;
    coord.hub.notify();
    Ok(Json(info))
}

#[derive(Debug, Deserialize)]
struct IngressBody {
    ingress: bool,
}

async fn set_ingress(
    State(coord): State<Coord>,
    UrlPath(node): UrlPath<String>,
    Json(body): Json<IngressBody>,
) -> Result<Json<NodeInfo>, ApiError> {
    let node = find_node(&coord, &node).await?;
    let after = coord
        .registry
        .store()
        .set_node_flags(node.id, node.approved, body.ingress)
        .await?;
    if node.is_ingress != body.ingress {
        coord
            .audit(
                ACTOR_ADMIN,
                audit::NODE_INGRESS,
                &node_target(&after),
                json!({"name": after.name, "ingress": body.ingress}),
            )
            .await;
        coord.hub.notify();
    }
    Ok(Json(node_info(&coord, &after).await?))
}

async fn list_funnels(State(coord): State<Coord>) -> Result<Json<Vec<FunnelAdminInfo>>, ApiError> {
    let store = coord.registry.store();
    let funnels = store.list_funnels().await?;
    let nodes = store.list_nodes().await?;
    let mut out = Vec::with_capacity(funnels.len());
    for record in &funnels {
        let node = nodes.iter().find(|n| n.id == record.funnel.node_id);
        let owner = match node {
            Some(node) => store.user(node.user_id).await?.map(|u| u.login),
            None => None,
        };
        out.push(funnel_admin_info(record, node, owner.unwrap_or_default()));
    }
    out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    Ok(Json(out))
}

#[derive(Debug, Default, Deserialize)]
struct FunnelLogParams {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    denied: bool,
}

async fn funnel_log(
    State(coord): State<Coord>,
    UrlPath(hostname): UrlPath<String>,
    Query(params): Query<FunnelLogParams>,
) -> Result<Json<Vec<postern_proto::funnel::EdgeDecision>>, ApiError> {
    let store = coord.registry.store();
    let hostname = hostname.trim_end_matches('.').to_ascii_lowercase();
    if store.funnel_by_hostname(&hostname).await?.is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no funnel {hostname:?}; `postern-coord funnels list` shows them"),
        ));
    }
    let filter = crate::store::EdgeDecisionFilter {
        hostnames: vec![hostname],
        denied_only: params.denied,
        limit: params
            .limit
            .unwrap_or(crate::funnel::edge_log::DEFAULT_LOG_LIMIT)
            .clamp(1, postern_proto::funnel::MAX_FUNNEL_LOG_LIMIT),
        ..crate::store::EdgeDecisionFilter::default()
    };
    Ok(Json(store.edge_decisions(&filter).await?))
}

#[derive(Debug, Default, Deserialize)]
struct CloseFunnelBody {
    #[serde(default)]
    release: bool,
}

async fn close_funnel(
    State(coord): State<Coord>,
    UrlPath(hostname): UrlPath<String>,
    Json(body): Json<CloseFunnelBody>,
) -> Result<Json<FunnelAdminInfo>, ApiError> {
    let release = body.release;
    let store = coord.registry.store();
    let hostname = hostname.trim_end_matches('.').to_ascii_lowercase();
    let record = store.funnel_by_hostname(&hostname).await?.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no funnel {hostname:?}; `postern-coord funnels list` shows them"),
        )
    })?;
    let funnel = &record.funnel;
    let mut after = record.clone();
    if funnel.is_open {
        match store.close_funnel(funnel.node_id, funnel.port).await {
            Ok(closed) => {
                coord
                    .record_close(
                        &closed,
                        ACTOR_ADMIN,
                        audit::FUNNEL_CLOSE,
                        json!({"by": "admin"}),
                    )
                    .await;
                after = closed;
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    if release {
        store.delete_funnel(funnel.node_id, funnel.port).await?;
        coord
            .audit(
                ACTOR_ADMIN,
                audit::FUNNEL_RELEASE,
                &funnel.hostname,
                json!({"node_id": funnel.node_id.0, "port": funnel.port}),
            )
            .await;
        after.funnel.is_open = false;
    }
    let node = store.node(funnel.node_id).await?;
    let owner = match &node {
        Some(node) => store.user(node.user_id).await?.map(|u| u.login),
        None => None,
    };
    Ok(Json(funnel_admin_info(
        &after,
        node.as_ref(),
        owner.unwrap_or_default(),
    )))
}

fn funnel_admin_info(
    record: &crate::store::FunnelRecord,
    node: Option<&NodeRecord>,
    owner: String,
) -> FunnelAdminInfo {
    let funnel = &record.funnel;
    FunnelAdminInfo {
        hostname: funnel.hostname.clone(),
        url: crate::funnel::funnel_url(funnel),
        open: funnel.is_open && funnel.expires_at.is_none_or(|at| at > now()),
        node_id: funnel.node_id.0,
        node: node.map(|n| n.name.clone()).unwrap_or_default(),
        owner,
        port: funnel.port,
        name: funnel.name.clone(),
        protocol: funnel.protocol,
        public_port: funnel.public_port,
        gates: crate::funnel::gate_kinds(funnel),
        gate_mode: funnel.gate_mode,
        opened_at: funnel.opened_at.map(|t| t.0),
        expires_at: funnel.expires_at.map(|t| t.0),
    }
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    since_ms: i64,
    limit: Option<u32>,
}

async fn audit_log(
    State(coord): State<Coord>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(MAX_AUDIT_RECORDS)
        .min(MAX_AUDIT_RECORDS);
    let records = coord
        .registry
        .store()
        .audit_since(query.since_ms, limit)
        .await?;
    Ok(Json(records.into_iter().map(AuditEntry::from).collect()))
}

async fn reload_policy(State(coord): State<Coord>) -> Result<Json<serde_json::Value>, ApiError> {
    match coord.reload_policy(ACTOR_ADMIN, true).await {
        ReloadOutcome::Unchanged => Ok(Json(json!({"outcome": "unchanged"}))),
        ReloadOutcome::Applied { changed, summary } => Ok(Json(
            json!({"outcome": "applied", "summary": summary, "nodes_changed": changed.len()}),
        )),
        ReloadOutcome::Failed(err) => {
            Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, err.to_string()))
        }
    }
}

/// The node named by `reference`: an id (digits) or a name.
async fn find_node(coord: &Coord, reference: &str) -> Result<NodeRecord, ApiError> {
    let store = coord.registry.store();
    let found = match reference.parse::<u64>() {
        Ok(id) => store.node(NodeId(id)).await?,
        Err(_) => store
            .list_nodes()
            .await?
            .into_iter()
            .find(|node| node.name == reference),
    };
    found.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no node {reference:?}; `postern-coord nodes list` shows ids and names"),
        )
    })
}

async fn node_info(coord: &Coord, node: &NodeRecord) -> Result<NodeInfo, ApiError> {
    let user = coord
        .registry
        .store()
        .user(node.user_id)
        .await?
        .map(|user| user.login)
        .unwrap_or_default();
    Ok(NodeInfo {
        id: node.id.0,
        name: node.name.clone(),
        fqdn: coord.registry.fqdn(&node.name),
        ipv4: node.ipv4.to_string(),
        ipv6: node.ipv6.to_string(),
        user,
        tags: node.tags.clone(),
        online: coord.hub.online().contains(&node.id),
        approved: node.approved,
        expired: is_expired(node, now()),
        key_expiry: node.key_expiry.map(|t: UnixTime| t.0),
        ephemeral: node.ephemeral,
        is_ingress: node.is_ingress,
        created_at: node.created_at.0,
        last_seen: node.last_seen.map(|t| t.0),
        node_key: node.node_key.to_string(),
        endpoints: node.endpoints.iter().map(ToString::to_string).collect(),
    })
}

/// Writes `text` to `path` with mode 0600 (replacing it).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let aside: PathBuf = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&aside, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_private_compared_exactly_and_never_printed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = AdminToken::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(token.expose().starts_with(ADMIN_TOKEN_PREFIX));
        let again = AdminToken::load_or_create(dir.path()).unwrap();
        assert!(token.matches(again.expose()));
        assert!(!token.matches(""));
        assert!(!token.matches(&token.expose()[..token.expose().len() - 1]));
        assert!(!format!("{token:?}").contains(token.expose()));
    }
}
