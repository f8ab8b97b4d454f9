//! The node's Prometheus metrics: `GET /v0/metrics` on the local API, which
//! `postern metrics` prints.
//!
//! Rendered on each scrape from the same snapshot as `postern status` (the netmap's peers
//! with the engine's counters) and the engine's drop counters, so the two never disagree.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `postern_node_info` | gauge, always 1 | `name`, `version` |
//! | `postern_node_coord_connected` | gauge, 0 or 1 | |
//! | `postern_node_key_expiry_timestamp_seconds` | gauge (absent if the key never expires) | |
//! | `postern_node_peers`, `postern_node_peers_online` | gauge | |
//! | `postern_node_peer_received_bytes_total`, `postern_node_peer_sent_bytes_total` | counter | `peer` |
//! | `postern_node_peer_last_handshake_timestamp_seconds` | gauge (absent before the first) | `peer` |
//! | `postern_node_peer_path` | gauge, 1 for the path in use | `peer`, `path` (`direct`, `relayed`, `none`) |
//! | `postern_node_dropped_packets_total` | counter | `reason` |
//! | `postern_node_datagrams_received_total`, `postern_node_datagrams_sent_total` | counter | |
//! | `postern_node_relayed_datagrams_received_total`, `postern_node_relayed_datagrams_sent_total` | counter | |
//! | `postern_node_netstack_packets_total` | counter | `direction` (`in`, `out`) |
//! | `postern_node_netstack_dropped_packets_total` | counter | `reason` |
//! | `postern_node_netstack_backlog_refused_total` | counter | |
//! | `postern_node_netstack_tcp_sockets`, `postern_node_netstack_udp_sockets` | gauge | |
//! | `postern_node_cookie_replies_total` | counter | |
//! | `postern_node_serves`, `postern_node_funnels` | gauge | |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use postern_netstack::NetstackStats;

use super::status::Status;
use crate::engine::EngineStats;
use crate::udp::ShellCounters;

/// The content type of [`encode`]'s text (OpenMetrics).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    name: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    peer: String,
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// The data path's own counters, besides the engine's: the UDP shell around it and the
/// userspace stack. A packet dropped here never reached the engine or an application, so
/// these are where a transfer's losses inside the node show.
#[derive(Debug, Clone, Default)]
pub struct DataPathStats {
    /// Decrypted packets dropped because the stack had not taken the previous ones yet.
    pub stack_full: u64,
    /// Datagrams the UDP socket refused to send.
    pub send_errors: u64,
    /// Datagrams received on the UDP socket.
    pub datagrams_in: u64,
    /// Datagrams sent on the UDP socket.
    pub datagrams_out: u64,
    /// Datagrams received from a relay.
    pub relay_in: u64,
    /// Datagrams handed to a relay.
    pub relay_out: u64,
    /// Datagrams for a relayed path dropped (no relay, or its queue was full).
    pub relay_dropped: u64,
    /// The userspace stack's counters.
    pub netstack: NetstackStats,
}

impl DataPathStats {
    /// Reads the shell's counters and takes the stack's.
    pub fn read(shell: &ShellCounters, netstack: NetstackStats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            stack_full: shell.inbound_dropped.load(Relaxed),
            send_errors: shell.send_errors.load(Relaxed),
            datagrams_in: shell.datagrams_in.load(Relaxed),
            datagrams_out: shell.datagrams_out.load(Relaxed),
            relay_in: shell.relay_in.load(Relaxed),
            relay_out: shell.relay_out.load(Relaxed),
            relay_dropped: shell.relay_dropped.load(Relaxed),
            netstack,
        }
    }
}

/// The metrics of one snapshot as OpenMetrics text.
pub fn encode(status: &Status, engine: &EngineStats, data_path: &DataPathStats) -> String {
    let mut registry = Registry::with_prefix("postern_node");

    let info = Family::<InfoLabels, Gauge>::default();
    info.get_or_create(&InfoLabels {
        name: status.self_node.name.clone(),
        version: status.version.clone(),
    })
    .set(1);
    registry.register("info", "This node's name and version", info);

    registry.register(
        "coord_connected",
        "1 while the node holds a live netmap stream to the coord, 0 while it runs on its last netmap",
        gauge(i64::from(status.coord_connected)),
    );
    if let Some(expiry) = status.self_node.key_expiry {
        registry.register(
            "key_expiry_timestamp_seconds",
            "When this node's key expires (Unix seconds); log in again before",
            gauge(expiry),
        );
    }
    let online = status.peers.iter().filter(|peer| peer.online).count();
    registry.register(
        "peers",
        "Peers in the netmap",
        gauge(saturating_i64(status.peers.len())),
    );
    registry.register(
        "peers_online",
        "Peers the coord sees online",
        gauge(saturating_i64(online)),
    );

    let received = Family::<PeerLabel, Counter>::default();
    let sent = Family::<PeerLabel, Counter>::default();
    let handshake = Family::<PeerLabel, Gauge>::default();
    let path = Family::<PathLabels, Gauge>::default();
    for peer in &status.peers {
        let label = PeerLabel {
            peer: peer.name.clone(),
        };
        received.get_or_create(&label).inc_by(peer.rx_bytes);
        sent.get_or_create(&label).inc_by(peer.tx_bytes);
        if let Some(at) = peer.last_handshake {
            handshake.get_or_create(&label).set(at);
        }
        path.get_or_create(&PathLabels {
            peer: peer.name.clone(),
            path: peer.path.clone(),
        })
        .set(1);
    }
    registry.register(
        "peer_received_bytes",
        "IP bytes received from the peer through WireGuard",
        received,
    );
    registry.register(
        "peer_sent_bytes",
        "IP bytes sent to the peer through WireGuard",
        sent,
    );
    registry.register(
        "peer_last_handshake_timestamp_seconds",
        "When the last WireGuard handshake with the peer completed (Unix seconds)",
        handshake,
    );
    registry.register(
        "peer_path",
        "1 for the path packets to the peer take: direct, relayed, or none before the first handshake",
        path,
    );

    let dropped = Family::<ReasonLabel, Counter>::default();
    for (reason, count) in [
        ("invalid_datagram", engine.invalid_datagrams),
        ("replayed", engine.replayed),
        ("unknown_session", engine.unknown_session),
        ("unknown_peer", engine.unknown_peer),
        ("under_load", engine.under_load),
        ("no_route", engine.no_route),
        ("invalid_outbound", engine.invalid_outbound),
        ("no_endpoint", engine.no_endpoint),
        ("source_not_allowed", engine.source_not_allowed),
        ("filtered", engine.filtered),
        ("stack_full", data_path.stack_full),
        ("send_error", data_path.send_errors),
        ("relay_unavailable", data_path.relay_dropped),
    ] {
        dropped.get_or_create(&ReasonLabel { reason }).inc_by(count);
    }
    registry.register(
        "dropped_packets",
        "Packets and datagrams the WireGuard engine and its UDP socket dropped, by reason (filtered: refused by the tailnet policy; stack_full: decrypted while the userspace stack was behind)",
        dropped,
    );
    for (name, help, count) in [
        (
            "datagrams_received",
            "UDP datagrams received on the WireGuard socket",
            data_path.datagrams_in,
        ),
        (
            "datagrams_sent",
            "UDP datagrams sent on the WireGuard socket",
            data_path.datagrams_out,
        ),
        (
            "relayed_datagrams_received",
            "Datagrams received through a relay",
            data_path.relay_in,
        ),
        (
            "relayed_datagrams_sent",
            "Datagrams sent through a relay",
            data_path.relay_out,
        ),
    ] {
        registry.register(name, help, counter(count));
    }
    let stack = &data_path.netstack;
    let packets = Family::<DirectionLabel, Counter>::default();
    packets
        .get_or_create(&DirectionLabel { direction: "in" })
        .inc_by(stack.packets_in);
    packets
        .get_or_create(&DirectionLabel { direction: "out" })
        .inc_by(stack.packets_out);
    registry.register(
        "netstack_packets",
        "IP packets the userspace stack took in (in) and handed to the engine (out)",
        packets,
    );
    let stack_dropped = Family::<ReasonLabel, Counter>::default();
    for (reason, count) in [
        ("malformed", stack.malformed_dropped),
        ("not_local", stack.not_local_dropped),
        ("engine_gone", stack.outbound_dropped),
    ] {
        stack_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(count);
    }
    registry.register(
        "netstack_dropped_packets",
        "IP packets the userspace stack dropped, by reason",
        stack_dropped,
    );
    registry.register(
        "netstack_backlog_refused",
        "Connections to this node refused because the listener's backlog was full",
        counter(stack.backlog_refused),
    );
    registry.register(
        "netstack_tcp_sockets",
        "TCP sockets the userspace stack holds (listening, open, closing)",
        gauge(saturating_i64(stack.tcp_sockets)),
    );
    registry.register(
        "netstack_udp_sockets",
        "UDP sockets the userspace stack holds",
        gauge(saturating_i64(stack.udp_sockets)),
    );
    let cookies = Counter::<u64>::default();
    cookies.inc_by(engine.cookie_replies);
    registry.register(
        "cookie_replies",
        "WireGuard cookie replies sent because handshakes arrived too fast",
        cookies,
    );
    registry.register(
        "serves",
        "Ports this node serves to the tailnet (postern serve, and the local side of funnels)",
        gauge(saturating_i64(status.serves.len())),
    );
    registry.register(
        "funnels",
        "This node's public funnels",
        gauge(saturating_i64(status.funnels.len())),
    );

    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        // Writing to a String cannot fail; an empty scrape is the honest fallback.
        text.clear();
    }
    text
}

fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

fn gauge(value: i64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

fn saturating_i64(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::{PeerStatus, SelfStatus};
    use postern_proto::{NodeId, NodePrivateKey};

    fn status(peers: Vec<PeerStatus>) -> Status {
        let key = NodePrivateKey::generate(&mut rand::rngs::OsRng).public_key();
        Status {
            self_node: SelfStatus {
                node_id: NodeId(1),
                name: "me".into(),
                fqdn: "me.t.test".into(),
                addresses: Vec::new(),
                login: "ci@example.com".into(),
                tags: Vec::new(),
                key_expiry: None,
                node_key: key,
            },
            peers,
            coord_url: "https://coord.test".into(),
            coord_connected: false,
            listen_port: 41641,
            endpoints: Vec::new(),
            version: "0.1.0".into(),
            serves: Vec::new(),
            funnels: Vec::new(),
        }
    }

    fn peer(name: &str, path: &str, last_handshake: Option<i64>) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            fqdn: format!("{name}.t.test"),
            addresses: Vec::new(),
            online: path != "none",
            login: "ci@example.com".into(),
            is_ingress: false,
            path: path.into(),
            endpoint: None,
            last_handshake,
            last_handshake_secs_ago: None,
            rx_bytes: 10,
            tx_bytes: 20,
            node_key: NodePrivateKey::generate(&mut rand::rngs::OsRng).public_key(),
        }
    }

    #[test]
    fn series_follow_the_snapshot_and_absent_facts_are_absent() {
        let mut netstack = NetstackStats::default();
        netstack.packets_in = 33;
        netstack.malformed_dropped = 1;
        netstack.tcp_sockets = 2;
        let engine = EngineStats {
            filtered: 3,
            cookie_replies: 2,
            ..EngineStats::default()
        };
        let text = encode(
            &status(vec![
                peer("relayed-one", "relayed", Some(1_900_000_000)),
                peer("quiet", "none", None),
            ]),
            &engine,
            &DataPathStats {
                stack_full: 7,
                datagrams_in: 40,
                netstack,
                ..DataPathStats::default()
            },
        );
        for line in [
            "postern_node_coord_connected 0",
            "postern_node_peers 2",
            "postern_node_peers_online 1",
            "postern_node_peer_received_bytes_total{peer=\"quiet\"} 10",
            "postern_node_peer_sent_bytes_total{peer=\"relayed-one\"} 20",
            "postern_node_peer_last_handshake_timestamp_seconds{peer=\"relayed-one\"} 1900000000",
            "postern_node_peer_path{peer=\"relayed-one\",path=\"relayed\"} 1",
            "postern_node_peer_path{peer=\"quiet\",path=\"none\"} 1",
            "postern_node_dropped_packets_total{reason=\"filtered\"} 3",
            "postern_node_dropped_packets_total{reason=\"replayed\"} 0",
            "postern_node_cookie_replies_total 2",
            "postern_node_dropped_packets_total{reason=\"stack_full\"} 7",
            "postern_node_dropped_packets_total{reason=\"send_error\"} 0",
            "postern_node_datagrams_received_total 40",
            "postern_node_netstack_packets_total{direction=\"in\"} 33",
            "postern_node_netstack_packets_total{direction=\"out\"} 0",
            "postern_node_netstack_dropped_packets_total{reason=\"malformed\"} 1",
            "postern_node_netstack_tcp_sockets 2",
            "postern_node_serves 0",
            "postern_node_info{name=\"me\",version=\"0.1.0\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        // No handshake yet, no key expiry: no series rather than a zero.
        assert!(
            !text.contains("last_handshake_timestamp_seconds{peer=\"quiet\"}"),
            "{text}"
        );
        assert!(!text.contains("key_expiry"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
