//! Prometheus metrics of the edge: what it decided, for which funnel, how fast, how much,
//! and when its certificates expire.
//!
//! The counts come from the audit trail itself: [`MetricsSink`] is an [`AuditSink`] wrapped
//! around the ingress's own, so every record the edge audits is also counted, and the
//! metrics can never disagree with the audit log. [`serve_metrics`] answers `GET /metrics`
//! (OpenMetrics text) and `GET /healthz` on the address `listen.metrics` of the config
//! names; nothing is served unless it is set, and it belongs on a private address (the
//! series name the funnels' hostnames).
//!
//! With an embedded node (`[node]`), a scrape also carries the node's own series
//! (`postern_node_*`, the same as `postern metrics` prints for an agent): its peers, paths
//! and handshakes, and the data path's datagrams, drops and userspace-stack counters, so
//! that an operator sees whether a slow funnel loses packets inside the ingress.
//!
//! Labels are bounded: the funnel's hostname (unknown hostnames count under `funnel=""`,
//! never under the name a client sent), the result (`allow`, `deny`, `respond`, `error`,
//! `expire`), the reason code (a fixed set) and the HTTP status.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use postern_node::daemon::NodeHandle;

use crate::audit::{AuditRecord, AuditSink, ConnectionRecord};
use crate::certs::CertResolver;
use crate::edge_log::EdgeLogForwarder;

/// The edge's counters, registered in one Prometheus registry under `postern_ingress`.
///
/// Make one with [`EdgeMetrics::new`], count through a [`MetricsSink`], and render with
/// [`EdgeMetrics::encode`], or [`EdgeMetrics::scrape`] for the edge's series and the
/// embedded node's together (what `GET /metrics` answers).
#[derive(Debug)]
pub struct EdgeMetrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<FunnelLabel, Histogram, fn() -> Histogram>,
    response_bytes: Family<FunnelLabel, Counter>,
    connections: Family<ConnectionLabels, Counter>,
    connection_bytes: Family<DirectionLabels, Counter>,
    certificate_expiry: Family<HostnameLabel, Gauge>,
    certificates: Option<Arc<CertResolver>>,
    edge_log_dropped: Counter,
    edge_log_forwarded: Counter,
    /// The forwarder whose counts `edge_log_*` follow, brought up to date at every
    /// [`EdgeMetrics::encode`] (under the lock, so two scrapes never add a step twice).
    edge_log: Option<(Arc<EdgeLogForwarder>, Mutex<()>)>,
    /// The embedded node, whose series [`EdgeMetrics::scrape`] adds.
    node: Option<NodeHandle>,
    registry: Registry,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostnameLabel {
    hostname: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    funnel: String,
    result: &'static str,
    reason: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunnelLabel {
    funnel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    funnel: String,
    kind: &'static str,
    result: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    funnel: String,
    kind: &'static str,
    direction: &'static str,
}

/// Request durations, in seconds: 1 ms to 60 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl EdgeMetrics {
    /// Fresh metrics, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("postern_ingress");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration =
            Family::<FunnelLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let response_bytes = Family::<FunnelLabel, Counter>::default();
        let connections = Family::<ConnectionLabels, Counter>::default();
        let connection_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests decided, by funnel, result, reason code and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response, by funnel",
            request_duration.clone(),
        );
        registry.register(
            "response_bytes",
            "Response body bytes sent to clients, by funnel",
            response_bytes.clone(),
        );
        registry.register(
            "connections",
            "TCP and TLS-passthrough funnel connections, by funnel, kind, result and reason",
            connections.clone(),
        );
        registry.register(
            "connection_bytes",
            "Bytes carried by TCP and TLS-passthrough funnel connections, by direction",
            connection_bytes.clone(),
        );
        let certificate_expiry = Family::<HostnameLabel, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When each served certificate expires (notAfter, Unix seconds), by hostname (`static` for the static certificate)",
            certificate_expiry.clone(),
        );
        let edge_log_dropped = Counter::default();
        registry.register(
            "edge_log_dropped",
            "Decisions of the coordination server's funnels not forwarded to it for `postern funnel log` (queue full, or the server could not take them); the audit log has them all",
            edge_log_dropped.clone(),
        );
        let edge_log_forwarded = Counter::default();
        registry.register(
            "edge_log_forwarded",
            "Decisions of the coordination server's funnels it acknowledged",
            edge_log_forwarded.clone(),
        );
        Self {
            requests,
            request_duration,
            response_bytes,
            connections,
            connection_bytes,
            certificate_expiry,
            certificates: None,
            edge_log_dropped,
            edge_log_forwarded,
            edge_log: None,
            node: None,
            registry,
        }
    }

    /// Reports `forwarder`'s counts of decisions forwarded to the coordination server and
    /// dropped, read at every [`Self::encode`].
    #[must_use]
    pub fn with_edge_log(mut self, forwarder: Arc<EdgeLogForwarder>) -> Self {
        self.edge_log = Some((forwarder, Mutex::new(())));
        self
    }

    /// Adds the embedded node's series (`postern_node_*`) to every [`Self::scrape`].
    #[must_use]
    pub fn with_node(mut self, node: NodeHandle) -> Self {
        self.node = Some(node);
        self
    }

    /// Reports the expiry of `resolver`'s certificates, read at every [`Self::encode`].
    #[must_use]
    pub fn with_certificates(mut self, resolver: Arc<CertResolver>) -> Self {
        self.certificates = Some(resolver);
        self
    }

    /// Counts one HTTP request decision.
    pub fn count_request(&self, record: &AuditRecord) {
        let funnel = record.funnel.clone().unwrap_or_default();
        self.requests
            .get_or_create(&RequestLabels {
                funnel: funnel.clone(),
                result: record.result,
                reason: record.reason.clone().unwrap_or_default(),
                status: record.status,
            })
            .inc();
        let label = FunnelLabel { funnel };
        // Millisecond records: the histogram's resolution is what the audit log keeps.
        #[allow(clippy::cast_precision_loss)] // durations far below 2^52 ms
        let seconds = record.duration_ms as f64 / 1000.0;
        self.request_duration.get_or_create(&label).observe(seconds);
        self.response_bytes
            .get_or_create(&label)
            .inc_by(record.bytes);
    }

    /// Counts one TCP or TLS-passthrough connection and its bytes.
    pub fn count_connection(&self, record: &ConnectionRecord) {
        let funnel = record.funnel.clone().unwrap_or_default();
        self.connections
            .get_or_create(&ConnectionLabels {
                funnel: funnel.clone(),
                kind: record.kind,
                result: record.result,
                reason: record.reason.clone(),
            })
            .inc();
        for (direction, bytes) in [
            ("from_client", record.bytes_from_client),
            ("to_client", record.bytes_to_client),
        ] {
            self.connection_bytes
                .get_or_create(&DirectionLabels {
                    funnel: funnel.clone(),
                    kind: record.kind,
                    direction,
                })
                .inc_by(bytes);
        }
    }

    /// The edge's series and, with an embedded node ([`Self::with_node`]), the node's, as
    /// one OpenMetrics text (what `GET /metrics` answers). A node that is stopping
    /// contributes nothing; the edge's series are always there.
    pub async fn scrape(&self) -> String {
        let edge = self.encode();
        let Some(node) = &self.node else {
            return edge;
        };
        let snapshot = async {
            let status = node.status().await?;
            let engine = node.engine_stats().await?;
            Ok::<_, postern_node::daemon::RuntimeError>((status, engine, node.data_path_stats()))
        };
        let Ok((status, engine, data_path)) = snapshot.await else {
            return edge;
        };
        let node_text = postern_node::daemon::metrics::encode(&status, &engine, &data_path);
        join_openmetrics(&edge, &node_text)
    }

    /// The edge's series as OpenMetrics text.
    pub fn encode(&self) -> String {
        if let Some(resolver) = &self.certificates {
            // Certificates come and go (renewals, routes): the series are those served now.
            self.certificate_expiry.clear();
            for (hostname, not_after) in resolver.expiries() {
                self.certificate_expiry
                    .get_or_create(&HostnameLabel { hostname })
                    .set(not_after);
            }
        }
        if let Some((forwarder, lock)) = &self.edge_log {
            let _only_one_scrape = lock.lock().unwrap_or_else(PoisonError::into_inner);
            for (counter, total) in [
                (&self.edge_log_dropped, forwarder.dropped()),
                (&self.edge_log_forwarded, forwarder.forwarded()),
            ] {
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            // Writing to a String cannot fail; an empty scrape is the honest fallback.
            text.clear();
        }
        text
    }
}

/// Two OpenMetrics texts as one: the first without its closing `# EOF`, then the second
/// (whose `# EOF` ends the whole). Their metric families must not share names (the edge's
/// are `postern_ingress_*`, the node's `postern_node_*`).
fn join_openmetrics(first: &str, second: &str) -> String {
    let head = first.strip_suffix("# EOF\n").unwrap_or(first);
    let mut text = String::with_capacity(head.len() + second.len());
    text.push_str(head);
    text.push_str(second);
    text
}

/// An [`AuditSink`] that counts every record in [`EdgeMetrics`] and hands it on to the
/// sink it wraps; see the [module docs](self).
#[derive(Debug)]
pub struct MetricsSink {
    inner: Arc<dyn AuditSink>,
    metrics: Arc<EdgeMetrics>,
}

impl MetricsSink {
    /// Wraps `inner`, counting into `metrics`.
    pub fn new(inner: Arc<dyn AuditSink>, metrics: Arc<EdgeMetrics>) -> Self {
        Self { inner, metrics }
    }
}

impl AuditSink for MetricsSink {
    fn record(&self, record: &AuditRecord) {
        self.metrics.count_request(record);
        self.inner.record(record);
    }

    fn record_connection(&self, record: &ConnectionRecord) {
        self.metrics.count_connection(record);
        self.inner.record_connection(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Serves `GET /metrics` (OpenMetrics text of `metrics`) and `GET /healthz` (`ok`) on
/// `listener`, plain HTTP/1.1 and HTTP/2, until the task is dropped. Anything else gets 404.
///
/// # Errors
/// Accepting connections failed (the listener is unusable).
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<EdgeMetrics>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, std::convert::Infallible>(answer(&request, &metrics).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: &Request<Incoming>, metrics: &EdgeMetrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.scrape().await,
        ),
        (&Method::GET | &Method::HEAD, "/healthz") => {
            (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(funnel: Option<&str>, result: &'static str, reason: Option<&str>) -> AuditRecord {
        AuditRecord {
            time: "2026-11-30T03:00:00Z".into(),
            funnel: funnel.map(Into::into),
            owner: None,
            node: None,
            client: "203.0.113.7:5000".into(),
            method: "POST".into(),
            path: "/hook".into(),
            gate: None,
            result,
            reason: reason.map(Into::into),
            status: if result == "allow" { 200 } else { 403 },
            bytes: 9,
            duration_ms: 3,
        }
    }

    #[derive(Debug, Default)]
    struct Kept(std::sync::Mutex<usize>);
    impl AuditSink for Kept {
        fn record(&self, _: &AuditRecord) {
            *self.0.lock().unwrap() += 1;
        }
    }

    #[test]
    fn two_texts_join_with_one_eof() {
        let edge = EdgeMetrics::new().encode();
        assert!(edge.ends_with("# EOF\n"), "{edge}");
        let joined = join_openmetrics(
            &edge,
            "# TYPE postern_node_peers gauge\npostern_node_peers 2\n# EOF\n",
        );
        assert_eq!(joined.matches("# EOF").count(), 1, "{joined}");
        assert!(
            joined.ends_with("postern_node_peers 2\n# EOF\n"),
            "{joined}"
        );
        assert!(
            joined.starts_with(edge.trim_end_matches("# EOF\n")),
            "{joined}"
        );
    }

    #[test]
    fn every_record_is_counted_and_handed_on() {
        let metrics = Arc::new(EdgeMetrics::new());
        let inner = Arc::new(Kept::default());
        let sink = MetricsSink::new(inner.clone(), Arc::clone(&metrics));
        sink.record(&request(Some("hooks.example"), "allow", None));
        sink.record(&request(Some("hooks.example"), "allow", None));
        sink.record(&request(
            Some("hooks.example"),
            "deny",
            Some("signature_mismatch"),
        ));
        sink.record(&request(None, "deny", Some("unknown_host")));
        assert_eq!(*inner.0.lock().unwrap(), 4);
        let text = metrics.encode();
        for line in [
            r#"postern_ingress_requests_total{funnel="hooks.example",result="allow",reason="",status="200"} 2"#,
            r#"postern_ingress_requests_total{funnel="hooks.example",result="deny",reason="signature_mismatch",status="403"} 1"#,
            r#"postern_ingress_requests_total{funnel="",result="deny",reason="unknown_host",status="403"} 1"#,
            r#"postern_ingress_response_bytes_total{funnel="hooks.example"} 27"#,
            r#"postern_ingress_request_duration_seconds_count{funnel="hooks.example"} 3"#,
            r#"postern_ingress_request_duration_seconds_bucket{le="0.005",funnel="hooks.example"} 3"#,
            r#"postern_ingress_request_duration_seconds_bucket{le="0.0025",funnel="hooks.example"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn connections_count_with_their_bytes_each_way() {
        let metrics = EdgeMetrics::new();
        let record = ConnectionRecord {
            time: "2026-11-30T03:00:00Z".into(),
            kind: "tcp",
            funnel: Some("db.example".into()),
            owner: None,
            node: None,
            client: "203.0.113.7:5000".into(),
            result: "allow",
            reason: "closed".into(),
            bytes_from_client: 100,
            bytes_to_client: 2000,
            duration_ms: 10,
        };
        metrics.count_connection(&record);
        metrics.count_connection(&record);
        let text = metrics.encode();
        for line in [
            r#"postern_ingress_connections_total{funnel="db.example",kind="tcp",result="allow",reason="closed"} 2"#,
            r#"postern_ingress_connection_bytes_total{funnel="db.example",kind="tcp",direction="from_client"} 200"#,
            r#"postern_ingress_connection_bytes_total{funnel="db.example",kind="tcp",direction="to_client"} 4000"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn certificate_expiries_are_those_served_now() {
        let resolver = Arc::new(CertResolver::new());
        let metrics = EdgeMetrics::new().with_certificates(Arc::clone(&resolver));
        assert!(
            !metrics
                .encode()
                .contains("certificate_expiry_timestamp_seconds{")
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["hooks.example".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        let served =
            crate::certs::certified_key_from_pem(&cert.pem(), &key.serialize_pem(), "test")
                .unwrap();
        resolver.set_host("hooks.example", Arc::clone(&served));
        resolver.set_static(served);
        let text = metrics.encode();
        // 2031-01-02T00:00:00Z
        for line in [
            r#"postern_ingress_certificate_expiry_timestamp_seconds{hostname="hooks.example"} 1925078400"#,
            r#"postern_ingress_certificate_expiry_timestamp_seconds{hostname="static"} 1925078400"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
