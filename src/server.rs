//! Assembling the pingora server from a validated config: proxy services on the listeners, the
//! admin service, and process settings.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_proxy::ProxyServiceBuilder;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::admin::AdminApp;
use crate::config::{GatewayConfig, Listener};
use crate::proxy::Gateway;
use crate::snapshot::Snapshot;

/// Hands out the one certificate of a listener (loaded and checked at config time).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Builds the pingora server for a config. Listeners are bound when it runs.
pub fn build(config: GatewayConfig) -> Result<Server, String> {
    let mut conf = ServerConf {
        threads: config.server.threads,
        upstream_keepalive_pool_size: config.server.keepalive_pool_size,
        grace_period_seconds: Some(0),
        // pingora counts whole seconds; round up so "500ms" doesn't become "no waiting".
        graceful_shutdown_timeout_seconds: Some(
            config
                .server
                .graceful_shutdown_timeout
                .as_millis()
                .div_ceil(1000) as u64,
        ),
        ..ServerConf::default()
    };
    // Retries are decided by the proxy (fail_to_connect); this is only pingora's hard ceiling.
    conf.max_retries = 8;
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    let listeners = config.listeners.clone();
    let admin = config.admin.clone();
    let first = Snapshot::new(config, 1);
    prime(&first)?;
    let snapshot = Arc::new(ArcSwap::from_pointee(first));

    // pingora's h2c switch is per service, so listeners are grouped by it; TLS listeners don't
    // care and join the first group.
    let (with_h2c, without): (Vec<&Listener>, Vec<&Listener>) =
        listeners.iter().partition(|l| l.h2c || l.tls.is_some());
    for (group, h2c) in [(with_h2c, true), (without, false)] {
        if group.is_empty() {
            continue;
        }
        let mut options = HttpServerOptions::default();
        options.h2c = h2c;
        let mut service = ProxyServiceBuilder::new(&conf, Gateway::new(snapshot.clone()))
            .name(if h2c { "tollgate" } else { "tollgate-h1" })
            .server_options(options)
            .build();
        for l in group {
            let addr = l.address.to_string();
            match &l.tls {
                None => service.add_tcp(&addr),
                Some(tls) => {
                    let mut settings = TlsSettings::intermediate("", "")
                        .map_err(|e| format!("listener `{}`: {e}", l.name))?;
                    settings.set_cert_resolver(Arc::new(FixedCert(tls.certified_key.clone())));
                    if tls.h2 {
                        settings.enable_h2();
                    }
                    service.add_tls_with_settings(&addr, None, settings);
                }
            }
        }
        server.add_service(service);
    }

    server.add_service(background_service(
        "upstream tasks",
        UpstreamTasks {
            snapshot: snapshot.clone(),
        },
    ));

    if let Some(admin) = admin {
        let mut service = Service::new(
            "tollgate-admin".to_string(),
            AdminApp::new(snapshot.clone()),
        );
        service.add_tcp(&admin.address.to_string());
        server.add_service(service);
    }
    Ok(server)
}

/// Discovers and checks the first snapshot's targets before any listener opens, so the first
/// request already sees healthy targets (a temporary runtime: pingora's start later).
fn prime(snapshot: &Snapshot) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(snapshot.prime());
    Ok(())
}

/// Runs health checks and discovery for the live snapshot on a runtime of their own, so slow
/// checks never take a proxy worker's time.
struct UpstreamTasks {
    snapshot: Arc<ArcSwap<Snapshot>>,
}

#[async_trait::async_trait]
impl BackgroundService for UpstreamTasks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.snapshot.load().start_tasks();
        let _ = shutdown.changed().await;
        self.snapshot.load().stop_tasks();
    }
}
