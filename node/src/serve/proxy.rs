//! The HTTP reverse proxy of an HTTP service: one served connection (a tailnet peer's, or
//! a funnel stream after the hop) in, requests out over the runtime's pooled keep-alive
//! connections to the origin ([`OriginPool`]).
//!
//! Per request it finds the route (longest mount point), strips hop-by-hop and every
//! `Postern-*` header, sets the identity headers of the request's [`RequestOrigin`] (the
//! connection's; on a pooled funnel stream, the one in the request's own context header,
//! see [`HttpProxy::request_origin`]),
//! sends the request over HTTP/1.1 to the origin with the body streaming, and streams the
//! response back. `101 Switching Protocols` (WebSocket) becomes a byte pipe. Incoming
//! connections may be HTTP/1.1 or HTTP/2 (prior knowledge).

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use postern_proto::funnel_hop::{HOP_CONTEXT_HEADER, HOP_REFUSAL_HEADER, RefusalCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body_end::OnEndBody;
use super::config::{HttpRoute, ServeTable, ServeTarget};
use super::identity::{PeerDirectory, RequestOrigin, set_identity_headers};
use super::observer::{Capture, Exchange, ExchangeObserver, TeeBody};

/// How long connecting to the origin may take.
pub(super) const ORIGIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The body type of responses and forwarded requests.
type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Everything a served connection's requests need.
pub(super) struct HttpProxy {
    pub(super) table: ServeTable,
    pub(super) port: u16,
    pub(super) origin: RequestOrigin,
    pub(super) observer: Arc<dyn ExchangeObserver>,
    /// On a funnel stream: the ingress's address and the directory, to check for every
    /// request of a pooled stream that the peer is still an ingress (a stream can outlive
    /// the netmap that let it in).
    pub(super) ingress: Option<(IpAddr, Arc<dyn PeerDirectory>)>,
    /// The runtime's keep-alive connections to origins.
    pub(super) origins: OriginPool,
}

/// Why a request on a pooled funnel stream is refused before it reaches the target.
#[derive(Debug, thiserror::Error)]
enum StreamRefusal {
    /// The request's context header is missing or invalid: `400 hop_context_invalid`.
    #[error("{0}")]
    Context(postern_proto::funnel_hop::HopError),
    /// The peer lost its ingress mark since the stream opened: `502
    /// node_refused_not_ingress`.
    #[error("{0} is no longer an ingress in this node's netmap")]
    NotIngress(IpAddr),
}

impl HttpProxy {
    /// Serves HTTP on `stream` until the client closes it.
    pub(super) async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let proxy = Arc::new(self);
        let origin = proxy.origin.to_string();
        let service = service_fn(move |request| {
            let proxy = Arc::clone(&proxy);
            async move { Ok::<_, Infallible>(proxy.handle(request).await) }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if let Err(error) = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(%origin, %error, "served HTTP connection ended with an error");
        }
    }

    /// Who `request` is for. On a connection of one origin (a tailnet peer, a version 1
    /// funnel stream) that is the connection's origin. On a pooled funnel stream (version 2
    /// hello) each request carries its own context in the hop context header, which is
    /// read and removed here; a request without exactly one valid context is refused (the
    /// error says why), so it never reaches the target with another request's identity. So
    /// is a request from a peer that is no longer an ingress.
    fn request_origin(
        &self,
        headers: &mut HeaderMap,
    ) -> Result<Cow<'_, RequestOrigin>, StreamRefusal> {
        let RequestOrigin::Funnel { hello } = &self.origin else {
            return Ok(Cow::Borrowed(&self.origin));
        };
        if !hello.per_request_context {
            return Ok(Cow::Borrowed(&self.origin));
        }
        if let Some((addr, directory)) = &self.ingress
            && !directory.is_ingress(*addr)
        {
            return Err(StreamRefusal::NotIngress(*addr));
        }
        let context = hello.request_context(
            headers
                .get_all(HOP_CONTEXT_HEADER)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        headers.remove(HOP_CONTEXT_HEADER);
        let hello = context.map_err(StreamRefusal::Context)?;
        Ok(Cow::Owned(RequestOrigin::Funnel { hello }))
    }

    async fn handle(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let origin = match self.request_origin(request.headers_mut()) {
            Ok(origin) => origin,
            Err(error) => {
                tracing::warn!(origin = %self.origin, %error, "refused a request on a funnel stream");
                let exchange = self.exchange(&request, &self.origin);
                let (mut response, code) = match error {
                    StreamRefusal::Context(_) => (
                        text(StatusCode::BAD_REQUEST, "hop_context_invalid\n"),
                        RefusalCode::ContextInvalid,
                    ),
                    StreamRefusal::NotIngress(_) => (
                        text(StatusCode::BAD_GATEWAY, "node_refused_not_ingress\n"),
                        RefusalCode::NotIngress,
                    ),
                };
                // Tells the ingress this is the node's refusal, not the target's answer.
                response.headers_mut().insert(
                    HeaderName::from_static(HOP_REFUSAL_HEADER),
                    HeaderValue::from_static(code.as_str()),
                );
                // The ingress sent something it should not have; trust nothing more from
                // this stream.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return self.finish_now(exchange, started, None, response, Some(error.to_string()));
            }
        };
        let mut exchange = self.exchange(&request, &origin);

        let Some(route) = self.route(request.uri().path()) else {
            let response = text(StatusCode::NOT_FOUND, "no route for this path\n");
            return self.finish_now(exchange, started, None, response, None);
        };
        let (route, rest) = route;
        let client_upgrade = wants_upgrade(&request).then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();

        let path = join_path(route.origin.base_path(), &rest);
        let path_and_query = match parts.uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let upstream = format!("http://{}{}", route.origin.authority(), path_and_query);

        let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
        crate::hop_by_hop::strip(&mut parts.headers);
        if client_upgrade.is_some()
            && let Some(value) = upgrade_value
        {
            parts.headers.insert(header::UPGRADE, value);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if !parts.headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(value) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, value);
        }
        set_identity_headers(&mut parts.headers, &origin);
        if let RequestOrigin::Tailnet { addr, .. } = origin.as_ref()
            && let Ok(value) = HeaderValue::from_str(&addr.to_string())
        {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-for"), value);
            parts.headers.insert(
                HeaderName::from_static("x-forwarded-proto"),
                HeaderValue::from_static("http"),
            );
        }

        // A request without a body whose method is idempotent can be sent again if the
        // origin closes a pooled connection just as the request goes out on it (what
        // nginx's `proxy_next_upstream` does); anything else could act twice.
        let replay = (client_upgrade.is_none()
            && parts.method.is_idempotent()
            && hyper::body::Body::is_end_stream(&body))
        .then(|| (parts.method.clone(), parts.headers.clone()));

        // Read to its end even if the origin answers and closes before taking it all,
        // so that the connection it came on (a pooled hop stream) stays usable.
        let body = super::DrainOnDrop::new(body);
        let mut request_capture = None;
        let body: ProxyBody = match &exchange {
            Some((limit, _)) => {
                let (tee, capture) = TeeBody::new(body, *limit);
                request_capture = Some(capture);
                tee.boxed_unsync()
            }
            None => body.boxed_unsync(),
        };
        if let Some((_, record)) = exchange.as_mut() {
            record.upstream = upstream.clone();
            record.request_headers = parts.headers.clone();
        }
        let outgoing = match origin_request(parts.method, &path_and_query, parts.headers, body) {
            Ok(outgoing) => outgoing,
            Err(error) => {
                let response = text(StatusCode::BAD_REQUEST, "bad_request\n");
                let error = Some(format!("the request could not be rebuilt: {error}"));
                return self.finish_now(exchange, started, request_capture, response, error);
            }
        };

        let mut sent = self.origins.send(route.origin.authority(), outgoing).await;
        if let (Err(SendError::NoAnswer(first)), Some((method, headers))) = (&sent, replay) {
            tracing::debug!(%upstream, error = %first, "the origin closed the connection under an idempotent request; sending it again");
            let empty = Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync();
            if let Ok(again) = origin_request(method, &path_and_query, headers, empty) {
                sent = self.origins.send(route.origin.authority(), again).await;
            }
        }
        let mut response = match sent.map_err(String::from) {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(origin = %origin, %upstream, %error, "the serve target could not be reached");
                let response = text(StatusCode::BAD_GATEWAY, "upstream_unreachable\n");
                return self.finish_now(exchange, started, request_capture, response, Some(error));
            }
        };
        // Only this node may refuse a request to the ingress; a target cannot pose as it.
        response.headers_mut().remove(HOP_REFUSAL_HEADER);

        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let target_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, target_upgrade) {
                    Ok((client_io, target_io)) => {
                        let mut client_io = TokioIo::new(client_io);
                        let mut target_io = TokioIo::new(target_io);
                        let _ = tokio::io::copy_bidirectional(&mut client_io, &mut target_io).await;
                    }
                    Err(error) => tracing::debug!(%error, "upgrade failed"),
                }
            });
            let response = response.map(BodyExt::boxed_unsync);
            if let Some((_, record)) = exchange.as_mut() {
                record.answered_by_origin = true;
            }
            return self.finish_now(exchange, started, request_capture, response, None);
        }
        crate::hop_by_hop::strip(response.headers_mut());

        let Some((limit, mut record)) = exchange else {
            return response.map(BodyExt::boxed_unsync);
        };
        record.status = response.status();
        record.answered_by_origin = true;
        record.response_headers = response.headers().clone();
        let (parts, body) = response.into_parts();
        let (tee, response_capture) = TeeBody::new(body, limit);
        let observer = Arc::clone(&self.observer);
        let finish = move |_bytes| {
            record.duration = started.elapsed();
            if let Some(capture) = request_capture {
                let (body, error) = lock(&capture).snapshot();
                record.request_body = body;
                record.error = record.error.take().or(error);
            }
            let (body, error) = lock(&response_capture).snapshot();
            record.response_body = body;
            record.error = record.error.take().or(error);
            observer.record(record);
        };
        Response::from_parts(parts, OnEndBody::new(tee, finish).boxed_unsync())
    }

    /// The exchange record of `request` for the observer, if it captures.
    fn exchange(
        &self,
        request: &Request<Incoming>,
        origin: &RequestOrigin,
    ) -> Option<(usize, Exchange)> {
        self.observer.capture_limit().map(|limit| {
            (
                limit,
                Exchange {
                    started: SystemTime::now(),
                    duration: Duration::ZERO,
                    origin: origin.clone(),
                    port: self.port,
                    method: request.method().clone(),
                    uri: request.uri().clone(),
                    version: request.version(),
                    upstream: String::new(),
                    request_headers: HeaderMap::new(),
                    request_body: Default::default(),
                    status: StatusCode::OK,
                    answered_by_origin: false,
                    response_headers: HeaderMap::new(),
                    response_body: Default::default(),
                    error: None,
                },
            )
        })
    }

    /// The route for `path` and what is left of the path below its mount point.
    fn route(&self, path: &str) -> Option<(HttpRoute, String)> {
        let config = self.table.current();
        let service = match &self.origin {
            RequestOrigin::Funnel { .. } => config.funnelled(self.port),
            RequestOrigin::Tailnet { .. } => config.service(self.port),
        }?;
        let ServeTarget::Http { routes } = &service.target else {
            return None;
        };
        routes
            .iter()
            .filter_map(|route| route.path.strip(path).map(|rest| (route, rest)))
            .max_by_key(|(route, _)| route.path.as_str().len())
            .map(|(route, rest)| (route.clone(), rest.to_string()))
    }

    /// Reports an exchange the node answered itself (or an upgrade) right away.
    fn finish_now(
        &self,
        exchange: Option<(usize, Exchange)>,
        started: Instant,
        request_capture: Option<Arc<Mutex<Capture>>>,
        response: Response<ProxyBody>,
        error: Option<String>,
    ) -> Response<ProxyBody> {
        if let Some((_, mut record)) = exchange {
            record.duration = started.elapsed();
            record.status = response.status();
            record.response_headers = response.headers().clone();
            if let Some(capture) = request_capture {
                record.request_body = lock(&capture).snapshot().0;
            }
            record.error = error;
            self.observer.record(record);
        }
        response
    }
}

/// Keep-alive connections to the origins of HTTP services, shared by every served
/// connection of a [`ServeRuntime`](super::ServeRuntime) (one pool per origin address):
/// hyper-util's pooling client. A connection returns to the pool only after its response
/// was read to the end (an abandoned response, a failed exchange or an upgrade close it
/// or hand it over); at most [`ORIGIN_MAX_IDLE`] idle ones per origin, each closed after
/// [`ORIGIN_IDLE_TIMEOUT`]; a pooled connection the origin closed while idle is noticed
/// when it is taken, and a request not yet written goes out on a fresh one. A request
/// that was written as the origin closed the connection under it gets no answer; the
/// proxy sends it once more only if its method is idempotent and it has no body.
#[derive(Clone)]
pub(super) struct OriginPool {
    client: Client<HttpConnector, ProxyBody>,
}

/// Idle connections kept per origin.
pub(super) const ORIGIN_MAX_IDLE: usize = 32;
/// How long an idle origin connection is kept.
pub(super) const ORIGIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl OriginPool {
    /// An empty pool; needs no runtime until the first request.
    pub(super) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(ORIGIN_CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(ORIGIN_IDLE_TIMEOUT)
            .pool_max_idle_per_host(ORIGIN_MAX_IDLE)
            // The proxy sets `Host` (the client's, or the origin's authority).
            .set_host(false)
            .build(connector);
        Self { client }
    }

    /// Sends `request` (origin-form URI) to `authority` over an idle or new connection
    /// (upgrades allowed). The error says what failed, for the log and the observer.
    async fn send(
        &self,
        authority: &str,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        *request.uri_mut() = format!("http://{authority}{path}")
            .parse()
            .map_err(|error| {
                SendError::Other(format!("{authority} is not an address to send to: {error}"))
            })?;
        self.client.request(request).await.map_err(|error| {
            let cause = std::error::Error::source(&error)
                .map_or_else(|| error.to_string(), ToString::to_string);
            if error.is_connect() {
                SendError::Other(format!("cannot connect to {authority}: {cause}"))
            } else {
                SendError::NoAnswer(format!("{authority} did not answer: {cause}"))
            }
        })
    }
}

/// Why [`OriginPool::send`] got no response.
#[derive(Debug)]
enum SendError {
    /// The request went out on a connection that ended without an answer (also an origin
    /// closing a pooled connection as the request was written).
    NoAnswer(String),
    /// No connection, or no request to send.
    Other(String),
}

impl From<SendError> for String {
    fn from(error: SendError) -> Self {
        match error {
            SendError::NoAnswer(text) | SendError::Other(text) => text,
        }
    }
}

/// The request to send to the origin: HTTP/1.1, origin-form `path_and_query`.
fn origin_request(
    method: http::Method,
    path_and_query: &str,
    headers: HeaderMap,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, http::Error> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path_and_query)
        .version(Version::HTTP_11);
    if let Some(slot) = builder.headers_mut() {
        *slot = headers;
    }
    builder.body(body)
}

impl std::fmt::Debug for OriginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginPool").finish_non_exhaustive()
    }
}

/// `base` (no trailing `/`, maybe empty) joined with `rest` (starts with `/`).
fn join_path(base: &str, rest: &str) -> String {
    format!("{base}{rest}")
}

fn lock(capture: &Mutex<Capture>) -> std::sync::MutexGuard<'_, Capture> {
    capture.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn wants_upgrade<B>(request: &Request<B>) -> bool {
    request.headers().contains_key(header::UPGRADE)
        && request.version() == Version::HTTP_11
        && crate::hop_by_hop::connection_tokens(request.headers())
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_below_the_base() {
        assert_eq!(join_path("", "/users"), "/users");
        assert_eq!(join_path("/app", "/users"), "/app/users");
        assert_eq!(join_path("/app", "/"), "/app/");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        crate::hop_by_hop::strip(&mut headers);
        assert_eq!(headers.len(), 1);
    }
}
