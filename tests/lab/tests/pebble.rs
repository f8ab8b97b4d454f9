//! pebble issues real certificates through instant-acme when the HTTP-01 challenge is
//! answered, refuses when nothing answers, and its chains verify against the fetched root.

// Test helpers outside #[test] fns may unwrap and panic too: a failure is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use postern_lab::pebble::{Pebble, PebbleConfig, PebbleMode};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// A minimal HTTP-01 responder on 127.0.0.1:port: answers
/// `/.well-known/acme-challenge/TOKEN` with the key authorization.
fn http01_responder(port: u16) -> Tokens {
    serve_http01(TcpListener::bind(("127.0.0.1", port)).unwrap())
}

/// The responder on a listener bound elsewhere (e.g. inside a lab namespace).
fn serve_http01(listener: TcpListener) -> Tokens {
    let tokens: Tokens = Arc::default();
    let shared = tokens.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let token = path
                .strip_prefix("/.well-known/acme-challenge/")
                .unwrap_or("");
            let answer = shared.lock().unwrap().get(token).cloned();
            let mut stream = stream;
            let reply = match answer {
                Some(body) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    tokens
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Orders a certificate for `name`; answers HTTP-01 via `tokens` if given. Returns the PEM
/// chain, or why the order did not become ready.
async fn order(pebble: &Pebble, name: &str, tokens: Option<&Tokens>) -> Result<String, String> {
    order_at(pebble.directory_url(), pebble.api_ca_path(), name, tokens).await
}

/// [`order`] against a directory URL, trusting the API CA at `api_ca`.
async fn order_at(
    directory_url: String,
    api_ca: std::path::PathBuf,
    name: &str,
    tokens: Option<&Tokens>,
) -> Result<String, String> {
    // instant-acme's default features bring aws-lc-rs next to the workspace's ring; with two
    // providers compiled in, rustls needs to be told which one to use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (account, _) = Account::builder_with_root(api_ca)
        .unwrap()
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory_url,
            None,
        )
        .await
        .unwrap();
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .unwrap();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.unwrap();
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut challenge = authz.challenge(ChallengeType::Http01).unwrap();
        if let Some(tokens) = tokens {
            tokens.lock().unwrap().insert(
                challenge.token.clone(),
                challenge.key_authorization().as_str().to_owned(),
            );
        }
        challenge.set_ready().await.unwrap();
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(100))
        .backoff(1.5)
        .timeout(Duration::from_secs(30));
    let status = order.poll_ready(&retry).await.map_err(|e| e.to_string())?;
    if status != OrderStatus::Ready {
        return Err(format!("order status {status:?}"));
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    order.finalize_csr(csr.der()).await.unwrap();
    Ok(order.poll_certificate(&retry).await.unwrap())
}

/// Verifies `chain_pem` (leaf first) for `name` against `root_pem` with rustls/webpki.
fn verify_chain(chain_pem: &str, root_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let root = rustls_pemfile::certs(&mut root_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let (leaf, intermediates) = certs.split_first().unwrap();
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(drop)
}

#[tokio::test]
async fn strict_pebble_validates_http01_and_issues_a_verifiable_chain() {
    let http_port = free_port();
    let tokens = http01_responder(http_port);
    let pebble = Pebble::start(PebbleConfig {
        mode: PebbleMode::Strict,
        http_port,
        ..PebbleConfig::default()
    })
    .unwrap();
    let name = "funnel.example.test";
    let chain = order(&pebble, name, Some(&tokens))
        .await
        .unwrap_or_else(|e| panic!("{e}; pebble log:\n{}", pebble.log_tail()));

    let root = pebble.fetch_root().unwrap();
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    verify_chain(&chain, &root, name).unwrap();
    // The chain does not verify against the API's CA, nor for another name.
    assert!(verify_chain(&chain, pebble.api_ca_pem(), name).is_err());
    assert!(verify_chain(&chain, &root, "other.example.test").is_err());
}

#[tokio::test]
async fn strict_pebble_refuses_when_nothing_answers_the_challenge() {
    let pebble = Pebble::start(PebbleConfig {
        mode: PebbleMode::Strict,
        http_port: free_port(), // nothing listens there
        ..PebbleConfig::default()
    })
    .unwrap();
    let refused = order(&pebble, "nobody-home.example.test", None)
        .await
        .unwrap_err();
    assert!(
        refused.contains("urn:ietf:params:acme:error:connection"),
        "{refused}"
    );
}

#[tokio::test]
async fn always_valid_pebble_issues_without_a_responder() {
    let pebble = Pebble::start(PebbleConfig {
        mode: PebbleMode::AlwaysValid,
        http_port: free_port(),
        ..PebbleConfig::default()
    })
    .unwrap();
    let chain = order(&pebble, "anything.example.test", None).await.unwrap();
    let root = pebble.fetch_root().unwrap();
    verify_chain(&chain, &root, "anything.example.test").unwrap();
}

#[test]
fn pebble_inside_the_lab_validates_an_ingress_on_port_80() {
    use postern_lab::netlab::{Host, NatLab, NatLabConfig};
    let lab = NatLab::start(NatLabConfig::default()).unwrap();
    let pebble = Pebble::start_in(
        lab.netns(Host::Coord),
        Host::Coord.addr(),
        PebbleConfig {
            mode: PebbleMode::Strict,
            http_port: 80,
            tls_port: 443,
            dns_answer: Host::Ingress.addr(),
        },
    )
    .unwrap();
    assert_eq!(pebble.directory_url(), "https://198.18.0.10:14000/dir");
    // The "ingress" answers HTTP-01 on its public address, port 80, and runs the ACME client.
    let listener = lab
        .run_in(Host::Ingress, || TcpListener::bind("198.18.0.30:80"))
        .unwrap()
        .unwrap();
    let tokens = serve_http01(listener);
    let (directory, ca) = (pebble.directory_url(), pebble.api_ca_path());
    let chain = lab
        .run_in(Host::Ingress, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(order_at(directory, ca, "edge.example.test", Some(&tokens)))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}; pebble log:\n{}", pebble.log_tail()));
    let root = pebble.fetch_root().unwrap();
    verify_chain(&chain, &root, "edge.example.test").unwrap();
}
