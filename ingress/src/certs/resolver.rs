//! The per-connection certificate choice: SNI → certificate, or the TLS-ALPN-01 answer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ACME_TLS_ALPN;

/// Chooses the certificate for each TLS handshake.
///
/// Order: a client offering `acme-tls/1` gets the TLS-ALPN-01 challenge certificate for its
/// SNI (or nothing); otherwise the certificate issued for the SNI name, else the static
/// certificate (e.g. a wildcard), else nothing (the handshake fails, disclosing nothing).
/// Names are matched case-insensitively. Updated live by the issuer; share it in an `Arc`.
#[derive(Debug, Default)]
pub struct CertResolver {
    state: RwLock<ResolverState>,
}

#[derive(Debug, Default)]
struct ResolverState {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    challenges: HashMap<String, Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
}

impl CertResolver {
    /// An empty resolver: every handshake fails until certificates are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the certificate served for names that have no certificate of their own.
    pub fn set_static(&self, key: Arc<CertifiedKey>) {
        self.write().fallback = Some(key);
    }

    /// Installs (or replaces, on renewal) the certificate for `host`.
    pub fn set_host(&self, host: &str, key: Arc<CertifiedKey>) {
        self.write().by_host.insert(host.to_ascii_lowercase(), key);
    }

    /// Whether `host` has a certificate of its own.
    pub fn has_host(&self, host: &str) -> bool {
        self.read().by_host.contains_key(&host.to_ascii_lowercase())
    }

    /// Installs the TLS-ALPN-01 challenge certificate for `host` while its validation runs.
    pub fn set_challenge(&self, host: &str, key: Arc<CertifiedKey>) {
        self.write()
            .challenges
            .insert(host.to_ascii_lowercase(), key);
    }

    /// Removes the challenge certificate for `host` once validation is over.
    pub fn clear_challenge(&self, host: &str) {
        self.write().challenges.remove(&host.to_ascii_lowercase());
    }

    /// The expiry (notAfter, Unix seconds) of every certificate served now: each
    /// hostname's, and the static one's under the name `static` (challenge certificates
    /// left out). For the `certificate_expiry` metric; a leaf that does not parse is left
    /// out.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let state = self.read();
        let not_after = |key: &CertifiedKey| {
            let leaf = key.cert.first()?;
            let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
            Some(parsed.validity().not_after.timestamp())
        };
        let mut expiries: Vec<(String, i64)> = state
            .by_host
            .iter()
            .filter_map(|(host, key)| Some((host.clone(), not_after(key)?)))
            .chain(
                state
                    .fallback
                    .iter()
                    .filter_map(|key| Some(("static".to_string(), not_after(key)?))),
            )
            .collect();
        expiries.sort();
        expiries
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ResolverState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ResolverState> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        let wants_challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        let state = self.read();
        if wants_challenge {
            return state.challenges.get(sni.as_deref()?).cloned();
        }
        sni.and_then(|name| state.by_host.get(&name).cloned())
            .or_else(|| state.fallback.clone())
    }
}
