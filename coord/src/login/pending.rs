//! The logins in progress: a table with no I/O, keyed by an unguessable login id, by the
//! OAuth `state` of the browser attempt, and by machine key. Time is a parameter.
//!
//! A login is created when a node registers interactively, gets a browser attempt when the
//! person opens `/login/<id>` (state, nonce, PKCE verifier, browser binding), loses that
//! attempt at the callback (a state works once), and is finished with the node's final
//! answer, which every waiting session receives through a `watch`. A node that redials
//! while its login is pending finds the same login again by its machine and node key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use openidconnect::{Nonce, PkceCodeVerifier};
use postern_proto::MachinePublicKey;
use postern_proto::control::{RegisterRequest, RegisterResponse};
use rand::RngCore as _;
use tokio::sync::watch;

/// A login's id, the last part of `/login/<id>`: 32 random bytes in hex.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LoginId(String);

impl LoginId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// The id as it appears in the URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the id from a URL path; `None` if it is not 64 hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(text.to_ascii_lowercase()))
    }
}

impl std::fmt::Debug for LoginId {
    // The id grants the right to log a node in: only a prefix reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoginId({}…)", self.0.get(..8).unwrap_or_default())
    }
}

/// Browser login or device code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginKind {
    /// Authorization code in a browser.
    Browser,
    /// Device authorization grant.
    Device,
}

/// What the callback needs from the browser attempt. Used once.
#[derive(Debug)]
pub struct BrowserAttempt {
    /// The OAuth `state` sent to the IdP.
    pub state: String,
    /// The nonce the ID token must carry.
    pub nonce: Nonce,
    /// The PKCE verifier.
    pub pkce_verifier: PkceCodeVerifier,
    /// SHA-256 of the cookie set in the browser that started the attempt.
    pub browser_binding: [u8; 32],
}

/// The node side of a login: who registers and what it asked for.
#[derive(Debug, Clone)]
pub struct LoginSubject {
    /// The machine (authenticated by the control channel).
    pub machine_key: MachinePublicKey,
    /// What it asked for.
    pub request: RegisterRequest,
    /// The address its control connection came from, if known (for the audit log).
    pub node_addr: Option<std::net::SocketAddr>,
}

/// Why a login step could not find its login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// No such login, or it expired.
    #[error("this login link is unknown or has expired; run `postern login` again for a new one")]
    Unknown,
    /// The login already has its answer.
    #[error("this login is already complete; return to your terminal")]
    Finished,
    /// No attempt waits for this state: forged, or already used.
    #[error(
        "this sign-in response is unknown or was already used; start again from the login link"
    )]
    UnknownState,
}

/// The table. See the module docs.
#[derive(Debug, Default)]
pub struct PendingLogins {
    logins: HashMap<LoginId, PendingLogin>,
    by_state: HashMap<String, LoginId>,
    by_machine: HashMap<MachinePublicKey, LoginId>,
}

#[derive(Debug)]
struct PendingLogin {
    subject: LoginSubject,
    kind: LoginKind,
    expires_at: Instant,
    prompt: Option<RegisterResponse>,
    attempt: Option<BrowserAttempt>,
    outcome: watch::Sender<Option<RegisterResponse>>,
}

/// A login a session waits on.
#[derive(Debug)]
pub struct Waiting {
    /// The login.
    pub id: LoginId,
    /// The prompt for the node (login URL or device code); `None` until set.
    pub prompt: Option<RegisterResponse>,
    /// When it expires.
    pub expires_at: Instant,
    /// Receives the final answer.
    pub outcome: watch::Receiver<Option<RegisterResponse>>,
}

impl PendingLogins {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The login for `subject`: the pending one of this machine if it has the same node key
    /// and kind and has not expired, else a new one living `ttl` (replacing any other of
    /// this machine). Call [`Self::sweep`] first.
    pub fn start(
        &mut self,
        subject: LoginSubject,
        kind: LoginKind,
        ttl: Duration,
        now: Instant,
    ) -> Waiting {
        let machine = subject.machine_key;
        if let Some(id) = self.by_machine.get(&machine)
            && let Some(login) = self.logins.get(id)
            && login.kind == kind
            && login.subject.request.node_key == subject.request.node_key
            && login.expires_at > now
        {
            return Waiting {
                id: id.clone(),
                prompt: login.prompt.clone(),
                expires_at: login.expires_at,
                outcome: login.outcome.subscribe(),
            };
        }
        if let Some(old) = self.by_machine.remove(&machine) {
            self.remove(&old);
        }
        let id = LoginId::random();
        let (outcome, receiver) = watch::channel(None);
        let expires_at = now + ttl;
        self.logins.insert(
            id.clone(),
            PendingLogin {
                subject,
                kind,
                expires_at,
                prompt: None,
                attempt: None,
                outcome,
            },
        );
        self.by_machine.insert(machine, id.clone());
        Waiting {
            id,
            prompt: None,
            expires_at,
            outcome: receiver,
        }
    }

    /// Remembers the prompt shown to the node, for a node that redials.
    pub fn set_prompt(&mut self, id: &LoginId, prompt: RegisterResponse) {
        if let Some(login) = self.logins.get_mut(id) {
            login.prompt = Some(prompt);
        }
    }

    /// Starts (or restarts) the browser attempt of login `id`; an earlier attempt's state
    /// stops working.
    pub fn begin_attempt(
        &mut self,
        id: &LoginId,
        attempt: BrowserAttempt,
        now: Instant,
    ) -> Result<(), LookupError> {
        let login = self.live(id, now)?;
        if login.kind != LoginKind::Browser {
            return Err(LookupError::Unknown);
        }
        let state = attempt.state.clone();
        if let Some(old) = login.attempt.replace(attempt) {
            self.by_state.remove(&old.state);
        }
        self.by_state.insert(state, id.clone());
        Ok(())
    }

    /// Takes the attempt that sent `state`: it works once. Returns the login, its subject
    /// and the attempt.
    pub fn take_attempt(
        &mut self,
        state: &str,
        now: Instant,
    ) -> Result<(LoginId, LoginSubject, BrowserAttempt), LookupError> {
        let id = self
            .by_state
            .remove(state)
            .ok_or(LookupError::UnknownState)?;
        let login = self.live(&id, now)?;
        let attempt = login.attempt.take().ok_or(LookupError::UnknownState)?;
        Ok((id, login.subject.clone(), attempt))
    }

    /// If `state` belongs to a browser attempt whose login has expired, forgets the attempt
    /// and returns the login's subject, for the audit log (each attempt once). Call it
    /// before [`Self::take_attempt`], which cannot tell an expired login from a forged state.
    pub fn take_expired_attempt(&mut self, state: &str, now: Instant) -> Option<LoginSubject> {
        let id = self.by_state.get(state)?.clone();
        let login = self.logins.get_mut(&id)?;
        if login.expires_at > now {
            return None;
        }
        login.attempt = None;
        self.by_state.remove(state);
        Some(login.subject.clone())
    }

    /// The subject of a live, unfinished login.
    pub fn subject(&mut self, id: &LoginId, now: Instant) -> Result<LoginSubject, LookupError> {
        Ok(self.live(id, now)?.subject.clone())
    }

    /// Gives login `id` its final answer; every waiting session receives it. The login
    /// stays until it expires, so a node that redials gets the answer too.
    pub fn finish(&mut self, id: &LoginId, outcome: RegisterResponse) {
        if let Some(login) = self.logins.get_mut(id) {
            if let Some(attempt) = login.attempt.take() {
                self.by_state.remove(&attempt.state);
            }
            login.outcome.send_replace(Some(outcome));
        }
    }

    /// Forgets expired logins (their waiters see the sender dropped).
    pub fn sweep(&mut self, now: Instant) {
        let expired: Vec<LoginId> = self
            .logins
            .iter()
            .filter(|(_, login)| login.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
        }
    }

    /// How many logins are in the table.
    pub fn len(&self) -> usize {
        self.logins.len()
    }

    /// True if no login is in progress.
    pub fn is_empty(&self) -> bool {
        self.logins.is_empty()
    }

    fn live(&mut self, id: &LoginId, now: Instant) -> Result<&mut PendingLogin, LookupError> {
        let login = self.logins.get_mut(id).ok_or(LookupError::Unknown)?;
        if login.expires_at <= now {
            return Err(LookupError::Unknown);
        }
        if login.outcome.borrow().is_some() {
            return Err(LookupError::Finished);
        }
        Ok(login)
    }

    fn remove(&mut self, id: &LoginId) {
        if let Some(login) = self.logins.remove(id) {
            if let Some(attempt) = login.attempt {
                self.by_state.remove(&attempt.state);
            }
            if self.by_machine.get(&login.subject.machine_key) == Some(id) {
                self.by_machine.remove(&login.subject.machine_key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use postern_proto::control::RegisterAuth;
    use postern_proto::{MachinePrivateKey, NodePrivateKey};

    use super::*;

    fn subject(machine: &MachinePrivateKey, node: &NodePrivateKey) -> LoginSubject {
        LoginSubject {
            machine_key: machine.public_key(),
            request: RegisterRequest {
                node_key: node.public_key(),
                hostname: "laptop".into(),
                auth: RegisterAuth::Interactive,
                requested_tags: Vec::new(),
                ephemeral: false,
            },
            node_addr: None,
        }
    }

    fn attempt(state: &str) -> BrowserAttempt {
        BrowserAttempt {
            state: state.into(),
            nonce: Nonce::new("n".into()),
            pkce_verifier: PkceCodeVerifier::new("v".repeat(43)),
            browser_binding: [7; 32],
        }
    }

    const TTL: Duration = Duration::from_secs(600);

    /// A machine, its node key, an empty table and a start time.
    struct Fixture {
        machine: MachinePrivateKey,
        node: NodePrivateKey,
        table: PendingLogins,
        now: Instant,
    }

    impl Fixture {
        fn new() -> Self {
            let mut rng = rand::thread_rng();
            Self {
                machine: MachinePrivateKey::generate(&mut rng),
                node: NodePrivateKey::generate(&mut rng),
                table: PendingLogins::new(),
                now: Instant::now(),
            }
        }

        /// Starts (or finds) the browser login of the fixture's machine and node key.
        fn start(&mut self) -> Waiting {
            let subject = subject(&self.machine, &self.node);
            self.table.start(subject, LoginKind::Browser, TTL, self.now)
        }
    }

    #[test]
    fn a_redialling_node_finds_its_login_and_a_new_node_key_starts_over() {
        let mut rng = rand::thread_rng();
        let machine = MachinePrivateKey::generate(&mut rng);
        let node = NodePrivateKey::generate(&mut rng);
        let mut table = PendingLogins::new();
        let now = Instant::now();
        let first = table.start(subject(&machine, &node), LoginKind::Browser, TTL, now);
        let again = table.start(subject(&machine, &node), LoginKind::Browser, TTL, now);
        assert_eq!(first.id, again.id);
        let other = NodePrivateKey::generate(&mut rng);
        let fresh = table.start(subject(&machine, &other), LoginKind::Browser, TTL, now);
        assert_ne!(first.id, fresh.id);
        assert_eq!(table.len(), 1, "the replaced login is gone");
    }

    #[test]
    fn a_state_works_once_and_a_restarted_attempt_voids_the_old_state() {
        let mut fx = Fixture::new();
        let login = fx.start();
        let Fixture {
            machine: _,
            node: _,
            mut table,
            now,
        } = fx;
        table.begin_attempt(&login.id, attempt("s1"), now).unwrap();
        table.begin_attempt(&login.id, attempt("s2"), now).unwrap();
        assert_eq!(
            table.take_attempt("s1", now).unwrap_err(),
            LookupError::UnknownState
        );
        let (id, _, taken) = table.take_attempt("s2", now).unwrap();
        assert_eq!((id, taken.state.as_str()), (login.id.clone(), "s2"));
        assert_eq!(
            table.take_attempt("s2", now).unwrap_err(),
            LookupError::UnknownState
        );
    }

    #[test]
    fn finishing_reaches_waiters_and_later_redials_and_expiry_forgets() {
        let mut fx = Fixture::new();
        let login = fx.start();
        let Fixture {
            machine,
            node,
            mut table,
            now,
        } = fx;
        let answer = RegisterResponse::Rejected {
            reason: "no".into(),
        };
        table.finish(&login.id, answer.clone());
        assert_eq!(*login.outcome.borrow(), Some(answer.clone()));
        let again = table.start(subject(&machine, &node), LoginKind::Browser, TTL, now);
        assert_eq!(*again.outcome.borrow(), Some(answer));
        assert_eq!(
            table
                .begin_attempt(&login.id, attempt("s"), now)
                .unwrap_err(),
            LookupError::Finished
        );
        table.sweep(now + TTL);
        assert!(table.is_empty());
        assert_eq!(
            table.subject(&login.id, now).unwrap_err(),
            LookupError::Unknown
        );
    }

    #[test]
    fn an_expired_attempt_is_reported_once_with_its_subject_and_a_live_one_not_at_all() {
        let mut fx = Fixture::new();
        let login = fx.start();
        let Fixture {
            machine,
            node: _,
            mut table,
            now,
        } = fx;
        table.begin_attempt(&login.id, attempt("s"), now).unwrap();
        assert!(table.take_expired_attempt("s", now).is_none(), "still live");
        assert!(table.take_expired_attempt("forged", now).is_none());
        let later = now + TTL;
        let expired = table.take_expired_attempt("s", later).unwrap();
        assert_eq!(expired.machine_key, machine.public_key());
        assert!(table.take_expired_attempt("s", later).is_none(), "once");
        assert_eq!(
            table.take_attempt("s", later).unwrap_err(),
            LookupError::UnknownState
        );
    }
}
