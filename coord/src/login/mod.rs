//! Interactive login: the coord as the OIDC relying party of the organisation's IdP.
//!
//! How a login runs (`docs/coord.md` has the operator's view):
//!
//! 1. A node registers with `RegisterAuth::Interactive` (or `Device`). The session asks
//!    [`LoginService`] for a pending login ([`pending`]) and answers `LoginRequired` with
//!    `{public URL}/login/<id>` (an unguessable id that expires after
//!    [`LoginConfig::login_ttl`]), or `DeviceCode` with the IdP's verification URI and user
//!    code. **The session stays open**: the coord sends keepalives and, when the login
//!    completes, the final `Authorized` or `Rejected` on the same connection. A node that
//!    redials meanwhile registers again and is given the same login (found by machine and
//!    node key), so nothing is lost when a connection drops.
//! 2. The person opens `/login/<id>` ([`routes`]): the coord makes a state, a nonce and a
//!    PKCE verifier, binds the attempt to the browser with a cookie, and redirects to the
//!    IdP. The IdP redirects back to `/oidc/callback`; the coord checks the state (once),
//!    the cookie, exchanges the code with the verifier and validates the ID token (keys,
//!    issuer, audience, expiry, nonce) in [`oidc`].
//! 3. The `email` and `groups` claims pass the [`admission`] rules; the user is created or
//!    refreshed, the node is registered to them, and the waiting session gets `Authorized`.
//!    A refused identity sees why in the browser and the node gets `Rejected` with the
//!    same reason. For a device login, a task polls the IdP's token endpoint instead.
//!
//! Pending logins live in this coord's memory: with several replicas, a node and the
//! person's browser must reach the same one (sticky load balancing), or the login fails
//! with "unknown or expired" and is retried.

pub mod admission;
pub mod oidc;
pub mod pending;
pub mod routes;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use postern_node::control::ControlConnection;
use postern_proto::control::{
    ControlMessage, MapResponse, RegisterAuth, RegisterRequest, RegisterResponse,
};
use postern_proto::netmap::{NodeAddresses, UserProfile};
use postern_proto::{MachinePublicKey, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::control::Coord;
use crate::control::session::SessionError;
use crate::registry::{Registration, RegistryError};
use crate::store::StoreError;

pub use admission::{Admission, Refusal};
pub use oidc::{Identity, OidcError, OidcSettings, RelyingParty};
pub use pending::{LoginId, LoginKind, LoginSubject, LookupError, PendingLogins};
pub use routes::{CALLBACK_PATH, LOGIN_PATH_PREFIX, routes};

/// Default life of a login link or device code at the coord: 10 minutes.
pub const DEFAULT_LOGIN_TTL: Duration = Duration::from_secs(600);

/// Most logins waiting at once; beyond it, new interactive registrations are refused
/// (anyone can make machine keys, so the table must not grow without bound).
pub const MAX_PENDING_LOGINS: usize = 10_000;

/// How the coord runs logins.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// The IdP and the coord's client registration.
    pub oidc: OidcSettings,
    /// The coord's URL as browsers reach it (`https://coord.example.com`), without a
    /// trailing slash; login links and the callback live under it.
    pub public_url: String,
    /// Who may log in.
    pub admission: Admission,
    /// How long a login link or device code waits to be used.
    pub login_ttl: Duration,
}

impl LoginConfig {
    /// A config for `issuer` and `client_id` at `public_url`, whose redirect URL is
    /// `{public_url}/oidc/callback`; everyone the IdP authenticates may log in.
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: Option<String>,
        public_url: impl Into<String>,
    ) -> Self {
        let public_url = public_url.into().trim_end_matches('/').to_owned();
        Self {
            oidc: OidcSettings {
                issuer: issuer.into().trim_end_matches('/').to_owned(),
                client_id: client_id.into(),
                client_secret,
                redirect_url: format!("{public_url}{CALLBACK_PATH}"),
                device_client_id: None,
                timeout: Duration::from_secs(15),
            },
            public_url,
            admission: Admission::default(),
            login_ttl: DEFAULT_LOGIN_TTL,
        }
    }
}

/// Why a login could not be completed inside the coord (not a refusal: those are answers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompleteError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The login side of the coord: the relying party and the logins in progress.
#[derive(Debug)]
pub struct LoginService {
    rp: RelyingParty,
    config: LoginConfig,
    pending: Mutex<PendingLogins>,
}

impl LoginService {
    /// Discovers the IdP (see [`RelyingParty::discover`]) and makes the service.
    pub async fn discover(config: LoginConfig) -> Result<Self, OidcError> {
        let rp = RelyingParty::discover(&config.oidc).await?;
        Ok(Self {
            rp,
            config,
            pending: Mutex::new(PendingLogins::new()),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &LoginConfig {
        &self.config
    }

    /// The relying party.
    pub fn relying_party(&self) -> &RelyingParty {
        &self.rp
    }

    /// The link a person opens for login `id`.
    pub fn login_url(&self, id: &LoginId) -> String {
        format!(
            "{}{LOGIN_PATH_PREFIX}{}",
            self.config.public_url,
            id.as_str()
        )
    }

    fn table(&self) -> MutexGuard<'_, PendingLogins> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters more than losing logins; keep serving.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// True if `request` asks for an interactive (browser or device) login.
pub fn wants_login(request: &RegisterRequest) -> bool {
    matches!(
        request.auth,
        RegisterAuth::Interactive | RegisterAuth::Device
    )
}

/// Runs the interactive registration of `request` from `machine` on `conn`: sends the
/// login prompt, keeps the connection alive, and returns the final answer to send (the
/// caller sends it), or `None` if the node hung up or the coord is shutting down.
pub async fn wait_for_login<S: AsyncRead + AsyncWrite + Unpin>(
    coord: &Coord,
    login: &Arc<LoginService>,
    conn: &mut ControlConnection<S>,
    machine: MachinePublicKey,
    request: &RegisterRequest,
) -> Result<Option<RegisterResponse>, SessionError> {
    let kind = match request.auth {
        RegisterAuth::Device => LoginKind::Device,
        _ => LoginKind::Browser,
    };
    let subject = LoginSubject {
        machine_key: machine,
        request: request.clone(),
        node_addr: crate::audit::CLIENT_ADDR.try_with(|addr| *addr).ok(),
    };
    let mut waiting = {
        let now = Instant::now();
        let mut table = login.table();
        table.sweep(now);
        if table.len() >= MAX_PENDING_LOGINS {
            tracing::warn!(pending = table.len(), "too many logins in progress");
            return Ok(Some(RegisterResponse::Rejected {
                reason: "too many logins are in progress at the coord; try again in a few minutes"
                    .into(),
            }));
        }
        table.start(subject.clone(), kind, login.config.login_ttl, now)
    };
    if let Some(outcome) = waiting.outcome.borrow().clone() {
        return Ok(Some(outcome));
    }
    let prompt = match waiting.prompt.clone() {
        Some(prompt) => prompt,
        None => {
            let prompt = match kind {
                LoginKind::Browser => RegisterResponse::LoginRequired {
                    login_url: login.login_url(&waiting.id),
                },
                LoginKind::Device => match start_device(coord, login, &waiting.id).await {
                    Ok(prompt) => prompt,
                    Err(err) => {
                        let reason = err.to_string();
                        let refused = Refused::by_idp(reason.clone());
                        audit_refusal(coord, &subject, refused, subject.node_addr).await;
                        let answer = RegisterResponse::Rejected { reason };
                        login.table().finish(&waiting.id, answer.clone());
                        return Ok(Some(answer));
                    }
                },
            };
            login.table().set_prompt(&waiting.id, prompt.clone());
            prompt
        }
    };
    tracing::info!(?machine, login = ?waiting.id, ?kind, "node waits for a login");
    conn.send(&ControlMessage::RegisterResponse(prompt)).await?;
    let keepalive = coord.config.keepalive_interval;
    let expires = tokio::time::Instant::from_std(waiting.expires_at);
    let shutdown = coord.shutdown_token();
    loop {
        tokio::select! {
            changed = waiting.outcome.changed() => {
                if changed.is_err() {
                    // Replaced by a newer login of this machine, or expired.
                    return Ok(Some(expired()));
                }
                if let Some(outcome) = waiting.outcome.borrow_and_update().clone() {
                    return Ok(Some(outcome));
                }
            }
            message = conn.recv() => match message? {
                None => return Ok(None),
                Some(_) => return Err(SessionError::Protocol("a message while waiting for a login")),
            },
            () = tokio::time::sleep(keepalive) => {
                conn.send(&ControlMessage::MapResponse(MapResponse::KeepAlive)).await?;
            }
            () = tokio::time::sleep_until(expires) => {
                let answer = expired();
                if let RegisterResponse::Rejected { reason } = &answer {
                    let refused = Refused::expired(reason.clone());
                    audit_refusal(coord, &subject, refused, subject.node_addr).await;
                }
                return Ok(Some(answer));
            }
            () = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// A refused login, for the audit log ([`audit_refusal`]).
#[derive(Debug, Clone)]
pub struct Refused {
    /// Who: the person's email if the IdP told us, else [`crate::audit::ACTOR_ANONYMOUS`].
    pub actor: String,
    /// Which check refused: `admission` (allowed domains or groups), `idp` (the identity
    /// provider said no), `verification` (the sign-in response did not verify) or
    /// `expired` (not completed in time).
    pub cause: &'static str,
    /// The reason the node and the person were given.
    pub reason: String,
    /// The person's groups, if known.
    pub groups: Vec<String>,
}

impl Refused {
    /// Refused by the identity provider (an `error` at the callback, a failed device grant).
    pub fn by_idp(reason: String) -> Self {
        Self::anonymous("idp", reason)
    }

    /// The sign-in response could not be verified (token exchange, signature, nonce).
    pub fn unverified(reason: String) -> Self {
        Self::anonymous("verification", reason)
    }

    /// The login was not completed before it expired.
    pub fn expired(reason: String) -> Self {
        Self::anonymous("expired", reason)
    }

    fn anonymous(cause: &'static str, reason: String) -> Self {
        Self {
            actor: crate::audit::ACTOR_ANONYMOUS.to_owned(),
            cause,
            reason,
            groups: Vec::new(),
        }
    }
}

/// Writes the `login.refused` audit record of a login for `subject`: the actor, the cause
/// and reason, the node's hostname, machine key and address, and `source` (the browser's
/// address, or the node's) as the record's source address. Only logins that really
/// started are recorded (a forged callback is not), so strangers cannot fill the log.
pub async fn audit_refusal(
    coord: &Coord,
    subject: &LoginSubject,
    refused: Refused,
    source: Option<SocketAddr>,
) {
    tracing::info!(actor = %refused.actor, cause = refused.cause, reason = %refused.reason, ?source, "login refused");
    let target = format!("machine:{}", subject.machine_key);
    let details = serde_json::json!({
        "cause": refused.cause,
        "reason": refused.reason,
        "groups": refused.groups,
        "hostname": subject.request.hostname,
        "node_addr": subject.node_addr.map(|addr| addr.to_string()),
    });
    crate::audit::record_from(
        coord.registry.store(),
        &refused.actor,
        crate::audit::LOGIN_REFUSED,
        &target,
        source,
        details,
    )
    .await;
}

/// Completes login `id` for `identity`: admission, user, node, and the answer every
/// waiting session receives. Returns that answer (for the browser page). A refusal is
/// audited with `source` (the browser's address) as its source address.
pub async fn complete_login(
    coord: &Coord,
    login: &LoginService,
    id: &LoginId,
    subject: &LoginSubject,
    identity: &Identity,
    source: Option<SocketAddr>,
) -> Result<RegisterResponse, CompleteError> {
    let answer = match admit_and_register(coord, login, subject, identity).await {
        Ok(answer) => answer,
        Err(err) => {
            login.table().finish(
                id,
                RegisterResponse::Rejected {
                    reason: "the coord could not store the login; try `postern login` again".into(),
                },
            );
            return Err(err);
        }
    };
    login.table().finish(id, answer.clone());
    match &answer {
        RegisterResponse::Authorized { name, user, .. } => {
            tracing::info!(login = %user.login, node = %name, groups = ?user.groups, "login completed");
        }
        RegisterResponse::Rejected { reason } => {
            let refused = Refused {
                actor: identity
                    .email
                    .clone()
                    .unwrap_or_else(|| crate::audit::ACTOR_ANONYMOUS.to_owned()),
                cause: "admission",
                reason: reason.clone(),
                groups: identity.groups.clone(),
            };
            audit_refusal(coord, subject, refused, source).await;
        }
        _ => {}
    }
    Ok(answer)
}

async fn admit_and_register(
    coord: &Coord,
    login: &LoginService,
    subject: &LoginSubject,
    identity: &Identity,
) -> Result<RegisterResponse, CompleteError> {
    let checked = match &identity.email {
        Some(email) => login
            .config
            .admission
            .check(email, &identity.groups)
            .map(|()| email),
        None => Err(Refusal::NoEmail),
    };
    let email = match checked {
        Ok(email) => email,
        Err(refusal) => {
            return Ok(RegisterResponse::Rejected {
                reason: refusal.to_string(),
            });
        }
    };
    let now = unix_now();
    let store = coord.registry.store();
    let display_name = identity.name.clone().unwrap_or_else(|| email.clone());
    let user = store
        .upsert_user(email, &display_name, &identity.groups, now)
        .await?;
    store
        .record_user_login(user.id, &identity.issuer, &identity.subject, now)
        .await?;
    // The same terms as an auth-key registration: approval (--require-approval) and key
    // expiry; a re-login renews the key.
    let existing = store.node_by_machine_key(&subject.machine_key).await?;
    let terms = crate::lifecycle::registration_terms(&coord.config, existing.as_ref(), &[], now);
    let registration = Registration {
        machine_key: subject.machine_key,
        node_key: subject.request.node_key,
        hostname: subject.request.hostname.clone(),
        user_id: user.id,
        tags: Vec::new(),
        ephemeral: subject.request.ephemeral,
        approved: terms.approved,
        is_ingress: false,
        key_expiry: terms.key_expiry,
    };
    let node = coord.registry.register(&registration, now).await?;
    coord.hub.notify();
    if !node.approved {
        return Ok(RegisterResponse::NeedsApproval {
            node_id: node.id,
            name: node.name,
        });
    }
    Ok(RegisterResponse::Authorized {
        node_id: node.id,
        name: node.name,
        addresses: NodeAddresses {
            ipv4: node.ipv4,
            ipv6: node.ipv6,
        },
        user: UserProfile {
            id: user.id,
            login: user.login,
            display_name: user.display_name,
            groups: user.groups,
        },
        key_expiry: node.key_expiry,
    })
}

async fn start_device(
    coord: &Coord,
    login: &Arc<LoginService>,
    id: &LoginId,
) -> Result<RegisterResponse, OidcError> {
    let start = login.rp.start_device().await?;
    let prompt = RegisterResponse::DeviceCode {
        verification_uri: start.verification_uri.clone(),
        verification_uri_complete: start.verification_uri_complete.clone(),
        user_code: start.user_code.clone(),
        expires_in_secs: start.expires_in.as_secs(),
    };
    let (coord, login, id) = (coord.clone(), Arc::clone(login), id.clone());
    let limit = login.config.login_ttl.min(start.expires_in);
    // The node waits on its control connection; its address is the login's source.
    let node_addr = crate::audit::CLIENT_ADDR.try_with(|addr| *addr).ok();
    tokio::spawn(async move {
        let shutdown = coord.shutdown_token();
        let polled = tokio::select! {
            polled = login.rp.finish_device(&start) => polled,
            () = tokio::time::sleep(limit) => return,
            () = shutdown.cancelled() => return,
        };
        let subject = match login.table().subject(&id, Instant::now()) {
            Ok(subject) => subject,
            Err(_) => return,
        };
        match polled {
            Ok(identity) => {
                let completed =
                    complete_login(&coord, &login, &id, &subject, &identity, node_addr).await;
                if let Err(err) = completed {
                    tracing::warn!(%err, "completing a device login failed");
                }
            }
            Err(err) => {
                let reason = format!("device login failed: {err}");
                audit_refusal(&coord, &subject, Refused::by_idp(reason.clone()), node_addr).await;
                login
                    .table()
                    .finish(&id, RegisterResponse::Rejected { reason });
            }
        }
    });
    Ok(prompt)
}

fn expired() -> RegisterResponse {
    RegisterResponse::Rejected {
        reason: "the login was not completed in time; run `postern login` again".into(),
    }
}

fn unix_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}
