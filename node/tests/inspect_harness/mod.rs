//! A running inspector for tests: a local origin (the developer's service), a capture
//! store, a [`CapturingProxy`] in front of the origin (where "webhooks" are sent, as the
//! funnel would) and the UI/API server, all on loopback ports.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::panic)] // test helpers outside #[test] functions

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_node::inspect::{
    Admission, CaptureConfig, CaptureStore, CapturingProxy, EntryFilter, ExchangeMeta, Source, api,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type OriginBody = BoxBody<Bytes, hyper::Error>;

/// A request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Harness {
    pub store: Arc<CaptureStore>,
    pub origin: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Where to send requests so they are captured (as the funnel would deliver them).
    pub proxy_url: String,
    /// The UI and API.
    pub ui_url: String,
    pub shutdown: CancellationToken,
}

/// The signature header value the sample webhook carries (a secret to be masked).
pub const SIGNATURE: &str = "sha256=0123456789abcdef0123456789abcdef";

impl Harness {
    pub async fn start(config: CaptureConfig) -> Self {
        let shutdown = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let origin = start_origin(seen.clone(), shutdown.clone()).await;
        let store = CaptureStore::in_memory(config);
        let proxy = CapturingProxy::new(&format!("http://{origin}"), store.clone()).unwrap();

        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
        let meta = ExchangeMeta {
            source: Source::Funnel,
            admission: Some(Admission {
                gate: "webhook:github".into(),
                identity: Some("github".into()),
            }),
            replay_of: None,
            port: None,
        };
        tokio::spawn(Arc::new(proxy.clone()).serve(proxy_listener, meta, shutdown.clone()));

        let ui_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ui_url = format!("http://{}", ui_listener.local_addr().unwrap());
        let router = api::router(store.clone(), Some(proxy), shutdown.clone());
        tokio::spawn(api::serve(ui_listener, router, shutdown.clone()));
        Self {
            store,
            origin,
            seen,
            proxy_url,
            ui_url,
            shutdown,
        }
    }

    /// POSTs a GitHub-like webhook through the capturing proxy; returns the status.
    pub async fn send_webhook(&self, path: &str, body: &str) -> u16 {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let request = Request::post(format!("{}{path}", self.proxy_url))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-hub-signature-256", SIGNATURE)
            .header("user-agent", "GitHub-Hookshot/test")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }

    /// Waits (up to 10 s) until the store holds `n` entries.
    pub async fn wait_for_entries(&self, n: usize) {
        for _ in 0..200 {
            if self.store.list(&EntryFilter::default()).len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "expected {n} captured entries, have {:?}",
            self.store.list(&EntryFilter::default())
        );
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The developer's local service: records every request and answers JSON with a count;
/// `/empty` answers 204 with no body, `/stalls` sends one chunk and then nothing.
async fn start_origin(seen: Arc<Mutex<Vec<Seen>>>, shutdown: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted.unwrap(),
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let n = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(Seen {
                                    method: parts.method.to_string(),
                                    path: parts.uri.to_string(),
                                    headers: parts
                                        .headers
                                        .iter()
                                        .map(|(n, v)| {
                                            (n.to_string(), v.to_str().unwrap_or("").to_owned())
                                        })
                                        .collect(),
                                    body,
                                });
                                seen.len()
                            };
                            let body: OriginBody = match parts.uri.path() {
                                // No body at all: hyper may never poll it.
                                "/empty" => {
                                    let response = Response::builder()
                                        .status(204)
                                        .body(
                                            Full::new(Bytes::new()).map_err(|e| match e {}).boxed(),
                                        )
                                        .unwrap();
                                    return Ok::<_, hyper::Error>(response);
                                }
                                // One chunk, then nothing ever again.
                                "/stalls" => {
                                    let first = futures::stream::once(async {
                                        Ok::<_, hyper::Error>(hyper::body::Frame::data(
                                            Bytes::from_static(b"partial"),
                                        ))
                                    });
                                    BodyExt::boxed(StreamBody::new(
                                        first.chain(futures::stream::pending()),
                                    ))
                                }
                                _ => Full::new(Bytes::from(format!("{{\"received\":{n}}}")))
                                    .map_err(|e| match e {})
                                    .boxed(),
                            };
                            let response = Response::builder()
                                .header("content-type", "application/json")
                                .header("set-cookie", "session=origin-secret")
                                .body(body)
                                .unwrap();
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
