//! Obtaining certificates from an ACME CA (Let's Encrypt, pebble) with `instant-acme`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::store::write_private;
use super::{CertError, CertResolver, CertStore, StoredCert, certified_key_from_pem};

/// Which ACME challenge proves control of a hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum ChallengeKind {
    /// HTTP-01: the CA fetches `http://<host>/.well-known/acme-challenge/<token>` from the
    /// HTTP port (80).
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01: the CA connects to the TLS port (443) offering `acme-tls/1`.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// How to reach the ACME CA.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory_url: String,
    /// A PEM file with the root that signs the CA's API certificate (pebble, a private CA);
    /// `None` trusts the usual web roots.
    pub ca_bundle: Option<PathBuf>,
    /// Contact address for the account (`mailto:` is added).
    pub email: Option<String>,
    /// Which challenge to answer.
    pub challenge: ChallengeKind,
}

/// Why obtaining a certificate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The ACME server or the HTTP client reported an error.
    #[error("ACME {step} failed: {source}")]
    Protocol {
        /// What was being done.
        step: &'static str,
        /// The library's error (includes the CA's problem document).
        source: instant_acme::Error,
    },
    /// The stored account file could not be read or parsed.
    #[error(
        "the ACME account file {path} is unreadable ({reason}); move it away to register a new account"
    )]
    AccountFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The order ended in a state other than ready.
    #[error(
        "the ACME order for {host} ended {status:?}: the CA could not validate the challenge; check that {host} resolves to this edge and the {challenge:?} port is reachable"
    )]
    OrderFailed {
        /// The hostname.
        host: String,
        /// The final order status.
        status: OrderStatus,
        /// The challenge type used.
        challenge: ChallengeKind,
    },
    /// The CA offered no challenge of the configured type.
    #[error("the CA offered no {0:?} challenge; choose the other challenge type")]
    NoChallenge(ChallengeKind),
    /// The challenge certificate could not be built.
    #[error("building the TLS-ALPN-01 certificate failed: {0}")]
    ChallengeCert(String),
    /// Storing or loading the certificate failed.
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// The pending HTTP-01 answers: token → key authorization. The HTTP listener serves them.
#[derive(Debug, Default)]
pub struct HttpChallenges {
    tokens: RwLock<HashMap<String, String>>,
}

impl HttpChallenges {
    /// The key authorization for `token`, if a validation for it is running.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    fn insert(&self, token: String, key_authorization: String) {
        self.tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token, key_authorization);
    }

    fn remove(&self, token: &str) {
        self.tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(token);
    }
}

/// Obtains certificates for hostnames and installs them in the [`CertResolver`].
#[derive(Clone)]
pub struct AcmeIssuer {
    account: Account,
    challenge: ChallengeKind,
    http: Arc<HttpChallenges>,
    resolver: Arc<CertResolver>,
    store: CertStore,
}

impl std::fmt::Debug for AcmeIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeIssuer")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

impl AcmeIssuer {
    /// Loads the account from `<state_dir>/acme/account-<hash of directory>.json`, or
    /// registers a new one and stores it there (mode 0600: it holds the account key).
    pub async fn open(
        config: &AcmeConfig,
        state_dir: &Path,
        http: Arc<HttpChallenges>,
        resolver: Arc<CertResolver>,
    ) -> Result<Self, AcmeError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, config.directory_url.as_bytes());
        let short = hex::encode(digest.as_ref().get(..8).unwrap_or_default());
        let dir = state_dir.join("acme");
        let path = dir.join(format!("account-{short}.json"));
        let builder = || match &config.ca_bundle {
            Some(bundle) => Account::builder_with_root(bundle),
            None => Account::builder(),
        };
        let protocol = |step| move |source| AcmeError::Protocol { step, source };
        let account = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| AcmeError::AccountFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let credentials: AccountCredentials =
                serde_json::from_str(&text).map_err(|e| AcmeError::AccountFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            tracing::info!(path = %path.display(), "using the stored ACME account");
            builder()
                .map_err(protocol("client setup"))?
                .from_credentials(credentials)
                .await
                .map_err(protocol("account load"))?
        } else {
            let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
            let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
            tracing::info!(directory = %config.directory_url, "registering an ACME account");
            let (account, credentials) = builder()
                .map_err(protocol("client setup"))?
                .create(
                    &NewAccount {
                        contact: &contacts,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    config.directory_url.clone(),
                    None,
                )
                .await
                .map_err(protocol("account registration"))?;
            std::fs::create_dir_all(&dir).map_err(|source| CertError::Io {
                action: "creating",
                path: dir.clone(),
                source,
            })?;
            let json = serde_json::to_vec(&credentials).map_err(|e| AcmeError::AccountFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            write_private(&path, &json)?;
            account
        };
        Ok(Self {
            account,
            challenge: config.challenge,
            http,
            resolver,
            store: CertStore::new(state_dir),
        })
    }

    /// Obtains a certificate for `host`, stores it and installs it in the resolver.
    ///
    /// Answers the configured challenge, waits (logging what it waits for) up to about a
    /// minute for the CA to validate and another for it to issue.
    pub async fn issue(&self, host: &str) -> Result<StoredCert, AcmeError> {
        let protocol = |step| move |source| AcmeError::Protocol { step, source };
        tracing::info!(%host, challenge = ?self.challenge, "ordering a certificate");
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(protocol("new order"))?;
        let mut tokens = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(result) = authorizations.next().await {
            let mut authz = result.map_err(protocol("authorization fetch"))?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let kind = match self.challenge {
                ChallengeKind::Http01 => ChallengeType::Http01,
                ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut challenge = authz
                .challenge(kind)
                .ok_or(AcmeError::NoChallenge(self.challenge))?;
            let key_authorization = challenge.key_authorization();
            match self.challenge {
                ChallengeKind::Http01 => {
                    self.http.insert(
                        challenge.token.clone(),
                        key_authorization.as_str().to_string(),
                    );
                    tokens.push(challenge.token.clone());
                }
                ChallengeKind::TlsAlpn01 => {
                    let key = alpn_challenge_cert(host, key_authorization.digest().as_ref())?;
                    self.resolver.set_challenge(host, key);
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(protocol("challenge ready"))?;
        }
        tracing::info!(%host, "waiting for the CA to validate the challenge (up to 60 s)");
        let retries = RetryPolicy::default()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(60));
        let status = order.poll_ready(&retries).await;
        for token in &tokens {
            self.http.remove(token);
        }
        self.resolver.clear_challenge(host);
        let status = status.map_err(protocol("order validation"))?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::OrderFailed {
                host: host.to_string(),
                status,
                challenge: self.challenge,
            });
        }
        let key_pem = order.finalize().await.map_err(protocol("finalize"))?;
        tracing::info!(%host, "waiting for the CA to issue the certificate (up to 60 s)");
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(protocol("certificate download"))?;
        let stored = StoredCert::from_pem(chain_pem, key_pem, host)?;
        self.store.save(host, &stored)?;
        self.resolver.set_host(host, stored.certified_key(host)?);
        tracing::info!(%host, not_after = ?stored.not_after, "certificate issued and stored");
        Ok(stored)
    }
}

/// The self-signed TLS-ALPN-01 certificate for `host` carrying the `acmeIdentifier`
/// extension with the SHA-256 of the key authorization (RFC 8737).
fn alpn_challenge_cert(
    host: &str,
    digest: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, AcmeError> {
    let bad = |e: rcgen::Error| AcmeError::ChallengeCert(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(bad)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(bad)?;
    Ok(certified_key_from_pem(
        &cert.pem(),
        &key.serialize_pem(),
        "TLS-ALPN-01 challenge",
    )?)
}
