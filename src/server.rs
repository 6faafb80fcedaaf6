//! Assembling the pingora server from a validated config: proxy services on the listeners, the
//! admin service, and process settings.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::admin::AdminApp;
use crate::config::{Built, ClientAuth, Listener, ServerSettings};
use crate::proxy::tls::TlsEndpoints;
use crate::proxy::{BoundListeners, Front, Gateway};
use crate::reload::Reloader;
use crate::snapshot::Snapshot;

/// How long an HTTP/2 connection may stay open with no stream: the HTTP/1.1 keep-alive time.
const H2_IDLE_SECS: u64 = 60;

/// Hands out a listener's certificate as the live snapshot has it, so a reload (or a renewed
/// file, which the watcher turns into one) changes the certificate of new handshakes while
/// connections already made keep theirs. The certificate the listener started with is kept for a
/// listener the live config no longer has (or has without TLS): removing either needs a restart,
/// and until then the socket keeps serving.
struct LiveCert {
    snapshot: Arc<ArcSwap<Snapshot>>,
    listener: String,
    started_with: Arc<CertifiedKey>,
}

impl std::fmt::Debug for LiveCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCert")
            .field("listener", &self.listener)
            .finish()
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let live = self.snapshot.load();
        let current = live
            .config
            .listeners
            .iter()
            .find(|l| l.name == self.listener)
            .and_then(|l| l.tls.as_ref())
            .map(|t| t.certified_key.clone());
        Some(current.unwrap_or_else(|| self.started_with.clone()))
    }
}

/// Why the gateway cannot start; `main` prints it and exits.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another tollgate owns the upgrade socket.
    #[error(transparent)]
    UpgradeSocket(#[from] crate::upgrade_lock::SocketInUse),
    /// A listening address is taken.
    #[error(
        "{what}: {addr} is already in use (another process listens there; several tollgates on \
         one host each need their own listener addresses, `[admin] address` and \
         `[server] upgrade_sock`; for a zero-downtime replacement use `tollgate --upgrade`)"
    )]
    AddressInUse {
        /// Which listener.
        what: String,
        /// Its address.
        addr: std::net::SocketAddr,
    },
    /// A listening address cannot be bound otherwise.
    #[error("{what}: {addr} cannot be bound: {error}")]
    Bind {
        /// Which listener.
        what: String,
        /// Its address.
        addr: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The access log cannot be opened.
    #[error(transparent)]
    AccessLog(#[from] crate::telemetry::access_log::AccessLogError),
    /// The runtime that primes the first snapshot cannot start.
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    /// pingora refused a listener's TLS settings.
    #[error("listener `{listener}`: {error}")]
    Tls {
        /// The listener.
        listener: String,
        /// pingora's error.
        error: Box<pingora_error::Error>,
    },
}

/// Builds the pingora server for a config. Listeners are bound when it runs.
pub fn build(
    built: Built,
    path: std::path::PathBuf,
    registry: tollgate_plugin_api::PluginRegistry,
    upgrade: bool,
) -> Result<Server, StartError> {
    let config = &built.config;
    let conf = server_conf(&config.server);
    // First: a second instance started by mistake is told so, whatever else it shares.
    crate::upgrade_lock::acquire(&config.server.upgrade_sock, upgrade)?;
    if !upgrade {
        let admin_addr = config.admin.as_ref().map(|a| {
            (
                "the admin listener (`[admin] address`)".to_string(),
                a.address,
            )
        });
        let addrs = config
            .listeners
            .iter()
            .map(|l| (format!("listener `{}`", l.name), l.address))
            .chain(admin_addr);
        check_bindable(addrs)?;
    }
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    let listeners = config.listeners.clone();
    let admin = config.admin.clone();
    crate::telemetry::access_log::configure(config.access_log.sink.as_ref())?;
    let tracing_settings = config.tracing.clone();
    crate::certificates::warn_expired(&built.config);
    let first = Snapshot::new(built, 1);
    prime(&first)?;
    let snapshot = Arc::new(ArcSwap::from_pointee(first));
    let reloader = Arc::new(Reloader::new(path, registry, snapshot.clone()));

    // pingora's h2c switch is per service, so listeners are grouped by it (TLS listeners don't
    // care and join the first group): one service, one worker runtime per group. Each
    // connection finds its listener's client limits by its local address.
    let bound = Arc::new(BoundListeners::new(&listeners));
    let (with_h2c, without): (Vec<&Listener>, Vec<&Listener>) =
        listeners.iter().partition(|l| l.h2c || l.tls.is_some());
    for (group, h2c) in [(with_h2c, true), (without, false)] {
        if group.is_empty() {
            continue;
        }
        let service = proxy_service(&group, h2c, &snapshot, &bound, &conf)?;
        server.add_service(service);
    }

    server.add_service(background_service(
        "upstream tasks",
        Background {
            snapshot: snapshot.clone(),
            reloader: reloader.clone(),
            tracing: tracing_settings,
        },
    ));

    if let Some(admin) = admin {
        let mut service = Service::new(
            "tollgate-admin".to_string(),
            AdminApp::new(snapshot.clone(), reloader.clone()),
        );
        service.add_tcp(&admin.address.to_string());
        server.add_service(service);
    }
    Ok(server)
}

/// pingora's settings for the process.
fn server_conf(server: &ServerSettings) -> ServerConf {
    let mut conf = ServerConf {
        threads: server.threads,
        upstream_keepalive_pool_size: server.keepalive_pool_size,
        // pingora keeps serving in-flight requests for the grace period (listeners closed),
        // then drops what is left; `Background` ends the process early once nothing is in
        // flight, so an idle gateway exits at once.
        grace_period_seconds: Some(
            server.graceful_shutdown_timeout.as_millis().div_ceil(1000) as u64
        ),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    // Retries are decided by the proxy (retry policy); this is only pingora's hard ceiling.
    conf.max_retries = 16;
    conf.upgrade_sock = server.upgrade_sock.display().to_string();
    conf
}

/// The proxy service of a group of listeners that share pingora's h2c switch.
fn proxy_service(
    group: &[&Listener],
    h2c: bool,
    snapshot: &Arc<ArcSwap<Snapshot>>,
    bound: &Arc<BoundListeners>,
    conf: &Arc<ServerConf>,
) -> Result<Service<Front>, StartError> {
    let mut options = HttpServerOptions::default();
    options.h2c = h2c;
    // An HTTP/2 connection with no stream open is closed like an idle HTTP/1.1 keep-alive
    // connection; it also bounds a client that trickles a HEADERS block that never ends.
    options.h2_idle_timeout = Some(std::time::Duration::from_secs(H2_IDLE_SECS));
    let gateway = Gateway::new(snapshot.clone(), bound.clone());
    let mut proxy = HttpProxy::new(gateway, conf.clone());
    proxy.server_options = Some(options);
    proxy.handle_init_modules();
    let name = if h2c { "tollgate" } else { "tollgate-h1" };
    let mut tls_endpoints = TlsEndpoints::default();
    let mut bindings = Vec::new();
    for l in group {
        let addr = l.address.to_string();
        match &l.tls {
            // No read buffer under plaintext HTTP: pingora reads request heads and bodies
            // into buffers of its own, so a second 64 KiB one per connection saves no
            // syscall (same instructions per request) and costs ~4 KiB of RSS per idle
            // keep-alive connection (BENCHMARKS.md, optimisation log). TLS keeps it: records
            // arrive in 16 KiB pieces and the buffer batches their reads.
            None => bindings
                .push(ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(0))),
            // Bound as TCP: the connection loop handshakes, under the listener's
            // handshake_timeout and without pingora's error line per failed handshake
            // (src/proxy/tls.rs).
            Some(tls) => {
                let mut settings =
                    crate::proxy::tls::settings().map_err(|error| StartError::Tls {
                        listener: l.name.to_string(),
                        error,
                    })?;
                settings.set_cert_resolver(Arc::new(LiveCert {
                    snapshot: snapshot.clone(),
                    listener: l.name.to_string(),
                    started_with: tls.certified_key.clone(),
                }));
                if let ClientAuth::Verify { trust, .. } = &tls.client_auth {
                    settings.set_client_cert_verifier(trust.verifier.clone());
                }
                if tls.h2 {
                    settings.enable_h2();
                }
                tls_endpoints.add(&l.name, l.address, settings, tls.handshake_timeout);
                bindings.push(ListenerConfig::tcp(addr));
            }
        }
    }
    let front = Front::new(proxy, snapshot.clone(), bound.clone()).with_tls(tls_endpoints);
    let mut service = Service::new(name.to_string(), front);
    for binding in bindings {
        service.add_listener(binding);
    }
    Ok(service)
}

/// Fails start-up when a listening address is taken. pingora retries a busy address for half
/// a minute and meanwhile the admin API answers, so a second gateway (or anything else) on the
/// port would otherwise look like a healthy start while its clients reach the other process.
/// Not for `--upgrade`, where the old process holds the ports on purpose.
fn check_bindable(
    addrs: impl Iterator<Item = (String, std::net::SocketAddr)>,
) -> Result<(), StartError> {
    for (what, addr) in addrs {
        if let Err(error) = std::net::TcpListener::bind(addr) {
            return Err(if error.kind() == std::io::ErrorKind::AddrInUse {
                StartError::AddressInUse { what, addr }
            } else {
                StartError::Bind { what, addr, error }
            });
        }
    }
    Ok(())
}

/// Discovers and checks the first snapshot's targets before any listener opens, so the first
/// request already sees healthy targets (a temporary runtime: pingora's start later).
fn prime(snapshot: &Snapshot) -> Result<(), StartError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    rt.block_on(snapshot.prime());
    Ok(())
}

/// The gateway's own background work, on a runtime of its own so it never takes a proxy
/// worker's time: the live snapshot's health checks, discovery and plugin tasks, reload triggers
/// (SIGHUP, file watch) and the trace exporter.
struct Background {
    snapshot: Arc<ArcSwap<Snapshot>>,
    reloader: Arc<Reloader>,
    tracing: crate::telemetry::trace::TracingSettings,
}

#[async_trait::async_trait]
impl BackgroundService for Background {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        crate::telemetry::trace::install_plugin_spans();
        if let Err(e) = crate::telemetry::trace::init(&self.tracing) {
            tracing::error!(error = %e, "tracing disabled");
        }
        self.snapshot.load().start_tasks();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        self.reloader
            .start_watching(tokio::runtime::Handle::current());
        // Listening before readiness is reported: a SIGHUP sent right after must not be lost
        // (nor, inherited as ignored, dropped) while the task has yet to run.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        tokio::spawn(sighup_reloads(self.reloader.clone(), hup, stop_rx));
        // Brokers get their first connection attempt before the gateway says it is ready.
        let snapshot = self.snapshot.load_full();
        snapshot
            .brokers
            .settle(snapshot.brokers.longest_connect())
            .await;
        // Services start together; by the time this runs the listeners are bound.
        self.reloader.set_ready();
        let _ = shutdown.changed().await;
        let graceful = *shutdown.borrow();
        // Streams to subscribers never end by themselves: they end now, so that the drain
        // waits for requests, not for clients' patience.
        crate::handler::subscribe::close_streams();
        let _ = stop_tx.send(true);
        self.reloader.stop_watching();
        self.snapshot.load().stop_tasks();
        if graceful {
            drain().await;
        }
        crate::telemetry::trace::shutdown();
        crate::telemetry::access_log::shutdown();
        if graceful {
            tracing::info!("drained; exiting");
            std::process::exit(0);
        }
    }
}

/// Reloads the config on every SIGHUP.
async fn sighup_reloads(
    reloader: Arc<Reloader>,
    hup: std::io::Result<tokio::signal::unix::Signal>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(mut hup) = hup else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /reload instead");
        return;
    };
    loop {
        tokio::select! {
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                let _ = reloader.reload("SIGHUP").await;
            }
            _ = stop.changed() => return,
        }
    }
}

/// Waits until no request is in flight (seen twice in a row, so a connection accepted just before
/// the listeners closed gets to register its request). pingora's grace period bounds the wait.
async fn drain() {
    let in_flight = || crate::telemetry::metrics::metrics().map_or(0, |m| m.in_flight.get());
    let mut idle_checks = 0;
    while idle_checks < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        idle_checks = if in_flight() == 0 { idle_checks + 1 } else { 0 };
    }
}
