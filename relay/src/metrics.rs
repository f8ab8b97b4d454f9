//! The relay's counters in the Prometheus text format.
//!
//! Rendered from a snapshot of the core at scrape time, so the data path only bumps plain
//! integers. Per-client series are labelled with the node key's short form
//! (`nodekey:0123abcd`), which is enough to find a node and reveals nothing secret.

use postern_proto::NodePublicKey;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::core::{ClientStats, RelayStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    node: String,
    reason: &'static str,
}

/// Encodes relay-wide and per-client counters as OpenMetrics text.
pub(crate) fn encode(
    stats: &RelayStats,
    refused: u64,
    clients: &[(NodePublicKey, ClientStats)],
) -> String {
    let mut registry = Registry::with_prefix("postern_relay");
    let attached = Gauge::<i64>::default();
    attached.set(i64::try_from(stats.clients).unwrap_or(i64::MAX));
    registry.register("clients", "Clients attached now", attached);
    let counter = |value: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        c
    };
    registry.register(
        "forwarded_packets",
        "Packets queued for delivery to another client",
        counter(stats.forwarded_packets),
    );
    registry.register(
        "forwarded_bytes",
        "Bytes of forwarded packets",
        counter(stats.forwarded_bytes),
    );
    registry.register(
        "dropped_packets",
        "Packets dropped for any reason",
        counter(stats.dropped_packets),
    );
    registry.register(
        "refused_attaches",
        "Connections refused at attach (bad proof, unregistered key, timeout)",
        counter(refused),
    );
    let rx_packets = Family::<NodeLabel, Counter<u64>>::default();
    let rx_bytes = Family::<NodeLabel, Counter<u64>>::default();
    let tx_packets = Family::<NodeLabel, Counter<u64>>::default();
    let tx_bytes = Family::<NodeLabel, Counter<u64>>::default();
    let drops = Family::<DropLabel, Counter<u64>>::default();
    for (key, s) in clients {
        let node = key.short();
        let label = NodeLabel { node: node.clone() };
        rx_packets.get_or_create(&label).inc_by(s.rx_packets);
        rx_bytes.get_or_create(&label).inc_by(s.rx_bytes);
        tx_packets.get_or_create(&label).inc_by(s.tx_packets);
        tx_bytes.get_or_create(&label).inc_by(s.tx_bytes);
        for (reason, value) in [
            ("queue_full", s.dropped_queue_full),
            ("rate_limited", s.dropped_rate_limited),
            ("no_peer", s.dropped_no_peer),
        ] {
            let label = DropLabel {
                node: node.clone(),
                reason,
            };
            drops.get_or_create(&label).inc_by(value);
        }
    }
    registry.register(
        "client_rx_packets",
        "Packets a client sent into the relay",
        rx_packets,
    );
    registry.register(
        "client_rx_bytes",
        "Bytes a client sent into the relay",
        rx_bytes,
    );
    registry.register(
        "client_tx_packets",
        "Packets the relay delivered to a client",
        tx_packets,
    );
    registry.register(
        "client_tx_bytes",
        "Bytes the relay delivered to a client",
        tx_bytes,
    );
    registry.register(
        "client_dropped_packets",
        "Packets dropped, by client and reason",
        drops,
    );
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        // Writing to a String cannot fail; an empty scrape is the honest fallback.
        text.clear();
    }
    text
}
