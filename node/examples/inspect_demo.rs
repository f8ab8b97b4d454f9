//! Runs the inspection UI against a capture store and a local service, for trying the UI by
//! hand (the browser test builds the same thing in `node/tests/inspect_harness/`).
//!
//! ```text
//! cargo run -p postern-node --example inspect_demo -- \
//!     [--target http://127.0.0.1:3000] [--ui 127.0.0.1:4040] [--proxy 127.0.0.1:8080] [--state DIR]
//! ```
//!
//! Requests sent to the proxy address are forwarded to the target and captured as funnel
//! requests admitted by `webhook:github`. Without `--target`, a built-in service answers
//! every request with a small JSON echo. With `--state DIR`, captures persist in
//! `DIR/inspect.jsonl`. Stop with Ctrl-C.
// An example program talks to the person running it.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use postern_node::inspect::{
    Admission, CaptureConfig, CaptureStore, CapturingProxy, ExchangeMeta, Source, api,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut target = None;
    let mut ui: SocketAddr = api::DEFAULT_ADDR;
    let mut proxy: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut state: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => target = Some(value),
            "--ui" => ui = value.parse()?,
            "--proxy" => proxy = value.parse()?,
            "--state" => state = Some(PathBuf::from(value)),
            other => {
                return Err(format!("unknown flag {other}: see the top of inspect_demo.rs").into());
            }
        }
    }
    let shutdown = CancellationToken::new();
    let target = match target {
        Some(target) => target,
        None => format!("http://{}", start_echo(shutdown.clone()).await?),
    };
    let store = CaptureStore::open(CaptureConfig {
        persist_path: state.map(|dir| dir.join("inspect.jsonl")),
        ..CaptureConfig::default()
    })?;
    let capturing = CapturingProxy::new(&target, store.clone())?;
    let meta = ExchangeMeta {
        source: Source::Funnel,
        admission: Some(Admission {
            gate: "webhook:github".into(),
            identity: Some("github".into()),
        }),
        replay_of: None,
        port: None,
    };
    let proxy_listener = TcpListener::bind(proxy).await?;
    tokio::spawn(Arc::new(capturing.clone()).serve(proxy_listener, meta, shutdown.clone()));
    let ui_listener = TcpListener::bind(ui).await?;
    println!("inspector:  http://{}/", ui_listener.local_addr()?);
    println!("send to:    http://{proxy}/  (forwarded to {target})");
    let router = api::router(store, Some(capturing), shutdown.clone());
    let server = tokio::spawn(api::serve(ui_listener, router, shutdown.clone()));
    tokio::signal::ctrl_c().await?;
    shutdown.cancel();
    server.await??;
    Ok(())
}

/// A local service that answers every request with `{"method", "path", "bytes"}`.
async fn start_echo(shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let method = request.method().to_string();
                        let path = request.uri().to_string();
                        let bytes = request.into_body().collect().await?.to_bytes().len();
                        let body =
                            serde_json::json!({ "method": method, "path": path, "bytes": bytes });
                        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, hyper::Error>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
