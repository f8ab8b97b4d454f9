//! Certificates on disk: `<state>/certs/<host>/fullchain.pem` and `key.pem` (0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

/// Why a certificate could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The PEM holds no certificate.
    #[error("{0}: no certificate found in the PEM data; give a PEM file with the leaf first")]
    NoCertificate(String),
    /// The PEM holds no usable private key.
    #[error("{0}: no private key found in the PEM data (PKCS#8, PKCS#1 or SEC1 PEM expected)")]
    NoKey(String),
    /// The key type is not supported by the TLS stack.
    #[error("{0}: the private key is not an ECDSA, Ed25519 or RSA key rustls can sign with")]
    UnsupportedKey(String),
    /// The leaf certificate could not be parsed.
    #[error("{0}: the leaf certificate is not valid X.509")]
    BadCertificate(String),
}

/// A certificate and key as PEM text, with the leaf's validity.
#[derive(Clone)]
pub struct StoredCert {
    /// The chain, leaf first, as PEM.
    pub chain_pem: String,
    /// The private key as PEM. Never logged.
    pub key_pem: String,
    /// Start of the leaf's validity.
    pub not_before: SystemTime,
    /// End of the leaf's validity.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for StoredCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCert")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl StoredCert {
    /// Parses a chain and key from PEM text; `what` names them in errors.
    pub fn from_pem(chain_pem: String, key_pem: String, what: &str) -> Result<Self, CertError> {
        let chain = parse_chain(&chain_pem, what)?;
        let leaf = chain
            .first()
            .ok_or_else(|| CertError::NoCertificate(what.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|_| CertError::BadCertificate(what.to_string()))?;
        let validity = parsed.validity();
        let to_system = |t: &x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs.unsigned_abs())
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Ok(Self {
            not_before: to_system(&validity.not_before),
            not_after: to_system(&validity.not_after),
            chain_pem,
            key_pem,
        })
    }

    /// The rustls signing form of this certificate.
    pub fn certified_key(&self, what: &str) -> Result<Arc<CertifiedKey>, CertError> {
        certified_key_from_pem(&self.chain_pem, &self.key_pem, what)
    }
}

/// Builds a rustls [`CertifiedKey`] (chain + ring signing key) from PEM text; `what` names
/// the source in errors.
pub fn certified_key_from_pem(
    chain_pem: &str,
    key_pem: &str,
    what: &str,
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = parse_chain(chain_pem, what)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| CertError::NoKey(what.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| CertError::UnsupportedKey(what.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn parse_chain(chain_pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate(what.to_string()));
    }
    Ok(chain)
}

/// Issued certificates on disk, one directory per hostname under `<state>/certs/`.
#[derive(Debug, Clone)]
pub struct CertStore {
    root: PathBuf,
}

impl CertStore {
    /// A store under `<state_dir>/certs`. Nothing is created until the first save.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("certs"),
        }
    }

    /// The stored certificate for `host`, if there is one. A damaged file is an error (the
    /// caller logs it and issues a new certificate).
    pub fn load(&self, host: &str) -> Result<Option<StoredCert>, CertError> {
        let dir = self.root.join(host);
        let chain_path = dir.join("fullchain.pem");
        let key_path = dir.join("key.pem");
        if !chain_path.exists() || !key_path.exists() {
            return Ok(None);
        }
        let chain = read(&chain_path)?;
        let key = read(&key_path)?;
        StoredCert::from_pem(chain, key, &chain_path.display().to_string()).map(Some)
    }

    /// Stores the certificate for `host`: the key with mode 0600, each file written to a
    /// temporary name and renamed, so a crash never leaves half a file.
    pub fn save(&self, host: &str, cert: &StoredCert) -> Result<(), CertError> {
        let dir = self.root.join(host);
        fs::create_dir_all(&dir).map_err(|source| CertError::Io {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        write_private(&dir.join("key.pem"), cert.key_pem.as_bytes())?;
        write_private(&dir.join("fullchain.pem"), cert.chain_pem.as_bytes())?;
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `data` to `path` with mode 0600, atomically (temporary file + rename).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    let io = |source| CertError::Io {
        action: "writing",
        path: tmp.clone(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(data).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(|source| CertError::Io {
        action: "renaming into place",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn self_signed(host: &str) -> StoredCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        StoredCert::from_pem(cert.pem(), key.serialize_pem(), "test").unwrap()
    }

    #[test]
    fn save_then_load_round_trips_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path());
        assert!(store.load("a.example").unwrap().is_none());
        let cert = self_signed("a.example");
        store.save("a.example", &cert).unwrap();
        let loaded = store.load("a.example").unwrap().unwrap();
        assert_eq!(loaded.chain_pem, cert.chain_pem);
        assert_eq!(loaded.not_after, cert.not_after);
        let mode = fs::metadata(dir.path().join("certs/a.example/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        loaded.certified_key("test").unwrap();
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let err = StoredCert::from_pem("nope".into(), "nope".into(), "x.pem").unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        let cert = self_signed("b.example");
        let err = certified_key_from_pem(&cert.chain_pem, "nope", "k.pem").unwrap_err();
        assert!(err.to_string().contains("no private key"), "{err}");
    }
}
