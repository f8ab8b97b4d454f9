//! The node's relay connections: the home relay, kept up always, plus a connection to each
//! other region a peer lives in, opened when the first datagram for such a peer is sent and
//! closed after [`REGION_IDLE_TIMEOUT`] without traffic (as Tailscale does with DERP).
//!
//! A peer reports its home region to the coord, which puts it in every netmap; path
//! selection ([`crate::disco::PathSelector`]) names the relayed path to a peer
//! `PathId::Relay { region: PEER'S HOME, .. }`, and [`RelaySet::try_send`] sends on that
//! region's connection, dialling it first if needed. Replies arrive on whichever
//! connection the peer sent them to; [`RelaySet::recv`] takes them from all of them.
//!
//! [`RegionUse`] is the pure part (which regions are open, when each was last used, which
//! to close); [`RelaySet`] is its tokio shell.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postern_proto::netmap::{RegionId, RelayMap};
use postern_proto::{NodePrivateKey, NodePublicKey};

use super::{RelayClient, RelayClientConfig, RelayDatagram, RelaySendError};

/// How long a connection to a region other than home may carry no datagram (either way)
/// before it is closed. The home connection is never closed for idleness.
pub const REGION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which non-home regions are open and when each last carried a datagram. Pure: the
/// caller passes `now`.
#[derive(Debug, Clone)]
pub struct RegionUse {
    home: RegionId,
    idle_timeout: Duration,
    last_used: BTreeMap<RegionId, Instant>,
}

/// What [`RegionUse::note_used`] asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionAction {
    /// The region is home or already open: send on it.
    Use,
    /// The region was not open: dial it, then send.
    Open,
}

impl RegionUse {
    /// Tracks the regions of a node whose home region is `home`; non-home regions close
    /// after `idle_timeout` without traffic.
    pub fn new(home: RegionId, idle_timeout: Duration) -> Self {
        Self {
            home,
            idle_timeout,
            last_used: BTreeMap::new(),
        }
    }

    /// The region a datagram for a peer goes to: the peer's home region when it reported
    /// one, else this node's (where a peer without a report is most likely attached too).
    pub fn region_for(&self, peer_home: Option<RegionId>) -> RegionId {
        peer_home.unwrap_or(self.home)
    }

    /// Records a datagram sent or received on `region` at `now`. Says whether the caller
    /// must open the region first.
    pub fn note_used(&mut self, region: RegionId, now: Instant) -> RegionAction {
        if region == self.home {
            return RegionAction::Use;
        }
        match self.last_used.insert(region, now) {
            Some(_) => RegionAction::Use,
            None => RegionAction::Open,
        }
    }

    /// Forgets `region` (its connection failed or was closed): the next datagram opens it
    /// again.
    pub fn forget(&mut self, region: RegionId) {
        self.last_used.remove(&region);
    }

    /// The non-home regions open now, in id order.
    pub fn open_regions(&self) -> Vec<RegionId> {
        self.last_used.keys().copied().collect()
    }

    /// When the next open region goes idle; `None` with only the home open. Call
    /// [`Self::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.last_used
            .values()
            .map(|last| *last + self.idle_timeout)
            .min()
    }

    /// The regions idle for [`REGION_IDLE_TIMEOUT`] (or the timeout given to
    /// [`Self::new`]) at `now`, which the caller must close; they are forgotten here.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<RegionId> {
        let idle_timeout = self.idle_timeout;
        let idle: Vec<RegionId> = self
            .last_used
            .iter()
            .filter(|(_, last)| now.saturating_duration_since(**last) >= idle_timeout)
            .map(|(region, _)| *region)
            .collect();
        for region in &idle {
            self.last_used.remove(region);
        }
        idle
    }
}

/// The home relay connection and the connections to other regions opened on demand; see
/// the [module docs](self). Owned by the UDP shell, which calls [`Self::try_send`] for
/// relayed transmits, [`Self::recv`] in its select loop and [`Self::handle_timeout`] at
/// [`Self::poll_timeout`].
#[derive(Debug)]
pub struct RelaySet {
    home: RelayClient,
    others: HashMap<RegionId, RelayClient>,
    /// How to dial each region of the relay map (first server of each).
    dial: HashMap<RegionId, RelayClientConfig>,
    usage: RegionUse,
    /// Alternates which side [`Self::poll_recv`] looks at first, so a busy home connection
    /// cannot starve the others (nor they it).
    others_first: bool,
}

impl RelaySet {
    /// A set around the attached (or attaching) `home` client; other regions are dialled
    /// from `map` (the first server of each) with `node_key` and the TLS roots `tls`.
    pub fn new(
        home: RelayClient,
        map: &RelayMap,
        node_key: &NodePrivateKey,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let dial = map
            .regions
            .iter()
            .filter(|region| region.id != home.region())
            .filter_map(|region| {
                let server = region.servers.first()?;
                let mut config =
                    RelayClientConfig::new(server.url.clone(), region.id, node_key.clone());
                config.tls = tls.clone();
                Some((region.id, config))
            })
            .collect();
        let usage = RegionUse::new(home.region(), REGION_IDLE_TIMEOUT);
        Self {
            home,
            others: HashMap::new(),
            dial,
            usage,
            others_first: false,
        }
    }

    /// The home region.
    pub fn home_region(&self) -> RegionId {
        self.home.region()
    }

    /// The home connection (its state, for status output).
    pub fn home(&self) -> &RelayClient {
        &self.home
    }

    /// The non-home regions with an open connection now.
    pub fn open_regions(&self) -> Vec<RegionId> {
        self.usage.open_regions()
    }

    /// Queues `packet` for `peer` on `region`'s relay: home, an open region, or a region
    /// of the map dialled now (the datagram waits in the new connection's queue until it
    /// attaches). A region the map does not list falls back to home. Never waits. Call
    /// inside a tokio runtime (dialling spawns a task).
    pub fn try_send(
        &mut self,
        region: RegionId,
        peer: NodePublicKey,
        packet: Bytes,
        now: Instant,
    ) -> Result<(), RelaySendError> {
        if region == self.home.region() || !self.dial.contains_key(&region) {
            return self.home.sender().try_send(peer, packet);
        }
        if self.usage.note_used(region, now) == RegionAction::Open
            || !self.others.contains_key(&region)
        {
            let Some(config) = self.dial.get(&region) else {
                return self.home.sender().try_send(peer, packet);
            };
            match RelayClient::spawn(config.clone()) {
                Ok(client) => {
                    tracing::info!(region = region.0, url = %config.url, "opening a relay connection to a peer's home region");
                    self.others.insert(region, client);
                }
                Err(err) => {
                    tracing::warn!(%err, region = region.0, "cannot dial a peer's home relay");
                    self.usage.forget(region);
                    return Err(RelaySendError::Closed);
                }
            }
        }
        match self.others.get(&region) {
            Some(client) => client.sender().try_send(peer, packet),
            None => Err(RelaySendError::Closed),
        }
    }

    /// The next datagram from any connection, with the region it came through; `None`
    /// once the home connection is shut down. A non-home connection that ends is dropped
    /// (the next send reopens it). Cancel-safe.
    pub async fn recv(&mut self) -> Option<(RegionId, RelayDatagram)> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next datagram waiting now on any connection, if one is.
    pub fn try_recv(&mut self) -> Option<(RegionId, RelayDatagram)> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match self.poll_recv(&mut cx) {
            Poll::Ready(found) => found,
            Poll::Pending => None,
        }
    }

    /// Records a datagram received on `region` at `now` (replies keep a region open).
    pub fn note_received(&mut self, region: RegionId, now: Instant) {
        if self.others.contains_key(&region) {
            self.usage.note_used(region, now);
        }
    }

    /// When the next non-home connection goes idle.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.usage.poll_timeout()
    }

    /// Closes the non-home connections idle at `now` (in the background).
    pub fn handle_timeout(&mut self, now: Instant) {
        for region in self.usage.handle_timeout(now) {
            if let Some(client) = self.others.remove(&region) {
                tracing::info!(
                    region = region.0,
                    "closing the idle relay connection to another region"
                );
                tokio::spawn(client.shutdown());
            }
        }
    }

    /// Closes every connection.
    pub async fn shutdown(self) {
        for (_, client) in self.others {
            client.shutdown().await;
        }
        self.home.shutdown().await;
    }

    fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<(RegionId, RelayDatagram)>> {
        self.others_first = !self.others_first;
        if self.others_first
            && let Poll::Ready(Some(found)) = self.poll_others(cx)
        {
            return Poll::Ready(Some(found));
        }
        let home = self.home.region();
        match self.home.poll_recv(cx) {
            Poll::Ready(Some(datagram)) => return Poll::Ready(Some((home, datagram))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if self.others_first {
            return Poll::Pending;
        }
        self.poll_others(cx)
    }

    /// Polls the non-home connections; drops those that ended.
    fn poll_others(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<(RegionId, RelayDatagram)>> {
        let mut ended = Vec::new();
        let mut found = None;
        for (region, client) in &mut self.others {
            match client.poll_recv(cx) {
                Poll::Ready(Some(datagram)) => {
                    found = Some((*region, datagram));
                    break;
                }
                Poll::Ready(None) => ended.push(*region),
                Poll::Pending => {}
            }
        }
        for region in ended {
            self.others.remove(&region);
            self.usage.forget(region);
        }
        match found {
            Some(found) => Poll::Ready(Some(found)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: RegionId = RegionId(1);
    const FAR: RegionId = RegionId(2);
    const FARTHER: RegionId = RegionId(3);

    #[test]
    fn a_peer_is_reached_on_its_home_region_else_on_ours() {
        let usage = RegionUse::new(HOME, REGION_IDLE_TIMEOUT);
        assert_eq!(usage.region_for(Some(FAR)), FAR);
        assert_eq!(usage.region_for(Some(HOME)), HOME);
        assert_eq!(usage.region_for(None), HOME);
    }

    #[test]
    fn other_regions_open_on_first_use_and_home_never_needs_opening() {
        let t0 = Instant::now();
        let mut usage = RegionUse::new(HOME, REGION_IDLE_TIMEOUT);
        assert_eq!(usage.note_used(HOME, t0), RegionAction::Use);
        assert_eq!(usage.poll_timeout(), None, "home alone never times out");
        assert_eq!(usage.note_used(FAR, t0), RegionAction::Open);
        assert_eq!(usage.note_used(FAR, t0), RegionAction::Use);
        assert_eq!(usage.open_regions(), vec![FAR]);
        assert_eq!(usage.poll_timeout(), Some(t0 + REGION_IDLE_TIMEOUT));
    }

    #[test]
    fn idle_regions_close_and_busy_ones_stay() {
        let t0 = Instant::now();
        let mut usage = RegionUse::new(HOME, REGION_IDLE_TIMEOUT);
        usage.note_used(FAR, t0);
        usage.note_used(FARTHER, t0);
        // Traffic on FAR half-way through keeps it open past FARTHER's deadline.
        let half = t0 + REGION_IDLE_TIMEOUT / 2;
        usage.note_used(FAR, half);
        assert_eq!(usage.handle_timeout(half), Vec::<RegionId>::new());
        assert_eq!(usage.poll_timeout(), Some(t0 + REGION_IDLE_TIMEOUT));
        let closed = usage.handle_timeout(t0 + REGION_IDLE_TIMEOUT);
        assert_eq!(closed, vec![FARTHER]);
        assert_eq!(usage.open_regions(), vec![FAR]);
        assert_eq!(usage.poll_timeout(), Some(half + REGION_IDLE_TIMEOUT));
        assert_eq!(usage.handle_timeout(half + REGION_IDLE_TIMEOUT), vec![FAR]);
        assert_eq!(usage.poll_timeout(), None);
        // Used again after closing: it must be opened again.
        assert_eq!(
            usage.note_used(FAR, half + REGION_IDLE_TIMEOUT * 2),
            RegionAction::Open
        );
    }

    #[test]
    fn a_forgotten_region_is_opened_again() {
        let t0 = Instant::now();
        let mut usage = RegionUse::new(HOME, Duration::from_secs(5));
        assert_eq!(usage.note_used(FAR, t0), RegionAction::Open);
        usage.forget(FAR);
        assert_eq!(usage.note_used(FAR, t0), RegionAction::Open);
    }
}
