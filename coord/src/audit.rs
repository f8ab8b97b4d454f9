//! The coord's audit log: who registered, approved, expired, deleted, renamed or tagged a
//! node, who made an auth key, every policy reload with its outcome, and every funnel
//! opened, closed, expired or revoked.
//!
//! Records go to the store's append-only `audit_records` table (see `docs/store.md`).
//! Writing one never fails the action it records: a store error is logged instead, since
//! the action has already happened. Details never hold secrets.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde_json::Value;

use crate::control::Coord;
use crate::store::{NewAuditRecord, Store};

/// A node registered (or registered again, renewing its key).
pub const NODE_REGISTER: &str = "node.register";
/// A node was approved by an admin.
pub const NODE_APPROVE: &str = "node.approve";
/// A node's key expired, or an admin expired it.
pub const NODE_EXPIRE: &str = "node.expire";
/// A node was deleted (by an admin, or as an offline ephemeral node).
pub const NODE_DELETE: &str = "node.delete";
/// A node was renamed.
pub const NODE_RENAME: &str = "node.rename";
/// A node's tags were replaced.
pub const NODE_TAG: &str = "node.tag";
/// An auth key was made.
pub const AUTH_KEY_CREATE: &str = "authkey.create";
/// A node was marked, or unmarked, as an ingress.
pub const NODE_INGRESS: &str = "node.ingress";
/// A funnel was opened (or reopened with new settings); details name the gate kinds.
pub const FUNNEL_OPEN: &str = "funnel.open";
/// A funnel was closed by its node or an admin.
pub const FUNNEL_CLOSE: &str = "funnel.close";
/// A funnel reached its expiry and was closed.
pub const FUNNEL_EXPIRE: &str = "funnel.expire";
/// A funnel was closed because the policy no longer allows it.
pub const FUNNEL_REVOKE: &str = "funnel.revoke";
/// An admin released a funnel's hostname (and public port).
pub const FUNNEL_RELEASE: &str = "funnel.release";
/// A new policy was put in force.
pub const POLICY_RELOAD: &str = "policy.reload";
/// A new policy was refused; the previous one stays in force.
pub const POLICY_RELOAD_FAILED: &str = "policy.reload.failed";

/// A login was refused: by the allowed domains or groups, by the identity provider, because
/// the sign-in could not be verified, or because it was not completed in time.
pub const LOGIN_REFUSED: &str = "login.refused";

/// The actor of a refused login whose person is unknown (the IdP refused, or nobody
/// signed in before the login expired).
pub const ACTOR_ANONYMOUS: &str = "anonymous";

tokio::task_local! {
    /// The network address of the client the current task serves (a node's control
    /// connection). [`record`] writes it as the record's source address; set it with
    /// `CLIENT_ADDR.scope(addr, future)` around the work done for that client.
    pub static CLIENT_ADDR: SocketAddr;
}

/// The actor of things the coord does by itself (expiry, ephemeral cleanup, file reloads).
pub const ACTOR_COORD: &str = "coord";
/// The actor of changes made through the admin API or the admin commands.
pub const ACTOR_ADMIN: &str = "admin";

/// Appends a record to `store`, logging (not returning) a failure. Its source address is
/// [`CLIENT_ADDR`] if the task has one.
pub async fn record(store: &Store, actor: &str, action: &str, target: &str, details: Value) {
    let source = CLIENT_ADDR.try_with(|addr| *addr).ok();
    record_from(store, actor, action, target, source, details).await;
}

/// Like [`record`], with the source address given (a browser's, for a login callback).
pub async fn record_from(
    store: &Store,
    actor: &str,
    action: &str,
    target: &str,
    source: Option<SocketAddr>,
    details: Value,
) {
    let record = NewAuditRecord {
        at_ms: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        source_addr: source.map(|addr| addr.to_string()),
        details,
    };
    if let Err(err) = store.append_audit(&record).await {
        tracing::error!(%err, action, target, "cannot write the audit record");
    }
}

impl Coord {
    /// Appends an audit record (see [`record`]).
    pub async fn audit(&self, actor: &str, action: &str, target: &str, details: Value) {
        record(self.registry.store(), actor, action, target, details).await;
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
