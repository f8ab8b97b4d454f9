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

use super::{Decision, Gate, GateRequest, Identity, ReasonCode};

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
        let at = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        if self
            .verifier
            .verify_client_cert(leaf, intermediates, at)
            .is_err()
        {
            return Decision::deny(ReasonCode::ClientCertRejected);
        }
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf) else {
            return Decision::deny(ReasonCode::ClientCertRejected);
        };
        let subject = parsed.subject().to_string();
        let fingerprint = hex::encode(sha2::Sha256::digest(leaf.as_ref()));
        Decision::Allow {
            gate: self.name().to_string(),
            identity: Identity::new(format!("cert:{subject}"))
                .with_attribute("Cert-Subject", subject)
                .with_attribute("Cert-Sha256", fingerprint),
        }
    }

    fn client_ca_subjects(&self) -> Vec<DistinguishedName> {
        self.subjects.clone()
    }
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
