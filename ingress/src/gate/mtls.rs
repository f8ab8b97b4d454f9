//! mTLS: TLS client certificates checked against a funnel's own CA.
//!
//! The TLS layer and the gate split the work:
//! - the edge's TLS configuration ([`DeferredClientCertVerifier`]) asks every client for a
//!   certificate (naming the configured CAs as hints), checks the handshake signature
//!   (the client holds the leaf's private key) and accepts any chain without judging it;
//! - the funnel's [`MtlsGate`] then verifies the chain against *its* CA, for client
//!   authentication, at `now`.
//!
//! So one TLS port serves funnels with different CAs, and a certificate from the wrong CA
//! is refused as an audited `403 client_cert_rejected` rather than a bare handshake
//! failure. Nothing but this gate may treat a presented chain as verified.
//!
//! A client sends the same chain with every request of a connection (and of its next
//! connections), so the gate remembers the chains it admitted
//! ([`VerifiedCredentials`](super::verified_credentials), keyed by the SHA-256 of the
//! exact chain, at most [`CHAIN_CACHE_CAPACITY`]): a known chain costs a lookup instead of
//! a chain verification, and its validity window (the chain's latest `notBefore` and
//! earliest `notAfter`) is checked again at every request. Chains that failed are never
//! remembered. The edge hashes a connection's chain once, after the handshake
//! ([`PresentedChain`](super::PresentedChain)), since it cannot change within the
//! connection; a request built with a bare chain is hashed by the gate.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::Digest as _;

use super::verified_credentials::{VerifiedCredential, VerifiedCredentials};
use super::{Decision, Gate, GateRequest, Identity, ReasonCode};

/// How many admitted client certificate chains one mTLS gate remembers.
pub const CHAIN_CACHE_CAPACITY: usize = 10_000;

/// The mTLS gate's settings.
#[derive(Debug, Clone)]
pub struct MtlsConfig {
    /// The CA certificate(s) in PEM. Each must be a CA (basic constraints `CA:TRUE`).
    pub ca_pem: String,
    /// Where the PEM came from, for error messages (a file path).
    pub ca_source: String,
    /// Whether a request without a certificate is refused (`client_cert_missing`, 401).
    /// When `false` it is admitted as `anonymous`; a presented certificate must still
    /// verify.
    pub required: bool,
}

/// Why the mTLS gate's CA cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MtlsConfigError {
    /// No certificate in the PEM text.
    #[error("{source_name}: no CERTIFICATE block found; give the CA certificate in PEM")]
    NoCertificate {
        /// Where the PEM came from.
        source_name: String,
    },
    /// A block could not be read as an X.509 certificate.
    #[error("{source_name}: certificate #{index} cannot be parsed: {reason}")]
    Unparsable {
        /// Where the PEM came from.
        source_name: String,
        /// 1-based position in the file.
        index: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// A certificate is not a CA.
    #[error(
        "{source_name}: certificate #{index} ({subject}) is not a CA (its basic constraints are not CA:TRUE); give the certificate of the CA that issues the client certificates, not a client or server certificate"
    )]
    NotCa {
        /// Where the PEM came from.
        source_name: String,
        /// 1-based position in the file.
        index: usize,
        /// The certificate's subject.
        subject: String,
    },
    /// rustls refused the trust anchors.
    #[error("{source_name}: the CA cannot be used as a trust anchor: {reason}")]
    Anchor {
        /// Where the PEM came from.
        source_name: String,
        /// rustls' complaint.
        reason: String,
    },
}

/// The mTLS gate (`mtls`). Admits as `cert:<subject>` with the attributes `Cert-Subject`
/// and `Cert-Sha256` (the leaf's fingerprint, lower-case hex).
pub struct MtlsGate {
    verifier: Arc<dyn ClientCertVerifier>,
    subjects: Vec<DistinguishedName>,
    required: bool,
    verified: VerifiedCredentials,
}

impl fmt::Debug for MtlsGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MtlsGate")
            .field("cas", &self.subjects.len())
            .field("required", &self.required)
            .finish()
    }
}

impl MtlsGate {
    /// A gate trusting the CA(s) in `config.ca_pem`. Fails when the PEM holds no
    /// certificate, one cannot be parsed, or one is not a CA.
    pub fn new(config: &MtlsConfig) -> Result<Self, MtlsConfigError> {
        let source_name = config.ca_source.clone();
        let mut reader = config.ca_pem.as_bytes();
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut reader)
            .collect::<Result<_, _>>()
            .map_err(|e| MtlsConfigError::Unparsable {
                source_name: source_name.clone(),
                index: 1,
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(MtlsConfigError::NoCertificate { source_name });
        }
        let mut roots = RootCertStore::empty();
        for (position, der) in certs.iter().enumerate() {
            let index = position + 1;
            let (_, parsed) = x509_parser::parse_x509_certificate(der).map_err(|e| {
                MtlsConfigError::Unparsable {
                    source_name: source_name.clone(),
                    index,
                    reason: e.to_string(),
                }
            })?;
            let is_ca = parsed
                .basic_constraints()
                .ok()
                .flatten()
                .is_some_and(|constraints| constraints.value.ca);
            if !is_ca {
                return Err(MtlsConfigError::NotCa {
                    source_name,
                    index,
                    subject: parsed.subject().to_string(),
                });
            }
            roots
                .add(der.clone())
                .map_err(|e| MtlsConfigError::Anchor {
                    source_name: source_name.clone(),
                    reason: e.to_string(),
                })?;
        }
        let subjects = roots.subjects();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| MtlsConfigError::Anchor {
            source_name,
            reason: e.to_string(),
        })?;
        Ok(Self {
            verifier,
            subjects,
            required: config.required,
            verified: VerifiedCredentials::new(CHAIN_CACHE_CAPACITY),
        })
    }

    /// The subjects of the configured CAs: hints for the TLS layer's certificate request.
    pub fn ca_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }
}

impl Gate for MtlsGate {
    fn name(&self) -> &str {
        "mtls"
    }

    fn evaluate(&self, request: &GateRequest<'_>, now: SystemTime) -> Decision {
        let Some((leaf, intermediates)) = request.client_cert_chain().split_first() else {
            return if self.required {
                Decision::deny(ReasonCode::ClientCertMissing)
            } else {
                Decision::Allow {
                    gate: self.name().to_string(),
                    identity: Identity::new("anonymous"),
                }
            };
        };
        let since_epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let unix_now = since_epoch.as_secs();
        let chain = request.client_cert_chain();
        let digest = request.client_cert_digest();
        match self.verified.get(&digest, 0, unix_now, 0) {
            Some(Ok(identity)) => {
                return Decision::Allow {
                    gate: self.name().to_string(),
                    identity,
                };
            }
            Some(Err(_)) => return Decision::deny(ReasonCode::ClientCertRejected),
            None => {}
        }
        if self
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::since_unix_epoch(since_epoch))
            .is_err()
        {
            return Decision::deny(ReasonCode::ClientCertRejected);
        }
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf) else {
            return Decision::deny(ReasonCode::ClientCertRejected);
        };
        let subject = parsed.subject().to_string();
        let fingerprint = hex::encode(sha2::Sha256::digest(leaf.as_ref()));
        let identity = Identity::new(format!("cert:{subject}"))
            .with_attribute("Cert-Subject", subject)
            .with_attribute("Cert-Sha256", fingerprint);
        if let Some((not_before, expires)) = validity_window(chain) {
            self.verified.insert(
                digest,
                VerifiedCredential {
                    admitted: identity.clone(),
                    expires,
                    not_before: Some(not_before),
                },
                0,
                unix_now,
                0,
            );
        }
        Decision::Allow {
            gate: self.name().to_string(),
            identity,
        }
    }

    fn client_ca_subjects(&self) -> Vec<DistinguishedName> {
        self.subjects.clone()
    }
}

/// The window in which every certificate of `chain` is valid: (latest `notBefore`, earliest
/// `notAfter`) in unix seconds; `None` if one cannot be parsed (then the chain is not
/// remembered).
fn validity_window<C: AsRef<[u8]>>(chain: &[C]) -> Option<(u64, u64)> {
    let mut window = (0_u64, u64::MAX);
    for der in chain {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let validity = cert.validity();
        let from = u64::try_from(validity.not_before.timestamp()).unwrap_or(0);
        let until = u64::try_from(validity.not_after.timestamp()).unwrap_or(0);
        window = (window.0.max(from), window.1.min(until));
    }
    Some(window)
}

/// The edge's TLS-level client-certificate verifier when some funnel has an mTLS gate:
/// asks for a certificate (optional at the TLS level), checks the handshake signature, and
/// leaves the chain's trust to the funnel's [`MtlsGate`] (see the module comment).
#[derive(Debug)]
pub struct DeferredClientCertVerifier {
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl DeferredClientCertVerifier {
    /// A verifier naming `hints` (the CAs' subjects) in its certificate request.
    pub fn new(hints: Vec<DistinguishedName>, provider: Arc<CryptoProvider>) -> Self {
        Self { hints, provider }
    }
}

impl ClientCertVerifier for DeferredClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred on purpose: the funnel's MtlsGate verifies the chain against its CA.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, Method};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, date_time_ymd};

    use super::*;
    use crate::gate::PresentedChain;

    /// A CA (PEM) and a client chain it signed, valid 2020-01-01 to 2030-01-01.
    fn ca_and_client(name: &str) -> (String, Vec<CertificateDer<'static>>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2030, 1, 1);
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        (ca.pem(), vec![leaf.der().clone()])
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// How a test request carries its client certificate chain.
    enum Chain<'a> {
        /// The bare chain (the gate hashes it).
        Bare(&'a [CertificateDer<'static>]),
        /// The chain as the edge presents it, hashed once per connection.
        Presented(&'a PresentedChain),
    }

    fn decide_with(gate: &MtlsGate, chain: Chain<'_>, now: SystemTime) -> Decision {
        let (method, headers) = (Method::POST, HeaderMap::new());
        let client = "203.0.113.7:40000".parse().unwrap();
        let request = GateRequest::new(&method, "https://h.example/", &headers, b"", client);
        let request = match chain {
            Chain::Bare(chain) => request.with_client_cert_chain(chain),
            Chain::Presented(chain) => request.with_presented_chain(chain),
        };
        gate.evaluate(&request, now)
    }

    fn decide(gate: &MtlsGate, chain: &[CertificateDer<'static>], now: SystemTime) -> Decision {
        decide_with(gate, Chain::Bare(chain), now)
    }

    fn decide_presented(gate: &MtlsGate, chain: &PresentedChain, now: SystemTime) -> Decision {
        decide_with(gate, Chain::Presented(chain), now)
    }

    /// A gate trusting `ca_pem`, requiring a client certificate.
    fn required_gate(ca_pem: String) -> MtlsGate {
        MtlsGate::new(&MtlsConfig {
            ca_pem,
            ca_source: "ca.pem".into(),
            required: true,
        })
        .unwrap()
    }

    #[test]
    fn an_admitted_chain_is_remembered_but_its_validity_is_checked_at_every_request() {
        let (ca_pem, chain) = ca_and_client("ci-runner");
        let (_, stranger) = ca_and_client("stranger");
        let gate = required_gate(ca_pem);
        let in_2026 = at(1_790_000_000);
        for _ in 0..2 {
            let Decision::Allow { identity, .. } = decide(&gate, &chain, in_2026) else {
                panic!("the right CA's chain was refused");
            };
            assert_eq!(identity.principal, "cert:CN=ci-runner");
        }
        assert_eq!(gate.verified.len(), 1, "admitted once, then from memory");
        // Past notAfter the remembered chain is refused like a fresh one.
        assert_eq!(
            decide(&gate, &chain, at(1_950_000_000)),
            Decision::deny(ReasonCode::ClientCertRejected)
        );
        // Another CA's chain is refused every time and never remembered.
        for _ in 0..2 {
            assert_eq!(
                decide(&gate, &stranger, in_2026),
                Decision::deny(ReasonCode::ClientCertRejected)
            );
        }
        assert_eq!(gate.verified.len(), 1);
    }

    #[test]
    fn a_chain_hashed_once_per_connection_is_judged_like_a_bare_one() {
        let (ca_pem, chain) = ca_and_client("ci-runner");
        let (_, stranger) = ca_and_client("stranger");
        let gate = required_gate(ca_pem);
        let connection = PresentedChain::new(chain.clone().into());
        assert_eq!(
            connection.digest,
            super::super::verified_credentials::chain_digest(&chain),
            "the connection's digest is the chain's"
        );
        let in_2026 = at(1_790_000_000);
        // The first request verifies, the next ones (and a bare copy of the chain) find it.
        for _ in 0..3 {
            let Decision::Allow { identity, .. } = decide_presented(&gate, &connection, in_2026)
            else {
                panic!("the right CA's chain was refused");
            };
            assert_eq!(identity.principal, "cert:CN=ci-runner");
        }
        assert!(decide(&gate, &chain, in_2026).is_allow());
        assert_eq!(gate.verified.len(), 1);
        // notAfter (2030-01-01) and notBefore (2020-01-01) still apply to every request.
        for outside in [at(1_893_456_001), at(1_950_000_000), at(1_500_000_000)] {
            assert_eq!(
                decide_presented(&gate, &connection, outside),
                Decision::deny(ReasonCode::ClientCertRejected)
            );
        }
        assert!(decide_presented(&gate, &connection, in_2026).is_allow());
        // Another CA's chain is refused on every request of its connection, never
        // remembered; a connection without a certificate is refused as missing one.
        let stranger = PresentedChain::new(stranger.into());
        for _ in 0..2 {
            assert_eq!(
                decide_presented(&gate, &stranger, in_2026),
                Decision::deny(ReasonCode::ClientCertRejected)
            );
        }
        assert_eq!(gate.verified.len(), 1);
        let none = PresentedChain::new(Vec::new().into());
        assert_eq!(
            decide_presented(&gate, &none, in_2026),
            Decision::deny(ReasonCode::ClientCertMissing)
        );
    }
}
