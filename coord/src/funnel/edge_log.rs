//! The edge log: ingress nodes report the edge's request decisions, funnel owners read
//! them back (`postern funnel log`).
//!
//! Two rules keep it to its owners:
//!
//! - A batch ([`EdgeDecisionBatch`]) is accepted only from a node the coord marks as an
//!   ingress (`keys create --ingress`) that takes part in the tailnet now; from any other
//!   node it is refused whole (`not_ingress`). Each decision must name a funnel the coord
//!   routes to ingress nodes now, or one that expired less than [`EXPIRY_GRACE_SECS`] ago
//!   (so the edge's `expire` record and requests in flight at the expiry are kept); others
//!   are dropped and counted. The owner is the funnel's node in the coord's store, never
//!   what the ingress says.
//! - A node's log request ([`FunnelLogRequest`]) is answered with decisions of funnels
//!   that node owns, and nothing else.
//!
//! A log request may ask to wait ([`FunnelLogQuery::wait_ms`]): when nothing matches yet,
//! the answer is held until a batch stores a decision of one of the node's funnels
//! ([`EdgeLogSignal`]), then the query runs again; at the end of the wait the answer is
//! empty (the node asks again). With PostgreSQL replicas, a replica that stores decisions
//! announces their owners ([`crate::replicas`]), so a read waiting on another replica is
//! woken too. So the node's inspector and `postern funnel log --follow` see a denial about
//! as soon as the ingress reports it (the ingress reports within a quarter of a second),
//! without polling the coord.
//!
//! Stored rows are bounded by [`ControlConfig::edge_log_per_funnel`] and
//! [`ControlConfig::edge_log_max_age`](crate::control::ControlConfig::edge_log_max_age).
//!
//! [`ControlConfig::edge_log_per_funnel`]: crate::control::ControlConfig::edge_log_per_funnel

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern_proto::NodeId;
use postern_proto::funnel::{
    EdgeDecision, EdgeDecisionAck, EdgeDecisionBatch, FunnelLogQuery, FunnelLogRequest,
    FunnelLogResponse, FunnelRefusal, MAX_EDGE_BATCH, MAX_FUNNEL_LOG_LIMIT, MAX_FUNNEL_LOG_WAIT_MS,
};
use tokio::sync::broadcast;

use super::check::{INTERNAL, INVALID, NOT_FOUND, refusal};
use crate::control::Coord;
use crate::store::{EdgeDecisionFilter, EdgeRetention, FunnelRecord, NewEdgeDecision};

/// Refusal code: the sender of a batch of edge decisions is not an ingress node.
pub const NOT_INGRESS: &str = "not_ingress";

/// How long after a funnel's expiry its decisions are still accepted: 5 minutes.
pub const EXPIRY_GRACE_SECS: i64 = 300;

/// How many decisions a log request returns when it does not say: 50.
pub const DEFAULT_LOG_LIMIT: u32 = 50;

/// Tells waiting log requests that a node's funnels have new edge decisions, and
/// [`crate::replicas`] which ones this process stored (to announce them to the others).
///
/// Call [`EdgeLogSignal::subscribe`] before running the query that came back empty, then
/// wait on the receiver: a batch stored in between is not missed.
#[derive(Debug, Clone)]
pub struct EdgeLogSignal {
    /// To waiting reads: the owner whose funnels got decisions, or `None` when anyone's
    /// may have (an announcement was lost).
    waiters: Arc<broadcast::Sender<Option<NodeId>>>,
    /// The owners of decisions stored by this process, for the replicas' announcer.
    stored_here: Arc<broadcast::Sender<NodeId>>,
}

impl Default for EdgeLogSignal {
    fn default() -> Self {
        // A receiver that falls this far behind sees `Lagged`: a waiter re-runs its query,
        // the announcer announces "anyone's".
        Self {
            waiters: Arc::new(broadcast::channel(256).0),
            stored_here: Arc::new(broadcast::channel(256).0),
        }
    }
}

impl EdgeLogSignal {
    /// A receiver of the owners of decisions stored from now on (`None`: anyone's may
    /// have been).
    pub fn subscribe(&self) -> broadcast::Receiver<Option<NodeId>> {
        self.waiters.subscribe()
    }

    /// A receiver of the owners of decisions this process stores from now on (what the
    /// replicas' announcer tells the others).
    pub fn stored_here(&self) -> broadcast::Receiver<NodeId> {
        self.stored_here.subscribe()
    }

    /// Signals that this process stored decisions of `owner`'s funnels.
    pub fn stored(&self, owner: NodeId) {
        // No receiver: nobody waits, or no replicas.
        let _ = self.waiters.send(Some(owner));
        let _ = self.stored_here.send(owner);
    }

    /// Signals that another replica stored decisions of `owners`' funnels (empty: of
    /// anyone's).
    pub fn stored_elsewhere(&self, owners: &[NodeId]) {
        if owners.is_empty() {
            self.anything();
        }
        for owner in owners {
            let _ = self.waiters.send(Some(*owner));
        }
    }

    /// Signals that anyone's funnels may have new decisions (announcements may have been
    /// lost): every waiting read runs its query again.
    pub fn anything(&self) {
        let _ = self.waiters.send(None);
    }
}

/// Counts a read in `edge_log_reads_waiting` while it is held, however its wait ends
/// (answered, or dropped with its session).
struct HeldRead<'m>(&'m prometheus_client::metrics::gauge::Gauge);

impl<'m> HeldRead<'m> {
    fn new(gauge: &'m prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for HeldRead<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The longest path kept, in bytes (longer ones are cut at a character boundary).
const MAX_PATH_LEN: usize = 1024;
/// The longest of the other text fields kept, in bytes.
const MAX_SHORT_LEN: usize = 128;

impl Coord {
    /// Stores the decisions of `batch` that ingress node `sender` may report (see the
    /// [module docs](self)) and says how many were stored and dropped. Never fails: a
    /// refused batch or a store error is a refusal in the acknowledgement (and a log line).
    pub async fn handle_edge_decisions(
        &self,
        sender: NodeId,
        batch: EdgeDecisionBatch,
    ) -> EdgeDecisionAck {
        let (batch_id, count) = (batch.batch_id, batch.decisions.len());
        let refused = |refusal: FunnelRefusal| EdgeDecisionAck {
            batch_id,
            stored: 0,
            dropped: u32::try_from(count).unwrap_or(u32::MAX),
            refusal: Some(refusal),
        };
        if batch.decisions.len() > MAX_EDGE_BATCH {
            return refused(refusal(
                INVALID,
                format!(
                    "a batch carries at most {MAX_EDGE_BATCH} decisions, not {}",
                    batch.decisions.len()
                ),
            ));
        }
        let view = match self.tailnet_view().await {
            Ok(view) => view,
            Err(err) => {
                tracing::error!(%err, "cannot read the tailnet to check edge decisions");
                return refused(refusal(
                    INTERNAL,
                    "the coordination server failed; try again",
                ));
            }
        };
        let is_ingress = view
            .node(sender)
            .is_some_and(|node| node.is_ingress && view.is_eligible(node));
        if !is_ingress {
            tracing::warn!(node = %sender, "a node that is not an ingress reported edge decisions; refused");
            return refused(refusal(
                NOT_INGRESS,
                "only ingress nodes (registered with a key from `postern-coord keys create --ingress`) report edge decisions",
            ));
        }
        let routed: HashSet<String> = self
            .funnel_routes(&view)
            .into_iter()
            .map(|route| route.hostname)
            .collect();
        let funnels: HashMap<&str, &FunnelRecord> = view
            .funnels
            .values()
            .flatten()
            .map(|record| (record.funnel.hostname.as_str(), record))
            .collect();
        let received_ms = now_ms();
        let mut accepted = Vec::with_capacity(batch.decisions.len());
        let mut dropped: u32 = 0;
        for decision in batch.decisions {
            let hostname = decision.funnel.to_ascii_lowercase();
            let Some(record) = funnels.get(hostname.as_str()) else {
                dropped = dropped.saturating_add(1);
                continue;
            };
            let recently_expired = record.funnel.expires_at.is_some_and(|at| {
                at <= view.now && view.now.0.saturating_sub(at.0) <= EXPIRY_GRACE_SECS
            });
            if !routed.contains(&hostname) && !recently_expired {
                dropped = dropped.saturating_add(1);
                continue;
            }
            accepted.push(NewEdgeDecision {
                funnel_id: record.id,
                node_id: record.funnel.node_id,
                ingress_id: sender,
                received_ms,
                decision: bounded(decision, hostname),
            });
        }
        let retention = EdgeRetention {
            per_funnel: self.config.edge_log_per_funnel,
            received_before_ms: received_ms.saturating_sub(
                i64::try_from(self.config.edge_log_max_age.as_millis()).unwrap_or(i64::MAX),
            ),
        };
        let stored = match self
            .registry
            .store()
            .append_edge_decisions(&accepted, retention)
            .await
        {
            Ok(stored) => stored,
            Err(err) => {
                tracing::error!(%err, "cannot store edge decisions");
                return refused(refusal(
                    INTERNAL,
                    "the coordination server failed; try again",
                ));
            }
        };
        if stored > 0 {
            let owners: HashSet<NodeId> = accepted.iter().map(|d| d.node_id).collect();
            for owner in owners {
                self.edge_log.stored(owner);
            }
        }
        if dropped > 0 {
            tracing::debug!(ingress = %sender, dropped, "edge decisions for funnels not routed to this ingress were dropped");
        }
        EdgeDecisionAck {
            batch_id,
            stored: u32::try_from(stored).unwrap_or(u32::MAX),
            dropped,
            refusal: None,
        }
    }

    /// Answers node `node_id`'s request for its funnels' edge decisions: newest first, only
    /// of funnels it owns. A funnel name the node does not hold is a `not_found` refusal.
    ///
    /// A request that asks to wait ([`FunnelLogQuery::wait_ms`]) and matches nothing yet
    /// resolves only when a matching decision is stored or the wait (at most
    /// [`MAX_FUNNEL_LOG_WAIT_MS`]) ends: run it beside the session's other work, not in
    /// its way (the control session holds it in a task).
    pub async fn handle_funnel_log(
        &self,
        node_id: NodeId,
        request: FunnelLogRequest,
    ) -> FunnelLogResponse {
        let wait = request
            .query
            .wait_ms
            .map(|ms| Duration::from_millis(u64::from(ms.min(MAX_FUNNEL_LOG_WAIT_MS))));
        let result = match wait {
            Some(wait) if !wait.is_zero() => {
                self.funnel_log_waiting(node_id, &request.query, wait).await
            }
            _ => self.funnel_log(node_id, &request.query).await,
        };
        FunnelLogResponse {
            request_id: request.request_id,
            result,
        }
    }

    /// [`Self::funnel_log`], run again whenever `node_id`'s funnels may have new decisions,
    /// until it finds some; empty when `wait` ends first.
    async fn funnel_log_waiting(
        &self,
        node_id: NodeId,
        query: &FunnelLogQuery,
        wait: Duration,
    ) -> Result<Vec<EdgeDecision>, FunnelRefusal> {
        let deadline = tokio::time::Instant::now() + wait;
        let _held = HeldRead::new(&self.metrics.edge_log_reads_waiting);
        let mut stored = self.edge_log.subscribe();
        loop {
            let found = self.funnel_log(node_id, query).await?;
            if !found.is_empty() {
                return Ok(found);
            }
            loop {
                tokio::select! {
                    owner = stored.recv() => match owner {
                        Ok(Some(owner)) if owner != node_id => {}
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep_until(deadline).await;
                            return Ok(Vec::new());
                        }
                    },
                    // The node asks again: what came without a signal is found then.
                    () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                }
            }
        }
    }

    async fn funnel_log(
        &self,
        node_id: NodeId,
        query: &FunnelLogQuery,
    ) -> Result<Vec<EdgeDecision>, FunnelRefusal> {
        let store = self.registry.store();
        let internal = |err: crate::store::StoreError| {
            tracing::error!(%err, "cannot read the edge log");
            refusal(INTERNAL, "the coordination server failed; try again")
        };
        let hostnames = match &query.funnel {
            None => Vec::new(),
            Some(wanted) => {
                let wanted = wanted.trim().to_ascii_lowercase();
                let funnels = store.funnels_of_node(node_id).await.map_err(internal)?;
                let hostnames: Vec<String> = funnels
                    .into_iter()
                    .filter(|f| {
                        f.funnel.hostname == wanted || f.funnel.name.to_ascii_lowercase() == wanted
                    })
                    .map(|f| f.funnel.hostname)
                    .collect();
                if hostnames.is_empty() {
                    return Err(refusal(
                        NOT_FOUND,
                        format!(
                            "this node has no funnel named {wanted:?}; give the name or hostname `postern funnel status` shows"
                        ),
                    ));
                }
                hostnames
            }
        };
        let filter = EdgeDecisionFilter {
            node_id: Some(node_id),
            hostnames,
            since_ms: query.since.map(|t| t.0.saturating_mul(1000)),
            after_id: query.after_id,
            denied_only: query.denied_only,
            limit: query
                .limit
                .unwrap_or(DEFAULT_LOG_LIMIT)
                .clamp(1, MAX_FUNNEL_LOG_LIMIT),
        };
        store.edge_decisions(&filter).await.map_err(internal)
    }
}

/// The decision with its hostname normalised and its text fields cut to size.
fn bounded(mut decision: EdgeDecision, hostname: String) -> EdgeDecision {
    decision.id = 0;
    decision.funnel = hostname;
    cut(&mut decision.path, MAX_PATH_LEN);
    cut(&mut decision.client, MAX_SHORT_LEN);
    cut(&mut decision.method, MAX_SHORT_LEN);
    cut(&mut decision.result, MAX_SHORT_LEN);
    if let Some(gate) = decision.gate.as_mut() {
        cut(gate, MAX_SHORT_LEN);
    }
    if let Some(reason) = decision.reason.as_mut() {
        cut(reason, MAX_SHORT_LEN);
    }
    decision
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_at_character_boundaries() {
        let mut text = "é".repeat(100);
        cut(&mut text, 5);
        assert_eq!(text, "éé");
        let mut short = "abc".to_owned();
        cut(&mut short, 5);
        assert_eq!(short, "abc");
    }
}
