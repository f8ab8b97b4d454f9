//! Request inspection: capture every exchange that reaches the local service through a
//! funnel or a serve, show it in a local web UI and JSON API, and replay it.
//!
//! The parts, each usable alone:
//!
//! - [`CaptureStore`] ([`store`]): the ring buffer of [`Entry`]s (exchanges and denied
//!   deliveries), bounded by total bytes, optionally persisted to the state dir, with a
//!   broadcast for live views. It implements [`ExchangeRecorder`], the one-method API
//!   through which proxies hand finished exchanges over.
//! - [`CapturingProxy`] ([`proxy`]): forwards requests to the local service, streams the
//!   response back and records the exchange (bodies capped); also makes replays.
//! - [`api::router`]: the web UI (one embedded HTML file) and the JSON API on
//!   `127.0.0.1:4040`, with the DNS-rebinding and cross-site checks and secret masking.
//! - [`client::InspectClient`]: the API's client, for `postern inspect list|show|replay`.
//!
//! Wiring, for the agent: open a store (`CaptureStore::open` with `persist_path` in the
//! state dir), give the serve proxy the store as its recorder (or wrap the store in the
//! serve proxy's observer trait), build a `CapturingProxy` to the local port for replays,
//! and serve [`api::router`] on the `--inspect` address. Denials from the ingress audit go
//! in with [`CaptureStore::record_denied`] ([`DeniedDelivery::from_audit_line`] reads the
//! audit's JSON). See `docs/inspect.md`.

pub mod api;
pub mod client;
pub mod exchange;
pub mod proxy;
pub mod store;

pub use exchange::{
    Admission, CapturedBody, CapturedRequest, CapturedResponse, DeniedDelivery, Entry,
    EntrySummary, Exchange, Source, header_pairs, is_secret_header, masked_value, rfc3339,
};
pub use proxy::{CapturingProxy, ExchangeMeta, ReplayChanges, ReplayOutcome};
pub use store::{
    CaptureConfig, CaptureError, CaptureStore, EntryFilter, ExchangeRecorder, StoreEvent,
};
