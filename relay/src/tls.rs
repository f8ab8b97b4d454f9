//! Loading the relay's TLS certificate for `https://` on port 443.

use std::path::Path;
use std::sync::Arc;

/// Why the TLS certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsLoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0} contains no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate(String),
    /// The key file holds no PEM private key.
    #[error("{0} contains no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(String),
    /// rustls refused the pair (the key does not match the certificate, say).
    #[error("the TLS certificate and key are not usable together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls server config from a PEM certificate chain file and a PEM private key file
/// (as written by certbot or any ACME client), using the ring crypto provider.
pub fn server_config_from_pem_files(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsLoadError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsLoadError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsLoadError::NoCertificate(cert_path.display().to_string()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsLoadError::NoKey(key_path.display().to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_pair_and_names_bad_files() {
        let dir = std::env::temp_dir().join(format!("postern-relay-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["relay.test".into()]).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        server_config_from_pem_files(&cert_path, &key_path).unwrap();
        let err = server_config_from_pem_files(&key_path, &key_path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} contains no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
                key_path.display()
            )
        );
        let err = server_config_from_pem_files(&cert_path, &cert_path).unwrap_err();
        assert!(
            err.to_string().contains("contains no PEM private key"),
            "{err}"
        );
        let missing = dir.join("missing.pem");
        let err = server_config_from_pem_files(&missing, &key_path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}", missing.display()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
