//! The HTTPS edge: TLS with SNI, HTTP/1.1 and HTTP/2, one funnel per hostname, the gate
//! chain on every request, forwarding to the funnel's target, and the audit record.
//!
//! For each request on the TLS port the edge:
//! 1. finds the funnel by host (unknown hosts get a bare `404`, a host that differs from
//!    the TLS SNI gets `421`);
//!    funnels come from the configuration file first, then from the coordination server's
//!    [`FunnelTable`] (an expired one is unknown; one whose gates could not be built gets
//!    `503 funnel_unavailable`);
//! 2. buffers the body up to [`Limits::max_body_bytes`] (`413 body_too_large` beyond) when
//!    a gate of the funnel's chain reads it (webhook signatures, [`GateChain::reads_body`]);
//!    any other funnel's body (no gates, or gates that decide on headers, the client's
//!    address or its certificate) streams to the target unbuffered once admitted;
//! 3. runs the funnel's [`GateChain`]: `Deny` answers with the status and the reason code
//!    as the body and forwards nothing; `Respond` answers the provider's handshake;
//! 4. on `Allow`, strips client-sent `Postern-*` headers and sets the edge's own, sets
//!    `X-Forwarded-For/-Proto/-Host` and `Forwarded`, and sends the request to the target
//!    over HTTP/1.1 through [`Upstream`] (a [`TcpUpstream`], or a node of the mesh through
//!    [`MeshUpstream`], whose hop streams carry each request's identity in a context
//!    header; a node's refusal becomes `502` with the refusal code) on a keep-alive
//!    connection of the target's [`HttpPool`]; the response body streams back unbuffered
//!    (SSE, chunked), and `101 Switching Protocols` (WebSocket) becomes a byte pipe;
//! 5. writes one [`AuditRecord`] when the response is over.
//!
//! The HTTP port answers ACME HTTP-01 challenges and redirects known hosts to HTTPS.

mod forward;
mod mesh_upstream;
mod pool;
mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::audit::{AuditRecord, AuditSink};
use crate::certs::{ACME_TLS_ALPN, CertResolver, HttpChallenges};
use crate::gate::{Decision, GateChain, GateRequest, PresentedChain, rewrite_identity_headers};
use crate::routes::{FunnelTable, HttpLookup, RouteInfo};
use crate::tcp_funnel::{ClientLimiter, TcpLimits, TlsPortRouter, TlsRoute};

pub use forward::EdgeBody;
pub use mesh_upstream::MeshUpstream;
pub use pool::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_IDLE_PER_TARGET, Dial, HttpPool, PoolLimits};
pub use upstream::{
    Connecting, Sending, TcpUpstream, Upstream, UpstreamContext, UpstreamError, UpstreamIo,
};

/// A public hostname and where its requests go.
#[derive(Debug, Clone)]
pub struct Funnel {
    /// The public hostname (lower case), e.g. `hooks.example.com`.
    pub hostname: String,
    /// How to reach the target.
    pub upstream: Arc<dyn Upstream>,
    /// The gates every request must pass.
    pub chain: GateChain,
    /// Owner, node and expiry of a funnel from the coordination server (for audit records
    /// and expiry); `None` for the configuration file's funnels.
    pub route: Option<Arc<RouteInfo>>,
}

/// The edge's bounds on what a client may send and how long it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest request head (HTTP/1.1 buffer, HTTP/2 header list), in bytes. HTTP/1.1
    /// never goes below 8192.
    pub max_header_bytes: usize,
    /// The largest request body the edge buffers for the gates; larger bodies get `413`.
    pub max_body_bytes: usize,
    /// How long a connection may sit without sending a request head (also the TLS
    /// handshake bound).
    pub idle_timeout: Duration,
    /// How long the client may take to send the body plus the target to answer with a
    /// response head. The response body itself may stream for longer.
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// 16 KiB of headers, 5 MiB of body, 60 s idle, 60 s per request.
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_body_bytes: crate::gate::webhook::DEFAULT_MAX_BODY_BYTES,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// The edge: funnels by hostname, limits, audit sink, pending HTTP-01 answers.
#[derive(Debug)]
pub struct Edge {
    funnels: HashMap<String, Arc<Funnel>>,
    limits: Limits,
    audit: Arc<dyn AuditSink>,
    http_challenges: Arc<HttpChallenges>,
    tls_router: Arc<TlsPortRouter>,
    routes: Option<Arc<FunnelTable>>,
}

/// What a hostname leads to.
enum Found {
    Serve(Arc<Funnel>, Option<Arc<rustls::ServerConfig>>),
    Refused(Arc<RouteInfo>),
    Unknown,
}

impl Edge {
    /// An edge serving `funnels`. Hostnames are matched case-insensitively.
    pub fn new(
        funnels: Vec<Funnel>,
        limits: Limits,
        audit: Arc<dyn AuditSink>,
        http_challenges: Arc<HttpChallenges>,
    ) -> Self {
        let funnels = funnels
            .into_iter()
            .map(|f| (f.hostname.to_ascii_lowercase(), Arc::new(f)))
            .collect();
        let tls_router = Arc::new(TlsPortRouter::new(
            Vec::new(),
            TcpLimits::default(),
            ClientLimiter::new(None),
            Arc::clone(&audit),
        ));
        Self {
            funnels,
            limits,
            audit,
            http_challenges,
            tls_router,
            routes: None,
        }
    }

    /// Also serves the HTTP funnels of `routes` (funnels from the coordination server,
    /// kept current by a [`RouteFollower`](crate::routes::RouteFollower)); the
    /// configuration file's funnels win over a route of the same hostname.
    #[must_use]
    pub fn with_routes(mut self, routes: Arc<FunnelTable>) -> Self {
        self.routes = Some(routes);
        self
    }

    fn find(&self, host: &str) -> Found {
        if let Some(funnel) = self.funnels.get(host) {
            return Found::Serve(Arc::clone(funnel), None);
        }
        let Some(routes) = &self.routes else {
            return Found::Unknown;
        };
        match routes.http(host, SystemTime::now()) {
            HttpLookup::Serve(funnel, tls) => Found::Serve(funnel, tls),
            HttpLookup::Refused(info) => Found::Refused(info),
            HttpLookup::Unknown => Found::Unknown,
        }
    }

    fn knows(&self, host: &str) -> bool {
        !matches!(self.find(host), Found::Unknown)
    }

    /// Replaces the TLS port's first step: passthrough hostnames and the per-client
    /// connection limit (see [`TlsPortRouter`]). Without it the edge has no passthrough
    /// funnels and no connection bound.
    #[must_use]
    pub fn with_tls_router(mut self, router: Arc<TlsPortRouter>) -> Self {
        self.tls_router = router;
        self
    }

    /// The rustls configuration of the TLS port: ring provider, certificates from
    /// `resolver`, ALPN `h2`, `http/1.1` and `acme-tls/1`.
    pub fn tls_config(
        resolver: Arc<CertResolver>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// Like [`Edge::tls_config`], but asking clients for a certificate (optional at the
    /// TLS level), naming `ca_hints` (the subjects of the funnels' mTLS CAs). The chain
    /// is handed to the funnel's gates, whose mTLS gate verifies it against its own CA
    /// (see `gate::DeferredClientCertVerifier`). Use it when any funnel has an mTLS gate
    /// (`GateChain::client_ca_subjects` is not empty).
    pub fn tls_config_with_client_certs(
        resolver: Arc<CertResolver>,
        ca_hints: Vec<rustls::DistinguishedName>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(crate::gate::DeferredClientCertVerifier::new(
            ca_hints,
            Arc::clone(&provider),
        ));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// The subjects of every funnel's mTLS CAs, for
    /// [`Edge::tls_config_with_client_certs`]; empty when no funnel has an mTLS gate.
    pub fn client_ca_hints(&self) -> Vec<rustls::DistinguishedName> {
        self.funnels
            .values()
            .flat_map(|funnel| funnel.chain.client_ca_subjects())
            .collect()
    }

    /// Serves the TLS port until the listener fails. Each connection runs on its own task.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<()> {
        loop {
            let (tcp, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed on the TLS port; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let edge = Arc::clone(&self);
            let tls = Arc::clone(&tls);
            tokio::spawn(async move {
                let is_funnel = |host: &str| edge.knows(host);
                let route = edge
                    .tls_router
                    .route(tcp, client, edge.limits.idle_timeout, &is_funnel)
                    .await;
                let TlsRoute::Terminate { start, slot: _slot } = route else {
                    return;
                };
                let tls = match start
                    .client_hello()
                    .server_name()
                    .map(|name| edge.find(&name.to_ascii_lowercase()))
                {
                    Some(Found::Serve(_, Some(own))) => own,
                    _ => tls,
                };
                let handshake =
                    tokio::time::timeout(edge.limits.idle_timeout, (*start).into_stream(tls)).await;
                let Ok(Ok(mut tls)) = handshake else {
                    tracing::debug!(%client, "TLS handshake failed or timed out");
                    return;
                };
                let (_, connection) = tls.get_ref();
                if connection.alpn_protocol() == Some(ACME_TLS_ALPN) {
                    tracing::info!(%client, "answered a TLS-ALPN-01 validation");
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                    return;
                }
                let sni = connection.server_name().map(str::to_ascii_lowercase);
                // Hashed once: the chain cannot change within the connection.
                let client_certs = PresentedChain::new(
                    connection
                        .peer_certificates()
                        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
                        .unwrap_or_default(),
                );
                let service_edge = Arc::clone(&edge);
                let service = service_fn(move |request| {
                    Arc::clone(&service_edge).handle(
                        request,
                        client,
                        sni.clone(),
                        client_certs.clone(),
                    )
                });
                if let Err(error) = edge
                    .connection_builder()
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%client, %error, "connection ended with an error");
                }
            });
        }
    }

    /// Serves the plain HTTP port: ACME HTTP-01 answers, a redirect to HTTPS for known
    /// hosts, `404` otherwise.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (tcp, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed on the HTTP port; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let edge = Arc::clone(&self);
            tokio::spawn(async move {
                let service_edge = Arc::clone(&edge);
                let service = service_fn(move |request| {
                    let edge = Arc::clone(&service_edge);
                    async move { Ok::<_, Infallible>(edge.handle_plain(&request, client)) }
                });
                let _ = edge
                    .connection_builder()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }

    fn connection_builder(&self) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.idle_timeout)
            .max_buf_size(self.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX));
        builder
    }

    fn handle_plain(&self, request: &Request<Incoming>, client: SocketAddr) -> Response<EdgeBody> {
        let path = request.uri().path();
        if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/")
            && let Some(answer) = self.http_challenges.answer(token)
        {
            tracing::info!(%client, "answered an HTTP-01 validation");
            return forward::text(StatusCode::OK, answer);
        }
        match request_host(request) {
            Some(host) if self.knows(&host) => {
                let target = format!(
                    "https://{host}{}",
                    request
                        .uri()
                        .path_and_query()
                        .map_or("/", http::uri::PathAndQuery::as_str)
                );
                let mut response = forward::text(StatusCode::PERMANENT_REDIRECT, String::new());
                if let Ok(location) = HeaderValue::from_str(&target) {
                    response
                        .headers_mut()
                        .insert(http::header::LOCATION, location);
                }
                response
            }
            _ => forward::text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        client: SocketAddr,
        sni: Option<String>,
        client_certs: PresentedChain,
    ) -> Result<Response<EdgeBody>, Infallible> {
        let mut audit = PendingAudit::new(&request, client, Arc::clone(&self.audit));
        let host = request_host(&request);
        let found = host.as_deref().map_or(Found::Unknown, |h| self.find(h));
        let funnel = match found {
            Found::Serve(funnel, _) => funnel,
            Found::Refused(info) => {
                audit.label(&info);
                return Ok(audit.finish_now(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "error",
                    Some("funnel_unavailable"),
                    "funnel_unavailable\n",
                ));
            }
            Found::Unknown => {
                return Ok(audit.finish_now(
                    StatusCode::NOT_FOUND,
                    "deny",
                    Some("unknown_host"),
                    "not found\n",
                ));
            }
        };
        audit.record.funnel = Some(funnel.hostname.clone());
        if let Some(info) = &funnel.route {
            audit.label(info);
        }
        if sni.as_ref().is_some_and(|sni| Some(sni) != host.as_ref()) {
            return Ok(audit.finish_now(
                StatusCode::MISDIRECTED_REQUEST,
                "deny",
                Some("misdirected_request"),
                "misdirected_request\n",
            ));
        }
        let client_upgrade =
            forward::wants_upgrade(&request).then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let request_body = if funnel.chain.reads_body() {
            match self.buffer_for_gates(&parts, body).await {
                Ok(bytes) => RequestBody::Buffered(bytes),
                Err((refusal, body)) => return Ok(refusal.answer(audit, body)),
            }
        } else {
            RequestBody::Streamed(body)
        };

        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let mut url =
            String::with_capacity("https://".len() + funnel.hostname.len() + path_and_query.len());
        url.push_str("https://");
        url.push_str(&funnel.hostname);
        url.push_str(path_and_query);
        let gate_request = GateRequest::new(
            &parts.method,
            &url,
            &parts.headers,
            request_body.bytes(),
            client,
        )
        .with_presented_chain(&client_certs);
        let outcome = funnel
            .chain
            .evaluate_async(&gate_request, SystemTime::now())
            .await;
        audit.record.gate = outcome.decided_by;
        match outcome.decision {
            Decision::Deny {
                status,
                reason,
                headers,
            } => {
                tracing::info!(funnel = %funnel.hostname, %client, trace = %outcome.trace.summary(), "request denied");
                let unread = request_body.unread();
                let mut response = forward::text(status, format!("{reason}\n"));
                for (name, value) in headers {
                    response.headers_mut().append(name, value);
                }
                let response = forward::holding_request_body(response, unread);
                Ok(audit.finish(response, "deny", Some(reason.as_str())))
            }
            Decision::Respond {
                status,
                headers,
                body: answer,
            } => {
                let unread = request_body.unread();
                let mut response = forward::bytes(status, Bytes::from(answer));
                for (name, value) in headers {
                    response.headers_mut().append(name, value);
                }
                let response = forward::holding_request_body(response, unread);
                Ok(audit.finish(response, "respond", None))
            }
            Decision::Allow { gate, identity } => Ok(self
                .forward_admitted(
                    &funnel,
                    parts,
                    request_body.into_edge_body(),
                    client,
                    client_upgrade,
                    audit,
                    (gate, identity),
                )
                .await),
        }
    }
}

impl Edge {
    /// Buffers the body of a request whose chain reads it ([`GateChain::reads_body`]), up to
    /// [`Limits::max_body_bytes`] and within the request timeout; a body declared larger
    /// is refused before any of it is read.
    async fn buffer_for_gates(
        &self,
        parts: &http::request::Parts,
        mut body: Incoming,
    ) -> Result<Bytes, (BodyError, Incoming)> {
        let limit = self.limits.max_body_bytes;
        let declared_too_large = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > limit as u64);
        if declared_too_large {
            return Err((BodyError::TooLarge, body));
        }
        match buffer_body(&mut body, limit, self.limits.request_timeout).await {
            Ok(bytes) => Ok(bytes),
            Err(refusal) => Err((refusal, body)),
        }
    }

    /// Sends an admitted request to the funnel's target with the identity headers of its
    /// admission (any the client sent are gone), and audits the outcome: `allow` with the
    /// target's response, or `error` with the reason the target could not answer.
    #[allow(clippy::too_many_arguments)] // the parts of one request, taken apart once
    async fn forward_admitted(
        &self,
        funnel: &Funnel,
        mut parts: http::request::Parts,
        body: http_body_util::combinators::BoxBody<Bytes, hyper::Error>,
        client: SocketAddr,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        mut audit: PendingAudit,
        (gate, identity): (String, crate::gate::Identity),
    ) -> Response<EdgeBody> {
        if audit.record.gate.as_deref() != Some(gate.as_str()) {
            audit.record.gate = Some(gate.clone());
        }
        // Over the mesh the node writes the identity headers from the hop's context; the
        // client's are stripped here all the same.
        let admission = (!funnel.upstream.carries_admission()).then_some((&*gate, &identity));
        rewrite_identity_headers(&mut parts.headers, admission);
        let context = UpstreamContext {
            client,
            hostname: funnel.hostname.clone(),
            admission: Some((gate, identity)),
        };
        let result = forward::forward(
            &*funnel.upstream,
            &context,
            parts,
            body,
            client_upgrade,
            self.limits.request_timeout,
        )
        .await;
        match result {
            Ok(response) => audit.finish(response, "allow", None),
            Err(failure) => {
                tracing::warn!(funnel = %funnel.hostname, error = %failure, "forwarding failed");
                let code = failure.code();
                audit.finish_now(failure.status(), "error", Some(code), &format!("{code}\n"))
            }
        }
    }
}

/// The body of a request of a gated funnel, as the chain sees it and as it is forwarded.
enum RequestBody {
    /// Buffered for a chain that reads it: the gates see these bytes, and they are
    /// forwarded as they are.
    Buffered(Bytes),
    /// Not read before the decision (no gate of the chain reads bodies): the gates see an
    /// empty body, and an admitted request's body streams to the target as it arrives.
    Streamed(Incoming),
}

impl RequestBody {
    /// What the gates see.
    fn bytes(&self) -> &[u8] {
        match self {
            RequestBody::Buffered(bytes) => bytes,
            RequestBody::Streamed(_) => &[],
        }
    }

    /// The body of a request that will not be forwarded (refused, or answered at the
    /// edge), if it is still unread. The answer must hold it
    /// ([`forward::holding_request_body`]), which reads and drops it after the answer.
    fn unread(self) -> Option<Incoming> {
        match self {
            RequestBody::Streamed(body) if !body.is_end_stream() => Some(body),
            _ => None,
        }
    }

    /// The body to forward.
    fn into_edge_body(self) -> EdgeBody {
        match self {
            RequestBody::Buffered(bytes) => {
                Full::new(bytes).map_err(|never| match never {}).boxed()
            }
            // Read to its end even if the target answers and closes before taking it all,
            // so the client's connection stays usable and its upload ends cleanly.
            RequestBody::Streamed(body) => postern_node::serve::DrainOnDrop::new(body).boxed(),
        }
    }
}

/// Why a gated request's body could not be buffered.
enum BodyError {
    /// Larger than the edge's bound (declared or sent): `413 body_too_large`.
    TooLarge,
    /// The client's stream failed mid-body: `400 body_unreadable`.
    Unreadable,
    /// Not all sent within the request timeout: `408 request_timeout`.
    Timeout,
}

impl BodyError {
    /// The edge's answer, audited as a denial (`edge` decided a body too large). The
    /// answer to a body too large holds the rest of it, to be read and dropped after the
    /// answer ([`forward::holding_request_body`]).
    fn answer(self, mut audit: PendingAudit, body: Incoming) -> Response<EdgeBody> {
        let (status, reason) = match self {
            BodyError::Unreadable => (StatusCode::BAD_REQUEST, "body_unreadable"),
            BodyError::Timeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            BodyError::TooLarge => {
                audit.record.gate = Some("edge".into());
                (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
            }
        };
        let unread = matches!(self, BodyError::TooLarge).then_some(body);
        let response =
            forward::holding_request_body(forward::text(status, format!("{reason}\n")), unread);
        audit.finish(response, "deny", Some(reason))
    }
}

/// Buffers the body of a request for a gated funnel: at most `limit` bytes, within
/// `timeout`. Stops reading as soon as the bound is passed. The frames are kept as they
/// arrive (`Bytes` that share hyper's read buffer, no copy); a body that came in one frame,
/// the usual case for a webhook, is used as it is, and only a body of several frames is
/// joined, once, into the one slice the gates read. Trailers are dropped.
async fn buffer_body(
    body: &mut Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let read = async {
        let mut first: Option<Bytes> = None;
        let mut more: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| BodyError::Unreadable)?.into_data() else {
                continue;
            };
            total = total.saturating_add(data.len());
            if total > limit {
                return Err(BodyError::TooLarge);
            }
            if data.is_empty() {
                continue;
            }
            match first {
                None => first = Some(data),
                Some(_) => more.push(data),
            }
        }
        let Some(first) = first else {
            return Ok(Bytes::new());
        };
        if more.is_empty() {
            return Ok(first);
        }
        let mut joined = bytes::BytesMut::with_capacity(total);
        joined.extend_from_slice(&first);
        for chunk in &more {
            joined.extend_from_slice(chunk);
        }
        Ok(joined.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| BodyError::Timeout)?
}

/// The request's host, lower case, without a port: the URI authority (HTTP/2) or `Host`.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = match request.uri().host() {
        Some(host) => host.to_string(),
        None => {
            let header = request.headers().get(http::header::HOST)?.to_str().ok()?;
            header
                .rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(header, |(host, _)| host)
                .to_string()
        }
    };
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

/// The audit record of one request, written when its response body ends.
struct PendingAudit {
    record: AuditRecord,
    started: Instant,
    sink: Arc<dyn AuditSink>,
}

impl PendingAudit {
    fn new<B>(request: &Request<B>, client: SocketAddr, sink: Arc<dyn AuditSink>) -> Self {
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            record: AuditRecord {
                time,
                funnel: None,
                owner: None,
                node: None,
                client: client.to_string(),
                method: request.method().to_string(),
                path: request.uri().path().to_string(),
                gate: None,
                result: "deny",
                reason: None,
                status: 0,
                bytes: 0,
                duration_ms: 0,
            },
            started: Instant::now(),
            sink,
        }
    }

    fn label(&mut self, info: &RouteInfo) {
        self.record.funnel = Some(info.hostname.clone());
        self.record.owner = Some(info.owner.clone());
        self.record.node = Some(info.node.clone());
    }

    fn finish_now(
        self,
        status: StatusCode,
        result: &'static str,
        reason: Option<&str>,
        body: &str,
    ) -> Response<EdgeBody> {
        self.finish(forward::text(status, body.to_string()), result, reason)
    }

    fn finish(
        mut self,
        response: Response<EdgeBody>,
        result: &'static str,
        reason: Option<&str>,
    ) -> Response<EdgeBody> {
        self.record.result = result;
        self.record.reason = reason.map(str::to_string);
        self.record.status = response.status().as_u16();
        response.map(|body| forward::audited(body, self.record, self.started, self.sink))
    }
}
