//! TLS on loopback for the in-process edge tests: a self-signed certificate for the test
//! hostnames, the edge served with it, and a raw HTTP/1.1-over-TLS client connection for
//! tests that write requests by hand (chunked bodies, upgrades) instead of through reqwest.

#![allow(dead_code)]
// each test crate uses a different part

// Test-only helpers: a failed unwrap here is a broken test fixture, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use postern_ingress::certs::{CertResolver, certified_key_from_pem};
use postern_ingress::edge::Edge;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// A resolver serving one self-signed certificate for `hostnames`, and that certificate
/// (PEM) for clients to trust.
pub fn self_signed(hostnames: &[&str]) -> (Arc<CertResolver>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = hostnames.iter().map(|h| (*h).to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let resolver = Arc::new(CertResolver::new());
    resolver.set_static(certified_key_from_pem(&cert.pem(), &key.serialize_pem(), "test").unwrap());
    (resolver, cert.pem())
}

/// Serves `edge`'s TLS port on a loopback port with `resolver`'s certificates; returns
/// the address.
pub async fn serve_edge(edge: Arc<Edge>, resolver: Arc<CertResolver>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(edge.serve_tls(listener, Edge::tls_config(resolver).unwrap()));
    address
}

/// Connects to the edge at `address` with SNI `host`, trusting only the certificates of
/// `cert_pem`, offering ALPN `http/1.1`.
pub async fn connect(cert_pem: &str, address: SocketAddr, host: &str) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// The `content-length` of a raw HTTP/1.1 head, 0 when it has none (a request or response
/// without a body, for these tests: none of them sends chunked bodies to where this is read).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
}
