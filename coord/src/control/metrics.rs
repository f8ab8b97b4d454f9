//! Prometheus metrics of the control plane.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The control plane's counters, registered in one Prometheus registry.
#[derive(Debug)]
pub struct ControlMetrics {
    /// Successful registrations.
    pub registrations: Counter,
    /// Refused registrations.
    pub registrations_rejected: Counter,
    /// Nodes holding a map stream now.
    pub connected_nodes: Gauge,
    /// Netmap messages sent (full maps and deltas; keepalives not counted).
    pub netmap_frames_sent: Counter,
    /// Keepalives sent.
    pub keepalives_sent: Counter,
    /// Control handshakes that failed.
    pub handshake_failures: Counter,
    /// Edge log reads held now, waiting for new decisions (`postern funnel log --follow`
    /// and request inspection's denials).
    pub edge_log_reads_waiting: Gauge,
    registry: Registry,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlMetrics {
    /// Fresh metrics, registered under the `postern_coord` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("postern_coord");
        let registrations = Counter::default();
        let registrations_rejected = Counter::default();
        let connected_nodes = Gauge::default();
        let netmap_frames_sent = Counter::default();
        let keepalives_sent = Counter::default();
        let handshake_failures = Counter::default();
        let edge_log_reads_waiting = Gauge::default();
        registry.register("registrations", "Nodes registered", registrations.clone());
        registry.register(
            "registrations_rejected",
            "Registrations refused",
            registrations_rejected.clone(),
        );
        registry.register(
            "connected_nodes",
            "Nodes holding a map stream",
            connected_nodes.clone(),
        );
        registry.register(
            "netmap_frames_sent",
            "Full netmaps and deltas sent",
            netmap_frames_sent.clone(),
        );
        registry.register(
            "keepalives_sent",
            "Keepalives sent",
            keepalives_sent.clone(),
        );
        registry.register(
            "control_handshake_failures",
            "Control handshakes that failed",
            handshake_failures.clone(),
        );
        registry.register(
            "edge_log_reads_waiting",
            "Edge log reads held, waiting for new decisions",
            edge_log_reads_waiting.clone(),
        );
        Self {
            registrations,
            registrations_rejected,
            connected_nodes,
            netmap_frames_sent,
            keepalives_sent,
            handshake_failures,
            edge_log_reads_waiting,
            registry,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
