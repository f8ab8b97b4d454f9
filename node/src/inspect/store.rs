//! The capture store: a ring buffer of [`Entry`]s bounded by total bytes, optionally
//! persisted to an append-only file, with a broadcast of every change for live views.
//!
//! Recording is synchronous and quick (a mutex, a push, maybe an appended line), so it can
//! be called from a body's `Drop` or any task. When the budget
//! ([`CaptureConfig::max_total_bytes`]) is exceeded, the oldest entries are evicted; the
//! newest entry is always kept, even if it alone is over budget.
//!
//! Persistence: with [`CaptureConfig::persist_path`] set, each recorded entry is appended to
//! that file as one JSON line, and [`CaptureStore::open`] reloads the file on start. Lines
//! that do not parse are skipped with a warning (a crash mid-write leaves at most one bad
//! line). The file is rewritten from memory when it grows past twice the budget, and
//! truncated by [`CaptureStore::clear`].

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::exchange::{DeniedDelivery, Entry, EntrySummary, Exchange};

/// Default budget for all captured entries together: 100 MB.
pub const DEFAULT_MAX_TOTAL_BYTES: usize = 100 * 1000 * 1000;

/// Default cap on each captured body: 1 MiB. Bytes past it are passed on but not kept.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// How a [`CaptureStore`] is bounded and where it persists.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The budget for all entries together ([`Entry::footprint`]); oldest evicted first.
    pub max_total_bytes: usize,
    /// The cap on each captured request or response body.
    pub max_body_bytes: usize,
    /// A file (usually `STATE_DIR/inspect.jsonl`) to append entries to and reload from;
    /// `None` keeps captures in memory only.
    pub persist_path: Option<PathBuf>,
}

impl Default for CaptureConfig {
    /// 100 MB in total, 1 MiB per body, in memory only.
    fn default() -> Self {
        Self {
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            persist_path: None,
        }
    }
}

/// Why a capture store could not open its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The persistence file could not be read or created; check the state dir's
    /// permissions, or run without persistence.
    #[error("cannot use the capture file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A change to the store, broadcast to live views ([`CaptureStore::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StoreEvent {
    /// A new entry was recorded.
    Added(Box<EntrySummary>),
    /// Everything was cleared.
    Cleared,
}

/// Which entries [`CaptureStore::list`] returns. Every field that is set must match.
/// Also the query string of `GET /api/requests` (see `docs/inspect.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryFilter {
    /// The path contains this text (case-sensitive).
    pub path: Option<String>,
    /// The method is this (case-insensitive).
    pub method: Option<String>,
    /// The status is this code (`404`) or class (`4xx`).
    pub status: Option<String>,
    /// A request or response header: `name` (present) or `name: text` (its value contains
    /// text). Names are case-insensitive.
    pub header: Option<String>,
    /// At least this many milliseconds.
    pub min_duration_ms: Option<u64>,
    /// At most this many milliseconds.
    pub max_duration_ms: Option<u64>,
    /// `exchange` or `denied`.
    pub kind: Option<String>,
    /// `funnel`, `serve` or `replay`.
    pub source: Option<String>,
    /// At most this many entries, newest first (default: all).
    pub limit: Option<usize>,
}

/// Something that stores finished exchanges: the [`CaptureStore`], or a test double. The
/// [`CapturingProxy`](super::CapturingProxy) and the serve proxy's capture observer call it
/// once per exchange, when the response has ended (or failed).
pub trait ExchangeRecorder: Send + Sync + std::fmt::Debug {
    /// Stores one exchange and returns the id it got. Must not block for long: it is called
    /// from the request path (a body's end or drop).
    fn record(&self, exchange: Exchange) -> u64;

    /// How many bytes of each body to keep; bytes past it are passed on but not captured.
    fn max_body_bytes(&self) -> usize;
}

/// The ring buffer of captured entries. Share it as `Arc<CaptureStore>`.
#[derive(Debug)]
pub struct CaptureStore {
    config: CaptureConfig,
    inner: Mutex<Ring>,
    events: broadcast::Sender<StoreEvent>,
}

impl CaptureStore {
    /// An in-memory store with `config`'s bounds, ignoring `persist_path`. Use
    /// [`CaptureStore::open`] to persist.
    pub fn in_memory(mut config: CaptureConfig) -> Arc<Self> {
        config.persist_path = None;
        Self::build(config, Ring::default())
    }

    /// A store that reloads `config.persist_path` (if set and present) and appends to it.
    /// Unreadable lines are skipped with a warning; entries beyond the budget are dropped
    /// (oldest first) and the file is compacted if it has grown past twice the budget.
    ///
    /// Fails if the file exists but cannot be read, or cannot be created or opened for
    /// appending.
    pub fn open(config: CaptureConfig) -> Result<Arc<Self>, CaptureError> {
        let mut ring = Ring::default();
        if let Some(path) = config.persist_path.clone() {
            let file_error = |source| CaptureError::File {
                path: path.clone(),
                source,
            };
            let loaded = load_file(&path).map_err(file_error)?;
            for entry in loaded.entries {
                ring.next_id = ring.next_id.max(entry.id().saturating_add(1));
                ring.push(entry, config.max_total_bytes);
            }
            ring.file_bytes = loaded.bytes;
            if ring.file_bytes > config.max_total_bytes.saturating_mul(2) || loaded.skipped > 0 {
                ring.rewrite_file(&path).map_err(file_error)?;
            }
            ring.file = Some(open_append(&path).map_err(file_error)?);
        }
        Ok(Self::build(config, ring))
    }

    fn build(config: CaptureConfig, mut ring: Ring) -> Arc<Self> {
        ring.next_id = ring.next_id.max(1);
        let (events, _) = broadcast::channel(256);
        Arc::new(Self {
            config,
            inner: Mutex::new(ring),
            events,
        })
    }

    /// The bounds this store was opened with.
    pub fn config(&self) -> &CaptureConfig {
        &self.config
    }

    /// Records a denial from the ingress audit and returns its id.
    pub fn record_denied(&self, denied: DeniedDelivery) -> u64 {
        self.add(Entry::Denied(denied))
    }

    /// Records an entry of either kind (its id is replaced) and returns its id.
    pub fn add(&self, mut entry: Entry) -> u64 {
        let (id, summary) = {
            let mut ring = self.lock();
            let id = ring.next_id;
            ring.next_id = ring.next_id.saturating_add(1);
            entry.set_id(id);
            let summary = entry.summary();
            if let Some(path) = self.config.persist_path.as_deref() {
                ring.append_to_file(&entry, path, self.config.max_total_bytes);
            }
            ring.push(entry, self.config.max_total_bytes);
            (id, summary)
        };
        // Nobody listening is fine.
        let _ = self.events.send(StoreEvent::Added(Box::new(summary)));
        id
    }

    /// The entries matching `filter`, newest first.
    pub fn list(&self, filter: &EntryFilter) -> Vec<EntrySummary> {
        let ring = self.lock();
        ring.entries
            .iter()
            .rev()
            .filter(|(entry, _)| matches(entry, filter))
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|(entry, _)| entry.summary())
            .collect()
    }

    /// The largest `edge_id` of the denials held (pulled from the coord's edge log), if any.
    pub fn newest_edge_id(&self) -> Option<u64> {
        let ring = self.lock();
        ring.entries
            .iter()
            .filter_map(|(entry, _)| match entry {
                Entry::Denied(denied) => denied.edge_id,
                Entry::Exchange(_) => None,
            })
            .max()
    }

    /// The entry with this id, unmasked (mask with [`Entry::masked`] before showing), or
    /// `None` if it was never recorded, was evicted or cleared.
    pub fn get(&self, id: u64) -> Option<Entry> {
        let ring = self.lock();
        // Ids increase along the ring, so a binary search finds it.
        let index = ring
            .entries
            .binary_search_by_key(&id, |(entry, _)| entry.id())
            .ok()?;
        ring.entries.get(index).map(|(entry, _)| entry.clone())
    }

    /// Forgets every entry (and truncates the file). Ids keep increasing.
    pub fn clear(&self) {
        {
            let mut ring = self.lock();
            ring.entries.clear();
            ring.total_bytes = 0;
            if let Some(path) = self.config.persist_path.as_deref()
                && let Err(error) = ring.rewrite_file(path)
            {
                tracing::warn!(path = %path.display(), %error, "could not truncate the capture file");
            }
        }
        let _ = self.events.send(StoreEvent::Cleared);
    }

    /// A receiver of every later change. A receiver that falls more than 256 events behind
    /// gets `Lagged` and should re-read the list.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes held, as counted against the budget.
    pub fn total_bytes(&self) -> usize {
        self.lock().total_bytes
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ExchangeRecorder for CaptureStore {
    fn record(&self, exchange: Exchange) -> u64 {
        self.add(Entry::Exchange(exchange))
    }

    fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }
}

/// The entries, oldest first, with their footprints.
#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<(Entry, usize)>,
    total_bytes: usize,
    next_id: u64,
    file: Option<File>,
    file_bytes: usize,
}

impl Ring {
    fn push(&mut self, entry: Entry, budget: usize) {
        let size = entry.footprint();
        self.entries.push_back((entry, size));
        self.total_bytes = self.total_bytes.saturating_add(size);
        while self.total_bytes > budget && self.entries.len() > 1 {
            if let Some((_, evicted)) = self.entries.pop_front() {
                self.total_bytes = self.total_bytes.saturating_sub(evicted);
            }
        }
    }

    fn append_to_file(&mut self, entry: &Entry, path: &Path, budget: usize) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(error) => {
                tracing::warn!(%error, "could not encode a captured entry");
                return;
            }
        };
        line.push(b'\n');
        if let Err(error) = file.write_all(&line) {
            tracing::warn!(path = %path.display(), %error, "could not append to the capture file");
            return;
        }
        self.file_bytes = self.file_bytes.saturating_add(line.len());
        if self.file_bytes > budget.saturating_mul(2) {
            // The new entry is not in `entries` yet: push happens after. Rewrite at the
            // next append instead of losing it; simplest is to rewrite including it.
            self.entries.push_back((entry.clone(), 0));
            let result = self.rewrite_file(path);
            self.entries.pop_back();
            if let Err(error) = result {
                tracing::warn!(path = %path.display(), %error, "could not compact the capture file");
            }
        }
    }

    /// Replaces the file with the entries held now (write to a temporary, then rename).
    fn rewrite_file(&mut self, path: &Path) -> std::io::Result<()> {
        let temporary = path.with_extension("jsonl.tmp");
        let mut bytes = 0;
        {
            let mut out = std::io::BufWriter::new(create_private(&temporary)?);
            for (entry, _) in &self.entries {
                let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
                line.push(b'\n');
                out.write_all(&line)?;
                bytes += line.len();
            }
            out.flush()?;
        }
        std::fs::rename(&temporary, path)?;
        self.file_bytes = bytes;
        if self.file.is_some() {
            self.file = Some(open_append(path)?);
        }
        Ok(())
    }
}

struct Loaded {
    entries: Vec<Entry>,
    bytes: usize,
    skipped: usize,
}

/// Reads the persisted entries; a missing file is an empty store.
fn load_file(path: &Path) -> std::io::Result<Loaded> {
    let mut loaded = Loaded {
        entries: Vec::new(),
        bytes: 0,
        skipped: 0,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(loaded),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut number = 0usize;
    let mut last_id = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        number += 1;
        loaded.bytes += read;
        match parse_line(&line) {
            Ok(None) => {}
            Ok(Some(entry)) if entry.id() > last_id => {
                last_id = entry.id();
                loaded.entries.push(entry);
            }
            Ok(Some(entry)) => {
                loaded.skipped += 1;
                tracing::warn!(path = %path.display(), line = number, id = entry.id(), "skipping a captured entry whose id is not above the previous one");
            }
            Err(error) => {
                loaded.skipped += 1;
                tracing::warn!(path = %path.display(), line = number, %error, "skipping an unreadable line of the capture file");
            }
        }
    }
    Ok(loaded)
}

/// One line of the capture file: `Ok(None)` for a blank line.
///
/// Fails with serde's message (which says where in the line) if it is not an entry.
pub fn parse_line(line: &[u8]) -> Result<Option<Entry>, serde_json::Error> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(line).map(Some)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn matches(entry: &Entry, filter: &EntryFilter) -> bool {
    let summary = entry.summary();
    let set = |field: &Option<String>| field.clone().filter(|text| !text.is_empty());
    let source_name = summary
        .source
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_owned));
    set(&filter.path).is_none_or(|path| summary.path.contains(&path))
        && set(&filter.method).is_none_or(|m| summary.method.eq_ignore_ascii_case(&m))
        && set(&filter.status).is_none_or(|s| status_matches(summary.status, &s))
        && filter
            .min_duration_ms
            .is_none_or(|min| summary.duration_ms >= min)
        && filter
            .max_duration_ms
            .is_none_or(|max| summary.duration_ms <= max)
        && set(&filter.kind).is_none_or(|kind| summary.kind == kind)
        && set(&filter.source).is_none_or(|source| source_name.as_deref() == Some(&source))
        && set(&filter.header).is_none_or(|header| header_matches(entry, &header))
}

/// `name` (present) or `name: text` (present, value contains text), on the request or the
/// response; never for denials, which hold no headers.
fn header_matches(entry: &Entry, header: &str) -> bool {
    let (name, value) = match header.split_once(':') {
        Some((name, value)) => (name.trim(), Some(value.trim())),
        None => (header.trim(), None),
    };
    let Entry::Exchange(exchange) = entry else {
        return false;
    };
    let response = exchange
        .response
        .as_ref()
        .map_or(&[][..], |r| &r.headers[..]);
    exchange
        .request
        .headers
        .iter()
        .chain(response.iter())
        .any(|(n, v)| n.eq_ignore_ascii_case(name) && value.is_none_or(|text| v.contains(text)))
}

/// `404` matches 404; `4xx` (or `4XX`) matches 400..=499.
fn status_matches(status: Option<u16>, wanted: &str) -> bool {
    let Some(status) = status else {
        return false;
    };
    let wanted = wanted.trim().to_ascii_lowercase();
    if let Some(class) = wanted.strip_suffix("xx") {
        return class.parse::<u16>().is_ok_and(|c| status / 100 == c);
    }
    wanted.parse::<u16>().is_ok_and(|s| s == status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::exchange::{CapturedBody, CapturedRequest, CapturedResponse, Source};
    use bytes::Bytes;

    fn exchange(path: &str, status: u16, body: usize) -> Exchange {
        Exchange {
            id: 0,
            time: "2026-11-29T09:00:00.000Z".into(),
            source: Source::Funnel,
            replay_of: None,
            port: None,
            admission: None,
            request: CapturedRequest {
                method: "POST".into(),
                path: path.into(),
                version: "HTTP/1.1".into(),
                headers: vec![("x-github-event".into(), "push".into())],
                body: CapturedBody::whole(Bytes::from(vec![b'x'; body])),
            },
            response: Some(CapturedResponse {
                status,
                headers: vec![],
                body: CapturedBody::default(),
            }),
            error: None,
            duration_ms: u64::from(status) / 10,
        }
    }

    fn denied() -> DeniedDelivery {
        DeniedDelivery {
            id: 0,
            time: "2026-11-29T09:00:01Z".into(),
            funnel: Some("hooks.example".into()),
            method: "POST".into(),
            path: "/hook".into(),
            gate: Some("webhook:github".into()),
            reason: "signature_mismatch".into(),
            status: 403,
            edge_id: None,
        }
    }

    #[test]
    fn ids_increase_and_list_is_newest_first() {
        let store = CaptureStore::in_memory(CaptureConfig::default());
        let a = store.record(exchange("/a", 200, 1));
        let b = store.record_denied(denied());
        assert!(b > a);
        let list = store.list(&EntryFilter::default());
        assert_eq!(list.iter().map(|s| s.id).collect::<Vec<_>>(), vec![b, a]);
        assert_eq!(list[0].reason.as_deref(), Some("signature_mismatch"));
        assert_eq!(store.get(a).unwrap().id(), a);
        assert!(store.get(999).is_none());
    }

    #[test]
    fn the_byte_budget_evicts_oldest_first_and_keeps_the_newest() {
        let one = Entry::Exchange(exchange("/0", 200, 1000)).footprint();
        let store = CaptureStore::in_memory(CaptureConfig {
            max_total_bytes: one * 3,
            ..CaptureConfig::default()
        });
        for i in 0..5 {
            store.record(exchange(&format!("/{i}"), 200, 1000));
        }
        let paths: Vec<String> = store
            .list(&EntryFilter::default())
            .into_iter()
            .map(|s| s.path)
            .collect();
        assert_eq!(paths, vec!["/4", "/3", "/2"]);
        assert!(store.total_bytes() <= one * 3);
        // An entry over the whole budget is still kept, alone.
        store.record(exchange("/big", 200, one * 10));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn filters_match_path_method_status_header_duration_kind() {
        let store = CaptureStore::in_memory(CaptureConfig::default());
        store.record(exchange("/hooks/github", 200, 1));
        store.record(exchange("/hooks/stripe", 404, 1));
        store.record_denied(denied());
        let count = |filter: EntryFilter| store.list(&filter).len();
        let f = EntryFilter::default;
        assert_eq!(count(f()), 3);
        assert_eq!(
            count(EntryFilter {
                path: Some("github".into()),
                ..f()
            }),
            1
        );
        assert_eq!(
            count(EntryFilter {
                method: Some("post".into()),
                ..f()
            }),
            3
        );
        assert_eq!(
            count(EntryFilter {
                method: Some("GET".into()),
                ..f()
            }),
            0
        );
        assert_eq!(
            count(EntryFilter {
                status: Some("4xx".into()),
                ..f()
            }),
            2
        );
        assert_eq!(
            count(EntryFilter {
                status: Some("200".into()),
                ..f()
            }),
            1
        );
        assert_eq!(
            count(EntryFilter {
                header: Some("X-GitHub-Event".into()),
                ..f()
            }),
            2
        );
        assert_eq!(
            count(EntryFilter {
                header: Some("x-github-event: pu".into()),
                ..f()
            }),
            2
        );
        assert_eq!(
            count(EntryFilter {
                header: Some("x-github-event: pull".into()),
                ..f()
            }),
            0
        );
        assert_eq!(
            count(EntryFilter {
                min_duration_ms: Some(30),
                ..f()
            }),
            1
        );
        assert_eq!(
            count(EntryFilter {
                max_duration_ms: Some(30),
                ..f()
            }),
            2
        );
        assert_eq!(
            count(EntryFilter {
                kind: Some("denied".into()),
                ..f()
            }),
            1
        );
        assert_eq!(
            count(EntryFilter {
                source: Some("funnel".into()),
                ..f()
            }),
            2
        );
        assert_eq!(
            count(EntryFilter {
                limit: Some(1),
                ..f()
            }),
            1
        );
    }

    #[test]
    fn subscribers_see_additions_and_clears() {
        let store = CaptureStore::in_memory(CaptureConfig::default());
        let mut events = store.subscribe();
        let id = store.record(exchange("/a", 200, 1));
        match events.try_recv().unwrap() {
            StoreEvent::Added(summary) => assert_eq!(summary.id, id),
            other => panic!("expected Added, got {other:?}"),
        }
        store.clear();
        assert_eq!(events.try_recv().unwrap(), StoreEvent::Cleared);
        assert!(store.is_empty());
        assert!(
            store.record(exchange("/b", 200, 1)) > id,
            "ids keep increasing"
        );
    }

    #[test]
    fn persisted_entries_reload_and_corrupt_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inspect.jsonl");
        let config = CaptureConfig {
            persist_path: Some(path.clone()),
            ..CaptureConfig::default()
        };
        let store = CaptureStore::open(config.clone()).unwrap();
        let a = store.record(exchange("/a", 200, 5));
        store.record_denied(denied());
        drop(store);
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A torn write and some garbage.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"kind\":\"exchange\",\"id\":9\n\xff\xfe not json\n\n")
            .unwrap();
        drop(file);

        let store = CaptureStore::open(config.clone()).unwrap();
        let list = store.list(&EntryFilter::default());
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].id, a);
        let c = store.record(exchange("/c", 201, 1));
        assert!(c > list[0].id);
        drop(store);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().count(),
            3,
            "the bad lines were compacted away: {text}"
        );

        let store = CaptureStore::open(config.clone()).unwrap();
        assert_eq!(store.len(), 3);
        store.clear();
        drop(store);
        let store = CaptureStore::open(config).unwrap();
        assert!(store.is_empty(), "a clear is persisted");
    }

    #[test]
    fn a_file_past_twice_the_budget_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inspect.jsonl");
        let one = Entry::Exchange(exchange("/0", 200, 100)).footprint();
        let config = CaptureConfig {
            persist_path: Some(path.clone()),
            max_total_bytes: one * 2,
            ..CaptureConfig::default()
        };
        let store = CaptureStore::open(config.clone()).unwrap();
        for i in 0..20 {
            store.record(exchange(&format!("/{i}"), 200, 100));
        }
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(size <= one * 2 * 2 + one, "file is {size} bytes");
        drop(store);
        let store = CaptureStore::open(config).unwrap();
        let list = store.list(&EntryFilter::default());
        assert_eq!(list[0].path, "/19");
    }

    #[test]
    fn parse_line_errors_say_where() {
        let err = parse_line(b"{\"kind\":\"nope\"}").unwrap_err();
        assert!(err.to_string().contains("unknown variant `nope`"), "{err}");
        let err = parse_line(b"[1,2").unwrap_err();
        assert!(err.to_string().contains("line 1 column"), "{err}");
        assert!(parse_line(b"  \n").unwrap().is_none());
    }

    #[test]
    fn status_classes() {
        assert!(status_matches(Some(404), "4xx"));
        assert!(status_matches(Some(404), "4XX"));
        assert!(!status_matches(Some(500), "4xx"));
        assert!(!status_matches(None, "200"));
        assert!(!status_matches(Some(200), "abc"));
    }
}
