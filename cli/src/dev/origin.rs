//! The demo origin of `postern dev`: a tiny HTTP service on loopback that answers every
//! request with what it received, so a developer sees a delivery arrive byte for byte.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running demo origin.
#[derive(Debug, Clone)]
pub(crate) struct DemoOrigin {
    /// Where it listens (127.0.0.1, a free port).
    pub(crate) addr: SocketAddr,
}

/// Starts the origin on `listener`; it stops when `stop` is cancelled.
pub(crate) fn start(listener: TcpListener, stop: CancellationToken) -> Result<DemoOrigin, String> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("demo origin: {e}"))?;
    let received = Arc::new(AtomicU64::new(0));
    let origin = DemoOrigin { addr };
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    answer(request, Arc::clone(&received))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(origin)
}

async fn answer(
    request: Request<Incoming>,
    received: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let count = received.fetch_add(1, Ordering::Relaxed) + 1;
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let user = request
        .headers()
        .get("postern-user-login")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let gate = request
        .headers()
        .get("postern-gate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    eprintln!(
        "origin: request #{count}: {method} {path}, {} bytes{}",
        body.len(),
        gate.as_deref()
            .map(|g| format!(", admitted by {g}"))
            .unwrap_or_default()
    );
    let reply = serde_json::json!({
        "hello": "from the demo origin behind postern dev",
        "request": count,
        "method": method,
        "path": path,
        "bytes": body.len(),
        "admitted_by": gate,
        "user": user,
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!("{reply}\n"))))
        .unwrap_or_default())
}
