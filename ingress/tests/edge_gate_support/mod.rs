//! Shared pieces of the gate tests that run through the real edge in-process: a static
//! certificate for `app.test`, an in-memory audit sink, and clients that trust it.

#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_ingress::audit::{AuditRecord, AuditSink};
use postern_ingress::certs::{CertResolver, HttpChallenges, certified_key_from_pem};
use postern_ingress::edge::{Edge, Funnel, Limits, TcpUpstream};
use postern_ingress::gate::GateChain;
use tokio::net::TcpListener;

/// Audit records kept in memory.
#[derive(Debug, Default)]
pub struct MemorySink(pub Mutex<Vec<AuditRecord>>);

impl AuditSink for MemorySink {
    fn record(&self, record: &AuditRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

impl MemorySink {
    /// `(gate, result, reason, status)` of every record so far.
    pub fn summary(&self) -> Vec<(Option<String>, String, Option<String>, u16)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.gate.clone(),
                    r.result.to_string(),
                    r.reason.clone(),
                    r.status,
                )
            })
            .collect()
    }
}

/// A running in-process edge serving `app.test`.
pub struct GatedEdge {
    pub address: SocketAddr,
    pub cert_pem: String,
    pub audit: Arc<MemorySink>,
}

/// Starts the edge with one funnel `app.test` → `origin` behind `chain`. When the chain
/// has an mTLS gate, the TLS port asks for client certificates.
pub async fn start_gated_edge(origin: SocketAddr, chain: GateChain) -> GatedEdge {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["app.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let resolver = Arc::new(CertResolver::new());
    resolver.set_static(certified_key_from_pem(&cert.pem(), &key.serialize_pem(), "test").unwrap());
    let audit = Arc::new(MemorySink::default());
    let edge = Arc::new(Edge::new(
        vec![Funnel {
            hostname: "app.test".into(),
            upstream: Arc::new(TcpUpstream::new(origin.to_string())),
            chain,
            route: None,
        }],
        Limits::default(),
        audit.clone(),
        Arc::new(HttpChallenges::default()),
    ));
    let hints = edge.client_ca_hints();
    let tls = if hints.is_empty() {
        Edge::tls_config(resolver).unwrap()
    } else {
        Edge::tls_config_with_client_certs(resolver, hints).unwrap()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(edge.serve_tls(listener, tls));
    GatedEdge {
        address,
        cert_pem: cert.pem(),
        audit,
    }
}

impl GatedEdge {
    /// A client that trusts the edge's certificate and sends `app.test` to it; keeps
    /// cookies, follows no redirects.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    /// The builder of [`GatedEdge::client`], to add a client certificate.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).unwrap())
            .resolve("app.test", self.address)
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
    }
}
