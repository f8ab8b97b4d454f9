//! Logs in to the lab's OpenID Provider the way a person with a browser would: a cookie
//! jar, redirects followed one by one, the login form filled in and posted.
//!
//! Two levels:
//! - [`HeadlessBrowser`] plays only the person: approve a device code
//!   ([`HeadlessBrowser::approve_device`]) or follow an authorization URL that some relying
//!   party (e.g. the coord under test) produced, up to the redirect back to that party
//!   ([`HeadlessBrowser::authorize`]).
//! - [`device_flow_login`] and [`auth_code_login`] play the client too, and return the
//!   tokens: for tests that need a real id_token.
//!
//! Everything is async (reqwest); run it inside a tokio runtime. To reach an IdP inside a lab
//! namespace, run the future on a thread that entered that namespace (e.g. `Netns::run_in`
//! with a current-thread runtime).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use reqwest::{StatusCode, Url};
use sha2::Digest as _;

use crate::LabError;

/// The scopes the helpers ask for: everything the lab IdP offers.
pub const SCOPES: &str = "openid email profile groups offline_access";

/// A cookie-keeping HTTP client that follows redirects by hand and fills in the IdP's login
/// form.
#[derive(Debug, Clone)]
pub struct HeadlessBrowser {
    client: reqwest::Client,
}

/// Tokens from a token endpoint. `Debug` shows no token contents.
#[derive(Clone)]
pub struct Tokens {
    /// The signed id_token (a JWT).
    pub id_token: String,
    /// The access token.
    pub access_token: String,
    /// The refresh token, when `offline_access` was granted.
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("id_token", &"<redacted>")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Tokens {
    /// The id_token's claims (its JWT payload), e.g. `claims["groups"]`, `claims["email"]`.
    ///
    /// The signature is NOT checked here: this is for tests that inspect what the IdP issued.
    /// Fails if the token is not a well-formed JWT.
    pub fn id_token_claims(&self) -> Result<serde_json::Value, LabError> {
        jwt_claims(&self.id_token)
    }
}

/// The decoded payload of a JWT, unverified.
pub fn jwt_claims(jwt: &str) -> Result<serde_json::Value, LabError> {
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| LabError::http("reading an id_token", "not a JWT (no payload part)"))?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|e| {
        LabError::http("reading an id_token", format!("payload not base64url: {e}"))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| LabError::http("reading an id_token", format!("payload not JSON: {e}")))
}

/// A client registration to run an authorization-code login with ([`auth_code_login`]).
#[derive(Debug, Clone, Copy)]
pub struct AuthCodeClient<'a> {
    /// `postern-web` or `postern-cli`.
    pub client_id: &'a str,
    /// The secret for a confidential client (sent with HTTP basic auth); `None` for public.
    pub client_secret: Option<&'a str>,
    /// A registered redirect URI (any port on `http://127.0.0.1:PORT/callback` for the CLI).
    pub redirect_uri: &'a str,
}

impl HeadlessBrowser {
    /// A fresh browser with an empty cookie jar (no session at the IdP yet).
    ///
    /// Fails only if the HTTP client cannot be built (TLS backend initialisation).
    pub fn new() -> Result<Self, LabError> {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| LabError::http("building the headless browser", e))?;
        Ok(Self { client })
    }

    /// The underlying client, with this browser's cookies: e.g. to GET the redirect URL that
    /// [`HeadlessBrowser::authorize`] returned, as the browser would.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Approves a device code as `login`/`password`: opens `verification_uri`, enters
    /// `user_code`, signs in and confirms, until the IdP says the sign-in succeeded. The
    /// device's token poll succeeds afterwards.
    ///
    /// Fails with the IdP's answer if the code is unknown or the password is wrong.
    pub async fn approve_device(
        &self,
        verification_uri: &str,
        user_code: &str,
        login: &str,
        password: &str,
    ) -> Result<(), LabError> {
        let what = format!("device-flow approval as {login}");
        let url = parse_url(&what, verification_uri)?;
        let page = self.text(&what, self.client.get(url.clone())).await?;
        let xsrf = hidden_input(&page, "xsrf").ok_or_else(|| {
            LabError::http(
                &what,
                format!("no xsrf field on the device page: {}", snippet(&page)),
            )
        })?;
        let request = self.client.post(url.clone()).form(&[
            ("xsrf", xsrf.as_str()),
            ("user_code", user_code),
            ("confirm", "yes"),
        ]);
        match self.browse(&what, &url, request, login, password).await? {
            Landing::Page(body) if body.contains("Success") => Ok(()),
            Landing::Page(body) => Err(LabError::http(
                &what,
                format!("IdP did not confirm the sign-in: {}", snippet(&body)),
            )),
            Landing::Redirect(to) => Err(LabError::http(
                &what,
                format!("unexpected redirect away from the IdP to {to}"),
            )),
        }
    }

    /// Follows `authorization_url` (the IdP's `/auth?...`, or a relying party's login URL
    /// that redirects there), signs in as `login`/`password`, and returns the URL the IdP
    /// finally redirects to outside itself (the relying party's callback with `code` and
    /// `state`). That last URL is NOT fetched: GET it with [`HeadlessBrowser::client`] to
    /// complete the relying party's side.
    ///
    /// `idp_issuer` tells the IdP's pages from the relying party's. Fails if the login is
    /// rejected (wrong password: the IdP answers 401) or the IdP answers an error.
    pub async fn authorize(
        &self,
        idp_issuer: &str,
        authorization_url: &str,
        login: &str,
        password: &str,
    ) -> Result<Url, LabError> {
        let what = format!("authorization-code login as {login}");
        let issuer = parse_url(&what, idp_issuer)?;
        let url = parse_url(&what, authorization_url)?;
        let request = self.client.get(url.clone());
        match self
            .browse(&what, &issuer, request, login, password)
            .await?
        {
            Landing::Redirect(to) => Ok(to),
            Landing::Page(body) => Err(LabError::http(
                &what,
                format!(
                    "ended on an IdP page instead of a redirect: {}",
                    snippet(&body)
                ),
            )),
        }
    }

    /// Sends `first`, then follows redirects within the IdP's origin, posting the login form
    /// when it appears, until a page is shown or a redirect leaves the IdP (after the IdP
    /// was reached).
    async fn browse(
        &self,
        what: &str,
        idp: &Url,
        first: reqwest::RequestBuilder,
        login: &str,
        password: &str,
    ) -> Result<Landing, LabError> {
        let mut request = first;
        let mut posted_login = false;
        for _ in 0..25 {
            let response = request
                .send()
                .await
                .map_err(|e| LabError::http(what, format!("request failed: {e}")))?;
            let url = response.url().clone();
            let on_idp = url.origin() == idp.origin();
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| LabError::http(what, format!("{status} without Location")))?;
                let next = url
                    .join(location)
                    .map_err(|e| LabError::http(what, format!("bad Location {location}: {e}")))?;
                if on_idp && next.origin() != idp.origin() {
                    return Ok(Landing::Redirect(next));
                }
                request = self.client.get(next);
                continue;
            }
            let body = response.text().await.unwrap_or_default();
            if status == StatusCode::UNAUTHORIZED && posted_login {
                return Err(LabError::http(
                    what,
                    "the IdP rejected the login (401): wrong password or unknown user",
                ));
            }
            if !status.is_success() {
                return Err(LabError::http(
                    what,
                    format!("{url} answered {status}: {}", snippet(&body)),
                ));
            }
            if on_idp
                && url.path().starts_with("/interaction/")
                && body.contains("name=\"password\"")
            {
                if posted_login {
                    return Err(LabError::http(
                        what,
                        "the login form came back after signing in",
                    ));
                }
                posted_login = true;
                request = self.client.post(url).form(&[
                    ("prompt", "login"),
                    ("login", login),
                    ("password", password),
                ]);
                continue;
            }
            return Ok(Landing::Page(body));
        }
        Err(LabError::http(what, "more than 25 redirects"))
    }

    async fn text(&self, what: &str, request: reqwest::RequestBuilder) -> Result<String, LabError> {
        let response = request
            .send()
            .await
            .map_err(|e| LabError::http(what, format!("request failed: {e}")))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            Err(LabError::http(
                what,
                format!("{status}: {}", snippet(&body)),
            ))
        }
    }
}

/// Runs a whole device-flow login with the public CLI client (`postern-cli`): asks for a
/// device code, approves it in a fresh [`HeadlessBrowser`] as `login`/`password`, and
/// polls the token endpoint. Returns the tokens.
///
/// Fails with the IdP's error (e.g. a rejected login) or if discovery fails.
pub async fn device_flow_login(
    issuer: &str,
    login: &str,
    password: &str,
) -> Result<Tokens, LabError> {
    let what = format!("device-flow login as {login}");
    let browser = HeadlessBrowser::new()?;
    let discovery = discover(&browser, issuer).await?;
    let device_endpoint = endpoint(&discovery, "device_authorization_endpoint", &what)?;
    let token_endpoint = endpoint(&discovery, "token_endpoint", &what)?;
    let client_id = super::OidcProvider::CLI_CLIENT_ID;

    let device: serde_json::Value = json(
        &what,
        browser
            .client
            .post(device_endpoint)
            .form(&[("client_id", client_id), ("scope", SCOPES)]),
    )
    .await?;
    let field = |name: &str| -> Result<String, LabError> {
        device
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| LabError::http(&what, format!("device response lacks {name}")))
    };
    let (device_code, user_code, verification_uri) = (
        field("device_code")?,
        field("user_code")?,
        field("verification_uri")?,
    );

    browser
        .approve_device(&verification_uri, &user_code, login, password)
        .await?;

    // Approved already, so the first poll normally succeeds; allow a little slack.
    for _ in 0..50 {
        let response = browser
            .client
            .post(token_endpoint.clone())
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code.as_str()),
                ("client_id", client_id),
            ])
            .send()
            .await
            .map_err(|e| LabError::http(&what, format!("token request failed: {e}")))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status.is_success() {
            return tokens(&what, &body);
        }
        if body.get("error").and_then(|e| e.as_str()) != Some("authorization_pending") {
            return Err(LabError::http(
                &what,
                format!("token endpoint: {status} {body}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(LabError::http(
        &what,
        "still authorization_pending after 10 s",
    ))
}

/// Runs a whole authorization-code login with PKCE (S256) for `client` as `login`/`password`
/// in a fresh [`HeadlessBrowser`], checks `state`, and redeems the code. Returns the tokens.
///
/// The redirect URI is never fetched, so nothing needs to listen there. Fails with the IdP's
/// error (wrong password, unregistered redirect URI, wrong secret).
pub async fn auth_code_login(
    issuer: &str,
    client: AuthCodeClient<'_>,
    login: &str,
    password: &str,
) -> Result<Tokens, LabError> {
    let what = format!(
        "authorization-code login as {login} via {}",
        client.client_id
    );
    let browser = HeadlessBrowser::new()?;
    let discovery = discover(&browser, issuer).await?;
    let mut auth_url = endpoint(&discovery, "authorization_endpoint", &what)?;
    let token_endpoint = endpoint(&discovery, "token_endpoint", &what)?;

    let verifier = random_token();
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let state = random_token();
    let nonce = random_token();
    auth_url
        .query_pairs_mut()
        .append_pair("client_id", client.client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", client.redirect_uri)
        .append_pair("scope", SCOPES)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");

    let back = browser
        .authorize(issuer, auth_url.as_str(), login, password)
        .await?;
    let param = |name: &str| {
        back.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    if let Some(error) = param("error") {
        let detail = param("error_description").unwrap_or_default();
        return Err(LabError::http(
            &what,
            format!("IdP redirected with error {error}: {detail}"),
        ));
    }
    if param("state").as_deref() != Some(state.as_str()) {
        return Err(LabError::http(&what, format!("state mismatch in {back}")));
    }
    let code = param("code").ok_or_else(|| LabError::http(&what, format!("no code in {back}")))?;

    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", client.redirect_uri),
        ("code_verifier", verifier.as_str()),
    ];
    let mut request = browser.client.post(token_endpoint);
    match client.client_secret {
        Some(secret) => request = request.basic_auth(client.client_id, Some(secret)),
        None => form.push(("client_id", client.client_id)),
    }
    let body: serde_json::Value = json(&what, request.form(&form)).await?;
    let tokens = tokens(&what, &body)?;
    let claims = tokens.id_token_claims()?;
    if claims.get("nonce").and_then(|n| n.as_str()) != Some(nonce.as_str()) {
        return Err(LabError::http(
            &what,
            "id_token nonce does not match the request",
        ));
    }
    Ok(tokens)
}

/// Where a browse ended.
enum Landing {
    /// A page on the IdP (e.g. the device flow's success page), with its body.
    Page(String),
    /// A redirect leaving the IdP: the relying party's callback.
    Redirect(Url),
}

async fn discover(browser: &HeadlessBrowser, issuer: &str) -> Result<serde_json::Value, LabError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    json("OIDC discovery", browser.client.get(url)).await
}

fn endpoint(discovery: &serde_json::Value, name: &str, what: &str) -> Result<Url, LabError> {
    let text = discovery
        .get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| LabError::http(what, format!("discovery lacks {name}")))?;
    parse_url(what, text)
}

async fn json(what: &str, request: reqwest::RequestBuilder) -> Result<serde_json::Value, LabError> {
    let response = request
        .send()
        .await
        .map_err(|e| LabError::http(what, format!("request failed: {e}")))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(LabError::http(
            what,
            format!("{status}: {}", snippet(&body)),
        ));
    }
    serde_json::from_str(&body).map_err(|e| {
        LabError::http(
            what,
            format!("answer is not JSON ({e}): {}", snippet(&body)),
        )
    })
}

fn tokens(what: &str, body: &serde_json::Value) -> Result<Tokens, LabError> {
    let get = |name: &str| body.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Tokens {
        id_token: get("id_token")
            .ok_or_else(|| LabError::http(what, "token response has no id_token"))?,
        access_token: get("access_token")
            .ok_or_else(|| LabError::http(what, "token response has no access_token"))?,
        refresh_token: get("refresh_token"),
    })
}

fn parse_url(what: &str, text: &str) -> Result<Url, LabError> {
    Url::parse(text).map_err(|e| LabError::http(what, format!("bad URL {text:?}: {e}")))
}

/// The `value` of `<input ... name="NAME" value="...">` in a page.
fn hidden_input(page: &str, name: &str) -> Option<String> {
    let at = page.find(&format!("name=\"{name}\""))?;
    let tag_start = page.get(..at)?.rfind('<')?;
    let tag_end = at + page.get(at..)?.find('>')?;
    let tag = page.get(tag_start..tag_end)?;
    let value_at = tag.find("value=\"")? + "value=\"".len();
    let rest = tag.get(value_at..)?;
    Some(rest.get(..rest.find('"')?)?.to_owned())
}

/// 32 random bytes, base64url: a PKCE verifier, state or nonce.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn snippet(body: &str) -> String {
    crate::tools::tail(body, 400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_input_reads_value_in_either_attribute_order() {
        let page = r#"<form><input type="hidden" name="xsrf" value="abc123"/><input name="user_code"></form>"#;
        assert_eq!(hidden_input(page, "xsrf").as_deref(), Some("abc123"));
        let page = r#"<input value="v2" type="hidden" name="xsrf">"#;
        assert_eq!(hidden_input(page, "xsrf").as_deref(), Some("v2"));
        assert_eq!(hidden_input(page, "missing"), None);
    }

    #[test]
    fn jwt_claims_decode_and_reject_garbage() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"groups":["eng"]}"#);
        let claims = jwt_claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!(claims["groups"][0], "eng");
        assert!(
            jwt_claims("nodots")
                .unwrap_err()
                .to_string()
                .contains("not a JWT")
        );
        assert!(
            jwt_claims("a.!!!.c")
                .unwrap_err()
                .to_string()
                .contains("base64url")
        );
    }

    #[test]
    fn tokens_debug_hides_secrets() {
        let t = Tokens {
            id_token: "secret-id".into(),
            access_token: "secret-access".into(),
            refresh_token: Some("secret-refresh".into()),
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
