//! Keeping the [`FunnelTable`] in step with the netmap and the clock.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postern_proto::netmap::Netmap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{FunnelTable, RouteBuilder, RouteInfo, RouteSet};
use crate::audit::{AuditRecord, AuditSink};
use crate::tcp_funnel::{ClientLimiter, TcpFunnel, TcpLimits, serve_tcp_funnel};

/// The longest the expiry timer sleeps before looking at the clock again (wall-clock
/// jumps).
const MAX_EXPIRY_SLEEP: Duration = Duration::from_secs(60);

/// The task that keeps a [`FunnelTable`] current; see the [module docs](super).
///
/// Call [`RouteFollower::apply_netmap`] with each netmap and [`RouteFollower::expire`]
/// when [`RouteFollower::next_expiry`] comes, or hand both to [`RouteFollower::run`].
#[derive(Debug)]
pub struct RouteFollower {
    builder: RouteBuilder,
    table: Arc<FunnelTable>,
    audit: Arc<dyn AuditSink>,
    tcp: Option<TcpPorts>,
    certificates: Option<mpsc::UnboundedSender<String>>,
    announced: HashSet<String>,
}

#[derive(Debug)]
struct TcpPorts {
    bind: IpAddr,
    limits: TcpLimits,
    limiter: Arc<ClientLimiter>,
    running: HashMap<u16, (Arc<TcpFunnel>, JoinHandle<()>)>,
}

impl RouteFollower {
    /// A follower filling `table` with what `builder` makes of each netmap, auditing
    /// expiries to `audit`. Without [`RouteFollower::with_tcp_listeners`] TCP routes are
    /// in the table but no port is opened.
    pub fn new(builder: RouteBuilder, table: Arc<FunnelTable>, audit: Arc<dyn AuditSink>) -> Self {
        Self {
            builder,
            table,
            audit,
            tcp: None,
            certificates: None,
            announced: HashSet::new(),
        }
    }

    /// Opens a listener on `bind:PORT` for each TCP route (and closes it when the route
    /// goes or expires), bounding connections by `limits` and `limiter`.
    #[must_use]
    pub fn with_tcp_listeners(
        mut self,
        bind: IpAddr,
        limits: TcpLimits,
        limiter: Arc<ClientLimiter>,
    ) -> Self {
        self.tcp = Some(TcpPorts {
            bind,
            limits,
            limiter,
            running: HashMap::new(),
        });
        self
    }

    /// Sends each HTTP hostname to `certificates` the first time it appears, so a
    /// certificate is obtained (or loaded from the store) for it.
    #[must_use]
    pub fn with_certificates(mut self, certificates: mpsc::UnboundedSender<String>) -> Self {
        self.certificates = Some(certificates);
        self
    }

    /// Builds the routes of `netmap` at `now` and installs them: the table, TCP
    /// listeners, certificate requests for new hostnames.
    pub async fn apply_netmap(&mut self, netmap: &Netmap, now: SystemTime) {
        let set = self.builder.build(netmap, now);
        self.install(set).await;
    }

    /// Removes the routes expired at `now` from the table (closing their TCP listeners)
    /// and writes one `expire` audit record for each.
    pub async fn expire(&mut self, now: SystemTime) {
        let (kept, gone) = self.table.snapshot().without_expired(now);
        if gone.is_empty() {
            return;
        }
        for info in &gone {
            tracing::info!(host = %info.hostname, owner = %info.owner, node = %info.node, "funnel expired; no longer served");
            self.audit.record(&expiry_record(info));
        }
        self.install(kept).await;
    }

    /// When the next route expires, if any does.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.table.snapshot().next_expiry()
    }

    /// Follows `netmaps` until its sender is dropped, expiring routes on time in between;
    /// then closes the TCP listeners it opened.
    pub async fn run(mut self, mut netmaps: watch::Receiver<Option<Arc<Netmap>>>) {
        let first = netmaps.borrow_and_update().clone();
        if let Some(map) = first {
            self.apply_netmap(&map, SystemTime::now()).await;
        }
        loop {
            let wait = self.next_expiry().map(|at| {
                at.duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(MAX_EXPIRY_SLEEP)
            });
            tokio::select! {
                changed = netmaps.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let map = netmaps.borrow_and_update().clone();
                    if let Some(map) = map {
                        self.apply_netmap(&map, SystemTime::now()).await;
                    }
                }
                () = sleep_for(wait) => self.expire(SystemTime::now()).await,
            }
        }
        self.install(RouteSet::default()).await;
    }

    async fn install(&mut self, set: RouteSet) {
        if let Some(certificates) = &self.certificates {
            for host in set.http.keys() {
                if self.announced.insert(host.clone()) {
                    let _ = certificates.send(host.clone());
                }
            }
        }
        if let Some(tcp) = &mut self.tcp {
            tcp.sync(&set, &self.audit).await;
        }
        self.table.replace(set);
    }
}

impl TcpPorts {
    async fn sync(&mut self, set: &RouteSet, audit: &Arc<dyn AuditSink>) {
        let stale: Vec<u16> = self
            .running
            .iter()
            .filter(|(port, (funnel, _))| {
                !set.tcp
                    .get(*port)
                    .is_some_and(|wanted| Arc::ptr_eq(wanted, funnel))
            })
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some((_, task)) = self.running.remove(&port) {
                tracing::info!(port, "closing a TCP funnel port");
                task.abort();
                // Wait for the listener to be dropped, so the port can be bound again.
                let _ = task.await;
            }
        }
        for (port, funnel) in &set.tcp {
            if self.running.contains_key(port) {
                continue;
            }
            let address = SocketAddr::new(self.bind, *port);
            let listener = match TcpListener::bind(address).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(%address, %error, "cannot open a TCP funnel port");
                    continue;
                }
            };
            tracing::info!(%address, "TCP funnel port open");
            let task = tokio::spawn({
                let (funnel, limits) = (Arc::clone(funnel), self.limits);
                let (limiter, audit) = (Arc::clone(&self.limiter), Arc::clone(audit));
                async move {
                    if let Err(error) =
                        serve_tcp_funnel(listener, funnel, limits, limiter, audit).await
                    {
                        tracing::warn!(%error, "a TCP funnel port stopped");
                    }
                }
            });
            self.running.insert(*port, (Arc::clone(funnel), task));
        }
    }
}

impl Drop for TcpPorts {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

/// The audit record of a funnel reaching its expiry: result `expire`, reason `expired`,
/// method `-`.
pub fn expiry_record(info: &RouteInfo) -> AuditRecord {
    AuditRecord {
        time: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        funnel: Some(info.hostname.clone()),
        owner: Some(info.owner.clone()),
        node: Some(info.node.clone()),
        client: String::new(),
        method: "-".into(),
        path: String::new(),
        gate: None,
        result: "expire",
        reason: Some("expired".into()),
        status: 0,
        bytes: 0,
        duration_ms: 0,
    }
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}
