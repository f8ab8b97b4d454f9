//! The node's control session: what to send and what to keep, without I/O.
//!
//! [`ControlSession`] decides the messages of one connection and folds what the coord
//! sends into the latest [`Netmap`]. Call [`ControlSession::on_connected`] after each
//! handshake and send what it returns, then [`ControlSession::handle_message`] with every
//! received message and send what it returns. The netmap survives reconnections: a node
//! keeps using its last netmap while the coord is away.

use std::net::SocketAddr;

use postern_proto::control::{
    AuthKeySecret, Capabilities, ControlMessage, MapRequest, MapResponse, RegisterAuth,
    RegisterRequest, RegisterResponse,
};
use postern_proto::netmap::{DeltaError, Netmap, RegionId};
use postern_proto::{DiscoPublicKey, NodeId, NodePublicKey};

/// What the node tells the coord about itself.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The WireGuard key to register.
    pub node_key: NodePublicKey,
    /// The current disco key.
    pub disco_key: DiscoPublicKey,
    /// The hostname to derive the node's name from.
    pub hostname: String,
    /// The auth key to register with; `None` asks for interactive login.
    pub auth_key: Option<AuthKeySecret>,
    /// Tags to ask for.
    pub requested_tags: Vec<String>,
    /// Remove the node when it goes offline.
    pub ephemeral: bool,
    /// Candidate UDP endpoints to report.
    pub endpoints: Vec<SocketAddr>,
    /// Relay region the node is attached to.
    pub home_relay: Option<RegionId>,
}

/// Where the node's registration stands, for a CLI to show ("open this URL", "waiting for
/// approval", "logged in as ...").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RegistrationState {
    /// Not registered yet, or the registration is in flight.
    #[default]
    Registering,
    /// A person must open `url` and log in; the coord answers on the same connection.
    LoginRequired {
        /// The login link.
        url: String,
    },
    /// A person must open `verification_uri` on any device and enter `user_code`.
    DeviceCode {
        /// Where to enter the code.
        verification_uri: String,
        /// The page with the code filled in, if the IdP offers one.
        verification_uri_complete: Option<String>,
        /// The code.
        user_code: String,
    },
    /// An admin must approve the node (`postern-coord nodes approve NAME`). The session
    /// waits on the connection; the netmap arrives once the node is approved.
    NeedsApproval {
        /// The node's id.
        node_id: NodeId,
        /// The node's name (empty if the coord did not send it).
        name: String,
    },
    /// The node is registered.
    Authorized {
        /// Its id.
        node_id: NodeId,
        /// Its DNS-safe name.
        name: String,
        /// Its owner's login (email).
        user: String,
    },
    /// The coord refused the node.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// Why the session cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The coord refused the registration; retrying will not help until the cause is fixed.
    #[error("the coord refused to register this node: {0}")]
    Rejected(String),
    /// The coord wants an interactive login at this URL. (Current coords keep the
    /// connection open instead, see [`RegistrationState::LoginRequired`]; kept for callers
    /// that match on it.)
    #[error("log in at {0} to register this node")]
    LoginRequired(String),
    /// An admin must approve the node. (Current sessions wait for the approval instead,
    /// see [`RegistrationState::NeedsApproval`]; kept for callers that match on it.)
    #[error("node {0} waits for an admin's approval")]
    NeedsApproval(NodeId),
    /// A delta did not fit the netmap; reconnect to get a full netmap.
    #[error("netmap out of sync ({0}); reconnecting for a full netmap")]
    OutOfSync(DeltaError),
    /// The coord sent a message a node never expects (a request).
    #[error("the coord sent an unexpected {0} message")]
    Unexpected(&'static str),
}

impl SessionError {
    /// Whether reconnecting may help (true) or the client should stop (false).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SessionError::OutOfSync(_) | SessionError::Unexpected(_)
        )
    }
}

/// The node side of the control protocol. See the module docs.
#[derive(Debug, Clone)]
pub struct ControlSession {
    config: SessionConfig,
    node_id: Option<NodeId>,
    netmap: Option<Netmap>,
    netmap_version: u64,
    registration: RegistrationState,
    device_login: bool,
}

impl ControlSession {
    /// A session that has not registered yet.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            node_id: None,
            netmap: None,
            netmap_version: 0,
            registration: RegistrationState::Registering,
            device_login: false,
        }
    }

    /// A session for a node that registered before (its machine and node keys are known to
    /// the coord as node `node_id`): the first message on each connection is a map request,
    /// so a restarted node keeps its name and addresses without an auth key.
    pub fn resume(config: SessionConfig, node_id: NodeId) -> Self {
        Self {
            config,
            node_id: Some(node_id),
            netmap: None,
            netmap_version: 0,
            registration: RegistrationState::Registering,
            device_login: false,
        }
    }

    /// Asks for a device-code login instead of a browser link when registering without an
    /// auth key (`postern login --device`).
    pub fn set_device_login(&mut self, device: bool) {
        self.device_login = device;
    }

    /// Where the registration stands.
    pub fn registration(&self) -> &RegistrationState {
        &self.registration
    }

    /// The messages to send on a fresh connection: a registration the first time, a map
    /// request once registered (the coord recognises the machine key).
    pub fn on_connected(&mut self) -> Vec<ControlMessage> {
        if self.node_id.is_some() {
            vec![self.map_request()]
        } else {
            let auth = match &self.config.auth_key {
                Some(key) => RegisterAuth::AuthKey { key: key.clone() },
                None if self.device_login => RegisterAuth::Device,
                None => RegisterAuth::Interactive,
            };
            vec![ControlMessage::RegisterRequest(RegisterRequest {
                node_key: self.config.node_key,
                hostname: self.config.hostname.clone(),
                auth,
                requested_tags: self.config.requested_tags.clone(),
                ephemeral: self.config.ephemeral,
            })]
        }
    }

    /// Processes one message from the coord and returns the messages to send back.
    pub fn handle_message(
        &mut self,
        message: ControlMessage,
    ) -> Result<Vec<ControlMessage>, SessionError> {
        match message {
            ControlMessage::RegisterResponse(response) => match response {
                RegisterResponse::Authorized {
                    node_id,
                    name,
                    user,
                    ..
                } => {
                    self.node_id = Some(node_id);
                    self.registration = RegistrationState::Authorized {
                        node_id,
                        name,
                        user: user.login,
                    };
                    Ok(vec![self.map_request()])
                }
                // The coord keeps the connection open and answers again once the person
                // has logged in: wait.
                RegisterResponse::LoginRequired { login_url } => {
                    self.registration = RegistrationState::LoginRequired { url: login_url };
                    Ok(Vec::new())
                }
                RegisterResponse::DeviceCode {
                    verification_uri,
                    verification_uri_complete,
                    user_code,
                    ..
                } => {
                    self.registration = RegistrationState::DeviceCode {
                        verification_uri,
                        verification_uri_complete,
                        user_code,
                    };
                    Ok(Vec::new())
                }
                // The node is registered but waits for an admin: ask for the netmap (the
                // coord keeps the connection open and answers once the node is approved).
                // On a redial the map request went out already: just wait.
                RegisterResponse::NeedsApproval { node_id, name } => {
                    self.registration = RegistrationState::NeedsApproval { node_id, name };
                    if self.node_id.replace(node_id).is_none() {
                        Ok(vec![self.map_request()])
                    } else {
                        Ok(Vec::new())
                    }
                }
                RegisterResponse::Rejected { reason } => {
                    self.registration = RegistrationState::Rejected {
                        reason: reason.clone(),
                    };
                    Err(SessionError::Rejected(reason))
                }
                _ => Err(SessionError::Unexpected("unknown register response")),
            },
            ControlMessage::MapResponse(response) => {
                match response {
                    MapResponse::Full { netmap } => {
                        let mut netmap = *netmap;
                        netmap.normalize();
                        self.node_id = Some(netmap.self_node.id);
                        if matches!(self.registration, RegistrationState::NeedsApproval { .. }) {
                            // Approved: the netmap is the answer.
                            self.registration = RegistrationState::Authorized {
                                node_id: netmap.self_node.id,
                                name: netmap.self_node.name.clone(),
                                user: netmap.self_node.user.login.clone(),
                            };
                        }
                        self.netmap = Some(netmap);
                        self.netmap_version += 1;
                    }
                    MapResponse::Delta { delta } => {
                        let netmap = self
                            .netmap
                            .as_mut()
                            .ok_or(SessionError::Unexpected("delta before a full netmap"))?;
                        netmap.apply(&delta).map_err(SessionError::OutOfSync)?;
                        self.netmap_version += 1;
                    }
                    MapResponse::KeepAlive => {}
                    _ => return Err(SessionError::Unexpected("unknown map response")),
                }
                Ok(Vec::new())
            }
            ControlMessage::RegisterRequest(_) => Err(SessionError::Unexpected("register request")),
            ControlMessage::MapRequest(_) => Err(SessionError::Unexpected("map request")),
            ControlMessage::FunnelRequest(_) => Err(SessionError::Unexpected("funnel request")),
            // Answers are matched to their requests by the shell ([`super::client`]); a late
            // one changes nothing here.
            ControlMessage::FunnelResponse(_)
            | ControlMessage::FunnelLogResponse(_)
            | ControlMessage::EdgeDecisionsAck(_) => Ok(Vec::new()),
            ControlMessage::EdgeDecisions(_) => Err(SessionError::Unexpected("edge decisions")),
            ControlMessage::FunnelLogRequest(_) => {
                Err(SessionError::Unexpected("funnel log request"))
            }
            _ => Err(SessionError::Unexpected("unknown")),
        }
    }

    /// The latest netmap, if one arrived.
    pub fn netmap(&self) -> Option<&Netmap> {
        self.netmap.as_ref()
    }

    /// Increases by one with every netmap change; lets a shell publish only changes.
    pub fn netmap_version(&self) -> u64 {
        self.netmap_version
    }

    /// This node's id once registered.
    pub fn node_id(&self) -> Option<NodeId> {
        self.node_id
    }

    /// Updates the endpoints to report on the next map request.
    pub fn set_endpoints(&mut self, endpoints: Vec<SocketAddr>) {
        self.config.endpoints = endpoints;
    }

    /// Updates the endpoints and home relay to report, and returns the map request that
    /// tells the coord now (`None` before registration: the first map request carries them).
    /// Send the result on the open connection, if any.
    pub fn update_endpoints(
        &mut self,
        endpoints: Vec<SocketAddr>,
        home_relay: Option<RegionId>,
    ) -> Option<ControlMessage> {
        self.config.endpoints = endpoints;
        self.config.home_relay = home_relay;
        self.node_id.map(|_| self.map_request())
    }

    fn map_request(&self) -> ControlMessage {
        ControlMessage::MapRequest(MapRequest {
            node_key: self.config.node_key,
            disco_key: self.config.disco_key,
            endpoints: self.config.endpoints.clone(),
            home_relay: self.config.home_relay,
            capabilities: Capabilities {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                features: Vec::new(),
            },
            stream: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use postern_proto::netmap::{NodeAddresses, UserProfile};
    use postern_proto::{DiscoPrivateKey, NodePrivateKey, UserId};

    use super::*;

    fn session() -> ControlSession {
        let rng = &mut rand::rngs::OsRng;
        ControlSession::new(SessionConfig {
            node_key: NodePrivateKey::generate(rng).public_key(),
            disco_key: DiscoPrivateKey::generate(rng).public_key(),
            hostname: "laptop".into(),
            auth_key: None,
            requested_tags: Vec::new(),
            ephemeral: false,
            endpoints: Vec::new(),
            home_relay: None,
        })
    }

    fn answer(response: RegisterResponse) -> ControlMessage {
        ControlMessage::RegisterResponse(response)
    }

    #[test]
    fn a_login_link_is_a_state_to_show_and_the_session_waits_for_the_answer() {
        let mut session = session();
        let sent = session.on_connected();
        assert!(matches!(
            &sent[..],
            [ControlMessage::RegisterRequest(RegisterRequest {
                auth: RegisterAuth::Interactive,
                ..
            })]
        ));
        let replies = session
            .handle_message(answer(RegisterResponse::LoginRequired {
                login_url: "https://coord/login/x".into(),
            }))
            .unwrap();
        assert!(replies.is_empty());
        assert_eq!(
            session.registration(),
            &RegistrationState::LoginRequired {
                url: "https://coord/login/x".into()
            }
        );
        let replies = session
            .handle_message(answer(RegisterResponse::Authorized {
                node_id: NodeId(3),
                name: "laptop".into(),
                addresses: NodeAddresses {
                    ipv4: "100.64.0.3".parse().unwrap(),
                    ipv6: "fd00::3".parse().unwrap(),
                },
                user: UserProfile {
                    id: UserId(1),
                    login: "alice@example.com".into(),
                    display_name: String::new(),
                    groups: Vec::new(),
                },
                key_expiry: None,
            }))
            .unwrap();
        assert!(matches!(&replies[..], [ControlMessage::MapRequest(_)]));
        assert_eq!(
            session.registration(),
            &RegistrationState::Authorized {
                node_id: NodeId(3),
                name: "laptop".into(),
                user: "alice@example.com".into()
            }
        );
    }

    #[test]
    fn device_login_asks_for_a_code_and_a_refusal_stops_with_its_reason() {
        let mut session = session();
        session.set_device_login(true);
        assert!(matches!(
            &session.on_connected()[..],
            [ControlMessage::RegisterRequest(RegisterRequest {
                auth: RegisterAuth::Device,
                ..
            })]
        ));
        session
            .handle_message(answer(RegisterResponse::DeviceCode {
                verification_uri: "https://idp/device".into(),
                verification_uri_complete: None,
                user_code: "AB-CD".into(),
                expires_in_secs: 600,
            }))
            .unwrap();
        assert!(matches!(
            session.registration(),
            RegistrationState::DeviceCode { user_code, .. } if user_code == "AB-CD"
        ));
        let err = session
            .handle_message(answer(RegisterResponse::Rejected {
                reason: "not in group eng".into(),
            }))
            .unwrap_err();
        assert_eq!(err, SessionError::Rejected("not in group eng".into()));
        assert!(!err.is_retryable());
        assert_eq!(
            session.registration(),
            &RegistrationState::Rejected {
                reason: "not in group eng".into()
            }
        );
    }

    #[test]
    fn a_node_waiting_for_approval_asks_for_its_netmap_once_and_is_authorized_by_it() {
        let mut session = session();
        session.on_connected();
        let replies = session
            .handle_message(answer(RegisterResponse::NeedsApproval {
                node_id: NodeId(4),
                name: "laptop".into(),
            }))
            .unwrap();
        assert!(matches!(&replies[..], [ControlMessage::MapRequest(_)]));
        assert_eq!(
            session.registration(),
            &RegistrationState::NeedsApproval {
                node_id: NodeId(4),
                name: "laptop".into()
            }
        );
        // A redial sends a map request first; the coord says "still waiting": no reply.
        assert!(matches!(
            &session.on_connected()[..],
            [ControlMessage::MapRequest(_)]
        ));
        let replies = session
            .handle_message(answer(RegisterResponse::NeedsApproval {
                node_id: NodeId(4),
                name: "laptop".into(),
            }))
            .unwrap();
        assert!(replies.is_empty());
    }
}
