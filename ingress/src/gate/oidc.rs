//! The OIDC login gate for people: a browser without a session is sent to the IdP
//! (authorization code with PKCE, `state` and `nonce`), comes back to a callback path on
//! the funnel's own hostname, and gets a signed session cookie scoped to that hostname.
//!
//! - **Session cookie** `__Host-postern-session`: `Secure; HttpOnly; SameSite=Lax;
//!   Path=/`, no `Domain` (the `__Host-` prefix makes browsers enforce exactly that, so the
//!   cookie belongs to this hostname only). Its value is `base64url(JSON).base64url(MAC)`,
//!   HMAC-SHA256 with the funnel's session key (kept in a 0600 file), binding the
//!   hostname and an expiry. It holds who logged in (subject, email, name, groups), so
//!   the edge keeps no session table and sessions survive a restart.
//! - **Login cookie** `__Host-postern-login`, set with the redirect to the IdP and cleared
//!   at the callback: the `state`, `nonce`, PKCE verifier and the path to return to,
//!   signed the same way and valid for 10 minutes. The callback refuses a `state` that is
//!   not the one in this cookie, which ties the code to the browser that started the
//!   login (login CSRF).
//! - **Who is admitted**: a session whose email, email domain or one of whose groups is on
//!   the allow lists (at least one list must be set). Checked at the callback and again on
//!   every request, so a list change applies to existing sessions.
//! - **Remembered sessions**: a browser sends the same cookie with every request, so the
//!   gate remembers the sessions it admitted
//!   ([`VerifiedCredentials`](super::verified_credentials), keyed by the SHA-256 of the
//!   cookie's exact value, at most [`SESSION_CACHE_CAPACITY`]): a known cookie costs a hash
//!   instead of the MAC check and the JSON decoding. What is remembered is what the
//!   cookie's verified payload says (hostname, subject, email, name, groups, expiry) and
//!   the identity built from it; the expiry and the hostname are checked again at every
//!   request, and so are the allow lists. Only a cookie whose MAC verified and that was
//!   admitted is remembered: a forged, expired, other-hostname or refused one never is.
//! - **Logout path** (default `/.postern/logout`): clears the session cookie.
//! - Requests without a session that a browser can follow (`GET`/`HEAD` accepting
//!   `text/html`) are redirected to the IdP; others get `401 login_required`, so APIs and
//!   webhooks in an any-of chain are not redirected.
//!
//! I/O (discovery, the token request) happens in [`Gate::evaluate_async`]; the session
//! check is pure and takes `now`.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::{HeaderValue, Method, StatusCode};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::verified_credentials::{VerifiedCredential, VerifiedCredentials, token_digest};
use super::{Decision, Gate, GateFuture, GateRequest, Identity, ReasonCode, Secret};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "__Host-postern-session";
/// The login-in-progress cookie's name.
pub const LOGIN_COOKIE: &str = "__Host-postern-login";
/// How long a started login may take before its callback is refused.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);
/// The smallest session key accepted, in bytes.
pub const MIN_SESSION_KEY_BYTES: usize = 32;
/// How many admitted session cookies one OIDC gate remembers (see the [module docs](self)).
pub const SESSION_CACHE_CAPACITY: usize = 10_000;

/// The OIDC gate's settings.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The IdP's issuer URL (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// The client registered at the IdP for this funnel.
    pub client_id: String,
    /// The client's secret (confidential clients); `None` for a public client.
    pub client_secret: Option<Secret>,
    /// The callback URL registered at the IdP, on the funnel's hostname, e.g.
    /// `https://app.example.com/.postern/callback`. Its path is the callback path.
    pub redirect_url: String,
    /// The path that signs out (default `/.postern/logout`).
    pub logout_path: String,
    /// Scopes asked for besides `openid` (default `email profile groups`).
    pub scopes: Vec<String>,
    /// Emails admitted (case-insensitive).
    pub allowed_emails: Vec<String>,
    /// Email domains admitted, e.g. `example.com`.
    pub allowed_domains: Vec<String>,
    /// Groups (the id_token's `groups` claim) admitted.
    pub allowed_groups: Vec<String>,
    /// How long a session lasts (default 12 hours).
    pub session_ttl: Duration,
    /// The key that signs session and login cookies (at least 32 bytes).
    pub session_key: Secret,
}

impl OidcConfig {
    /// Settings with the defaults for everything but the IdP, the client, the callback
    /// URL and the key. The allow lists start empty: set at least one.
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        redirect_url: impl Into<String>,
        session_key: Secret,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: None,
            redirect_url: redirect_url.into(),
            logout_path: "/.postern/logout".into(),
            scopes: vec!["email".into(), "profile".into(), "groups".into()],
            allowed_emails: Vec::new(),
            allowed_domains: Vec::new(),
            allowed_groups: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
            session_key,
        }
    }
}

/// Why the OIDC gate's settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OidcConfigError {
    /// The issuer is not a URL.
    #[error("issuer {0:?} is not an absolute URL (https://, or http:// for a loopback IdP)")]
    Issuer(String),
    /// The redirect URL is not an https URL.
    #[error(
        "redirect_url {0:?} must be an https:// URL on the funnel's hostname, registered at the IdP as this client's redirect URI"
    )]
    RedirectUrl(String),
    /// The logout path is not a path.
    #[error("logout_path {0:?} must start with '/' and differ from the callback path")]
    LogoutPath(String),
    /// Nobody could ever be admitted, or everybody would be.
    #[error(
        "the OIDC gate needs at least one of allowed_emails, allowed_domains or allowed_groups; without them any account at the IdP would get in"
    )]
    NoAllowList,
    /// The session key is too short.
    #[error("the session key has {0} bytes; it needs at least 32 (random) bytes")]
    ShortKey(usize),
    /// The client id is empty.
    #[error("client_id is empty; give the client id registered at the IdP")]
    NoClientId,
    /// The session key file could not be read or created.
    #[error("session key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What went wrong and what to do.
        reason: String,
    },
}

type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// How long discovery results (endpoints and the IdP's keys) are used before they are
/// fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// The shortest time between two discovery attempts.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// The OIDC login gate (`oidc`). Admits as `user:<email>` with the attributes `Login`
/// (the email), `Name` and `Groups` (comma-separated).
pub struct OidcGate {
    config: OidcConfig,
    callback_path: String,
    codec: CookieCodec,
    discovered: RwLock<Option<(OidcClient, SystemTime)>>,
    last_discovery: Mutex<Option<SystemTime>>,
    discovery_lock: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    /// Admitted session cookies, by the digest of their value (see the module docs).
    sessions: VerifiedCredentials<Arc<RememberedSession>>,
}

/// What the gate keeps of an admitted session cookie: the claims it decides on at every
/// request (hostname binding, email and groups for the allow lists; the expiry is the
/// cache entry's) and the identity it admits as.
#[derive(Debug)]
struct RememberedSession {
    host: String,
    email: String,
    groups: Vec<String>,
    identity: Identity,
}

impl fmt::Debug for OidcGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcGate")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .field("redirect_url", &self.config.redirect_url)
            .finish_non_exhaustive()
    }
}

/// What a session cookie holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The hostname the session is for.
    pub host: String,
    /// The IdP's subject.
    pub sub: String,
    /// The verified email.
    pub email: String,
    /// Display name, if the IdP sent one.
    #[serde(default)]
    pub name: Option<String>,
    /// Groups from the id_token's `groups` claim.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Expiry, unix seconds.
    pub exp: u64,
}

/// What a login cookie holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The hostname the login is for.
    pub host: String,
    /// The `state` sent to the IdP.
    pub state: String,
    /// The `nonce` sent to the IdP.
    pub nonce: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// Where to go after the login (a path on this hostname).
    pub return_to: String,
    /// Expiry, unix seconds.
    pub exp: u64,
}

/// Signs and checks the gate's cookies: `base64url(JSON).base64url(HMAC-SHA256)`, with a
/// purpose label in the MAC so a login cookie can never pass as a session.
#[derive(Clone)]
pub struct CookieCodec {
    key: Secret,
    /// The MAC keyed and labelled for `session` cookies, cloned for each check (so the
    /// key schedule runs once, not per request).
    session_mac: Hmac<Sha256>,
}

impl fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CookieCodec(<key redacted>)")
    }
}

/// Why a cookie value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CookieError {
    /// Not `payload.mac` in base64url, or too long.
    #[error("the cookie is not two base64url parts joined by '.'")]
    Malformed,
    /// The MAC does not match.
    #[error("the cookie's signature does not match the session key")]
    BadSignature,
    /// The payload is not the expected JSON.
    #[error("the cookie's payload is not a session")]
    BadPayload,
    /// Made for another hostname.
    #[error("the cookie was issued for another hostname")]
    WrongHost,
    /// Past its expiry.
    #[error("the cookie has expired")]
    Expired,
    /// The value would not fit in one cookie (browsers keep at most 4096 bytes).
    #[error("the value is too large for a cookie ({0} bytes, at most 4096)")]
    TooLarge(usize),
}

/// The longest cookie value accepted.
const MAX_COOKIE_BYTES: usize = 4096;

impl CookieCodec {
    /// A codec with `key` (at least [`MIN_SESSION_KEY_BYTES`]).
    pub fn new(key: Secret) -> Result<Self, OidcConfigError> {
        if key.len() < MIN_SESSION_KEY_BYTES {
            return Err(OidcConfigError::ShortKey(key.len()));
        }
        let session_mac = keyed_mac(&key, "session");
        Ok(Self { key, session_mac })
    }

    /// Signs a value for `purpose` (`session` or `login`).
    ///
    /// Refuses a value whose cookie would be longer than [`decode`](Self::decode) accepts
    /// (and than browsers keep), so whatever this returns decodes again.
    pub fn encode<T: Serialize>(&self, purpose: &str, value: &T) -> Result<String, CookieError> {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default());
        let mac = URL_SAFE_NO_PAD.encode(self.mac(purpose, &payload));
        let cookie = format!("{payload}.{mac}");
        if cookie.len() > MAX_COOKIE_BYTES {
            return Err(CookieError::TooLarge(cookie.len()));
        }
        Ok(cookie)
    }

    /// Checks a signed value for `purpose` and decodes it. Never panics on any input.
    pub fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        purpose: &str,
        cookie: &str,
    ) -> Result<T, CookieError> {
        if cookie.len() > MAX_COOKIE_BYTES {
            return Err(CookieError::Malformed);
        }
        let (payload, mac) = cookie.split_once('.').ok_or(CookieError::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| CookieError::Malformed)?;
        let mut check = self.hmac(purpose);
        check.update(payload.as_bytes());
        check
            .verify_slice(&mac)
            .map_err(|_| CookieError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| CookieError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| CookieError::BadPayload)
    }

    /// Decodes a session cookie and checks its hostname and expiry against `now`.
    pub fn session(
        &self,
        cookie: &str,
        host: &str,
        now: SystemTime,
    ) -> Result<Session, CookieError> {
        let session: Session = self.decode("session", cookie)?;
        if !session.host.eq_ignore_ascii_case(host) {
            return Err(CookieError::WrongHost);
        }
        if session.exp <= unix(now) {
            return Err(CookieError::Expired);
        }
        Ok(session)
    }

    fn hmac(&self, purpose: &str) -> Hmac<Sha256> {
        if purpose == "session" {
            return self.session_mac.clone();
        }
        keyed_mac(&self.key, purpose)
    }

    fn mac(&self, purpose: &str, payload: &str) -> Vec<u8> {
        let mut mac = self.hmac(purpose);
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// HMAC-SHA256 with `key`, labelled for `purpose` (`postern-oidc-<purpose>\0` first).
fn keyed_mac(key: &Secret, purpose: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose())
        .unwrap_or_else(|_| Hmac::<Sha256>::new(&Default::default()));
    mac.update(b"postern-oidc-");
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac
}

/// Reads the session key from `path`, or creates one (32 random bytes, mode 0600) when
/// the file does not exist. Refuses a file other users can read, or a short key.
pub fn load_or_create_session_key(path: &Path) -> Result<Secret, OidcConfigError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let fail = |reason: String| OidcConfigError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(fail(format!(
                    "mode {:o} lets other users read it; run chmod 600 on it",
                    meta.permissions().mode() & 0o777
                )));
            }
            let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            let key = Secret::new(bytes);
            if key.len() < MIN_SESSION_KEY_BYTES {
                return Err(fail(format!(
                    "holds {} bytes; a session key needs at least {MIN_SESSION_KEY_BYTES} (delete it to have a new one made)",
                    key.len()
                )));
            }
            Ok(key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
            }
            let mut bytes = vec![0u8; MIN_SESSION_KEY_BYTES];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail(e.to_string()))?;
            file.write_all(&bytes).map_err(|e| fail(e.to_string()))?;
            Ok(Secret::new(bytes))
        }
        Err(error) => Err(fail(error.to_string())),
    }
}

impl OidcGate {
    /// A gate from its settings. Nothing is fetched yet: discovery happens on first use.
    pub fn new(config: OidcConfig) -> Result<Self, OidcConfigError> {
        if config.client_id.is_empty() {
            return Err(OidcConfigError::NoClientId);
        }
        let issuer = reqwest::Url::parse(&config.issuer)
            .map_err(|_| OidcConfigError::Issuer(config.issuer.clone()))?;
        if !(issuer.scheme() == "https"
            || (issuer.scheme() == "http" && super::jwt::is_loopback(&issuer)))
        {
            return Err(OidcConfigError::Issuer(config.issuer.clone()));
        }
        let redirect = reqwest::Url::parse(&config.redirect_url)
            .ok()
            .filter(|url| url.scheme() == "https" && url.host_str().is_some())
            .ok_or_else(|| OidcConfigError::RedirectUrl(config.redirect_url.clone()))?;
        let callback_path = redirect.path().to_string();
        if !config.logout_path.starts_with('/') || config.logout_path == callback_path {
            return Err(OidcConfigError::LogoutPath(config.logout_path.clone()));
        }
        if config.allowed_emails.is_empty()
            && config.allowed_domains.is_empty()
            && config.allowed_groups.is_empty()
        {
            return Err(OidcConfigError::NoAllowList);
        }
        let codec = CookieCodec::new(config.session_key.clone())?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Ok(Self {
            config,
            callback_path,
            codec,
            discovered: RwLock::new(None),
            last_discovery: Mutex::new(None),
            discovery_lock: tokio::sync::Mutex::new(()),
            http,
            sessions: VerifiedCredentials::new(SESSION_CACHE_CAPACITY),
        })
    }

    /// The path the IdP redirects back to.
    pub fn callback_path(&self) -> &str {
        &self.callback_path
    }

    /// The cookie codec (tests and tools make sessions with it).
    pub fn codec(&self) -> &CookieCodec {
        &self.codec
    }

    /// Whether a logged-in person may use this funnel: their email (case-insensitive), its
    /// domain, or one of their groups is on an allow list. Runs on every request.
    pub fn admits(&self, email: &str, groups: &[String]) -> bool {
        let domain = email.rsplit_once('@').map(|(_, domain)| domain);
        self.config
            .allowed_emails
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(email))
            || domain.is_some_and(|domain| {
                self.config
                    .allowed_domains
                    .iter()
                    .any(|allowed| allowed.trim_start_matches('@').eq_ignore_ascii_case(domain))
            })
            || groups
                .iter()
                .any(|group| self.config.allowed_groups.contains(group))
    }

    fn host<'a>(&self, request: &GateRequest<'a>) -> &'a str {
        let after_scheme = request
            .url()
            .split_once("://")
            .map_or(request.url(), |(_, rest)| rest);
        let authority = after_scheme.split('/').next().unwrap_or("");
        authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(host, _)| host)
    }

    /// The decision for a request that carries a valid session cookie; `None` when it
    /// carries none, or one that is forged, expired or for another hostname (then the
    /// visitor has to log in).
    fn session_decision(&self, request: &GateRequest<'_>, now: SystemTime) -> Option<Decision> {
        let cookie = request.cookie(SESSION_COOKIE)?;
        let host = self.host(request);
        let session = self.verified_session(cookie, host, now)?;
        // Checked at every use: the cookie's hostname binding (the cache entry is keyed
        // by the value only) and the allow lists (so a list change applies to it).
        if !session.host.eq_ignore_ascii_case(host) {
            return None;
        }
        if !self.admits(&session.email, &session.groups) {
            return Some(Decision::deny(ReasonCode::LoginNotAllowed));
        }
        Some(Decision::Allow {
            gate: self.name().to_string(),
            identity: session.identity.clone(),
        })
    }

    /// The session in `cookie`: remembered if this exact value was admitted before and has
    /// not expired at `now`, else checked in full (MAC, payload, hostname, expiry) and, if
    /// the allow lists admit it, remembered until its expiry. `None` when it is not valid.
    fn verified_session(
        &self,
        cookie: &str,
        host: &str,
        now: SystemTime,
    ) -> Option<Arc<RememberedSession>> {
        let digest = token_digest(cookie);
        let unix_now = unix(now);
        match self.sessions.get(&digest, 0, unix_now, 0) {
            Some(Ok(session)) => return Some(session),
            Some(Err(_)) => return None,
            None => {}
        }
        let session = self.codec.session(cookie, host, now).ok()?;
        let expires = session.exp;
        let remembered = Arc::new(RememberedSession::new(session));
        if self.admits(&remembered.email, &remembered.groups) {
            self.sessions.insert(
                digest,
                VerifiedCredential {
                    admitted: Arc::clone(&remembered),
                    expires,
                    not_before: None,
                },
                0,
                unix_now,
                0,
            );
        }
        Some(remembered)
    }

    fn logout(&self) -> Decision {
        Decision::Respond {
            status: StatusCode::OK,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                ),
                (http::header::SET_COOKIE, clear_cookie(SESSION_COOKIE)),
                (
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ),
            ],
            body: b"signed out\n".to_vec(),
        }
    }

    /// The redirect to the IdP for a browser without a session, or `login_required`.
    fn start_login(&self, request: &GateRequest<'_>, now: SystemTime) -> Decision {
        let browser = matches!(*request.method(), Method::GET | Method::HEAD)
            && request
                .headers()
                .get_all(http::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|accept| accept.contains("text/html"));
        if !browser {
            return Decision::deny(ReasonCode::LoginRequired);
        }
        let Ok(guard) = self.discovered.read() else {
            return Decision::deny(ReasonCode::IdpUnavailable);
        };
        let Some((client, _)) = guard.as_ref() else {
            return Decision::deny(ReasonCode::IdpUnavailable);
        };
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut authorize = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &self.config.scopes {
            authorize = authorize.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = authorize.set_pkce_challenge(challenge).url();
        let return_to = safe_return_path(request);
        let pending = PendingLogin {
            host: self.host(request).to_ascii_lowercase(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            return_to,
            exp: unix(now) + LOGIN_TIMEOUT.as_secs(),
        };
        let Ok(login) = self.codec.encode("login", &pending) else {
            // Cannot happen: every field is bounded (`safe_return_path` caps `return_to`).
            return Decision::deny(ReasonCode::LoginFailed);
        };
        let cookie = set_cookie(LOGIN_COOKIE, &login, LOGIN_TIMEOUT);
        let Ok(location) = HeaderValue::from_str(url.as_str()) else {
            return Decision::deny(ReasonCode::IdpUnavailable);
        };
        Decision::Respond {
            status: StatusCode::FOUND,
            headers: vec![
                (http::header::LOCATION, location),
                (http::header::SET_COOKIE, cookie),
                (
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ),
            ],
            body: Vec::new(),
        }
    }

    /// Makes sure discovery results are loaded and fresh, fetching at most every few
    /// seconds.
    async fn ensure_discovered(&self, now: SystemTime) {
        let fresh = |gate: &Self| {
            gate.discovered.read().ok().is_some_and(|guard| {
                guard.as_ref().is_some_and(|(_, at)| {
                    now.duration_since(*at).unwrap_or_default() < DISCOVERY_TTL
                })
            })
        };
        if fresh(self) {
            return;
        }
        let _one_at_a_time = self.discovery_lock.lock().await;
        if fresh(self) {
            return;
        }
        let may = self.last_discovery.lock().ok().is_some_and(|mut last| {
            let allowed =
                last.is_none_or(|at| now.duration_since(at).unwrap_or_default() >= DISCOVERY_RETRY);
            if allowed {
                *last = Some(now);
            }
            allowed
        });
        if !may {
            return;
        }
        match self.discover().await {
            Ok(client) => {
                tracing::info!(issuer = %self.config.issuer, "OIDC discovery done");
                if let Ok(mut guard) = self.discovered.write() {
                    *guard = Some((client, now));
                }
            }
            Err(error) => {
                tracing::warn!(issuer = %self.config.issuer, %error, "OIDC discovery failed");
            }
        }
    }

    async fn discover(&self) -> Result<OidcClient, String> {
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| error_chain(&e))?;
        let redirect =
            RedirectUrl::new(self.config.redirect_url.clone()).map_err(|e| e.to_string())?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.as_ref().map(|secret| {
                ClientSecret::new(String::from_utf8_lossy(secret.expose()).into_owned())
            }),
        )
        .set_redirect_uri(redirect))
    }

    /// The callback: checks `state` against the login cookie, redeems the code with the
    /// PKCE verifier, verifies the id_token (signature, issuer, audience, expiry, nonce),
    /// applies the allow lists and sets the session.
    async fn callback(&self, request: &GateRequest<'_>, now: SystemTime) -> Decision {
        let clear_login = (http::header::SET_COOKIE, clear_cookie(LOGIN_COOKIE));
        let fail = |reason: ReasonCode, why: &str| {
            tracing::info!(reason = %reason, why, "OIDC callback refused");
            Decision::Deny {
                status: reason.status(),
                reason,
                headers: vec![clear_login.clone()],
            }
        };
        let query: Vec<(String, String)> = request
            .query()
            .map(form_urlencoded_pairs)
            .unwrap_or_default();
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if param("error").is_some() {
            return fail(ReasonCode::LoginFailed, "the IdP answered with an error");
        }
        let (Some(code), Some(state)) = (param("code"), param("state")) else {
            return fail(ReasonCode::LoginFailed, "no code or state in the callback");
        };
        let Some(pending) = request
            .cookie(LOGIN_COOKIE)
            .and_then(|cookie| self.codec.decode::<PendingLogin>("login", cookie).ok())
        else {
            return fail(ReasonCode::LoginFailed, "no valid login cookie");
        };
        if !pending.host.eq_ignore_ascii_case(self.host(request)) || pending.exp <= unix(now) {
            return fail(
                ReasonCode::LoginFailed,
                "login cookie for another host or expired",
            );
        }
        if !Secret::from(pending.state.as_str()).ct_eq(state.as_bytes()) {
            return fail(
                ReasonCode::LoginFailed,
                "state does not match the login cookie",
            );
        }
        let client = match self.discovered.read() {
            Ok(guard) => guard.as_ref().map(|(client, _)| client.clone()),
            Err(_) => None,
        };
        let Some(client) = client else {
            return Decision::deny(ReasonCode::IdpUnavailable);
        };
        let exchange = match client.exchange_code(AuthorizationCode::new(code.to_string())) {
            Ok(exchange) => exchange,
            Err(_) => return Decision::deny(ReasonCode::IdpUnavailable),
        };
        let tokens = match exchange
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&self.http)
            .await
        {
            Ok(tokens) => tokens,
            Err(error) => {
                tracing::info!(error = %error_chain(&error), "the IdP refused the code");
                return fail(ReasonCode::LoginFailed, "the IdP refused the code");
            }
        };
        let Some(id_token) = tokens.id_token() else {
            return fail(ReasonCode::LoginFailed, "no id_token in the token response");
        };
        let verifier = client.id_token_verifier();
        let claims = match id_token.claims(&verifier, &Nonce::new(pending.nonce.clone())) {
            Ok(claims) => claims,
            Err(error) => {
                tracing::info!(%error, "id_token refused");
                return fail(ReasonCode::LoginFailed, "the id_token did not verify");
            }
        };
        let Some(email) = claims.email().map(|e| e.as_str().to_ascii_lowercase()) else {
            return fail(
                ReasonCode::LoginFailed,
                "the id_token has no email claim (ask for the email scope)",
            );
        };
        if claims.email_verified() == Some(false) {
            return fail(
                ReasonCode::LoginNotAllowed,
                "the IdP says the email is not verified",
            );
        }
        // `groups` is not a standard claim; read it from the payload the verifier just
        // accepted (same bytes, so it is covered by the signature).
        let groups = groups_claim(&id_token.to_string());
        let name = claims
            .name()
            .and_then(|names| names.get(None))
            .map(|name| name.as_str().to_string());
        if !self.admits(&email, &groups) {
            tracing::info!(%email, "login not on the allow lists");
            return fail(ReasonCode::LoginNotAllowed, "not on the allow lists");
        }
        let session = Session {
            host: pending.host.clone(),
            sub: claims.subject().as_str().to_string(),
            email,
            name,
            groups: groups.into_iter().take(64).collect(),
            exp: unix(now) + self.config.session_ttl.as_secs(),
        };
        let encoded = match self.codec.encode("session", &session) {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::info!(email = %session.email, %error, "session does not fit in a cookie");
                return fail(
                    ReasonCode::LoginFailed,
                    "the session (email, name and groups) is too large for a cookie; \
                     ask the IdP to send fewer groups",
                );
            }
        };
        let location = HeaderValue::from_str(&pending.return_to)
            .unwrap_or_else(|_| HeaderValue::from_static("/"));
        Decision::Respond {
            status: StatusCode::FOUND,
            headers: vec![
                (http::header::LOCATION, location),
                (
                    http::header::SET_COOKIE,
                    set_cookie(SESSION_COOKIE, &encoded, self.config.session_ttl),
                ),
                clear_login,
                (
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ),
            ],
            body: Vec::new(),
        }
    }
}

impl Gate for OidcGate {
    fn name(&self) -> &str {
        "oidc"
    }

    /// The pure part: logout, the session check, and the redirect to the IdP (when
    /// discovery has run). The callback needs the token request, so here it is refused
    /// with `login_failed`; the edge uses [`Gate::evaluate_async`].
    fn evaluate(&self, request: &GateRequest<'_>, now: SystemTime) -> Decision {
        let path = request.path();
        if path == self.config.logout_path {
            return self.logout();
        }
        if path == self.callback_path {
            return Decision::deny(ReasonCode::LoginFailed);
        }
        if let Some(decision) = self.session_decision(request, now) {
            return decision;
        }
        self.start_login(request, now)
    }

    fn evaluate_async<'a>(
        &'a self,
        request: &'a GateRequest<'a>,
        now: SystemTime,
    ) -> GateFuture<'a> {
        GateFuture::io(async move {
            let path = request.path();
            if path == self.callback_path {
                self.ensure_discovered(now).await;
                return self.callback(request, now).await;
            }
            if path == self.config.logout_path {
                return self.logout();
            }
            // The session cookie is decoded once per request: a valid one decides here,
            // and only a request without one needs the IdP's endpoints (to log in).
            if let Some(decision) = self.session_decision(request, now) {
                return decision;
            }
            self.ensure_discovered(now).await;
            self.start_login(request, now)
        })
    }
}

impl RememberedSession {
    /// The claims of a verified session, and the identity it admits as: `user:<email>` with
    /// `Login`, `Name` (when the IdP sent one) and `Groups` (comma-separated).
    fn new(session: Session) -> Self {
        let mut identity = Identity::new(format!("user:{}", session.email))
            .with_attribute("Login", session.email.clone());
        if let Some(name) = session.name {
            identity = identity.with_attribute("Name", name);
        }
        identity = identity.with_attribute("Groups", session.groups.join(","));
        Self {
            host: session.host,
            email: session.email,
            groups: session.groups,
            identity,
        }
    }
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn set_cookie(name: &str, value: &str, max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        max_age.as_secs()
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn clear_cookie(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The request's path and query, as a same-site path to return to after the login.
/// Anything that a browser could read as another origin (`//host`, backslashes) becomes
/// `/`.
fn safe_return_path(request: &GateRequest<'_>) -> String {
    let path = request.path();
    let full = match request.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    // A return path longer than this would not fit in the login cookie with the state,
    // nonce and verifier; such a visitor lands on `/` after logging in.
    const MAX_RETURN_PATH: usize = 2048;
    if !full.starts_with('/')
        || full.starts_with("//")
        || full.contains('\\')
        || full.len() > MAX_RETURN_PATH
    {
        return "/".into();
    }
    full
}

/// `application/x-www-form-urlencoded` pairs of a query string.
fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://q.invalid/?{query}"))
        .map(|url| {
            url.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The `groups` claim of a JWT's payload (already verified by the caller).
fn groups_claim(jwt: &str) -> Vec<String> {
    jwt.split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|claims| {
            claims
                .get("groups")
                .and_then(|g| g.as_array())
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|item| item.as_str().map(str::to_string))
                        .collect()
                })
        })
        .unwrap_or_default()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::HeaderMap;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn gate() -> OidcGate {
        let mut config = OidcConfig::new(
            "https://idp.example",
            "edge",
            "https://app.test/.postern/callback",
            Secret::new(vec![1u8; 32]),
        );
        config.allowed_emails = vec!["Carol@Example.com".into()];
        config.allowed_domains = vec!["example.org".into()];
        config.allowed_groups = vec!["eng".into()];
        OidcGate::new(config).unwrap()
    }

    fn session(email: &str, groups: &[&str], exp: u64) -> Session {
        Session {
            host: "app.test".into(),
            sub: "s".into(),
            email: email.into(),
            name: Some("N".into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            exp,
        }
    }

    fn decide(gate: &OidcGate, method: Method, url: &str, headers: &[(&str, &str)]) -> Decision {
        decide_at(gate, method, url, headers, NOW)
    }

    fn decide_at(
        gate: &OidcGate,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        now: u64,
    ) -> Decision {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let client: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let request = GateRequest::new(&method, url, &map, b"", client);
        gate.evaluate(&request, at(now))
    }

    /// The `Cookie` header value carrying `session` signed by `gate`'s key.
    fn session_cookie(gate: &OidcGate, session: &Session) -> String {
        format!(
            "{SESSION_COOKIE}={}",
            gate.codec().encode("session", session).unwrap()
        )
    }

    /// A POST (an API call: no redirect) to `url` with `cookie`, at `now`.
    fn call(gate: &OidcGate, url: &str, cookie: &str, now: u64) -> Decision {
        decide_at(gate, Method::POST, url, &[("cookie", cookie)], now)
    }

    #[test]
    fn a_remembered_session_still_expires() {
        let gate = gate();
        let cookie = session_cookie(&gate, &session("carol@example.com", &[], NOW + 60));
        for now in [NOW, NOW + 1, NOW + 59] {
            let Decision::Allow { identity, .. } = call(&gate, "https://app.test/x", &cookie, now)
            else {
                panic!("a valid session was refused at {now}");
            };
            assert_eq!(identity.principal, "user:carol@example.com");
            assert_eq!(
                identity.attributes,
                vec![
                    ("Login".into(), "carol@example.com".to_string()),
                    ("Name".into(), "N".to_string()),
                    ("Groups".into(), String::new()),
                ]
            );
        }
        assert_eq!(gate.sessions.len(), 1, "decoded once, then from memory");
        for now in [NOW + 60, NOW + 3600] {
            assert_eq!(
                call(&gate, "https://app.test/x", &cookie, now).deny_reason(),
                Some(ReasonCode::LoginRequired),
                "at {now}"
            );
        }
    }

    #[test]
    fn a_tampered_cookie_is_refused_and_not_remembered() {
        let gate = gate();
        let value = gate
            .codec()
            .encode("session", &session("carol@example.com", &[], NOW + 60))
            .unwrap();
        let (payload, mac) = value.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&session("mallory@example.com", &["eng"], NOW + 60)).unwrap(),
        );
        let mut flipped = mac.to_string();
        let last = if flipped.ends_with('A') { "B" } else { "A" };
        flipped.replace_range(flipped.len() - 1.., last);
        let tampered = [
            format!("{forged_payload}.{mac}"),
            format!("{payload}.{flipped}"),
            format!("{payload}x.{mac}"),
            payload.to_string(),
        ];
        for round in 0..2 {
            for bad in &tampered {
                assert_eq!(
                    call(
                        &gate,
                        "https://app.test/x",
                        &format!("{SESSION_COOKIE}={bad}"),
                        NOW
                    )
                    .deny_reason(),
                    Some(ReasonCode::LoginRequired),
                    "{bad}"
                );
            }
            // Nothing forged is remembered, before or after the real cookie is.
            assert_eq!(gate.sessions.len(), round);
            assert!(
                call(
                    &gate,
                    "https://app.test/x",
                    &format!("{SESSION_COOKIE}={value}"),
                    NOW
                )
                .is_allow()
            );
            assert_eq!(gate.sessions.len(), 1);
        }
    }

    #[test]
    fn a_list_change_applies_to_a_remembered_session() {
        let mut gate = gate();
        let cookie = session_cookie(&gate, &session("erin@elsewhere.test", &["eng"], NOW + 600));
        assert!(call(&gate, "https://app.test/x", &cookie, NOW).is_allow());
        assert_eq!(gate.sessions.len(), 1);
        // The group leaves the allow list: the remembered session is refused from now on.
        gate.config.allowed_groups = vec!["ops".into()];
        assert_eq!(
            call(&gate, "https://app.test/x", &cookie, NOW + 1).deny_reason(),
            Some(ReasonCode::LoginNotAllowed)
        );
        // ... and admitted again when it comes back, by email this time.
        gate.config.allowed_emails = vec!["ERIN@elsewhere.test".into()];
        assert!(call(&gate, "https://app.test/x", &cookie, NOW + 2).is_allow());
        // A session the lists refuse is not remembered.
        let outsider = session_cookie(&gate, &session("frank@elsewhere.test", &[], NOW + 600));
        assert_eq!(
            call(&gate, "https://app.test/x", &outsider, NOW).deny_reason(),
            Some(ReasonCode::LoginNotAllowed)
        );
        assert_eq!(gate.sessions.len(), 1);
    }

    #[test]
    fn the_cookie_for_another_hostname_is_refused() {
        let gate = gate();
        let mut elsewhere = session("carol@example.com", &[], NOW + 600);
        elsewhere.host = "other.test".into();
        let elsewhere = session_cookie(&gate, &elsewhere);
        for _ in 0..2 {
            assert_eq!(
                call(&gate, "https://app.test/x", &elsewhere, NOW).deny_reason(),
                Some(ReasonCode::LoginRequired)
            );
        }
        assert_eq!(
            gate.sessions.len(),
            0,
            "a cookie for another host is not remembered"
        );
        // A remembered cookie of this hostname, sent for another one, is refused too.
        let here = session_cookie(&gate, &session("carol@example.com", &[], NOW + 600));
        assert!(call(&gate, "https://APP.test:443/x", &here, NOW).is_allow());
        assert_eq!(gate.sessions.len(), 1);
        assert_eq!(
            call(&gate, "https://other.test/x", &here, NOW).deny_reason(),
            Some(ReasonCode::LoginRequired)
        );
        assert!(call(&gate, "https://app.test/x", &here, NOW).is_allow());
    }

    use http::HeaderName;

    #[test]
    fn cookies_round_trip_and_refuse_tampering_purpose_host_and_expiry() {
        let gate = gate();
        let codec = gate.codec();
        let value = codec
            .encode("session", &session("alice@example.org", &[], NOW + 60))
            .expect("fits");
        assert!(codec.session(&value, "app.test", at(NOW)).is_ok());
        assert_eq!(
            codec.session(&value, "other.test", at(NOW)),
            Err(CookieError::WrongHost)
        );
        assert_eq!(
            codec.session(&value, "app.test", at(NOW + 60)),
            Err(CookieError::Expired)
        );
        // the same bytes signed for another purpose never pass
        assert_eq!(
            codec.decode::<PendingLogin>("login", &value),
            Err(CookieError::BadSignature)
        );
        let (payload, mac) = value.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&session("mallory@example.org", &["eng"], NOW + 60)).unwrap(),
        );
        assert_eq!(
            codec.session(&format!("{forged_payload}.{mac}"), "app.test", at(NOW)),
            Err(CookieError::BadSignature)
        );
        for bad in [
            "",
            ".",
            "abc",
            "a.b.c",
            &format!("{payload}.!!"),
            &"x".repeat(5000),
        ] {
            assert!(codec.session(bad, "app.test", at(NOW)).is_err(), "{bad}");
        }
        let other_key = CookieCodec::new(Secret::new(vec![2u8; 32])).unwrap();
        assert_eq!(
            other_key.session(&value, "app.test", at(NOW)),
            Err(CookieError::BadSignature)
        );
        assert_eq!(
            CookieCodec::new(Secret::new(vec![0u8; 16])).unwrap_err(),
            OidcConfigError::ShortKey(16)
        );
    }

    #[test]
    fn a_value_too_large_for_a_cookie_is_refused_when_encoding() {
        let codec = CookieCodec::new(Secret::new(vec![7u8; 32])).unwrap();
        let groups: Vec<&str> = std::iter::repeat_n("engineering-platform-team", 200).collect();
        let big = session("alice@example.org", &groups, NOW + 60);
        let error = codec.encode("session", &big).unwrap_err();
        assert!(matches!(error, CookieError::TooLarge(n) if n > MAX_COOKIE_BYTES));
        assert!(
            error.to_string().contains("too large for a cookie"),
            "{error}"
        );
        let small = session("alice@example.org", &groups[..3], NOW + 60);
        let encoded = codec.encode("session", &small).unwrap();

        assert_eq!(codec.session(&encoded, "app.test", at(NOW)), Ok(small));
    }

    #[test]
    fn sessions_admit_by_email_domain_or_group_and_lists_apply_again() {
        let gate = gate();
        let cookie = |s: &Session| {
            format!(
                "{SESSION_COOKIE}={}",
                gate.codec().encode("session", s).unwrap()
            )
        };
        let allowed = [
            session("carol@example.com", &[], NOW + 60),
            session("dave@EXAMPLE.org", &[], NOW + 60),
            session("erin@elsewhere.test", &["ops", "eng"], NOW + 60),
        ];
        for s in &allowed {
            let decision = decide(
                &gate,
                Method::GET,
                "https://app.test/x",
                &[("cookie", &cookie(s))],
            );
            match decision {
                Decision::Allow { identity, .. } => {
                    assert_eq!(identity.principal, format!("user:{}", s.email));
                    assert!(
                        identity
                            .attributes
                            .contains(&("Login".into(), s.email.clone()))
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        let outsider = session("frank@elsewhere.test", &["ops"], NOW + 60);
        assert_eq!(
            decide(
                &gate,
                Method::GET,
                "https://app.test/",
                &[("cookie", &cookie(&outsider))]
            )
            .deny_reason(),
            Some(ReasonCode::LoginNotAllowed)
        );
        // expired session, API request: login required, not a redirect
        let expired = session("carol@example.com", &[], NOW);
        assert_eq!(
            decide(
                &gate,
                Method::POST,
                "https://app.test/",
                &[("cookie", &cookie(&expired))]
            )
            .deny_reason(),
            Some(ReasonCode::LoginRequired)
        );
        // a browser navigation before discovery: the IdP is not known yet
        assert_eq!(
            decide(
                &gate,
                Method::GET,
                "https://app.test/",
                &[("accept", "text/html")]
            )
            .deny_reason(),
            Some(ReasonCode::IdpUnavailable)
        );
        // the callback needs the async path
        assert_eq!(
            decide(
                &gate,
                Method::GET,
                "https://app.test/.postern/callback?code=x&state=y",
                &[]
            )
            .deny_reason(),
            Some(ReasonCode::LoginFailed)
        );
        // logout clears the cookie
        match decide(&gate, Method::GET, "https://app.test/.postern/logout", &[]) {
            Decision::Respond { headers, .. } => {
                assert!(
                    headers
                        .iter()
                        .any(|(name, value)| name == http::header::SET_COOKIE
                            && value.to_str().unwrap().contains("Max-Age=0"))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn return_paths_stay_on_this_site() {
        let method = Method::GET;
        let headers = HeaderMap::new();
        let client: SocketAddr = "192.0.2.1:1".parse().unwrap();
        for (url, expected) in [
            ("https://app.test/a/b?c=d", "/a/b?c=d"),
            ("https://app.test//evil.example/x", "/"),
            ("https://app.test/\\evil", "/"),
            ("https://app.test", "/"),
        ] {
            let request = GateRequest::new(&method, url, &headers, b"", client);
            assert_eq!(safe_return_path(&request), expected, "{url}");
        }
    }

    #[test]
    fn configuration_errors_say_what_to_fix() {
        let base = || {
            let mut c = OidcConfig::new(
                "https://idp.example",
                "edge",
                "https://app.test/.postern/callback",
                Secret::new(vec![1u8; 32]),
            );
            c.allowed_groups = vec!["eng".into()];
            c
        };
        let error = |change: &dyn Fn(&mut OidcConfig)| {
            let mut c = base();
            change(&mut c);
            OidcGate::new(c).unwrap_err()
        };
        assert_eq!(
            error(&|c| c.allowed_groups.clear()),
            OidcConfigError::NoAllowList
        );
        assert!(matches!(
            error(&|c| c.redirect_url = "http://app.test/cb".into()),
            OidcConfigError::RedirectUrl(_)
        ));
        assert!(matches!(
            error(&|c| c.issuer = "http://idp.example".into()),
            OidcConfigError::Issuer(_)
        ));
        assert!(matches!(
            error(&|c| c.logout_path = "/.postern/callback".into()),
            OidcConfigError::LogoutPath(_)
        ));
        assert_eq!(error(&|c| c.client_id.clear()), OidcConfigError::NoClientId);
        let mut local = base();
        local.issuer = "http://127.0.0.1:9400".into();
        OidcGate::new(local).unwrap();
    }
}
