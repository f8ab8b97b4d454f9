//! The browser side of a login: `GET /login/<id>` redirects to the IdP, `GET /oidc/callback`
//! completes it. Pages are minimal HTML that say what happened and what to do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use postern_proto::control::RegisterResponse;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::pending::{BrowserAttempt, LoginId, LookupError};
use super::{Refused, audit_refusal, complete_login};
use crate::control::Coord;

/// Path of the IdP's redirect back to the coord; register `{public URL}/oidc/callback`.
pub const CALLBACK_PATH: &str = "/oidc/callback";

/// Login links are `{public URL}/login/<id>`.
pub const LOGIN_PATH_PREFIX: &str = "/login/";

/// The cookie binding a login attempt to the browser that started it.
const BINDING_COOKIE: &str = "postern_login";

/// The login routes, to merge into the coord's router. Without a login service they answer
/// that interactive login is not configured.
pub fn routes() -> Router<Coord> {
    Router::new()
        .route("/login/{id}", get(start))
        .route(CALLBACK_PATH, get(callback))
}

async fn start(State(coord): State<Coord>, Path(id): Path<String>) -> Response {
    let Some(login) = coord.login.clone() else {
        return not_configured();
    };
    let Some(id) = LoginId::parse(&id) else {
        return page(
            StatusCode::NOT_FOUND,
            "Login failed",
            &LookupError::Unknown.to_string(),
        );
    };
    let authorization = login.rp.start_authorization();
    let mut cookie = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut cookie);
    let cookie = hex::encode(cookie);
    let attempt = BrowserAttempt {
        state: authorization.state,
        nonce: authorization.nonce,
        pkce_verifier: authorization.pkce_verifier,
        browser_binding: Sha256::digest(cookie.as_bytes()).into(),
    };
    if let Err(err) = login.table().begin_attempt(&id, attempt, Instant::now()) {
        return page(StatusCode::NOT_FOUND, "Login failed", &err.to_string());
    }
    let secure = if login.config.public_url.starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    let set_cookie = format!(
        "{BINDING_COOKIE}={cookie}; Path={CALLBACK_PATH}; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        login.config.login_ttl.as_secs()
    );
    let (Ok(location), Ok(set_cookie)) = (
        HeaderValue::from_str(&authorization.url),
        HeaderValue::from_str(&set_cookie),
    ) else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Login failed",
            "the identity provider's authorization URL is not a valid header",
        );
    };
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::SET_COOKIE, set_cookie),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response()
}

async fn callback(
    State(coord): State<Coord>,
    Query(params): Query<HashMap<String, String>>,
    connect_info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let Some(login) = coord.login.clone() else {
        return not_configured();
    };
    // The browser's address, for the audit records of refusals.
    let browser = connect_info.map(|Extension(ConnectInfo(addr))| addr);
    let Some(state) = params.get("state") else {
        return page(
            StatusCode::BAD_REQUEST,
            "Login failed",
            "the sign-in response has no state; start again from the login link",
        );
    };
    let (expired, taken) = {
        let mut table = login.table();
        let now = Instant::now();
        (
            table.take_expired_attempt(state, now),
            table.take_attempt(state, now),
        )
    };
    if let Some(subject) = expired {
        let reason = LookupError::Unknown.to_string();
        audit_refusal(&coord, &subject, Refused::expired(reason.clone()), browser).await;
        return page(StatusCode::BAD_REQUEST, "Login failed", &reason);
    }
    let (id, subject, attempt) = match taken {
        Ok(taken) => taken,
        Err(err) => return page(StatusCode::BAD_REQUEST, "Login failed", &err.to_string()),
    };
    if !same_browser(&headers, &attempt.browser_binding) {
        return page(
            StatusCode::BAD_REQUEST,
            "Login failed",
            "this sign-in was started in another browser (or cookies are blocked); open the login link again in this browser",
        );
    }
    if let Some(error) = params.get("error") {
        let description = params
            .get("error_description")
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        let reason = format!("the identity provider refused the login ({error}{description})");
        audit_refusal(&coord, &subject, Refused::by_idp(reason.clone()), browser).await;
        login.table().finish(
            &id,
            RegisterResponse::Rejected {
                reason: reason.clone(),
            },
        );
        return page(StatusCode::FORBIDDEN, "Login refused", &reason);
    }
    let Some(code) = params.get("code") else {
        return page(
            StatusCode::BAD_REQUEST,
            "Login failed",
            "the sign-in response has no code; start again from the login link",
        );
    };
    let identity = match login
        .rp
        .finish_authorization(code, attempt.pkce_verifier, &attempt.nonce)
        .await
    {
        Ok(identity) => identity,
        Err(err) => {
            tracing::warn!(%err, "login callback refused");
            let reason = format!("the sign-in could not be verified: {err}");
            audit_refusal(
                &coord,
                &subject,
                Refused::unverified(reason.clone()),
                browser,
            )
            .await;
            login.table().finish(
                &id,
                RegisterResponse::Rejected {
                    reason: reason.clone(),
                },
            );
            return page(StatusCode::FORBIDDEN, "Login refused", &reason);
        }
    };
    outcome_page(complete_login(&coord, &login, &id, &subject, &identity, browser).await)
}

fn outcome_page(outcome: Result<RegisterResponse, super::CompleteError>) -> Response {
    match outcome {
        Ok(RegisterResponse::Authorized { name, user, .. }) => page(
            StatusCode::OK,
            "Logged in",
            &format!(
                "Logged in as {}. The node {name} is now on the tailnet; you can close this window.",
                user.login
            ),
        ),
        Ok(RegisterResponse::NeedsApproval { name, .. }) => page(
            StatusCode::OK,
            "Logged in: waiting for approval",
            &format!(
                "You are logged in. An admin must approve the node {name} (postern-coord nodes approve {name}) before it joins the tailnet."
            ),
        ),
        Ok(RegisterResponse::Rejected { reason }) => {
            page(StatusCode::FORBIDDEN, "Login refused", &reason)
        }
        Ok(_) => page(StatusCode::OK, "Logged in", "The login is complete."),
        Err(err) => {
            tracing::error!(%err, "completing a login failed");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Login failed",
                "the coordination server could not store the login; try `postern login` again",
            )
        }
    }
}

fn same_browser(headers: &HeaderMap, binding: &[u8; 32]) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == BINDING_COOKIE)
        .any(|(_, value)| {
            let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            bool::from(digest.ct_eq(binding))
        })
}

fn not_configured() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Login not configured",
        "this coordination server has no identity provider configured (--oidc-issuer); use an auth key",
    )
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Postern: {title}</title></head>\n\
         <body><h1>{title}</h1>\n<p id=\"message\">{}</p></body></html>\n",
        escape_html(message)
    );
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cookie_headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_binding_cookie_is_found_among_others_and_must_match() {
        let binding: [u8; 32] = Sha256::digest(b"abc").into();
        assert!(same_browser(
            &cookie_headers("a=1; postern_login=abc; b=2"),
            &binding
        ));
        assert!(!same_browser(
            &cookie_headers("postern_login=abd"),
            &binding
        ));
        assert!(!same_browser(&cookie_headers("other=abc"), &binding));
        assert!(!same_browser(&HeaderMap::new(), &binding));
    }

    #[test]
    fn pages_escape_what_they_show() {
        assert_eq!(
            escape_html("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    proptest! {
        #[test]
        fn cookie_and_login_id_parsing_never_panic(text in "\\PC{0,200}") {
            if let Ok(value) = HeaderValue::from_str(&text) {
                let mut headers = HeaderMap::new();
                headers.insert(header::COOKIE, value);
                let _ = same_browser(&headers, &[0; 32]);
            }
            if let Some(id) = LoginId::parse(&text) {
                prop_assert_eq!(id.as_str().len(), 64);
            }
        }
    }
}
