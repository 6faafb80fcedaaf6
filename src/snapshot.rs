//! One config version as the proxy runs it: the validated config plus the runtime state built
//! from it (upstream clusters). Immutable once built; swapped whole behind an `ArcSwap`.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{GatewayConfig, PluginEntry};
use crate::upstream::{tasks, Cluster};

/// Everything a request needs, from one config version.
pub struct Snapshot {
    /// Increases by one with every config that goes live.
    pub generation: u64,
    /// The validated config.
    pub config: GatewayConfig,
    /// Runtime state of each upstream, same index as `config.upstreams`.
    pub clusters: Vec<Arc<Cluster>>,
    /// Stops the snapshot's background tasks (health checks, discovery) when set or dropped.
    stop: watch::Sender<bool>,
}

impl Snapshot {
    /// Builds the runtime state for a validated config. Nothing runs until `start_tasks`.
    pub fn new(config: GatewayConfig, generation: u64) -> Self {
        let clusters = config
            .upstreams
            .iter()
            .cloned()
            .map(|u| Arc::new(Cluster::new(u)))
            .collect();
        let (stop, _) = watch::channel(false);
        Self {
            generation,
            config,
            clusters,
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
