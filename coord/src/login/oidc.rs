//! The coord as an OpenID Connect relying party (the `openidconnect` crate): discovery,
//! authorization code + PKCE with state and nonce, ID token validation, and the device
//! authorization grant (RFC 8628).
//!
//! Back-channel calls (discovery, JWKS, token, device endpoints) use a reqwest client that
//! follows no redirects (SSRF), with a timeout.

use std::time::Duration;

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClientAuthMethod, CoreDeviceAuthorizationResponse, CoreErrorResponseType, CoreGenderClaim,
    CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreSubjectIdentifierType,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthorizationCode, Client, ClientId,
    ClientSecret, CsrfToken, DeviceAuthorizationUrl, EmptyExtraTokenFields, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl, Nonce, OAuth2TokenResponse as _,
    PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, Scope,
    StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};

/// Scopes asked for: who (`openid`, `email`, `profile`) and which groups.
pub const SCOPES: &[&str] = &["openid", "email", "profile", "groups"];

/// Where to find the IdP and who the coord is to it.
#[derive(Clone)]
pub struct OidcSettings {
    /// The issuer URL; discovery is at `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The coord's client id (a confidential client).
    pub client_id: String,
    /// The coord's client secret; `None` for a public client.
    pub client_secret: Option<String>,
    /// The callback URL registered at the IdP: `{public URL}/oidc/callback`.
    pub redirect_url: String,
    /// The client used for the device grant, when the IdP allows that grant only for
    /// another (often public, "native") client; `None`: the same client.
    pub device_client_id: Option<String>,
    /// Back-channel timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("redirect_url", &self.redirect_url)
            .field("device_client_id", &self.device_client_id)
            .finish()
    }
}

/// Why a step of the OIDC exchange failed. The messages are shown to operators in logs
/// and (for the login steps) to the person in the browser; they never carry a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// A URL in the settings is malformed.
    #[error("invalid {what} URL {url:?}: {reason}")]
    BadUrl {
        /// Which URL.
        what: &'static str,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for the identity provider: {0}")]
    HttpClient(String),
    /// Discovery failed.
    #[error(
        "OIDC discovery at {issuer}/.well-known/openid-configuration failed: {reason}; check --oidc-issuer"
    )]
    Discovery {
        /// The issuer.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// The IdP does not advertise a token endpoint.
    #[error("the identity provider advertises no token endpoint")]
    NoTokenEndpoint,
    /// The IdP does not advertise the device grant.
    #[error(
        "the identity provider does not offer device login (no device_authorization_endpoint in its discovery document); log in with the browser instead"
    )]
    NoDeviceEndpoint,
    /// The token or device endpoint refused or failed.
    #[error("the identity provider's {endpoint} endpoint failed: {reason}")]
    Endpoint {
        /// Which endpoint.
        endpoint: &'static str,
        /// Why (the IdP's error code and description; never a token).
        reason: String,
    },
    /// The token response carried no ID token.
    #[error("the identity provider returned no ID token; is the `openid` scope allowed?")]
    NoIdToken,
    /// The ID token did not validate (signature, issuer, audience, expiry or nonce).
    #[error("the ID token is not valid: {0}")]
    InvalidIdToken(String),
}

/// Who logged in, as the IdP vouched in a validated ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The IdP's stable subject id.
    pub subject: String,
    /// The issuer that vouched.
    pub issuer: String,
    /// The email, if given and not marked unverified.
    pub email: Option<String>,
    /// The display name, if given.
    pub name: Option<String>,
    /// The `groups` claim (empty if absent).
    pub groups: Vec<String>,
}

/// A started browser login: send the person to `url`; keep the rest for the callback.
#[derive(Debug)]
pub struct AuthorizationStart {
    /// The IdP's authorization URL (with state, nonce and the PKCE challenge).
    pub url: String,
    /// The state sent, to find this login at the callback.
    pub state: String,
    /// The nonce the ID token must carry.
    pub nonce: Nonce,
    /// The PKCE verifier to send with the code.
    pub pkce_verifier: PkceCodeVerifier,
}

/// A started device login: show `verification_uri` and `user_code`; poll with the rest.
#[derive(Debug)]
pub struct DeviceStart {
    /// Where to enter the code.
    pub verification_uri: String,
    /// The page with the code filled in, if offered.
    pub verification_uri_complete: Option<String>,
    /// The code to enter.
    pub user_code: String,
    /// How long the code is valid.
    pub expires_in: Duration,
    response: CoreDeviceAuthorizationResponse,
}

/// The relying party: the discovered IdP and the coord's client registration.
#[derive(Debug, Clone)]
pub struct RelyingParty {
    client: LoginClient,
    device_client: Option<DeviceClient>,
    http: reqwest::Client,
    issuer: String,
}

impl RelyingParty {
    /// Fetches the IdP's discovery document and JWKS and builds the client.
    ///
    /// Fails if a URL is malformed, the IdP cannot be reached or its discovery document is
    /// invalid or inconsistent (its `issuer` must equal `settings.issuer`).
    pub async fn discover(settings: &OidcSettings) -> Result<Self, OidcError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .build()
            .map_err(|e| OidcError::HttpClient(e.to_string()))?;
        let issuer_url =
            IssuerUrl::new(settings.issuer.clone()).map_err(|e| OidcError::BadUrl {
                what: "issuer",
                url: settings.issuer.clone(),
                reason: e.to_string(),
            })?;
        let redirect =
            RedirectUrl::new(settings.redirect_url.clone()).map_err(|e| OidcError::BadUrl {
                what: "redirect",
                url: settings.redirect_url.clone(),
                reason: e.to_string(),
            })?;
        let metadata = DiscoveredMetadata::discover_async(issuer_url, &http)
            .await
            .map_err(|e| OidcError::Discovery {
                issuer: settings.issuer.clone(),
                reason: error_chain(&e),
            })?;
        if metadata.token_endpoint().is_none() {
            return Err(OidcError::NoTokenEndpoint);
        }
        let device_url = metadata
            .additional_metadata()
            .device_authorization_endpoint
            .clone();
        let device_client = device_url.map(|url| {
            let (id, secret) = match &settings.device_client_id {
                Some(id) => (id.clone(), None),
                None => (settings.client_id.clone(), settings.client_secret.clone()),
            };
            Client::from_provider_metadata(
                metadata.clone(),
                ClientId::new(id),
                secret.map(ClientSecret::new),
            )
            .set_device_authorization_url(url)
        });
        let client = Client::from_provider_metadata(
            metadata,
            ClientId::new(settings.client_id.clone()),
            settings.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        Ok(Self {
            client,
            device_client,
            http,
            issuer: settings.issuer.clone(),
        })
    }

    /// Starts a browser login: a fresh state, nonce and PKCE (S256) challenge.
    pub fn start_authorization(&self) -> AuthorizationStart {
        let (challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in SCOPES.iter().skip(1) {
            request = request.add_scope(Scope::new((*scope).to_owned()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        AuthorizationStart {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce,
            pkce_verifier,
        }
    }

    /// Exchanges the callback's `code` (with the PKCE verifier) and validates the ID token
    /// against the IdP's keys, issuer, audience, expiry and `nonce`.
    pub async fn finish_authorization(
        &self,
        code: &str,
        pkce_verifier: PkceCodeVerifier,
        nonce: &Nonce,
    ) -> Result<Identity, OidcError> {
        let request = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|_| OidcError::NoTokenEndpoint)?
            .set_pkce_verifier(pkce_verifier);
        let response =
            request
                .request_async(&self.http)
                .await
                .map_err(|e| OidcError::Endpoint {
                    endpoint: "token",
                    reason: error_chain(&e),
                })?;
        let _ = response.access_token();
        let id_token = response.id_token().ok_or(OidcError::NoIdToken)?;
        let claims = id_token
            .claims(&self.client.id_token_verifier(), nonce)
            .map_err(|e| OidcError::InvalidIdToken(error_chain(&e)))?;
        Ok(identity_of(claims))
    }

    /// True if the IdP advertises the device authorization grant.
    pub fn supports_device_login(&self) -> bool {
        self.device_client.is_some()
    }

    /// Asks the IdP for a device code and user code.
    ///
    /// Fails with [`OidcError::NoDeviceEndpoint`] if the IdP does not offer the grant.
    pub async fn start_device(&self) -> Result<DeviceStart, OidcError> {
        let client = self
            .device_client
            .as_ref()
            .ok_or(OidcError::NoDeviceEndpoint)?;
        let mut request = client.exchange_device_code();
        for scope in SCOPES.iter().skip(1) {
            request = request.add_scope(Scope::new((*scope).to_owned()));
        }
        let response: CoreDeviceAuthorizationResponse = request
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Endpoint {
                endpoint: "device authorization",
                reason: error_chain(&e),
            })?;
        Ok(DeviceStart {
            verification_uri: response.verification_uri().to_string(),
            verification_uri_complete: response
                .verification_uri_complete()
                .map(|uri| uri.secret().clone()),
            user_code: response.user_code().secret().clone(),
            expires_in: response.expires_in(),
            response,
        })
    }

    /// Polls the token endpoint until the person approved the device code, it expired or
    /// was denied; then validates the ID token (a device login has no nonce).
    pub async fn finish_device(&self, start: &DeviceStart) -> Result<Identity, OidcError> {
        let client = self
            .device_client
            .as_ref()
            .ok_or(OidcError::NoDeviceEndpoint)?;
        let response = client
            .exchange_device_access_token(&start.response)
            .map_err(|_| OidcError::NoTokenEndpoint)?
            .request_async(&self.http, tokio::time::sleep, None)
            .await
            .map_err(|e| OidcError::Endpoint {
                endpoint: "token (device)",
                reason: error_chain(&e),
            })?;
        let id_token = response.id_token().ok_or(OidcError::NoIdToken)?;
        let no_nonce = |_: Option<&Nonce>| Ok::<(), String>(());
        let claims = id_token
            .claims(&client.id_token_verifier(), no_nonce)
            .map_err(|e| OidcError::InvalidIdToken(error_chain(&e)))?;
        Ok(identity_of(claims))
    }

    /// The issuer this party trusts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

/// The `groups` claim, which is not part of OIDC core.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupsClaim {
    /// The user's groups at the IdP.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl AdditionalClaims for GroupsClaim {}

/// The optional `device_authorization_endpoint` of the discovery document (RFC 8628).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceEndpointMetadata {
    /// The endpoint, when the IdP offers the device grant.
    #[serde(default)]
    pub device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}

impl AdditionalProviderMetadata for DeviceEndpointMetadata {}

type DiscoveredMetadata = ProviderMetadata<
    DeviceEndpointMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type GroupsTokenResponse = StandardTokenResponse<
    IdTokenFields<
        GroupsClaim,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

type GroupsClient<Auth, Device> = Client<
    GroupsClaim,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    GroupsTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    Auth,
    Device,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

type LoginClient = GroupsClient<EndpointSet, EndpointNotSet>;
type DeviceClient = GroupsClient<EndpointSet, EndpointSet>;

fn identity_of(claims: &openidconnect::IdTokenClaims<GroupsClaim, CoreGenderClaim>) -> Identity {
    let email = match claims.email_verified() {
        Some(false) => None,
        _ => claims.email().map(|email| email.as_str().to_owned()),
    };
    Identity {
        subject: claims.subject().as_str().to_owned(),
        issuer: claims.issuer().as_str().to_owned(),
        email,
        name: claims
            .name()
            .and_then(|name| name.get(None))
            .map(|name| name.as_str().to_owned()),
        groups: claims.additional_claims().groups.clone(),
    }
}

/// An error and its causes on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
