//! A raw HTTP/1.1-over-TLS client connection to the edge, for tests that write requests by
//! hand (chunked bodies, upgrades) instead of through reqwest.

// Test-only helpers: a failed unwrap here is a broken test fixture, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

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
