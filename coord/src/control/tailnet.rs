//! The tailnet as the netmap builder sees it: one read of the store per change, shared by
//! every session, with the policy compiler kept in step; and policy reloads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use postern_proto::netmap::Netmap;
use postern_proto::{NodeId, UnixTime};
use serde_json::json;

use super::Coord;
use crate::audit;
use crate::netmap::{TailnetView, build_netmap};
use crate::policy::ReloadOutcome;
use crate::store::{FunnelRecord, StoreError};

/// The last view read, with the hub version it was read at.
#[derive(Debug, Clone, Default)]
pub struct ViewCache {
    inner: Arc<tokio::sync::Mutex<Option<CachedView>>>,
}

/// A view and the hub version it was read at.
type CachedView = (u64, Arc<TailnetView>);

impl Coord {
    /// The tailnet now: read from the store once per change (sessions woken by the same
    /// change share it), with the policy compiler synced to its eligible nodes.
    pub async fn tailnet_view(&self) -> Result<Arc<TailnetView>, StoreError> {
        // The version the caller needs is the one before it queued for the cache: a view
        // that another session read meanwhile, at that version or later, will do. (An exact
        // match would make every session re-read the store while changes keep coming, as
        // when thousands of nodes connect at once.)
        let wanted = self.hub.version();
        let mut cache = self.view_cache.inner.lock().await;
        let version = self.hub.version();
        if let Some((at, view)) = cache.as_ref()
            && *at >= wanted
        {
            return Ok(view.clone());
        }
        let store = self.registry.store();
        let nodes = store.list_nodes().await?;
        let users = store
            .list_users()
            .await?
            .into_iter()
            .map(|user| (user.id, user))
            .collect();
        let mut funnels: HashMap<NodeId, Vec<FunnelRecord>> = HashMap::new();
        // Closed funnels only reserve their hostnames: netmaps never see them.
        for funnel in store
            .list_funnels()
            .await?
            .into_iter()
            .filter(|f| f.funnel.is_open)
        {
            funnels
                .entry(funnel.funnel.node_id)
                .or_default()
                .push(funnel);
        }
        let view = TailnetView::new(
            nodes,
            users,
            self.hub.online(),
            self.registry.tailnet_domain().to_owned(),
            Some(self.registry.ula_prefix()),
            funnels,
            now(),
            self.config.relay_map.clone(),
        );
        let changed = self.policy.sync(view.policy_views());
        if !changed.is_empty() {
            tracing::debug!(nodes = changed.len(), "policy results changed");
        }
        let view = Arc::new(view);
        *cache = Some((version, view.clone()));
        Ok(view)
    }

    /// Node `id`'s netmap now, or `None` if it is not registered.
    pub async fn netmap_for(&self, id: NodeId) -> Result<Option<Netmap>, StoreError> {
        let view = self.tailnet_view().await?;
        // Ingress nodes get every served funnel's route (computed first: it reads other
        // nodes' compiled results).
        let routes = match view.node(id) {
            Some(node) if node.is_ingress => self.funnel_routes(&view),
            _ => Vec::new(),
        };
        Ok(self
            .policy
            .with_compiled(postern_acl::NodeId(id.0), |compiled| {
                let mut netmap = build_netmap(&view, id, compiled)?;
                if compiled.is_some() {
                    netmap.funnel_routes = routes;
                }
                Some(netmap)
            }))
    }

    /// Re-reads the policy file (see [`crate::policy::PolicyEngine::reload`]); a new valid
    /// policy goes into force and the nodes whose results changed get deltas. Logs the
    /// outcome and writes an audit record for every applied or refused policy, as `actor`.
    pub async fn reload_policy(&self, actor: &str, force: bool) -> ReloadOutcome {
        let outcome = self.policy.reload(force);
        let source = self.policy.source().to_string();
        match &outcome {
            ReloadOutcome::Unchanged => {
                if force {
                    tracing::info!(policy = %source, "policy unchanged");
                }
            }
            ReloadOutcome::Applied { changed, summary } => {
                tracing::info!(policy = %source, nodes_changed = changed.len(), "policy reloaded: {summary}");
                // Recorded before the netmaps change, so the log never lags behind them.
                self.audit(
                    actor,
                    audit::POLICY_RELOAD,
                    &source,
                    json!({"ok": true, "summary": summary, "nodes_changed": changed.len()}),
                )
                .await;
                self.hub.notify();
            }
            ReloadOutcome::Failed(err) => {
                tracing::error!(policy = %source, "policy reload refused, the previous policy stays in force:\n{err}");
                let errors: Vec<String> = match err {
                    crate::policy::PolicyLoadError::Invalid(errors) => {
                        errors.errors().iter().map(ToString::to_string).collect()
                    }
                    other => vec![other.to_string()],
                };
                self.audit(
                    actor,
                    audit::POLICY_RELOAD_FAILED,
                    &source,
                    json!({"ok": false, "errors": errors}),
                )
                .await;
            }
        }
        outcome
    }

    /// Starts the coord's background work, ended by shutdown: watching the policy file
    /// (every `policy_poll_interval`) and the node lifecycle (key expiry, offline
    /// ephemeral nodes). [`crate::server::serve`] calls it.
    pub fn spawn_background_tasks(&self) {
        let coord = self.clone();
        tokio::spawn(async move {
            let token = coord.shutdown_token();
            let mut tick = tokio::time::interval(coord.config.policy_poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = token.cancelled() => return,
                }
                coord.reload_policy(audit::ACTOR_COORD, false).await;
            }
        });
        let coord = self.clone();
        tokio::spawn(async move { crate::lifecycle::run(coord).await });
        crate::replicas::spawn(self);
    }
}

/// The wall-clock time now.
pub fn now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}
