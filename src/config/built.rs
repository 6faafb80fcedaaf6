//! What loading a config hands over: the plain model, and the objects validation had to build
//! to know the file is good. A plugin's config is checked by building the plugin, and a route's
//! `grpc` table by compiling its schema; their errors belong in the `FILE:LINE:COL` report of
//! `tollgate check`, so validation builds them, and `Snapshot::new` takes them over rather than
//! building them a second time.

use std::sync::Arc;

use tollgate_plugin_api::Plugin;

use super::model::GatewayConfig;

/// A valid config and the instances built while validating it.
#[derive(Debug)]
pub struct Built {
    /// The validated model, plain data.
    pub config: GatewayConfig,
    /// Plugin instances and transcoders, for `Snapshot::new`.
    pub instances: Instances,
}

/// Everything validation instantiated, indexed like the model.
#[derive(Debug, Default)]
pub struct Instances {
    /// The global `[plugins]`, in execution order (the chain of a request no route matched).
    pub global_plugins: Vec<PluginEntry>,
    /// One entry per route, same index as `GatewayConfig::routes`.
    pub routes: Vec<RouteInstances>,
}

/// The instances of one route.
#[derive(Debug)]
pub struct RouteInstances {
    /// The route's plugin chain (global plugins merged in), in execution order.
    pub plugins: Vec<PluginEntry>,
    /// The JSON ⇄ gRPC engine, when the route has a `grpc` table.
    pub transcoder: Option<Arc<crate::grpc::Transcoder>>,
}

/// One plugin of a chain.
#[derive(Clone)]
pub struct PluginEntry {
    /// Registered name.
    pub name: Arc<str>,
    /// Execution priority (higher first).
    pub priority: i32,
    /// Whether it came from the global `[plugins]` section.
    pub global: bool,
    /// The instance.
    pub plugin: Arc<dyn Plugin>,
}

// The instance is left out: plugins hold keys and secrets, and `Plugin` asks for no `Debug`.
impl std::fmt::Debug for PluginEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEntry")
            .field("name", &self.name)
            .field("priority", &self.priority)
            .field("global", &self.global)
            .finish_non_exhaustive()
    }
}

/// Execution order of a chain: priority, high first; the name breaks ties so that the order
/// never depends on the file's.
pub(super) fn sort_chain(chain: &mut [PluginEntry]) {
    chain.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
}
