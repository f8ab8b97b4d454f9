//! The audit trail: one record per request decision, written as one JSON line.
//!
//! The edge calls [`AuditSink::record`] once per request, when the response is over (so
//! `bytes` and `duration_ms` are final). [`JsonLinesSink`] writes to a file or stdout; the
//! coordination server's sink will implement the same trait.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

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

    /// Returns once every record given to this sink before the call is stored (written
    /// and flushed, or handed on). Call it at shutdown; the default does nothing, for sinks
    /// that store each record before `record` returns.
    fn flush(&self) {}
}

/// Writes each record as one JSON line to a writer (a file opened for append, or stdout).
///
/// The request path only serializes the record and hands the line to a queue; one writer
/// thread, owned by the sink, writes what the queue holds, flushes whenever the queue runs
/// empty, and then lets the next lines gather for a couple of milliseconds. So a request
/// never waits on a lock shared with the other workers nor on the disk, a busy edge does
/// not wake the writer for every line, and under load many lines go out in one `write`. Nothing is dropped: when the queue
/// is full ([`Self::QUEUE_LINES`] lines, a disk that stalls), `record` waits for room.
/// [`AuditSink::flush`] waits until every line recorded before it is written, and dropping
/// the sink writes what is queued and then stops the thread.
pub struct JsonLinesSink {
    queue: Option<SyncSender<WriterMessage>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// What the writer thread is asked to do.
enum WriterMessage {
    /// Write this line (it ends with `\n`).
    Line(Vec<u8>),
    /// Write and flush everything before this, then answer.
    Flush(SyncSender<()>),
}

impl std::fmt::Debug for JsonLinesSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonLinesSink")
    }
}

impl JsonLinesSink {
    /// How many lines may wait for the writer thread before `record` waits for room.
    pub const QUEUE_LINES: usize = 65_536;

    /// A sink writing to `out` from its own thread; see the [type docs](Self).
    ///
    /// # Errors
    /// The operating system refused to start the writer thread.
    pub fn new(out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        Self::with_queue(out, Self::QUEUE_LINES)
    }

    /// Like [`Self::new`] with room for `lines` queued lines (at least one; tests use few).
    ///
    /// # Errors
    /// The operating system refused to start the writer thread.
    pub fn with_queue(out: Box<dyn Write + Send>, lines: usize) -> std::io::Result<Self> {
        let (queue, lines) = sync_channel(lines.max(1));
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_lines(&lines, out))?;
        Ok(Self {
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// A sink appending to the file at `path` (created with mode 0640 if absent).
    ///
    /// # Errors
    /// The file cannot be opened for appending, or the writer thread cannot start.
    pub fn append_to(path: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)?;
        Self::new(Box::new(file))
    }
}

impl AuditSink for JsonLinesSink {
    fn record(&self, record: &AuditRecord) {
        self.queue_line(serde_json::to_vec(record));
    }

    fn record_connection(&self, record: &ConnectionRecord) {
        self.queue_line(serde_json::to_vec(record));
    }

    fn flush(&self) {
        let Some(queue) = &self.queue else {
            return;
        };
        let (done, written) = sync_channel(1);
        if queue.send(WriterMessage::Flush(done)).is_ok() {
            let _ = written.recv();
        }
    }
}

impl JsonLinesSink {
    fn queue_line(&self, line: serde_json::Result<Vec<u8>>) {
        let Ok(mut line) = line else {
            return;
        };
        line.push(b'\n');
        let sent = self
            .queue
            .as_ref()
            .is_some_and(|queue| queue.send(WriterMessage::Line(line)).is_ok());
        if !sent {
            tracing::warn!("could not write an audit record: the audit writer has stopped");
        }
    }
}

impl Drop for JsonLinesSink {
    fn drop(&mut self) {
        // Closing the queue lets the writer write what is left, flush and end.
        drop(self.queue.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::warn!("the audit writer thread panicked");
        }
    }
}

/// How long the writer thread lets the next lines gather after it wrote a batch, before
/// it looks at the queue again.
///
/// Waiting on the queue at once would put the writer to sleep after every batch, and a
/// sleeping writer must be woken by the next `record`: a futex wake-up and two context
/// switches per request on a busy edge, 14 % of the ingress's time in a profile of the
/// funnel benchmark. While the writer lingers, `record` finds no one to wake and only
/// queues its line; one wake-up and one `write` then serve all the lines of an interval.
/// A quiet log is still on disk within this interval of its last line.
const GATHER_LINES_FOR: Duration = Duration::from_millis(2);

/// The writer thread: writes lines as they come, in one buffered write for all that are
/// queued, flushes when the queue is empty (so a quiet log is always on disk), and then
/// lets the next lines gather for [`GATHER_LINES_FOR`].
fn write_lines(lines: &Receiver<WriterMessage>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut failing = false;
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                WriterMessage::Line(line) => {
                    report(&mut failing, out.write_all(&line));
                }
                WriterMessage::Flush(done) => {
                    report(&mut failing, out.flush());
                    let _ = done.send(());
                }
            }
            next = lines.try_recv().ok();
        }
        report(&mut failing, out.flush());
        std::thread::sleep(GATHER_LINES_FOR);
    }
    report(&mut failing, out.flush());
}

/// Logs the first failure of a run of failures (a full disk fails every write).
fn report(failing: &mut bool, result: std::io::Result<()>) {
    match result {
        Ok(()) => *failing = false,
        Err(error) => {
            if !*failing {
                tracing::warn!(%error, "could not write an audit record");
            }
            *failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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
        let sink = JsonLinesSink::new(Box::new(buffer.clone())).unwrap();
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
        sink.flush();
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

    fn record(n: u64) -> AuditRecord {
        AuditRecord {
            time: "2026-11-30T03:00:00Z".into(),
            funnel: Some("hooks.example".into()),
            owner: None,
            node: None,
            client: "203.0.113.7:5000".into(),
            method: "GET".into(),
            path: format!("/{n}"),
            gate: None,
            result: "allow",
            reason: None,
            status: 200,
            bytes: n,
            duration_ms: 0,
        }
    }

    fn written(buffer: &Shared) -> Vec<serde_json::Value> {
        String::from_utf8(buffer.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn records_from_many_threads_are_all_written_whole_by_drop() {
        let buffer = Shared::default();
        let sink = Arc::new(JsonLinesSink::with_queue(Box::new(buffer.clone()), 16).unwrap());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    for i in 0..500 {
                        sink.record(&record(t * 1000 + i));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(sink);
        let mut seen: Vec<u64> = written(&buffer)
            .iter()
            .map(|r| r["bytes"].as_u64().unwrap())
            .collect();
        seen.sort_unstable();
        let expected: Vec<u64> = (0..4u64)
            .flat_map(|t| (0..500).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(seen, expected);
    }

    /// A writer that blocks until the test opens its gate: the disk stalls.
    struct Stalled {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        out: Shared,
    }
    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
            self.out.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_makes_record_wait_and_loses_nothing() {
        let buffer = Shared::default();
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let stalled = Stalled {
            gate: Arc::clone(&gate),
            out: buffer.clone(),
        };
        let sink = Arc::new(JsonLinesSink::with_queue(Box::new(stalled), 2).unwrap());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let producer = {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || {
                for i in 0..100 {
                    sink.record(&record(i));
                }
                done_tx.send(()).unwrap();
            })
        };
        // The writer is stuck on the first line and the queue holds two: the producer
        // cannot have finished its hundred records.
        assert!(
            done_rx
                .recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "record returned although the queue was full"
        );
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        producer.join().unwrap();
        sink.flush();
        let bytes: Vec<u64> = written(&buffer)
            .iter()
            .map(|r| r["bytes"].as_u64().unwrap())
            .collect();
        assert_eq!(bytes, (0..100).collect::<Vec<_>>(), "in order, none lost");
    }

    /// A writer whose first `failures` writes fail (a disk that was full for a moment).
    struct Flaky {
        failures: usize,
        out: Shared,
    }
    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(std::io::Error::other("no space left on device"));
            }
            self.out.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_that_failed_to_write_are_written_once_the_writer_recovers() {
        let buffer = Shared::default();
        let flaky = Flaky {
            failures: 3,
            out: buffer.clone(),
        };
        let sink = JsonLinesSink::with_queue(Box::new(flaky), 4).unwrap();
        for i in 0..100 {
            sink.record(&record(i));
            if i % 10 == 0 {
                sink.flush();
            }
        }
        drop(sink);
        let bytes: Vec<u64> = written(&buffer)
            .iter()
            .map(|r| r["bytes"].as_u64().unwrap())
            .collect();
        assert_eq!(bytes, (0..100).collect::<Vec<_>>(), "in order, none lost");
    }
}
