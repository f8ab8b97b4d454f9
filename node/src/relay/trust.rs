//! Which certificates a node trusts for `https://` relays.
//!
//! [`relay_tls_config`] builds the rustls client configuration the daemon gives every
//! [`RelayClient`](super::RelayClient): the system's trust roots (the operating system's
//! store, through `rustls-native-certs`, which also honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`) plus, when the operator names one (`postern up --relay-ca FILE`, config
//! `relay_ca`), the CA certificates of a PEM file: what a relay with a certificate from a
//! private CA needs. A relay whose certificate chains to neither is refused at the TLS
//! handshake with [`RelayClientError::UntrustedCertificate`](super::RelayClientError).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

/// Why the relay trust roots could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayTrustError {
    /// The CA file could not be read.
    #[error("cannot read the relay CA file {path}: {source}; check --relay-ca (config: relay_ca)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate.
    #[error(
        "the relay CA file {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA's certificate in PEM form"
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in the CA file is malformed.
    #[error("the relay CA file {path} holds a certificate that cannot be used: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration (no usable protocol version).
    #[error("cannot set up TLS for relays: {0}")]
    Tls(String),
}

/// The TLS client configuration for relays: the system's roots, plus the certificates in
/// `extra_ca` (a PEM file) when given. Call once at start; the result is shared by every
/// relay connection.
///
/// Fails if `extra_ca` cannot be read, holds no certificate or a malformed one. System
/// roots that fail to load are logged and skipped (a machine without a CA store can still
/// use relays through `extra_ca`, or plain `http://` relays in a lab).
pub fn relay_tls_config(
    extra_ca: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, RelayTrustError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::debug!(%err, "skipping part of the system's certificate store");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system trust roots for relays");
    if let Some(path) = extra_ca {
        for cert in read_ca_file(path)? {
            roots
                .add(cert)
                .map_err(|err| RelayTrustError::BadCertificate {
                    path: path.to_owned(),
                    reason: err.to_string(),
                })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| RelayTrustError::Tls(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The certificates of a PEM file: at least one.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, RelayTrustError> {
    let bytes = std::fs::read(path).map_err(|source| RelayTrustError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|err| RelayTrustError::BadCertificate {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(RelayTrustError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_is_read_and_its_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["relay.test".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert!(relay_tls_config(Some(&good)).is_ok());
        assert!(relay_tls_config(None).is_ok(), "system roots alone");

        let missing = dir.path().join("missing.pem");
        let err = relay_tls_config(Some(&missing)).unwrap_err().to_string();
        assert!(
            err.contains("cannot read the relay CA file") && err.contains("missing.pem"),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = relay_tls_config(Some(&empty)).unwrap_err().to_string();
        assert!(
            err.contains("holds no PEM certificate") && err.contains("empty.pem"),
            "{err}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = relay_tls_config(Some(&garbage)).unwrap_err().to_string();
        assert!(err.contains("garbage.pem"), "{err}");
    }
}
