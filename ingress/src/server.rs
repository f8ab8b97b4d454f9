//! Wiring: listeners, certificates, the edge, and the certificate upkeep tasks. The binary
//! calls [`run`]; tests may too.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;

use crate::audit::AuditSink;
use crate::certs::{
    AcmeConfig, AcmeIssuer, CertResolver, CertStore, CoordCertificates, HttpChallenges,
    certified_key_from_pem, renewal_at, renewal_due,
};
use crate::config::IngressConfig;
use crate::edge::{Edge, Funnel};
use crate::metrics::{EdgeMetrics, MetricsSink, serve_metrics};
use crate::routes::{FunnelTable, OidcDefaults, RouteBuilder, RouteBuilderConfig, RouteFollower};
use crate::tcp_funnel::{TlsPortRouter, serve_tcp_funnel};
use postern_node::daemon::NodeHandle;

/// Why the ingress stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A listening address could not be bound.
    #[error(
        "cannot listen on {address}: {source} (is another server using the port, or are privileges missing for ports below 1024?)"
    )]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The static certificate could not be loaded.
    #[error("static certificate: {0}")]
    StaticCert(String),
    /// The TLS configuration was refused.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    /// The ACME account could not be opened.
    #[error(transparent)]
    Acme(#[from] crate::certs::AcmeError),
    /// A listener failed.
    #[error("a listener stopped: {0}")]
    Listener(std::io::Error),
}

/// The mesh side of a running ingress: its embedded node and what funnel routes need.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The embedded node (see [`crate::embedded::start_node`]): funnel targets are
    /// reached through its netstack and funnel routes come from its netmap.
    pub node: NodeHandle,
    /// The `[oidc]` client for routes with a login gate.
    pub oidc: Option<OidcDefaults>,
}

/// Runs the ingress until SIGINT/SIGTERM: binds the ports, loads the static certificate,
/// opens the ACME account and keeps a certificate for each funnel hostname (stored ones are
/// reused; new ones ordered; renewal two thirds into the lifetime), and serves requests.
pub async fn run(
    config: &IngressConfig,
    funnels: Vec<Funnel>,
    audit: Arc<dyn AuditSink>,
) -> Result<(), RunError> {
    run_with_mesh(config, funnels, audit, None).await
}

/// Like [`run`], and with `mesh` also serves the funnels of the embedded node's netmap
/// (see [`crate::routes`]): HTTP and passthrough hostnames on the TLS port, TCP funnels
/// on their public ports (opened and closed as routes come and go), certificates for new
/// hostnames, expiry on time.
pub async fn run_with_mesh(
    config: &IngressConfig,
    funnels: Vec<Funnel>,
    audit: Arc<dyn AuditSink>,
    mesh: Option<Mesh>,
) -> Result<(), RunError> {
    // With the mesh, decisions of the coord's funnels also go to the coord (`postern
    // funnel log`); the request path never waits for it.
    let edge_log = mesh.as_ref().map(|mesh| {
        crate::edge_log::EdgeLogForwarder::start(Arc::clone(&audit), Arc::new(mesh.node.clone()))
    });
    let audit: Arc<dyn AuditSink> = match &edge_log {
        Some(forwarder) => forwarder.clone(),
        None => audit,
    };
    let resolver = Arc::new(CertResolver::new());
    // Every audited decision is also counted, whether or not `/metrics` is served.
    let mut metrics = EdgeMetrics::new().with_certificates(Arc::clone(&resolver));
    if let Some(forwarder) = edge_log {
        metrics = metrics.with_edge_log(forwarder);
    }
    if let Some(mesh) = &mesh {
        metrics = metrics.with_node(mesh.node.clone());
    }
    let metrics = Arc::new(metrics);
    let audit: Arc<dyn AuditSink> = Arc::new(MetricsSink::new(audit, Arc::clone(&metrics)));
    if let Some(static_cert) = &config.static_cert {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map_err(|e| RunError::StaticCert(format!("{}: {e}", path.display())))
        };
        let key = certified_key_from_pem(
            &read(&static_cert.cert)?,
            &read(&static_cert.key)?,
            &static_cert.cert.display().to_string(),
        )
        .map_err(|e| RunError::StaticCert(e.to_string()))?;
        resolver.set_static(key);
    }
    let challenges = Arc::new(HttpChallenges::default());
    let hostnames: Vec<String> = funnels.iter().map(|f| f.hostname.clone()).collect();
    let limiter = config.client_limiter();
    let routes = Arc::new(FunnelTable::new());
    let tls_router = Arc::new(
        TlsPortRouter::new(
            config.passthrough_funnels(),
            config.tcp_limits(),
            Arc::clone(&limiter),
            Arc::clone(&audit),
        )
        .with_routes(Arc::clone(&routes)),
    );
    let tcp_audit = Arc::clone(&audit);
    let (route_hosts_tx, route_hosts) = tokio::sync::mpsc::unbounded_channel();
    let shared_certs = mesh.as_ref().map(|mesh| {
        CoordCertificates::new(postern_node::daemon::serves::ControlFunnels::new(
            &mesh.node,
        ))
    });
    if let Some(mesh) = mesh {
        let builder = RouteBuilder::new(
            mesh.node.netstack().clone(),
            RouteBuilderConfig {
                oidc: mesh.oidc,
                state_dir: config.state_dir.clone(),
                max_body_bytes: config.limits.max_body_bytes,
                tcp_port_range: config.listen.tcp_port_range,
                reserved_ports: config
                    .tcp_funnels
                    .iter()
                    .map(|f| f.port)
                    .chain([config.listen.https.port()])
                    .chain(config.listen.http.map(|a| a.port()))
                    .collect(),
                static_hostnames: hostnames
                    .iter()
                    .cloned()
                    .chain(config.passthrough_funnels().into_iter().map(|f| f.hostname))
                    .collect(),
                resolver: Some(Arc::clone(&resolver)),
                pool_limits: config.pool_limits(),
            },
        );
        let follower = RouteFollower::new(builder, Arc::clone(&routes), Arc::clone(&audit))
            .with_tcp_listeners(
                config.listen.https.ip(),
                config.tcp_limits(),
                Arc::clone(&limiter),
            )
            .with_certificates(route_hosts_tx);
        tokio::spawn(follower.run(mesh.node.netmap()));
    }
    let edge = Arc::new(
        Edge::new(funnels, config.limits(), audit, Arc::clone(&challenges))
            .with_tls_router(tls_router)
            .with_routes(routes),
    );

    let bind = |address| async move {
        TcpListener::bind(address)
            .await
            .map_err(|source| RunError::Bind { address, source })
    };
    let tls_listener = bind(config.listen.https).await?;
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(http) = config.listen.http {
        let http_listener = bind(http).await?;
        tracing::info!(address = %http_listener.local_addr().map_err(RunError::Listener)?, "HTTP port listening");
        tasks.spawn(Arc::clone(&edge).serve_http(http_listener));
    }
    if let Some(address) = config.listen.metrics {
        let metrics_listener = bind(address).await?;
        tracing::info!(address = %metrics_listener.local_addr().map_err(RunError::Listener)?, "metrics listening");
        tasks.spawn(serve_metrics(metrics_listener, metrics));
    }
    tracing::info!(address = %tls_listener.local_addr().map_err(RunError::Listener)?, "TLS port listening");
    let ca_hints = edge.client_ca_hints();
    let tls = if ca_hints.is_empty() {
        Edge::tls_config(Arc::clone(&resolver))?
    } else {
        Edge::tls_config_with_client_certs(Arc::clone(&resolver), ca_hints)?
    };
    tasks.spawn(Arc::clone(&edge).serve_tls(tls_listener, tls));
    for funnel in config.tcp_funnels() {
        let address = std::net::SocketAddr::new(config.listen.https.ip(), funnel.port);
        let listener = bind(address).await?;
        tracing::info!(%address, proxy_protocol = funnel.proxy_protocol, "TCP funnel listening");
        tasks.spawn(serve_tcp_funnel(
            listener,
            Arc::new(funnel),
            config.tcp_limits(),
            Arc::clone(&limiter),
            Arc::clone(&tcp_audit),
        ));
    }

    if let Some(acme) = config.acme() {
        let issuer = open_issuer(&acme, config, &challenges, &resolver).await?;
        let store = CertStore::new(&config.state_dir);
        for host in &hostnames {
            let (issuer, store, resolver) = (issuer.clone(), store.clone(), Arc::clone(&resolver));
            tokio::spawn(keep_certificate(
                issuer,
                store,
                resolver,
                host.clone(),
                None,
            ));
        }
        tokio::spawn(keep_route_certificates(
            issuer,
            store,
            Arc::clone(&resolver),
            hostnames.into_iter().collect(),
            route_hosts,
            shared_certs,
        ));
    }

    tokio::select! {
        finished = tasks.join_next() => match finished {
            Some(Ok(Err(error))) => Err(RunError::Listener(error)),
            _ => Ok(()),
        },
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn open_issuer(
    acme: &AcmeConfig,
    config: &IngressConfig,
    challenges: &Arc<HttpChallenges>,
    resolver: &Arc<CertResolver>,
) -> Result<AcmeIssuer, RunError> {
    let mut delay = Duration::from_secs(2);
    loop {
        match AcmeIssuer::open(
            acme,
            &config.state_dir,
            Arc::clone(challenges),
            Arc::clone(resolver),
        )
        .await
        {
            Ok(issuer) => return Ok(issuer),
            Err(crate::certs::AcmeError::AccountFile { path, reason }) => {
                return Err(crate::certs::AcmeError::AccountFile { path, reason }.into());
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "waiting for the ACME CA to register or load the account");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(300));
            }
        }
    }
}

/// Keeps a certificate for every hostname of a funnel route, from the first time the
/// route appears (hostnames the configuration file already has are skipped), sharing them
/// with other ingresses through the coord (`shared`).
async fn keep_route_certificates(
    issuer: AcmeIssuer,
    store: CertStore,
    resolver: Arc<CertResolver>,
    mut kept: std::collections::HashSet<String>,
    mut hostnames: tokio::sync::mpsc::UnboundedReceiver<String>,
    shared: Option<CoordCertificates>,
) {
    while let Some(host) = hostnames.recv().await {
        if kept.insert(host.clone()) {
            let (issuer, store, resolver) = (issuer.clone(), store.clone(), Arc::clone(&resolver));
            tokio::spawn(keep_certificate(
                issuer,
                store,
                resolver,
                host,
                shared.clone(),
            ));
        }
    }
}

/// Keeps one hostname's certificate: installs the stored one; when none is stored or the
/// stored one is due, takes the one another ingress shared through the coord (`shared`) if
/// it is not due, else claims the order at the coord (waiting while another ingress holds
/// the claim) and orders one (and shares it); then sleeps until the renewal time.
async fn keep_certificate(
    issuer: AcmeIssuer,
    store: CertStore,
    resolver: Arc<CertResolver>,
    host: String,
    shared: Option<CoordCertificates>,
) {
    let mut current = match store.load(&host) {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(%host, %error, "the stored certificate is unusable; ordering a new one");
            None
        }
    };
    if let Some(cert) = &current {
        match cert.certified_key(&host) {
            Ok(key) => {
                resolver.set_host(&host, key);
                tracing::info!(%host, not_after = ?cert.not_after, "using the stored certificate");
            }
            Err(error) => {
                tracing::warn!(%host, %error, "the stored certificate is unusable; ordering a new one");
                current = None;
            }
        }
    }
    let mut retry = Duration::from_secs(5);
    loop {
        let now = SystemTime::now();
        let due = current
            .as_ref()
            .is_none_or(|c| renewal_due(c.not_before, c.not_after, now));
        if !due {
            let at = current
                .as_ref()
                .map_or(now, |c| renewal_at(c.not_before, c.not_after));
            let wait = at.duration_since(now).unwrap_or_default();
            tracing::info!(%host, renew_in = ?wait, "certificate valid; waiting for its renewal time");
            tokio::time::sleep(wait.min(Duration::from_secs(86_400))).await;
            continue;
        }
        if let Some(cert) = match &shared {
            Some(shared) => shared.fetch(&host, now).await,
            None => None,
        } {
            match install_shared(&store, &resolver, &host, &cert) {
                Ok(()) => {
                    tracing::info!(%host, not_after = ?cert.not_after, "using the certificate another ingress shared through the coordination server");
                    current = Some(cert);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%host, %error, "the shared certificate is unusable; ordering one");
                }
            }
        }
        if let Some(shared) = &shared
            && let Some(wait) = shared.claim_order(&host).await
        {
            tokio::time::sleep(wait).await;
            continue;
        }
        match issuer.issue(&host).await {
            Ok(cert) => {
                if let Some(shared) = &shared {
                    shared.publish(&host, &cert).await;
                }
                current = Some(cert);
                retry = Duration::from_secs(5);
            }
            Err(error) => {
                tracing::warn!(%host, %error, retry_in = ?retry, "certificate order failed; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(3600));
            }
        }
    }
}

/// Saves a certificate shared through the coord in the local store (so a restart uses it
/// without asking) and serves it.
fn install_shared(
    store: &CertStore,
    resolver: &CertResolver,
    host: &str,
    cert: &crate::certs::StoredCert,
) -> Result<(), crate::certs::CertError> {
    let key = cert.certified_key(host)?;
    store.save(host, cert)?;
    resolver.set_host(host, key);
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
