//! Who is online, and a change signal every session watches.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use postern_proto::NodeId;
use tokio::sync::watch;

/// Shared between sessions: the set of connected nodes and a counter bumped on every
/// change to the tailnet (a join, a leave, moved endpoints). A session that sees the
/// counter change recomputes its node's netmap and sends the difference.
#[derive(Debug, Clone)]
pub struct NetmapHub {
    online: Arc<Mutex<HashMap<NodeId, usize>>>,
    changes: Arc<watch::Sender<u64>>,
    /// Woken on every local change, for announcing it to other replicas
    /// ([`crate::replicas`]); holds one permit when nobody waits, so bursts coalesce.
    announce: Arc<tokio::sync::Notify>,
}

impl Default for NetmapHub {
    fn default() -> Self {
        Self::new()
    }
}

impl NetmapHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self {
            online: Arc::default(),
            changes: Arc::new(watch::channel(0).0),
            announce: Arc::default(),
        }
    }

    /// A receiver that wakes on every later change. Subscribe before reading the state
    /// the first netmap is built from, so no change falls in between.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The change counter now; a cached view read at this version is current until it moves.
    pub fn version(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Signals that the tailnet changed (and, with replicas, announces it to the others).
    pub fn notify(&self) {
        self.notify_local();
        self.announce.notify_one();
    }

    /// Signals a change another replica announced: the sessions here recompute, and the
    /// change is not announced again.
    pub fn notify_local(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Resolves after the next local change (at once if one happened since the last call);
    /// [`crate::replicas`] announces changes through it.
    pub async fn local_change(&self) {
        self.announce.notified().await;
    }

    /// Marks a node online (it may hold several streams) and signals the change.
    pub fn connected(&self, id: NodeId) {
        if let Ok(mut online) = self.online.lock() {
            *online.entry(id).or_default() += 1;
        }
        self.notify();
    }

    /// Undoes one [`Self::connected`] and signals the change.
    pub fn disconnected(&self, id: NodeId) {
        if let Ok(mut online) = self.online.lock()
            && let Some(count) = online.get_mut(&id)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                online.remove(&id);
            }
        }
        self.notify();
    }

    /// The nodes online now.
    pub fn online(&self) -> HashSet<NodeId> {
        self.online
            .lock()
            .map(|online| online.keys().copied().collect())
            .unwrap_or_default()
    }
}
