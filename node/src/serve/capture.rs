//! The adapter from the serve proxy's [`ExchangeObserver`] hook to request inspection's
//! capture store ([`crate::inspect`]).

use std::sync::Arc;

use crate::inspect::{
    Admission, CapturedBody as StoredBody, CapturedRequest, CapturedResponse,
    Exchange as StoredExchange, ExchangeRecorder, Source, header_pairs, rfc3339,
};

use super::identity::RequestOrigin;
use super::observer::{CapturedBody, Exchange, ExchangeObserver};

/// Records every exchange the serve proxy carries into an inspection store (a
/// [`CaptureStore`](crate::inspect::CaptureStore) or any [`ExchangeRecorder`]), capturing
/// bodies up to the store's limit. Pass it to [`ServeRuntime::start`](super::ServeRuntime)
/// when inspection is on; use [`NoopObserver`](super::NoopObserver) when it is off.
///
/// Funnel exchanges are recorded with source `funnel` and the gate and principal from the
/// ingress's hello; tailnet exchanges with source `serve`, gate `tailnet` and the peer's
/// login (or node name for a tagged node).
#[derive(Debug, Clone)]
pub struct InspectObserver {
    recorder: Arc<dyn ExchangeRecorder>,
}

impl InspectObserver {
    /// An observer recording into `recorder`.
    pub fn new(recorder: Arc<dyn ExchangeRecorder>) -> Self {
        Self { recorder }
    }
}

impl ExchangeObserver for InspectObserver {
    fn capture_limit(&self) -> Option<usize> {
        Some(self.recorder.max_body_bytes())
    }

    fn record(&self, exchange: Exchange) {
        self.recorder.record(stored(exchange));
    }
}

/// The inspection store's form of a serve exchange.
fn stored(exchange: Exchange) -> StoredExchange {
    let (source, admission) = match &exchange.origin {
        RequestOrigin::Funnel { hello } => (
            Source::Funnel,
            hello.admission.as_ref().map(|a| Admission {
                gate: a.gate.as_str().to_string(),
                identity: Some(a.principal.as_str().to_string()),
            }),
        ),
        RequestOrigin::Tailnet { peer, .. } => (
            Source::Serve,
            Some(Admission {
                gate: "tailnet".into(),
                identity: Some(if peer.user_login.is_empty() {
                    peer.node_name.clone()
                } else {
                    peer.user_login.clone()
                }),
            }),
        ),
    };
    let path = exchange
        .uri
        .path_and_query()
        .map_or_else(|| exchange.uri.to_string(), |p| p.as_str().to_string());
    StoredExchange {
        id: 0,
        time: rfc3339(exchange.started),
        source,
        replay_of: None,
        port: Some(exchange.port),
        admission,
        request: CapturedRequest {
            method: exchange.method.to_string(),
            path,
            version: format!("{:?}", exchange.version),
            headers: header_pairs(&exchange.request_headers),
            body: body(exchange.request_body),
        },
        response: exchange.answered_by_origin.then(|| CapturedResponse {
            status: exchange.status.as_u16(),
            headers: header_pairs(&exchange.response_headers),
            body: body(exchange.response_body),
        }),
        error: exchange.error,
        duration_ms: u64::try_from(exchange.duration.as_millis()).unwrap_or(u64::MAX),
    }
}

fn body(captured: CapturedBody) -> StoredBody {
    StoredBody {
        bytes: captured.bytes,
        size: captured.total_len,
        truncated: captured.truncated,
    }
}
