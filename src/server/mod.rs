//! The HTTPS edge: certificates, policies and cluster caches set up before the socket is bound;
//! then an accept loop serving HTTP/1.1 and HTTP/2 (ALPN) over rustls, until SIGTERM.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cli::{ClusterMode, ServeArgs};
use crate::cluster::cache::{ClusterCache, Watches};
use crate::cluster::health;
use crate::cluster::{ClusterView, Snapshot};
use crate::metrics::Metrics;
use crate::policy;
use crate::policy::source::{ConfigMapSource, FileSource, PolicyStore};

pub mod auth;
mod bootstrap;
pub mod budget;
pub mod callers;
pub mod conn;
pub mod routes;
pub mod tls;

pub use routes::AppState;

/// Where the default policy is looked for when `--policy` is not given.
const DEFAULT_POLICY_PATH: &str = "policies/default.yaml";

/// Certificates to serve, and what keeps them current.
struct Certificates {
    files: tls::CertFiles,
    /// Whether the files are watched for changes (given or bootstrapped files).
    watched: bool,
    /// With --cert-bootstrap: the bootstrap still to run; until it has, the files hold a
    /// provisional certificate and readiness is false.
    bootstrap: Option<(bootstrap::Bootstrap, kube::Client)>,
}

/// Certificates to serve: given files, bootstrapped through the API, or a CA and a localhost
/// certificate generated now.
async fn certificates(
    args: &ServeArgs,
    client: Option<&kube::Client>,
) -> anyhow::Result<Certificates> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return Ok(Certificates {
            files: tls::CertFiles::load(cert, key, Some(args.tls_server_name()))?,
            watched: true,
            bootstrap: None,
        });
    }
    if args.cert_bootstrap {
        let Some(client) = client else {
            bail!("--cert-bootstrap needs a cluster connection, and none was found");
        };
        let bootstrap = bootstrap::Bootstrap::from_args(args);
        return Ok(Certificates {
            files: bootstrap.provisional()?,
            watched: true,
            bootstrap: Some((bootstrap, client.clone())),
        });
    }
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let bundle =
        crate::certs::generate(&names, 30, 30).context("generating a development certificate")?;
    let dir = std::env::temp_dir().join(format!("stateful-guard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::certs::write_file(&dir.join("tls.crt"), &bundle.cert, false)?;
    crate::certs::write_file(&dir.join("tls.key"), &bundle.key, true)?;
    crate::certs::write_file(&args.generated_ca, &bundle.ca_cert, false)?;
    let files = tls::CertFiles::load(
        &dir.join("tls.crt"),
        &dir.join("tls.key"),
        Some("localhost".to_owned()),
    )?;
    tracing::info!(
        ca = %args.generated_ca.display(),
        "no --tls-cert given: generated a CA and a certificate for localhost"
    );
    eprintln!(
        "stateful-guard: generated a development CA at {ca}\n  try: curl --cacert {ca} https://localhost:{port}/healthz",
        ca = args.generated_ca.display(),
        port = args.listen.port()
    );
    Ok(Certificates {
        files,
        watched: false,
        bootstrap: None,
    })
}

/// Loads the policies; any error in the initial load stops the start (there is no last good
/// policy yet), naming the file, line and field.
fn policies(args: &ServeArgs, store: &PolicyStore) -> anyhow::Result<Option<FileSource>> {
    let path = match &args.policy {
        Some(p) => Some(p.clone()),
        None if args.policy_configmaps => None,
        None => Some(PathBuf::from(DEFAULT_POLICY_PATH)).filter(|p| p.is_file()),
    };
    let Some(path) = path else {
        if args.policy_configmaps {
            tracing::info!("policies come from ConfigMaps only");
            return Ok(None);
        }
        let embedded = policy::parse_documents(policy::EMBEDDED_DEFAULT, policy::EMBEDDED_SOURCE)?;
        store.set_source(policy::EMBEDDED_SOURCE, Ok(embedded));
        tracing::info!("no policy file: using the embedded default policy");
        return Ok(None);
    };
    let mut source = FileSource::new(path);
    let errors = source.sync(store);
    if let Some(first) = errors.first() {
        bail!("invalid policy: {first}");
    }
    if !store.is_loaded() && !args.policy_configmaps {
        bail!("no policy document found in {}", source.root().display());
    }
    tracing::info!(path = %source.root().display(), policies = store.current().policies().len(), "policies loaded");
    Ok(Some(source))
}

async fn cluster(args: &ServeArgs, metrics: &Arc<Metrics>) -> Option<kube::Client> {
    if args.cluster == ClusterMode::Off {
        return None;
    }
    match kube::Config::infer().await {
        Ok(config) => match health::client(config, {
            let health = health::global();
            health.attach(metrics.clone());
            health
        }) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::warn!(%error, "cannot build a cluster client; running without cluster state");
                None
            }
        },
        Err(error) => {
            tracing::info!(reason = %error, "no cluster configuration found; running without cluster state");
            None
        }
    }
}

/// This replica's identity in leader election: the pod's name (its hostname) and a suffix unique
/// to this process, so a restarted pod or two processes on one host never share it.
fn identity() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "stateful-guard".to_owned());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{host}_{:08x}", hasher.finish() as u32)
}

/// What [`start_leader_tasks`] started: the audit's results, the growth's progress, the
/// election's task.
type LeaderTasks = (
    Option<Arc<crate::audit::Results>>,
    Option<Arc<crate::grow::Progress>>,
    Option<tokio::task::JoinHandle<()>>,
);

/// With a cluster connection: the tasks only the Lease holder does their writes for, the
/// background audit (`--background-audit`: PolicyReports) and the claims' growth
/// (`--grow-volumes`), and the Lease election between the replicas. Returns the audit's results
/// (for `/report`) and the election's task.
fn start_leader_tasks(
    args: &ServeArgs,
    live: Option<&ClusterCache>,
    client: Option<&kube::Client>,
    store: &Arc<PolicyStore>,
    metrics: &Arc<Metrics>,
) -> LeaderTasks {
    let audit_interval = args.background_audit_interval();
    let (Some(cache), Some(client)) = (live, client) else {
        if audit_interval.is_some() || args.grow_volumes {
            tracing::info!(
                "no cluster connection: the background audit and --grow-volumes do not run"
            );
        }
        return (None, None, None);
    };
    if audit_interval.is_none() && !args.grow_volumes {
        return (None, None, None);
    }
    let identity = identity();
    let elector =
        crate::audit::lease::Elector::new(client.clone(), &args.namespace, identity.clone());
    let growth = args.grow_volumes.then(|| {
        tracing::info!("--grow-volumes: the Lease holder resizes the claims whose template grew");
        let progress = Arc::new(crate::grow::Progress::default());
        tokio::spawn(crate::grow::run(
            cache.clone(),
            client.clone(),
            elector.leadership(),
            metrics.clone(),
            identity,
            progress.clone(),
        ));
        progress
    });
    let audit = audit_interval.map(|interval| {
        let results = Arc::new(crate::audit::Results::default());
        let writer =
            crate::audit::Writer::new(client.clone(), elector.leadership(), growth.clone());
        tokio::spawn(crate::audit::run(
            cache.clone(),
            store.clone(),
            metrics.clone(),
            interval,
            results.clone(),
            Some(writer),
        ));
        results
    });
    // It hears SIGTERM itself, and gives the Lease up while the server drains.
    let elector_task = tokio::spawn(elector.run(shutdown_signal()));
    (audit, growth, Some(elector_task))
}

/// The probe listener (`--probe-listen`) and the metrics listener (`--metrics-listen`), when
/// asked for.
async fn spawn_side_listeners(
    args: &ServeArgs,
    state: &Arc<AppState>,
    client: Option<&kube::Client>,
    metrics_tls: rustls::ServerConfig,
) -> anyhow::Result<()> {
    if let Some(address) = args.probe_listen {
        let probes = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (--probe-listen)"))?;
        tracing::info!(address = %probes.local_addr()?, "serving the health probes over HTTP");
        tokio::spawn(serve_probes(probes, routes::probe_router(state.clone())));
    }
    if let Some(address) = args.metrics_listen {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (--metrics-listen)"))?;
        tracing::info!(address = %listener.local_addr()?, "serving /metrics and /report over HTTPS, for authorized callers");
        let auth = match client {
            Some(client) => auth::MetricsAuth::Delegated(auth::Delegated::new(client.clone())),
            None => auth::MetricsAuth::LoopbackOnly(auth::NO_CLUSTER),
        };
        let app = routes::metrics_router(state.clone(), auth);
        let metrics_args = MetricsListener {
            acceptor: TlsAcceptor::from(Arc::new(metrics_tls)),
            app,
            settings: connection_settings(args, Vec::new()),
            state: state.clone(),
        };
        tokio::spawn(metrics_args.serve(listener));
    }

    Ok(())
}

/// `stateful-guard serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let client = cluster(&args, &metrics).await;
    let Certificates {
        files: certs,
        watched,
        bootstrap,
    } = certificates(&args, client.as_ref()).await?;
    let certs = Arc::new(certs);
    if let Some(t) = certs.not_after() {
        metrics.cert_not_after.set(t);
    }
    let client_roots = args
        .client_ca
        .as_deref()
        .map(tls::client_roots)
        .transpose()
        .context("reading --client-ca")?;
    let tls_config = certs
        .server_config_for(client_roots.clone())
        .context("building the TLS configuration")?;
    // The metrics listener takes no client certificate: its callers bring a token.
    let metrics_tls = certs
        .server_config()
        .context("building the TLS configuration")?;

    let store = Arc::new(PolicyStore::new(
        vec![args.namespace.clone()],
        metrics.clone(),
    ));
    let file_source = policies(&args, &store)?;

    let keep = if args.background_audit_interval().is_some() {
        Watches::Audit
    } else {
        Watches::Admission
    };
    let live = client
        .clone()
        .map(|client| ClusterCache::start_watching(client, keep, Some(metrics.clone())));
    let (audit, growth, elector_task) =
        start_leader_tasks(&args, live.as_ref(), client.as_ref(), &store, &metrics);
    let view: Arc<dyn ClusterView> = match &live {
        Some(cache) => Arc::new(cache.clone()),
        None => Arc::new(Snapshot::unknown()),
    };
    if args.policy_configmaps {
        match &client {
            Some(client) => {
                tokio::spawn(ConfigMapSource::default().watch(
                    client.clone(),
                    args.namespace.clone(),
                    store.clone(),
                ));
            }
            None => bail!("--policy-configmaps needs a cluster connection, and none was found"),
        }
    }

    let state = Arc::new(AppState {
        policies: store.clone(),
        cluster: view,
        live,
        metrics: metrics.clone(),
        uninterpretable: args.uninterpretable,
        statefulset_controllers: args.statefulset_controllers.clone(),
        shutting_down: Default::default(),
        certificate_ready: Arc::new(AtomicBool::new(bootstrap.is_none())),
        audit,
        growth,
    });
    let callers = Arc::new(
        if bootstrap.is_some() || args.webhook_token_file.is_some() {
            callers::Callers::with_token(client_roots.is_some())
        } else {
            callers::Callers::without_token(client_roots.is_some())
        },
    );
    if let Some(path) = &args.webhook_token_file {
        callers.set_tokens(&callers::read_tokens(path)?);
        tokio::spawn(callers::watch_token_file(
            callers.clone(),
            path.clone(),
            args.reload_interval,
        ));
    }
    let app = routes::router(
        state.clone(),
        callers.clone(),
        routes::Limits {
            max_body_bytes: args.max_body_bytes,
            body_read_timeout: args.body_read_timeout,
            in_flight: Arc::new(tokio::sync::Semaphore::new(args.max_in_flight.max(1))),
            budget: Arc::new(budget::MemoryBudget::new(
                args.memory_budget,
                args.memory_budget / 6,
                metrics.clone(),
            )),
        },
        args.metrics_listen.is_none(),
    );

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "serving HTTPS");

    if watched {
        tokio::spawn(certs.clone().watch(args.reload_interval, metrics.clone()));
    }
    if let Some((bootstrap, client)) = bootstrap {
        tokio::spawn(bootstrap.run(
            client,
            certs.clone(),
            state.certificate_ready.clone(),
            callers,
        ));
    }
    if let Some(source) = file_source {
        tokio::spawn(source.watch(store.clone(), args.reload_interval));
    }
    spawn_side_listeners(&args, &state, client.as_ref(), metrics_tls).await?;

    serve(
        listener,
        TlsAcceptor::from(Arc::new(tls_config)),
        app,
        &args,
        shutdown_signal(),
        &state,
    )
    .await;
    if let Some(task) = elector_task {
        // Released long ago unless the server stopped at once (--shutdown-delay 0s).
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// How each connection is served.
struct ConnSettings {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    /// The TLS handshake and the first request's headers, together.
    first_request: Duration,
    idle: Duration,
    write: Duration,
    /// With --client-names: a client certificate must name one of these.
    client_names: Vec<String>,
}

/// The HTTP settings of the HTTPS listeners.
fn connection_settings(args: &ServeArgs, client_names: Vec<String>) -> Arc<ConnSettings> {
    // The protocol is the one negotiated by ALPN (h2, else HTTP/1.1): hyper-util's automatic
    // detection would wait, without any timeout, for a first byte that a silent client never
    // sends.
    let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
    h1.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(args.header_read_timeout)
        .keep_alive(true);
    let mut h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
    h2.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(args.max_concurrent_streams);
    Arc::new(ConnSettings {
        h1,
        h2,
        first_request: args.header_read_timeout,
        idle: args.idle_timeout,
        write: args.write_timeout,
        client_names,
    })
}

/// The metrics listener: a small HTTPS server of its own, with its own share of connections.
struct MetricsListener {
    acceptor: TlsAcceptor,
    app: axum::Router,
    settings: Arc<ConnSettings>,
    state: Arc<AppState>,
}

/// Connections the metrics listener and the probe listener each keep open at most.
const SIDE_CONNECTIONS: usize = 64;
/// Connections one client may keep open on either.
const SIDE_PER_CLIENT: usize = 8;

/// The connection limits of a side listener.
struct SideLimits {
    open: Arc<tokio::sync::Semaphore>,
    per_client: Arc<conn::PerClient>,
}

impl SideLimits {
    fn new() -> Self {
        Self {
            open: Arc::new(tokio::sync::Semaphore::new(SIDE_CONNECTIONS)),
            per_client: conn::PerClient::new(SIDE_PER_CLIENT, Vec::new()),
        }
    }

    /// The next connection there is room for, with its share of the limits (a connection
    /// beyond them is closed at once).
    async fn accept(
        &self,
        listener: &TcpListener,
    ) -> (
        tokio::net::TcpStream,
        SocketAddr,
        (tokio::sync::OwnedSemaphorePermit, conn::ClientSlot),
    ) {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if let (Ok(permit), Some(slot)) = (
                self.open.clone().try_acquire_owned(),
                self.per_client.admit(peer.ip()),
            ) {
                return (tcp, peer, (permit, slot));
            }
        }
    }
}

impl MetricsListener {
    async fn serve(self, listener: TcpListener) {
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let side = SideLimits::new();
        loop {
            let (tcp, peer, held) = side.accept(&listener).await;
            let _ = tcp.set_nodelay(true);
            tokio::spawn(connection(
                tcp,
                peer,
                self.acceptor.clone(),
                self.app.clone(),
                self.settings.clone(),
                self.state.metrics.clone(),
                stopping.clone(),
                held,
            ));
        }
    }
}

/// The probe listener: plain HTTP/1.1, /healthz and /readyz, a few connections per client.
async fn serve_probes(listener: TcpListener, app: axum::Router) {
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .keep_alive(false);
    let http = Arc::new(http);
    let side = SideLimits::new();
    loop {
        let (tcp, _, held) = side.accept(&listener).await;
        let (http, app) = (http.clone(), app.clone());
        tokio::spawn(async move {
            let service = TowerToHyperService::new(app);
            let serve = http.serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(Duration::from_secs(10), serve).await;
            drop(held);
        });
    }
}

/// How often a connection checks its deadlines.
const TICK: Duration = Duration::from_millis(500);

/// The accept loop. On `shutdown`: readiness goes false, after `shutdown_delay` the listener
/// closes, every connection is asked to finish (HTTP/2 GOAWAY, HTTP/1.1 close after the
/// current answer), and in-flight requests get `shutdown_grace`.
///
/// Connections are bounded in number (`--max-connections`, and `--max-connections-per-client`
/// from one address unless it is in `--unlimited-clients`), in time before their first request
/// (`--header-read-timeout`, TLS handshake included), when idle (`--idle-timeout`; HTTP/2 PINGs
/// are not activity) and when the client stops reading (`--write-timeout`).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: axum::Router,
    args: &ServeArgs,
    shutdown: impl Future<Output = ()>,
    state: &AppState,
) {
    let settings = connection_settings(args, args.client_names.clone());
    let max = args.max_connections.max(1);
    let connections = Arc::new(tokio::sync::Semaphore::new(max));
    let per_client = conn::PerClient::new(
        args.max_connections_per_client,
        args.unlimited_clients.clone(),
    );
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut draining: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let (tcp, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown, if draining.is_none() => {
                // Readiness goes false now; keep serving while endpoints stop routing here.
                state.shutting_down.store(true, Ordering::Release);
                tracing::info!(delay = ?args.shutdown_delay, "shutting down: readiness is now false");
                draining = Some(Box::pin(tokio::time::sleep(args.shutdown_delay)));
                continue;
            }
            () = async { draining.as_mut().expect("guarded").as_mut().await }, if draining.is_some() => break,
        };
        let refuse = |reason: crate::metrics::Refusal| {
            state
                .metrics
                .refused
                .get_or_create(&crate::metrics::ReasonLabels { reason })
                .inc();
        };
        // A connection cap: one more is closed at once, never held.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refuse(crate::metrics::Refusal::Connections);
            tracing::warn!(%peer, max = args.max_connections, "connection refused: --max-connections reached");
            continue;
        };
        let Some(slot) = per_client.admit(peer.ip()) else {
            refuse(crate::metrics::Refusal::ClientConnections);
            tracing::warn!(%peer, max = args.max_connections_per_client, "connection refused: --max-connections-per-client reached");
            continue;
        };
        // A response goes out as soon as it is written: with Nagle's algorithm, a write behind
        // unacknowledged data (the TLS record after an HTTP/2 HEADERS frame) waits for the peer's
        // ACK, which the peer may delay. Go's net/http, kube-apiserver's side, sets the same.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        tokio::spawn(connection(
            tcp,
            peer,
            acceptor.clone(),
            app.clone(),
            settings.clone(),
            state.metrics.clone(),
            stopping.clone(),
            (permit, slot),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    tracing::info!("listener closed; waiting for in-flight requests");
    let closed = connections.acquire_many(max as u32);
    tokio::select! {
        _ = closed => tracing::info!("all connections closed"),
        () = tokio::time::sleep(args.shutdown_grace) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
}

/// Serves one connection until it ends, the server stops, or a deadline passes; `_held` (its
/// share of the connection limits) is given back when it does.
#[allow(clippy::too_many_arguments)]
async fn connection<H: Send>(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: axum::Router,
    settings: Arc<ConnSettings>,
    metrics: Arc<Metrics>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    _held: H,
) {
    // One deadline for the handshake and the first request's headers.
    let deadline = tokio::time::Instant::now() + settings.first_request;
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    // With --client-names: the client certificate (verified against --client-ca during the
    // handshake) must also name one of them.
    if !settings.client_names.is_empty() {
        let names = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| tls::certificate_names(leaf))
            .unwrap_or_default();
        if !names.iter().any(|n| settings.client_names.contains(n)) {
            metrics
                .refused
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: crate::metrics::Refusal::ClientName,
                })
                .inc();
            tracing::warn!(%peer, ?names, "client certificate names none of --client-names; closed");
            return;
        }
    }
    // Protocol from ALPN: h2 when negotiated, HTTP/1.1 otherwise.
    let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = Arc::new(conn::Activity::new());
    let service = TowerToHyperService::new(conn::Tracked {
        inner: app,
        activity: activity.clone(),
        peer,
    });
    let io = TokioIo::new(conn::WriteDeadline::new(tls, settings.write));
    let builder = if is_h2 { &settings.h2 } else { &settings.h1 };
    let mut conn = std::pin::pin!(builder.serve_connection(io, service));
    let count = |reason: crate::metrics::Refusal| {
        metrics
            .refused
            .get_or_create(&crate::metrics::ReasonLabels { reason })
            .inc();
    };
    let mut closing: Option<tokio::time::Instant> = None;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break Some(result),
            _ = stopping.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now());
            }
            () = tokio::time::sleep(TICK) => {
                let now = tokio::time::Instant::now();
                if !activity.has_requested() && now >= deadline {
                    count(crate::metrics::Refusal::NoRequest);
                    tracing::debug!(%peer, "no request within --header-read-timeout of the connection; closed");
                    break None;
                }
                if closing.is_none() && activity.has_requested() && activity.idle_for() >= settings.idle {
                    count(crate::metrics::Refusal::Idle);
                    tracing::debug!(%peer, "idle for --idle-timeout; closing");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(now);
                }
                // A client that does not go when asked (no GOAWAY acknowledged, no close read).
                if closing.is_some_and(|at| now.duration_since(at) > settings.write + settings.idle) {
                    break None;
                }
            }
        }
    };
    if let Some(Err(error)) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
