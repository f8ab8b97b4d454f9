//! The audit trail: one record per request decision, written as one JSON line.
//!
//! The edge calls [`AuditSink::record`] once per request, when the response is over (so
//! `bytes` and `duration_ms` are final). [`JsonLinesSink`] writes to a file or stdout; the
//! coordination server's sink will implement the same trait.

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

/// One request decision. Field names are the JSON keys (see `docs/ingress.md`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// When the request arrived, RFC 3339 UTC.
    pub time: String,
    /// The funnel's hostname, or `null` for an unknown host.
    pub funnel: Option<String>,
    /// The funnel owner's login (funnels from the coordination server; `null` for
    /// funnels of the configuration file and unknown hosts).
    pub owner: Option<String>,
    /// The node the funnel leads to (its name in the netmap), as `owner`.
    pub node: Option<String>,
    /// The client's address (`ip:port`).
    pub client: String,
    /// The request method.
    pub method: String,
    /// The request path (no query string: it may carry secrets).
    pub path: String,
    /// The gate that decided (`webhook:github`, `edge` for limits, `null` when none ran).
    pub gate: Option<String>,
    /// `allow`, `deny`, `respond`, `error` (the target could not be reached), or
    /// `expire` (a funnel from the coordination server reached its expiry and stopped;
    /// method `-`, status 0).
    pub result: &'static str,
    /// The reason code of a denial or error, e.g. `signature_mismatch`.
    pub reason: Option<String>,
    /// The status sent to the client.
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// Milliseconds from the request's arrival to the end of its response.
    pub duration_ms: u64,
}

/// One connection of a TCP funnel or a TLS passthrough funnel (or a connection the TLS
/// port refused before any request), written when the connection ends. Field names are the
/// JSON keys (see `docs/ingress.md`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// When the connection was accepted, RFC 3339 UTC.
    pub time: String,
    /// `tcp` (a raw TCP funnel), `tls-passthrough`, or `tls` (the TLS port itself).
    pub kind: &'static str,
    /// The funnel: `tcp:PORT` for a TCP funnel, the hostname for passthrough, `null` when
    /// none was chosen.
    pub funnel: Option<String>,
    /// The funnel owner's login (funnels from the coordination server), else `null`.
    pub owner: Option<String>,
    /// The node the funnel leads to (its name in the netmap), else `null`.
    pub node: Option<String>,
    /// The client's address (`ip:port`).
    pub client: String,
    /// `allow` (bytes were piped), `deny` (refused by a limit or an unknown name) or
    /// `error` (the target could not be reached).
    pub result: &'static str,
    /// How it ended or why it was refused: `closed`, `idle_timeout`, `total_timeout`,
    /// `io_error`, `too_many_connections`, `unknown_sni`, `upstream_unreachable`, ...
    pub reason: String,
    /// Bytes received from the client and sent on to the target.
    pub bytes_from_client: u64,
    /// Bytes received from the target and sent on to the client.
    pub bytes_to_client: u64,
    /// Milliseconds from accept to close.
    pub duration_ms: u64,
}

/// Where audit records go. Implementations must not block for long: `record` is called on
/// the request path.
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Stores one record. Failures are the sink's to report (logging); the request goes on.
    fn record(&self, record: &AuditRecord);

    /// Stores one connection record (TCP and passthrough funnels). The default folds it
    /// into an [`AuditRecord`] (method `TCP`/`TLS`, `bytes` = bytes to the client) so that
    /// sinks written before connection records lose nothing but the byte count from the
    /// client; [`JsonLinesSink`] writes the full record.
    fn record_connection(&self, record: &ConnectionRecord) {
        self.record(&AuditRecord {
            time: record.time.clone(),
            funnel: record.funnel.clone(),
            owner: record.owner.clone(),
            node: record.node.clone(),
            client: record.client.clone(),
            method: record.kind.to_ascii_uppercase(),
            path: String::new(),
            gate: None,
            result: record.result,
            reason: Some(record.reason.clone()),
            status: 0,
            bytes: record.bytes_to_client,
            duration_ms: record.duration_ms,
        });
    }
}

/// Writes each record as one JSON line to a writer (a file opened for append, or stdout).
pub struct JsonLinesSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for JsonLinesSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonLinesSink")
    }
}

impl JsonLinesSink {
    /// A sink writing to `out`; each line is flushed as it is written.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }

    /// A sink appending to the file at `path` (created with mode 0640 if absent).
    pub fn append_to(path: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)?;
        Ok(Self::new(Box::new(file)))
    }
}

impl AuditSink for JsonLinesSink {
    fn record(&self, record: &AuditRecord) {
        self.write_line(serde_json::to_vec(record));
    }

    fn record_connection(&self, record: &ConnectionRecord) {
        self.write_line(serde_json::to_vec(record));
    }
}

impl JsonLinesSink {
    fn write_line(&self, line: serde_json::Result<Vec<u8>>) {
        let Ok(mut line) = line else {
            return;
        };
        line.push(b'\n');
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(error) = out.write_all(&line).and_then(|()| out.flush()) {
            tracing::warn!(%error, "could not write an audit record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_json_line_per_record() {
        let buffer = Shared::default();
        let sink = JsonLinesSink::new(Box::new(buffer.clone()));
        let record = AuditRecord {
            time: "2026-11-29T08:00:00Z".into(),
            funnel: Some("hooks.example".into()),
            owner: Some("alice@example.com".into()),
            node: Some("laptop".into()),
            client: "203.0.113.7:5000".into(),
            method: "POST".into(),
            path: "/hook".into(),
            gate: Some("webhook:github".into()),
            result: "deny",
            reason: Some("signature_mismatch".into()),
            status: 403,
            bytes: 18,
            duration_ms: 2,
        };
        sink.record(&record);
        sink.record(&record);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let value: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(value["reason"], "signature_mismatch");
        assert_eq!(value["status"], 403);
        assert_eq!(value["funnel"], "hooks.example");
        assert_eq!(value["owner"], "alice@example.com");
        assert_eq!(value["node"], "laptop");
    }
}
