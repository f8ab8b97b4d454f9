//! The inspection web UI and its JSON API (axum), served on `127.0.0.1:4040` by default.
//!
//! Routes (documented for users in `docs/inspect.md`):
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the UI: one embedded HTML file, no build step, nothing fetched from elsewhere |
//! | `GET /api/status` | the local target, counts and bounds |
//! | `GET /api/requests?path=&method=&status=&header=&min_duration_ms=&max_duration_ms=&kind=&source=&limit=` | the list, newest first |
//! | `GET /api/requests/{id}[?reveal=1]` | one entry, secrets masked unless `reveal=1` |
//! | `GET /api/requests/{id}/curl[?reveal=1]` | the request as a `curl` command line |
//! | `POST /api/requests/{id}/replay` | re-send it (optional JSON [`ReplayChanges`] body) |
//! | `DELETE /api/requests` | forget everything |
//! | `GET /api/events` | server-sent events: `entry` (a summary), `cleared`, `resync` |
//!
//! Every request must carry a loopback `Host` (`localhost`, `127.x.x.x`, `[::1]`, any port):
//! anything else is refused with 403, which defeats DNS rebinding. Requests that change
//! something (any method but GET/HEAD) are refused with 403 when the browser says they are
//! cross-site (`Sec-Fetch-Site`) or their `Origin` is not this server's; clients that send
//! neither header (curl, the CLI) are let through.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::Stream;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::exchange::{Entry, Exchange};
use super::proxy::{CapturingProxy, ReplayChanges};
use super::store::{CaptureStore, EntryFilter, StoreEvent};

/// Where the UI listens unless configured otherwise.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4040);

/// The UI page, served as is.
const UI_HTML: &str = include_str!("ui.html");

/// `GET /api/requests/{id}`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryDetail {
    /// Whether secret headers are masked in `entry`.
    pub masked: bool,
    /// The entry.
    pub entry: Entry,
}

/// `GET /api/status`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectStatus {
    /// Where replays go (`http://127.0.0.1:3000/`), `None` when replay is unavailable.
    pub target: Option<String>,
    /// Entries held.
    pub entries: usize,
    /// Bytes held, counted against `max_total_bytes`.
    pub total_bytes: usize,
    /// The store's budget.
    pub max_total_bytes: usize,
    /// The per-body cap.
    pub max_body_bytes: usize,
}

/// The JSON body of every error answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What was wrong and what to do.
    pub error: String,
}

/// The UI and API as an axum router over `store`. `replayer` sends replays to the local
/// service; without it the replay route answers 503. `shutdown` ends live-update streams
/// (so a graceful shutdown does not wait on open browser tabs).
pub fn router(
    store: Arc<CaptureStore>,
    replayer: Option<CapturingProxy>,
    shutdown: CancellationToken,
) -> Router {
    router_with_replayer(store, Arc::new(move |_| replayer.clone()), shutdown)
}

/// Picks the local service a replay of `original` goes to (`None`: where replays go in
/// general, as `GET /api/status` shows), at the time of each replay: for a node whose
/// served ports change while it runs. `None` makes the replay route answer 503.
pub type ReplayerSource = Arc<dyn Fn(Option<&Exchange>) -> Option<CapturingProxy> + Send + Sync>;

/// Like [`router`], with the replay target chosen by `replayer` at each request.
pub fn router_with_replayer(
    store: Arc<CaptureStore>,
    replayer: ReplayerSource,
    shutdown: CancellationToken,
) -> Router {
    let state = ApiState {
        store,
        replayer,
        shutdown,
    };
    Router::new()
        .route("/", get(ui))
        .route("/api/status", get(status))
        .route("/api/requests", get(list).delete(clear))
        .route("/api/requests/{id}", get(show))
        .route("/api/requests/{id}/curl", get(curl))
        .route("/api/requests/{id}/replay", post(replay))
        .route("/api/events", get(events))
        .layer(middleware::from_fn(guard))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets requests in
/// flight finish. Bind the listener to a loopback address ([`DEFAULT_ADDR`]) unless the
/// user asked otherwise; the Host check holds either way.
///
/// Fails only if accepting connections fails for good.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The request as a `curl` command line against `target` (or `http://localhost` when no
/// target is known). Secret headers are as in `exchange` (mask it first to hide them).
pub fn curl_command(exchange: &Exchange, target: Option<&str>) -> String {
    let base = target.unwrap_or("http://localhost").trim_end_matches('/');
    let request = &exchange.request;
    let mut out = format!(
        "curl -X {} {}",
        shell_quote(&request.method),
        shell_quote(&format!("{base}{}", request.path))
    );
    for (name, value) in &request.headers {
        if matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding" | "keep-alive"
        ) {
            continue;
        }
        out.push_str(" \\\n  -H ");
        out.push_str(&shell_quote(&format!("{name}: {value}")));
    }
    let body = &request.body;
    if !body.bytes.is_empty() {
        match std::str::from_utf8(&body.bytes) {
            Ok(text) => {
                out.push_str(" \\\n  --data-raw ");
                out.push_str(&shell_quote(text));
            }
            Err(_) => out.push_str(&format!(
                " \\\n  --data-binary @body.bin  # the body is binary ({} bytes): save it as body.bin",
                body.size
            )),
        }
    }
    if body.truncated {
        out.push_str(&format!(
            "\n# note: the captured body was truncated at {} of {} bytes",
            body.bytes.len(),
            body.size
        ));
    }
    out
}

#[derive(Clone)]
struct ApiState {
    store: Arc<CaptureStore>,
    replayer: ReplayerSource,
    shutdown: CancellationToken,
}

#[derive(Debug, Default, Deserialize)]
struct RevealQuery {
    #[serde(default)]
    reveal: Option<String>,
}

impl RevealQuery {
    fn reveal(&self) -> bool {
        matches!(self.reveal.as_deref(), Some("1" | "true" | "yes"))
    }
}

async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(UI_HTML),
    )
        .into_response()
}

async fn status(State(state): State<ApiState>) -> Response {
    let config = state.store.config();
    axum::Json(InspectStatus {
        target: (state.replayer)(None).map(|r| r.target().to_string()),
        entries: state.store.len(),
        total_bytes: state.store.total_bytes(),
        max_total_bytes: config.max_total_bytes,
        max_body_bytes: config.max_body_bytes,
    })
    .into_response()
}

async fn list(
    State(state): State<ApiState>,
    filter: Result<Query<EntryFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match filter {
        Ok(Query(filter)) => axum::Json(state.store.list(&filter)).into_response(),
        Err(rejection) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad filter: {} (see docs/inspect.md for the parameters)",
                rejection.body_text()
            ),
        ),
    }
}

async fn show(
    State(state): State<ApiState>,
    Path(id): Path<u64>,
    Query(query): Query<RevealQuery>,
) -> Response {
    let Some(entry) = state.store.get(id) else {
        return not_found(id);
    };
    let reveal = query.reveal();
    let entry = if reveal { entry } else { entry.masked() };
    axum::Json(EntryDetail {
        masked: !reveal,
        entry,
    })
    .into_response()
}

async fn curl(
    State(state): State<ApiState>,
    Path(id): Path<u64>,
    Query(query): Query<RevealQuery>,
) -> Response {
    let Some(entry) = state.store.get(id) else {
        return not_found(id);
    };
    let entry = if query.reveal() {
        entry
    } else {
        entry.masked()
    };
    let Entry::Exchange(exchange) = entry else {
        return error(
            StatusCode::CONFLICT,
            format!(
                "entry {id} is a denied delivery: the edge kept its request, there is nothing to copy"
            ),
        );
    };
    let target = (state.replayer)(Some(&exchange)).map(|r| r.target().to_string());
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        curl_command(&exchange, target.as_deref()),
    )
        .into_response()
}

async fn replay(State(state): State<ApiState>, Path(id): Path<u64>, body: Bytes) -> Response {
    let original = state.store.get(id);
    let original_exchange = match &original {
        Some(Entry::Exchange(exchange)) => Some(exchange),
        _ => None,
    };
    let Some(replayer) = (state.replayer)(original_exchange) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "replay is not available: this inspector has no local service to send to".to_owned(),
        );
    };
    let changes = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayChanges::default()
    } else {
        match serde_json::from_slice::<ReplayChanges>(&body) {
            Ok(changes) => changes,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the replay changes are not valid JSON ({e}); send {{\"method\",\"path\",\"headers\":[[name,value]],\"body\"}} or nothing"
                    ),
                );
            }
        }
    };
    match replayer.replay(original, id, &changes).await {
        Ok(outcome) => axum::Json(outcome).into_response(),
        Err(e @ super::proxy::ProxyError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

async fn clear(State(state): State<ApiState>) -> Response {
    state.store.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn events(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.store.subscribe();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(StoreEvent::Added(summary)) => Event::default()
                .event("entry")
                .json_data(summary)
                .unwrap_or_else(|_| Event::default().event("resync").data("{}")),
            Ok(StoreEvent::Cleared) => Event::default().event("cleared").data("{}"),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("resync").data("{}")
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    })
    .take_until(state.shutdown.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The DNS-rebinding and cross-site checks, before every route.
async fn guard(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    let Some(host) = host.clone().filter(|h| is_loopback_authority(h)) else {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "refused: the inspector only answers requests addressed to a loopback host (localhost, 127.0.0.1, [::1]), and this one was for {:?}. Open it as http://127.0.0.1:PORT/ (this protects against DNS rebinding).",
                host.unwrap_or_default()
            ),
        );
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD)
        && let Some(reason) = cross_site(headers, &host)
    {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "refused a cross-site {} request: {reason}. Use the inspector's own page, curl or `postern inspect`.",
                request.method()
            ),
        );
    }
    next.run(request).await
}

/// Why a state-changing request looks cross-site, or `None` if it does not.
fn cross_site(headers: &HeaderMap, host: &str) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Some(format!("the browser says it came from a {site} page"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if !authority.eq_ignore_ascii_case(host) {
            return Some(format!(
                "its Origin {origin:?} is not this inspector ({host})"
            ));
        }
    }
    None
}

/// Whether a Host header names a loopback host: `localhost`, an address in 127.0.0.0/8, or
/// `[::1]`, with or without a port.
fn is_loopback_authority(authority: &str) -> bool {
    let authority = authority.trim();
    let host = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((host, port)) if port.is_empty() || is_port(port) => host,
            _ => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return false,
            None => authority,
        }
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_port(text: &str) -> bool {
    text.strip_prefix(':')
        .unwrap_or(text)
        .parse::<u16>()
        .is_ok()
}

fn not_found(id: u64) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no captured entry {id} (it may have been evicted or cleared)"),
    )
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(ApiError { error: message })).into_response()
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:4040",
            "127.0.0.1:4040",
            "127.3.2.1",
            "[::1]:4040",
            "[::1]",
            "LOCALHOST:1",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:4040",
            "10.0.0.1:4040",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::2]:80",
            "localhost:99999",
            "",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }

    #[test]
    fn cross_site_rules() {
        let mut headers = HeaderMap::new();
        assert!(
            cross_site(&headers, "127.0.0.1:4040").is_none(),
            "curl sends neither"
        );
        headers.insert("sec-fetch-site", "same-origin".parse().unwrap());
        headers.insert(header::ORIGIN, "http://127.0.0.1:4040".parse().unwrap());
        assert!(cross_site(&headers, "127.0.0.1:4040").is_none());
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(
            cross_site(&headers, "127.0.0.1:4040")
                .unwrap()
                .contains("evil.example")
        );
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(
            cross_site(&headers, "127.0.0.1:4040")
                .unwrap()
                .contains("cross-site")
        );
    }

    #[test]
    fn curl_quotes_and_skips_transport_headers() {
        use crate::inspect::exchange::{CapturedBody, CapturedRequest, Source};
        let exchange = Exchange {
            id: 1,
            time: String::new(),
            source: Source::Funnel,
            replay_of: None,
            port: None,
            admission: None,
            request: CapturedRequest {
                method: "POST".into(),
                path: "/hook?a=1".into(),
                version: "HTTP/1.1".into(),
                headers: vec![
                    ("host".into(), "x".into()),
                    ("content-type".into(), "application/json".into()),
                ],
                body: CapturedBody::whole(Bytes::from_static(b"{\"it's\":1}")),
            },
            response: None,
            error: None,
            duration_ms: 0,
        };
        let curl = curl_command(&exchange, Some("http://127.0.0.1:3000/"));
        assert_eq!(
            curl,
            "curl -X 'POST' 'http://127.0.0.1:3000/hook?a=1' \\\n  -H 'content-type: application/json' \\\n  --data-raw '{\"it'\\''s\":1}'"
        );
    }
}
