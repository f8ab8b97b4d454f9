//! Forwarding the edge's decisions to the coordination server, so that a funnel's owner
//! sees why a delivery was refused (`postern funnel log`, and the denials in the owner's
//! request inspection).
//!
//! [`EdgeLogForwarder`] is an [`AuditSink`] wrapped around the ingress's own sink: every
//! record goes to the inner sink as before, and each record of a funnel the coordination
//! server opened (it has an owner) is also put, as an [`EdgeDecision`], on a bounded queue.
//! A task drains the queue in batches of at most [`MAX_EDGE_BATCH`] decisions and reports
//! them through the embedded node's control client ([`EdgeReporter`]). A decision after a
//! quiet spell goes at once, so its owner sees it within milliseconds; decisions that come
//! within [`FLUSH_DELAY`] of the last batch are gathered until then, so steady traffic
//! makes at most four batches a second, and only a flood that fills batches makes more
//! (full ones go at once).
//!
//! The request path never waits: `record` only tries to queue. When the queue is full (the
//! coord is slow or unreachable) the record is dropped, counted ([`EdgeLogForwarder::dropped`])
//! and the first drop is logged. A batch the coord could not be asked about is retried a few
//! times, then dropped and counted too. A coord that never acknowledges a batch and drops
//! the connection on each (one older than this message) turns forwarding off, with one
//! warning, so the ingress does not make its control connection flap.
//!
//! Records carry no headers, bodies or query strings, so no secret reaches the coord.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use postern_node::control::ClientError;
use postern_node::daemon::NodeHandle;
use postern_proto::funnel::{EdgeDecision, EdgeDecisionAck, MAX_EDGE_BATCH};
use tokio::sync::mpsc;

use crate::audit::{AuditRecord, AuditSink, ConnectionRecord};

/// How many decisions wait for the coord at most; more are dropped: 4096.
pub const QUEUE_CAPACITY: usize = 4096;

/// How long after a batch the next one gathers: a decision that comes sooner after the
/// last batch waits (with any others) until then, unless the batch fills up; one that
/// comes later goes at once.
pub const FLUSH_DELAY: Duration = Duration::from_millis(250);

/// How often a batch is tried before it is dropped.
const ATTEMPTS: u32 = 3;

/// After how many unacknowledged batches in a row (with no acknowledgement ever) the
/// coord is taken to be one that does not know edge decisions.
const UNSUPPORTED_AFTER: u32 = 3;

/// A future returned by [`EdgeReporter::report`].
pub type ReportFuture<'a> =
    Pin<Box<dyn Future<Output = Result<EdgeDecisionAck, ClientError>> + Send + 'a>>;

/// Where batches of decisions go: the embedded node's control client, or a test double.
pub trait EdgeReporter: Send + Sync + std::fmt::Debug + 'static {
    /// Reports `decisions` and waits for the coord's acknowledgement.
    fn report(&self, decisions: Vec<EdgeDecision>) -> ReportFuture<'_>;
}

impl EdgeReporter for NodeHandle {
    fn report(&self, decisions: Vec<EdgeDecision>) -> ReportFuture<'_> {
        Box::pin(self.report_edge_decisions(decisions))
    }
}

/// The audit sink that also forwards decisions to the coord; see the [module docs](self).
#[derive(Debug)]
pub struct EdgeLogForwarder {
    inner: Arc<dyn AuditSink>,
    queue: mpsc::Sender<EdgeDecision>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    warned: AtomicBool,
    forwarded: AtomicU64,
}

impl EdgeLogForwarder {
    /// Wraps `inner` and starts the task that reports to `reporter` (on the current tokio
    /// runtime). The task ends when the forwarder is dropped.
    pub fn start(inner: Arc<dyn AuditSink>, reporter: Arc<dyn EdgeReporter>) -> Arc<Self> {
        Self::with_capacity(inner, reporter, QUEUE_CAPACITY)
    }

    /// Like [`Self::start`] with a queue of `capacity` decisions (tests use small ones).
    pub fn with_capacity(
        inner: Arc<dyn AuditSink>,
        reporter: Arc<dyn EdgeReporter>,
        capacity: usize,
    ) -> Arc<Self> {
        Self::with_settings(inner, reporter, capacity, FLUSH_DELAY)
    }

    /// Like [`Self::with_capacity`], gathering for `flush_delay` after a batch instead of
    /// [`FLUSH_DELAY`] (tests use long ones, to see what waits for the next batch).
    pub fn with_settings(
        inner: Arc<dyn AuditSink>,
        reporter: Arc<dyn EdgeReporter>,
        capacity: usize,
        flush_delay: Duration,
    ) -> Arc<Self> {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        tokio::spawn(drain(
            receiver,
            reporter,
            Arc::clone(&counters),
            flush_delay,
        ));
        Arc::new(Self {
            inner,
            queue,
            counters,
        })
    }

    /// Decisions dropped so far: the queue was full, or the coord could not take a batch.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Decisions the coord acknowledged so far (stored or dropped by it).
    pub fn forwarded(&self) -> u64 {
        self.counters.forwarded.load(Ordering::Relaxed)
    }

    fn forward(&self, decision: EdgeDecision) {
        if self.queue.try_send(decision).is_err() {
            self.counters
                .drop_some(1, "the queue to the coordination server is full");
        }
    }
}

impl AuditSink for EdgeLogForwarder {
    fn record(&self, record: &AuditRecord) {
        self.inner.record(record);
        if let Some(decision) = decision_of(record) {
            self.forward(decision);
        }
    }

    fn record_connection(&self, record: &ConnectionRecord) {
        self.inner.record_connection(record);
        if let Some(decision) = decision_of_connection(record) {
            self.forward(decision);
        }
    }
    fn flush(&self) {
        self.inner.flush();
    }
}

impl Counters {
    fn drop_some(&self, count: u64, why: &str) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                why,
                "dropping edge decisions meant for the coordination server (`postern funnel log` will miss them); further drops are counted, not logged"
            );
        }
    }
}

/// The decision to forward for an audit record, if it belongs to a funnel the coord
/// opened (one with an owner).
pub fn decision_of(record: &AuditRecord) -> Option<EdgeDecision> {
    record.owner.as_ref()?;
    let funnel = record.funnel.clone()?;
    Some(EdgeDecision {
        id: 0,
        at_ms: unix_ms(&record.time),
        funnel,
        client: record.client.clone(),
        method: record.method.clone(),
        path: record.path.clone(),
        gate: record.gate.clone(),
        result: record.result.to_owned(),
        reason: record.reason.clone(),
        status: record.status,
        bytes: record.bytes,
        duration_ms: record.duration_ms,
    })
}

/// The decision to forward for a connection record: only TLS passthrough connections of
/// funnels the coord opened (a raw TCP funnel is named by its port, not a hostname).
fn decision_of_connection(record: &ConnectionRecord) -> Option<EdgeDecision> {
    record.owner.as_ref()?;
    if record.kind != "tls-passthrough" {
        return None;
    }
    let funnel = record.funnel.clone()?;
    Some(EdgeDecision {
        id: 0,
        at_ms: unix_ms(&record.time),
        funnel,
        client: record.client.clone(),
        method: "TLS".to_owned(),
        path: String::new(),
        gate: None,
        result: record.result.to_owned(),
        reason: Some(record.reason.clone()),
        status: 0,
        bytes: record.bytes_to_client,
        duration_ms: record.duration_ms,
    })
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (0 if it does not parse).
fn unix_ms(time: &str) -> i64 {
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        .unwrap_or(0)
}

/// The forwarding task: gather a batch, report it, repeat until the queue closes.
async fn drain(
    mut receiver: mpsc::Receiver<EdgeDecision>,
    reporter: Arc<dyn EdgeReporter>,
    counters: Arc<Counters>,
    flush_delay: Duration,
) {
    let mut ever_acknowledged = false;
    let mut unacknowledged_in_a_row = 0u32;
    let mut last_batch: Option<tokio::time::Instant> = None;
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        // Leading edge: after a quiet spell the batch goes at once with what is queued;
        // within `flush_delay` of the last one, it gathers until then.
        let deadline = last_batch.map_or_else(tokio::time::Instant::now, |last| last + flush_delay);
        while batch.len() < MAX_EDGE_BATCH {
            match receiver.try_recv() {
                Ok(decision) => {
                    batch.push(decision);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(decision)) => batch.push(decision),
                Ok(None) | Err(_) => break,
            }
        }
        last_batch = Some(tokio::time::Instant::now());
        let count = batch.len() as u64;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match reporter.report(batch.clone()).await {
                Ok(ack) => {
                    ever_acknowledged = true;
                    unacknowledged_in_a_row = 0;
                    counters.forwarded.fetch_add(count, Ordering::Relaxed);
                    if let Some(refusal) = &ack.refusal {
                        tracing::warn!(code = %refusal.code, message = %refusal.message, "the coordination server refused the edge's decisions");
                    } else if ack.dropped > 0 {
                        tracing::debug!(
                            dropped = ack.dropped,
                            "the coordination server dropped decisions of funnels it no longer routes here"
                        );
                    }
                    break;
                }
                Err(ClientError::Stopped) => {
                    counters.drop_some(count, "the embedded node stopped");
                    break;
                }
                Err(err) => {
                    if matches!(err, ClientError::ConnectionLost | ClientError::Timeout(_)) {
                        unacknowledged_in_a_row += 1;
                    }
                    if !ever_acknowledged && unacknowledged_in_a_row >= UNSUPPORTED_AFTER {
                        tracing::warn!(
                            "the coordination server never acknowledged the edge's decisions and drops the connection on them (is it older than this ingress?); no longer forwarding them"
                        );
                        counters.drop_some(count, "the coordination server does not take them");
                        // Keep the queue drained so `record` never finds it full for long.
                        while receiver.recv().await.is_some() {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                    if attempt >= ATTEMPTS {
                        tracing::debug!(%err, "giving up on a batch of edge decisions");
                        counters.drop_some(count, "the coordination server could not be reached");
                        break;
                    }
                    tracing::debug!(%err, attempt, "cannot report edge decisions yet; retrying");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Recorded(Mutex<Vec<AuditRecord>>);
    impl AuditSink for Recorded {
        fn record(&self, record: &AuditRecord) {
            self.0.lock().unwrap().push(record.clone());
        }
    }

    /// Answers each batch after `gate` lets it, recording what it got.
    #[derive(Debug)]
    struct FakeCoord {
        batches: Mutex<Vec<Vec<EdgeDecision>>>,
        gate: tokio::sync::Semaphore,
        fail_with: Mutex<Option<fn() -> ClientError>>,
    }

    impl FakeCoord {
        fn new(open: bool) -> Arc<Self> {
            Arc::new(Self {
                batches: Mutex::new(Vec::new()),
                gate: tokio::sync::Semaphore::new(if open {
                    tokio::sync::Semaphore::MAX_PERMITS
                } else {
                    0
                }),
                fail_with: Mutex::new(None),
            })
        }
    }

    impl EdgeReporter for FakeCoord {
        fn report(&self, decisions: Vec<EdgeDecision>) -> ReportFuture<'_> {
            Box::pin(async move {
                let count = decisions.len();
                self.batches.lock().unwrap().push(decisions);
                let permit = self.gate.acquire().await.unwrap();
                permit.forget();
                if let Some(fail) = *self.fail_with.lock().unwrap() {
                    return Err(fail());
                }
                Ok(EdgeDecisionAck {
                    batch_id: 1,
                    stored: u32::try_from(count).unwrap(),
                    dropped: 0,
                    refusal: None,
                })
            })
        }
    }

    fn record(owner: Option<&str>, result: &'static str) -> AuditRecord {
        AuditRecord {
            time: "2026-11-29T08:00:00.250Z".into(),
            funnel: Some("hooks.funnel.example".into()),
            owner: owner.map(str::to_owned),
            node: Some("laptop".into()),
            client: "203.0.113.7:5000".into(),
            method: "POST".into(),
            path: "/hook".into(),
            gate: Some("webhook:github".into()),
            result,
            reason: (result == "deny").then(|| "signature_mismatch".into()),
            status: if result == "deny" { 401 } else { 200 },
            bytes: 18,
            duration_ms: 2,
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn records_of_coord_funnels_become_decisions_without_secrets() {
        let decision = decision_of(&record(Some("alice@example.com"), "deny")).unwrap();
        assert_eq!(decision.funnel, "hooks.funnel.example");
        assert_eq!(decision.at_ms, 1_795_939_200_250);
        assert_eq!(decision.reason.as_deref(), Some("signature_mismatch"));
        assert_eq!(decision.gate.as_deref(), Some("webhook:github"));
        assert!(decision.is_denied());
        // Funnels of the configuration file have no owner: nothing to forward.
        assert_eq!(decision_of(&record(None, "deny")), None);
        let mut unknown_host = record(Some("alice@example.com"), "deny");
        unknown_host.funnel = None;
        assert_eq!(decision_of(&unknown_host), None);
        assert_eq!(unix_ms("not a time"), 0);
    }

    #[tokio::test]
    async fn decisions_reach_the_coord_in_batches_and_the_inner_sink_sees_everything() {
        let inner = Arc::new(Recorded::default());
        let coord = FakeCoord::new(true);
        let forwarder = EdgeLogForwarder::start(inner.clone(), coord.clone());
        for _ in 0..5 {
            forwarder.record(&record(Some("alice@example.com"), "deny"));
        }
        forwarder.record(&record(None, "allow"));
        assert_eq!(inner.0.lock().unwrap().len(), 6);
        wait_for("the forwarded decisions", || forwarder.forwarded() == 5).await;
        let batches = coord.batches.lock().unwrap();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 5);
        assert!(batches.len() <= 2, "batched, not one by one: {batches:?}");
        assert_eq!(forwarder.dropped(), 0);
    }

    #[tokio::test]
    async fn a_lone_decision_goes_at_once_and_those_right_after_it_wait_for_the_next_batch() {
        let inner = Arc::new(Recorded::default());
        let coord = FakeCoord::new(true);
        // An hour between batches: what must wait cannot go by chance in this test.
        let hour = Duration::from_secs(3600);
        let forwarder = EdgeLogForwarder::with_settings(inner, coord.clone(), 16, hour);
        let batches = || coord.batches.lock().unwrap().clone();
        forwarder.record(&record(Some("alice@example.com"), "deny"));
        wait_for("the lone decision, not held for the batch delay", || {
            batches().len() == 1
        })
        .await;
        wait_for("its acknowledgement", || forwarder.forwarded() == 1).await;
        // Decisions right after a batch are gathered for the next one.
        for _ in 0..3 {
            forwarder.record(&record(Some("alice@example.com"), "deny"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(batches().len(), 1, "gathered, not sent one by one");
        // Closing the queue sends what was gathered.
        drop(forwarder);
        wait_for("the gathered batch", || batches().len() == 2).await;
        assert_eq!(batches()[1].len(), 3);
    }

    #[tokio::test]
    async fn a_stuck_coord_never_blocks_recording_and_drops_are_counted() {
        let inner = Arc::new(Recorded::default());
        let coord = FakeCoord::new(false);
        let forwarder = EdgeLogForwarder::with_capacity(inner.clone(), coord.clone(), 4);
        // The coord never answers: the first batch hangs in `report`, the queue fills.
        forwarder.record(&record(Some("a@example.com"), "deny"));
        wait_for("the first batch to be sent", || {
            coord.batches.lock().unwrap().len() == 1
        })
        .await;
        for _ in 0..10 {
            forwarder.record(&record(Some("a@example.com"), "deny"));
        }
        assert_eq!(
            inner.0.lock().unwrap().len(),
            11,
            "every record reached the inner sink"
        );
        assert_eq!(forwarder.dropped(), 6, "4 queued, 6 dropped");
        // The ingress's /metrics shows the drops.
        let metrics = crate::metrics::EdgeMetrics::new().with_edge_log(Arc::clone(&forwarder));
        let scraped = metrics.encode();
        assert!(
            scraped.contains("postern_ingress_edge_log_dropped_total 6\n"),
            "{scraped}"
        );
        assert!(
            scraped.contains("postern_ingress_edge_log_forwarded_total 0\n"),
            "{scraped}"
        );
        // Let the coord answer: the queued ones go through.
        coord.gate.add_permits(10);
        wait_for("the queued decisions", || forwarder.forwarded() == 5).await;
        let scraped = metrics.encode();
        assert!(
            scraped.contains("postern_ingress_edge_log_forwarded_total 5\n")
                && scraped.contains("postern_ingress_edge_log_dropped_total 6\n"),
            "a second scrape adds only what changed: {scraped}"
        );
    }

    #[tokio::test]
    async fn a_coord_that_never_acknowledges_turns_forwarding_off() {
        let inner = Arc::new(Recorded::default());
        let coord = FakeCoord::new(true);
        *coord.fail_with.lock().unwrap() = Some(|| ClientError::ConnectionLost);
        let forwarder = EdgeLogForwarder::start(inner.clone(), coord.clone());
        forwarder.record(&record(Some("a@example.com"), "deny"));
        wait_for("the forwarder to give up", || forwarder.dropped() == 1).await;
        let tries = coord.batches.lock().unwrap().len();
        assert_eq!(tries, 3);
        forwarder.record(&record(Some("a@example.com"), "deny"));
        wait_for("the next one to be dropped", || forwarder.dropped() == 2).await;
        assert_eq!(
            coord.batches.lock().unwrap().len(),
            tries,
            "no more batches sent"
        );
    }
}
