//! Sending an admitted request to the target and streaming the answer back.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version, request};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use postern_node::serve::{DrainOnDrop, OnEndBody};

use super::{Upstream, UpstreamContext, UpstreamError};
use crate::audit::{AuditRecord, AuditSink};

/// The body type of every response the edge sends: the target's streamed body or a short
/// text of the edge's own.
pub type EdgeBody = BoxBody<Bytes, hyper::Error>;

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ForwardError {
    #[error("{0}")]
    Upstream(UpstreamError),
    #[error("the target did not answer in time")]
    Timeout,
    #[error("the request could not be rebuilt for the target: {0}")]
    Build(http::Error),
}

impl ForwardError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ForwardError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    pub(super) fn code(&self) -> &'static str {
        match self {
            ForwardError::Upstream(UpstreamError::Connect(_)) => "upstream_unreachable",
            ForwardError::Upstream(UpstreamError::Refused(refusal)) => refusal.code.as_str(),
            ForwardError::Upstream(_) => "upstream_failed",
            ForwardError::Timeout => "upstream_timeout",
            ForwardError::Build(_) => "bad_request",
        }
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket over HTTP/1.1).
pub(super) fn wants_upgrade<B>(request: &Request<B>) -> bool {
    request.headers().contains_key(header::UPGRADE)
        && request.version() == Version::HTTP_11
        && postern_node::hop_by_hop::connection_tokens(request.headers())
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Forwards one admitted request (headers already rewritten by the gate step) and returns
/// the response to send to the client.
pub(super) async fn forward(
    upstream: &dyn Upstream,
    context: &UpstreamContext,
    mut parts: request::Parts,
    body: BoxBody<Bytes, hyper::Error>,
    client_upgrade: Option<OnUpgrade>,
    timeout: Duration,
) -> Result<Response<EdgeBody>, ForwardError> {
    let host = context.hostname.as_str();
    let client = context.client;
    let upgrading = client_upgrade.is_some();
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    postern_node::hop_by_hop::strip(&mut parts.headers);
    if upgrading && let Some(value) = upgrade_value {
        parts.headers.insert(header::UPGRADE, value);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    set_forwarded(&mut parts.headers, host, client);
    if let Ok(value) = HeaderValue::from_str(host) {
        parts.headers.insert(header::HOST, value);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_string();
    // A request without a body whose method is idempotent can be sent again if the target
    // closes a pooled connection just as the request goes out on it (a keep-alive timeout
    // running out on its side; what nginx's `proxy_next_upstream` does). Anything else
    // could act twice, so it is sent once.
    let replay = (!upgrading && parts.method.is_idempotent() && body.is_end_stream())
        .then(|| (parts.method.clone(), parts.headers.clone()));
    let outgoing = target_request(parts.method, &path, parts.headers, body)?;

    // Over a pooled keep-alive connection (see `Upstream::send_request`); the timeout
    // covers getting a connection (new or idle), the one resend, and the response head.
    let exchange = async {
        let sent = upstream.send_request(outgoing, context).await;
        match (sent, replay) {
            (Err(UpstreamError::Http(first)), Some((method, headers))) => {
                tracing::debug!(funnel = %host, error = %first, "the target closed the connection under an idempotent request; sending it again");
                let empty = Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed();
                let again = target_request(method, &path, headers, empty)?;
                upstream
                    .send_request(again, context)
                    .await
                    .map_err(ForwardError::Upstream)
            }
            (sent, _) => sent.map_err(ForwardError::Upstream),
        }
    };
    let mut response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ForwardError::Timeout)??;

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
        return Ok(response.map(BodyExt::boxed));
    }
    postern_node::hop_by_hop::strip(response.headers_mut());
    response.headers_mut().remove(header::UPGRADE);
    Ok(response.map(BodyExt::boxed))
}

/// The request to send to the target: HTTP/1.1, origin-form `path`.
fn target_request(
    method: http::Method,
    path: &str,
    headers: HeaderMap,
    body: EdgeBody,
) -> Result<Request<EdgeBody>, ForwardError> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .version(Version::HTTP_11);
    if let Some(slot) = builder.headers_mut() {
        *slot = headers;
    }
    builder.body(body).map_err(ForwardError::Build)
}

/// A short text response of the edge's own.
pub(super) fn text(status: StatusCode, body: String) -> Response<EdgeBody> {
    let mut response = bytes(status, Bytes::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response with a fixed body.
pub(super) fn bytes(status: StatusCode, body: Bytes) -> Response<EdgeBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

/// Makes an answer of the edge's own (a refusal) hold the unread body of the request it
/// answers. Once the answer has been sent, the body is read and dropped for up to
/// [`postern_node::serve::DRAIN_FOR`] and [`postern_node::serve::DRAIN_BYTES`]
/// ([`DrainOnDrop`]), and only then released. It never goes anywhere.
///
/// Clients that are still sending when the answer comes lose it otherwise:
/// - Over HTTP/2, releasing the body before the answer is sent resets the stream with
///   `CANCEL`; releasing it just after resets it with `NO_ERROR`, which RFC 9113 (8.1)
///   allows, but curl 7.88 (Debian 12's) still reports "Stream error in the HTTP/2 framing
///   layer" instead of the 401 while it is uploading.
/// - Over HTTP/1.1, a connection closed with unread data makes the kernel send a TCP
///   reset, which can destroy the answer before the client reads it.
pub(super) fn holding_request_body(
    response: Response<EdgeBody>,
    unread: Option<hyper::body::Incoming>,
) -> Response<EdgeBody> {
    match unread {
        None => response,
        Some(unread) => response.map(|answer| {
            HoldingBody {
                answer,
                _unread: DrainOnDrop::new(unread),
            }
            .boxed()
        }),
    }
}

/// An answer's body and the request body it holds until hyper has sent the answer's last
/// frame and dropped it.
struct HoldingBody {
    answer: EdgeBody,
    _unread: DrainOnDrop,
}

impl Body for HoldingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().answer).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.answer.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.answer.size_hint()
    }
}

/// Wraps a response body so that the audit record is written, with the byte count and
/// duration, when the body ends or is dropped.
pub(super) fn audited(
    body: EdgeBody,
    mut record: AuditRecord,
    started: Instant,
    sink: Arc<dyn AuditSink>,
) -> EdgeBody {
    OnEndBody::new(body, move |bytes| {
        record.bytes = bytes;
        record.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        sink.record(&record);
    })
    .boxed()
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `Forwarded`, replacing any the client sent.
/// The client's address is formatted once, and each value is built in its own buffer
/// and handed to the header map without a further copy.
fn set_forwarded(headers: &mut HeaderMap, host: &str, client: SocketAddr) {
    static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    let ip = client.ip().to_string();
    let forwarded = if client.is_ipv6() {
        format!("for=\"[{ip}]\";proto=https;host={host}")
    } else {
        format!("for={ip};proto=https;host={host}")
    };
    let shared = |text: String| HeaderValue::from_maybe_shared(Bytes::from(text)).ok();
    if let Some(value) = shared(ip) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    if let Ok(value) = HeaderValue::from_str(host) {
        headers.insert(X_FORWARDED_HOST.clone(), value);
    }
    if let Some(value) = shared(forwarded) {
        headers.insert(header::FORWARDED, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_replace_client_values() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        set_forwarded(
            &mut headers,
            "hooks.example",
            "203.0.113.7:4000".parse().unwrap(),
        );
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "hooks.example");
        assert_eq!(
            headers["forwarded"],
            "for=203.0.113.7;proto=https;host=hooks.example"
        );
        set_forwarded(&mut headers, "h", "[2001:db8::1]:4000".parse().unwrap());
        assert_eq!(
            headers["forwarded"],
            "for=\"[2001:db8::1]\";proto=https;host=h"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
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
        postern_node::hop_by_hop::strip(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }
}
