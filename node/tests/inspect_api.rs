//! The inspection API over real sockets: capture through the proxy, list, show (masked and
//! revealed), curl, replay (plain and modified), clear, denials, live events, and the
//! DNS-rebinding and cross-site refusals.

#![allow(clippy::unwrap_used, clippy::panic)] // test helpers outside #[test] functions may unwrap

mod inspect_harness;

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::Request;
use inspect_harness::{Harness, SIGNATURE};
use postern_node::inspect::client::{ClientError, InspectClient};
use postern_node::inspect::{
    CaptureConfig, CaptureStore, DeniedDelivery, Entry, EntryFilter, ReplayChanges, Source, api,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const WEBHOOK: &str = r#"{"ref":"refs/heads/main","commits":[{"id":"abc"}]}"#;

#[tokio::test]
async fn capture_list_show_replay_and_clear() {
    let harness = Harness::start(CaptureConfig::default()).await;
    let client = InspectClient::new(&harness.ui_url).unwrap();

    assert_eq!(
        harness.send_webhook("/hooks/github?x=1", WEBHOOK).await,
        200
    );
    harness.wait_for_entries(1).await;

    let list = client.list(&EntryFilter::default()).await.unwrap();
    assert_eq!(list.len(), 1);
    let original = &list[0];
    assert_eq!(original.method, "POST");
    assert_eq!(original.path, "/hooks/github?x=1");
    assert_eq!(original.status, Some(200));
    assert_eq!(original.source, Some(Source::Funnel));
    assert_eq!(original.gate.as_deref(), Some("webhook:github"));
    assert_eq!(original.identity.as_deref(), Some("github"));
    assert_eq!(original.request_size, WEBHOOK.len() as u64);
    assert_eq!(original.reason, None, "a complete exchange has no error");

    // Masked by default, revealed on request.
    let detail = client.show(original.id, false).await.unwrap();
    assert!(detail.masked);
    let Entry::Exchange(exchange) = detail.entry else {
        panic!("expected an exchange")
    };
    let signature = header(&exchange.request.headers, "x-hub-signature-256");
    assert_eq!(signature, format!("[masked: {} chars]", SIGNATURE.len()));
    let response = exchange.response.unwrap();
    assert_eq!(
        header(&response.headers, "set-cookie"),
        "[masked: 21 chars]"
    );
    assert_eq!(&response.body.bytes[..], b"{\"received\":1}");
    assert_eq!(&exchange.request.body.bytes[..], WEBHOOK.as_bytes());

    let detail = client.show(original.id, true).await.unwrap();
    assert!(!detail.masked);
    let Entry::Exchange(exchange) = detail.entry else {
        panic!("expected an exchange")
    };
    assert_eq!(
        header(&exchange.request.headers, "x-hub-signature-256"),
        SIGNATURE
    );

    let curl = client.curl(original.id, false).await.unwrap();
    assert!(
        curl.starts_with("curl -X 'POST' 'http://127.0.0.1:"),
        "{curl}"
    );
    assert!(curl.contains("/hooks/github?x=1'"), "{curl}");
    assert!(!curl.contains(SIGNATURE), "{curl}");
    assert!(
        client
            .curl(original.id, true)
            .await
            .unwrap()
            .contains(SIGNATURE)
    );

    // A plain replay reaches the origin with the original's body and secrets, and is
    // recorded linked to the original.
    let outcome = client
        .replay(original.id, &ReplayChanges::default())
        .await
        .unwrap();
    assert_eq!(outcome.replay_of, original.id);
    assert_eq!(outcome.status, Some(200));
    assert!(outcome.id > original.id);
    let seen = harness.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].path, "/hooks/github?x=1");
    assert_eq!(&seen[1].body[..], WEBHOOK.as_bytes());
    assert_eq!(seen[1].header("x-hub-signature-256"), Some(SIGNATURE));
    assert_eq!(
        seen[1].header("x-postern-replay-of"),
        Some(original.id.to_string().as_str())
    );
    let list = client.list(&EntryFilter::default()).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, outcome.id);
    assert_eq!(list[0].source, Some(Source::Replay));
    assert_eq!(list[0].replay_of, Some(original.id));
    assert_eq!(list[0].gate, None, "a replay passed no gate");

    // A modified replay: the masked placeholder copied from the view keeps the secret.
    let masked = format!("[masked: {} chars]", SIGNATURE.len());
    let changes = ReplayChanges {
        method: Some("PUT".into()),
        path: Some("/hooks/other".into()),
        headers: Some(vec![
            ("content-type".into(), "text/plain".into()),
            ("x-hub-signature-256".into(), masked),
            ("x-extra".into(), "yes".into()),
        ]),
        body: Some("changed".into()),
    };
    let outcome = client.replay(original.id, &changes).await.unwrap();
    let seen = harness.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.method, "PUT");
    assert_eq!(last.path, "/hooks/other");
    assert_eq!(&last.body[..], b"changed");
    assert_eq!(last.header("x-hub-signature-256"), Some(SIGNATURE));
    assert_eq!(last.header("x-extra"), Some("yes"));
    assert_eq!(last.header("content-length"), Some("7"));
    let detail = client.show(outcome.id, true).await.unwrap();
    let Entry::Exchange(replayed) = detail.entry else {
        panic!("expected an exchange")
    };
    assert_eq!(replayed.replay_of, Some(original.id));
    assert_eq!(replayed.request.method, "PUT");

    // Filters through the API.
    let filter = EntryFilter {
        method: Some("put".into()),
        ..EntryFilter::default()
    };
    assert_eq!(client.list(&filter).await.unwrap().len(), 1);
    let filter = EntryFilter {
        source: Some("replay".into()),
        ..EntryFilter::default()
    };
    assert_eq!(client.list(&filter).await.unwrap().len(), 2);

    // Errors say what is wrong.
    let err = client.show(9999, false).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status, message } if status.as_u16() == 404 && message.contains("evicted or cleared")),
        "{err}"
    );
    let bad = ReplayChanges {
        method: Some("NOT A METHOD".into()),
        ..ReplayChanges::default()
    };
    let err = client.replay(original.id, &bad).await.unwrap_err();
    assert!(err.to_string().contains("is not an HTTP method"), "{err}");

    client.clear().await.unwrap();
    assert!(
        client
            .list(&EntryFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let status = client.status().await.unwrap();
    assert_eq!(status.entries, 0);
    assert!(status.target.unwrap().starts_with("http://127.0.0.1:"));
}

#[tokio::test]
async fn bodies_past_the_cap_stream_whole_but_are_kept_truncated() {
    let harness = Harness::start(CaptureConfig {
        max_body_bytes: 16,
        ..CaptureConfig::default()
    })
    .await;
    let body = "x".repeat(100_000);
    assert_eq!(harness.send_webhook("/big", &body).await, 200);
    harness.wait_for_entries(1).await;
    assert_eq!(
        harness.seen()[0].body.len(),
        100_000,
        "the origin got it all"
    );
    let id = harness.store.list(&EntryFilter::default())[0].id;
    let Some(Entry::Exchange(exchange)) = harness.store.get(id) else {
        panic!("expected an exchange")
    };
    assert_eq!(exchange.request.body.bytes.len(), 16);
    assert_eq!(exchange.request.body.size, 100_000);
    assert!(exchange.request.body.truncated);

    let client = InspectClient::new(&harness.ui_url).unwrap();
    let err = client
        .replay(id, &ReplayChanges::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status, message } if status.as_u16() == 422 && message.contains("truncated at 16 of 100000 bytes")),
        "{err}"
    );
    // With a body of one's own it goes.
    let changes = ReplayChanges {
        body: Some("small".into()),
        ..ReplayChanges::default()
    };
    assert_eq!(client.replay(id, &changes).await.unwrap().status, Some(200));
}

#[tokio::test]
async fn an_unreachable_local_service_is_a_502_and_is_recorded() {
    let store = CaptureStore::in_memory(CaptureConfig::default());
    // A port nothing listens on: bind, learn it, close it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let proxy = postern_node::inspect::CapturingProxy::new(
        &format!("http://127.0.0.1:{port}"),
        store.clone(),
    )
    .unwrap();
    let request = Request::post("/hook")
        .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = proxy
        .forward(request, postern_node::inspect::ExchangeMeta::funnel())
        .await;
    assert_eq!(response.status().as_u16(), 502);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("did not answer"), "{text}");
    let list = store.list(&EntryFilter::default());
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, None);
    assert!(
        list[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("did not answer")
    );
}

#[tokio::test]
async fn empty_and_abandoned_responses_are_recorded_as_such() {
    let harness = Harness::start(CaptureConfig::default()).await;
    let proxy = postern_node::inspect::CapturingProxy::new(
        &format!("http://{}", harness.origin),
        harness.store.clone(),
    )
    .unwrap();
    let get = |path: &str| {
        Request::get(path)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    // An empty 204 is a complete exchange.
    let response = proxy
        .forward(get("/empty"), postern_node::inspect::ExchangeMeta::funnel())
        .await;
    assert_eq!(response.status().as_u16(), 204);
    drop(response);
    // A client that gives up after the first chunk.
    let response = proxy
        .forward(
            get("/stalls"),
            postern_node::inspect::ExchangeMeta::funnel(),
        )
        .await;
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"partial");
    drop(body);

    harness.wait_for_entries(2).await;
    let list = harness.store.list(&EntryFilter::default());
    assert_eq!(list[1].path, "/empty");
    assert_eq!(list[1].status, Some(204));
    assert_eq!(list[1].reason, None);
    assert_eq!(list[0].path, "/stalls");
    assert_eq!(
        list[0].reason.as_deref(),
        Some("the client went away before the response ended")
    );
    let Some(Entry::Exchange(stalled)) = harness.store.get(list[0].id) else {
        panic!("expected an exchange")
    };
    assert_eq!(&stalled.response.unwrap().body.bytes[..], b"partial");
}

#[tokio::test]
async fn a_replay_of_a_stalling_service_is_abandoned_and_recorded() {
    let harness = Harness::start(CaptureConfig::default()).await;
    harness.send_webhook("/stalls-not", WEBHOOK).await;
    harness.wait_for_entries(1).await;
    let id = harness.store.list(&EntryFilter::default())[0].id;
    let proxy = postern_node::inspect::CapturingProxy::new(
        &format!("http://{}", harness.origin),
        harness.store.clone(),
    )
    .unwrap()
    .with_replay_timeout(Duration::from_millis(300));
    let changes = ReplayChanges {
        path: Some("/stalls".into()),
        ..ReplayChanges::default()
    };
    let outcome = proxy
        .replay(harness.store.get(id), id, &changes)
        .await
        .unwrap();
    assert_eq!(outcome.status, None);
    assert!(
        outcome
            .error
            .as_deref()
            .unwrap()
            .contains("did not finish answering within 300 ms"),
        "{outcome:?}"
    );
    let list = harness.store.list(&EntryFilter::default());
    assert_eq!(list[0].id, outcome.id);
    assert_eq!(list[0].replay_of, Some(id));
    assert!(list[0].reason.is_some(), "{:?}", list[0]);
}

#[tokio::test]
async fn denials_from_the_audit_show_with_their_reason() {
    let harness = Harness::start(CaptureConfig::default()).await;
    let line = r#"{"time":"2026-11-29T08:00:00Z","funnel":"hooks.example","client":"203.0.113.7:5000","method":"POST","path":"/hook","gate":"webhook:github","result":"deny","reason":"signature_mismatch","status":403,"bytes":18,"duration_ms":2}"#;
    let denied = DeniedDelivery::from_audit_line(line).unwrap().unwrap();
    let id = harness.store.record_denied(denied);
    let client = InspectClient::new(&harness.ui_url).unwrap();
    let list = client.list(&EntryFilter::default()).await.unwrap();
    assert_eq!(list[0].kind, "denied");
    assert_eq!(list[0].reason.as_deref(), Some("signature_mismatch"));
    let err = client
        .replay(id, &ReplayChanges::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no captured exchange"), "{err}");
}

#[tokio::test]
async fn live_events_announce_new_entries() {
    let harness = Harness::start(CaptureConfig::default()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let response = client
        .get(format!("{}/api/events", harness.ui_url).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body();
    // The subscription exists once the response headers are back; now make an entry.
    harness.send_webhook("/live", WEBHOOK).await;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !text.contains("\n\n") || !text.contains("event: entry") {
            let frame = body.frame().await.unwrap().unwrap();
            if let Some(data) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(data));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no entry event within 10 s; got {text:?}"));
    assert!(text.contains("\"path\":\"/live\""), "{text}");
}

/// The guard runs before every route; these go straight to the router.
#[tokio::test]
async fn non_loopback_hosts_and_cross_site_writes_are_refused() {
    let store = CaptureStore::in_memory(CaptureConfig::default());
    let router = api::router(store, None, CancellationToken::new());
    let call = |request: Request<Body>| {
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let get = |host: &str| {
        Request::get("/api/requests")
            .header("host", host)
            .body(Body::empty())
            .unwrap()
    };

    for host in ["127.0.0.1:4040", "localhost:4040", "[::1]:4040"] {
        assert_eq!(call(get(host)).await.0, 200, "{host}");
    }
    for host in ["evil.example", "evil.example:4040", "192.168.1.5:4040"] {
        let (status, body) = call(get(host)).await;
        assert_eq!(status, 403, "{host}");
        assert!(body.contains("DNS rebinding"), "{body}");
        assert!(body.contains(host), "{body}");
    }
    let (status, _) = call(
        Request::get("/")
            .header("host", "evil.example")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "the page too");
    let (status, body) = call(
        Request::get("/")
            .header("host", "127.0.0.1:4040")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>Postern inspect</title>"));
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    let write = |method: &str, path: &str, extra: &[(&str, &str)]| {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1:4040");
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        request.body(Body::empty()).unwrap()
    };
    let (status, body) = call(write(
        "DELETE",
        "/api/requests",
        &[("origin", "http://evil.example")],
    ))
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("cross-site DELETE"), "{body}");
    assert!(body.contains("evil.example"), "{body}");
    let (status, body) = call(write(
        "POST",
        "/api/requests/1/replay",
        &[("sec-fetch-site", "cross-site")],
    ))
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("cross-site POST"), "{body}");
    let (status, _) = call(write(
        "POST",
        "/api/requests/1/replay",
        &[("origin", "http://localhost:4040")],
    ))
    .await;
    assert_eq!(
        status, 403,
        "another loopback origin is still another origin"
    );
    // Same origin passes the guard (then: no replayer configured).
    let (status, body) = call(write(
        "POST",
        "/api/requests/1/replay",
        &[
            ("origin", "http://127.0.0.1:4040"),
            ("sec-fetch-site", "same-origin"),
        ],
    ))
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("replay is not available"), "{body}");
    // No Origin, no Sec-Fetch-Site (curl, the CLI): passes.
    assert_eq!(call(write("DELETE", "/api/requests", &[])).await.0, 204);
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}
