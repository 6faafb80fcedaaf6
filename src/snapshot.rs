//! One config version as the proxy runs it: the validated config plus the runtime state built
//! from it (upstream clusters). Immutable once built; swapped whole behind an `ArcSwap`.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{GatewayConfig, PluginEntry};
use crate::handler::grpc::GrpcHandler;
use crate::handler::Handler;
use crate::upstream::{tasks, Cluster};

/// Everything a request needs, from one config version.
pub struct Snapshot {
    /// Increases by one with every config that goes live.
    pub generation: u64,
    /// The validated config.
    pub config: GatewayConfig,
    /// Runtime state of each upstream, same index as `config.upstreams`.
    pub clusters: Vec<Arc<Cluster>>,
    /// The handler of each route, same index as `config.routes`.
    pub handlers: Vec<Handler>,
    /// Stops the snapshot's background tasks (health checks, discovery) when set or dropped.
    stop: watch::Sender<bool>,
}

impl Snapshot {
    /// Builds the runtime state for a validated config. Nothing runs until `start_tasks`.
    pub fn new(config: GatewayConfig, generation: u64) -> Self {
        crate::telemetry::metrics::create_config_series(&config);
        let clusters = config
            .upstreams
            .iter()
            .cloned()
            .map(|u| Arc::new(Cluster::new(u)))
            .collect();
        let handlers = config
            .routes
            .iter()
            .map(|r| match &r.grpc {
                Some(t) => Handler::Serve(Arc::new(GrpcHandler::new(t.clone()))),
                None => Handler::Proxy,
            })
            .collect();
        let (stop, _) = watch::channel(false);
        Self {
            generation,
            config,
            clusters,
            handlers,
            stop,
        }
    }

    /// One round of discovery and health checks for every cluster, so the snapshot knows its
    /// targets and their health before it takes traffic.
    pub async fn prime(&self) {
        let rounds = self.clusters.iter().map(|c| tasks::prime(c));
        let plugins = self.plugins();
        let prepares = plugins.iter().map(|p| async move {
            if let Err(e) = p.plugin.prepare().await {
                tracing::error!(plugin = %p.name, error = %e, "plugin not ready; it keeps trying in the background");
            }
        });
        futures_util::future::join(
            futures_util::future::join_all(rounds),
            futures_util::future::join_all(prepares),
        )
        .await;
        // Reflection needs the upstream's targets, so it runs after discovery and checks.
        let reflections = self
            .reflecting_routes()
            .into_iter()
            .map(|(t, c)| async move {
                if let Err(e) = load_reflection(&t, &c).await {
                    tracing::error!(upstream = %c.name(), error = %e,
                    "gRPC schema by reflection not loaded; retrying in the background");
                }
            });
        futures_util::future::join_all(reflections).await;
    }

    /// Transcoding routes whose schema comes from reflection and is not loaded yet.
    fn reflecting_routes(&self) -> Vec<(Arc<crate::grpc::Transcoder>, Arc<Cluster>)> {
        self.config
            .routes
            .iter()
            .filter_map(|r| {
                let t = r.grpc.clone()?;
                let c = self.clusters.get(r.upstream)?.clone();
                (t.needs_reflection() && !t.is_ready()).then_some((t, c))
            })
            .collect()
    }

    /// Starts the background tasks of every cluster and plugin on the current tokio runtime.
    pub fn start_tasks(&self) {
        for c in &self.clusters {
            tasks::spawn(c.clone(), self.stop.subscribe());
        }
        for p in self.plugins() {
            let stop = self.stop.subscribe();
            tokio::spawn(async move { p.plugin.background(stop).await });
        }
        for (t, c) in self.reflecting_routes() {
            let mut stop = self.stop.subscribe();
            tokio::spawn(async move {
                while !t.is_ready() {
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                        _ = stop.changed() => return,
                    }
                    match load_reflection(&t, &c).await {
                        Ok(()) => {
                            tracing::info!(upstream = %c.name(), "gRPC schema loaded by reflection")
                        }
                        Err(e) => {
                            tracing::warn!(upstream = %c.name(), error = %e, "gRPC reflection failed; retrying")
                        }
                    }
                }
            });
        }
    }

    /// Every plugin instance of the snapshot once (a global plugin appears in every route's
    /// chain but is one instance).
    fn plugins(&self) -> Vec<PluginEntry> {
        let mut out: Vec<PluginEntry> = Vec::new();
        let chains = self
            .config
            .routes
            .iter()
            .flat_map(|r| r.plugins.iter())
            .chain(self.config.global_plugins.iter());
        for entry in chains {
            if !out.iter().any(|e| Arc::ptr_eq(&e.plugin, &entry.plugin)) {
                out.push(entry.clone());
            }
        }
        out
    }

    /// Stops the background tasks (the snapshot is being replaced).
    pub fn stop_tasks(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

/// Loads a route's gRPC schema from one of its upstream's targets.
async fn load_reflection(t: &crate::grpc::Transcoder, c: &Cluster) -> Result<(), String> {
    let target = c
        .select(None, &[])
        .ok_or_else(|| format!("upstream `{}` has no target to ask", c.name()))?;
    t.prepare_with(&*c.grpc_target(&target)?).await
}
