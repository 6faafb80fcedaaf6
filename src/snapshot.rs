//! One config version as the proxy runs it: the validated config (plain data) and the runtime
//! objects built from it — the upstream clusters, each route's plugin chain, transcoder and
//! metric handles, the global plugin chain. Immutable once built; swapped whole behind an
//! `ArcSwap`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use std::collections::HashMap;

use crate::broker::{idempotency, Brokers};
use crate::config::{Built, GatewayConfig, PluginEntry, Route};
use crate::grpc::Transcoder;
use crate::handler::grpc::GrpcHandler;
use crate::handler::publish::PublishHandler;
use crate::handler::request_reply::{KeptReplies, RequestReplyHandler};
use crate::handler::subscribe::SubscribeHandler;
use crate::handler::Handler;
use crate::telemetry::metrics::{create_config_series, RouteMetrics};
use crate::upstream::{now_ms, tasks, Cluster};
use tollgate_plugin_api::BodyPlan;

/// Everything a request needs, from one config version.
pub struct Snapshot {
    /// Increases by one with every config that goes live.
    pub generation: u64,
    /// The validated config.
    pub config: GatewayConfig,
    /// Runtime state of each upstream, same index as `config.upstreams`.
    pub clusters: Vec<Arc<Cluster>>,
    /// The message brokers, same index as `config.brokers`.
    pub brokers: Brokers,
    /// The `Idempotency-Key` answers of each publish route that keeps them, by route name:
    /// kept across reloads while the route's settings do not change.
    idempotency: HashMap<Arc<str>, Arc<idempotency::Keys>>,
    /// The asynchronous replies of each request-reply route that offers them, by route name:
    /// kept across reloads while the route's settings do not change, so that a reload does not
    /// lose what clients poll for.
    replies: HashMap<Arc<str>, Arc<KeptReplies>>,
    /// Runtime objects of each route, same index as `config.routes`.
    routes: Vec<RouteRuntime>,
    /// The global plugins in execution order: the chain of a request no route matched.
    global_plugins: Arc<[PluginEntry]>,
    /// Stops the snapshot's background tasks (health checks, discovery) when set or dropped.
    stop: watch::Sender<bool>,
}

/// The runtime objects of one route.
pub struct RouteRuntime {
    /// Plugins of the route (global ones merged in), in execution order.
    pub plugins: Arc<[PluginEntry]>,
    /// HTTP/JSON → gRPC transcoding and gRPC-Web, when the route has a `grpc` table.
    pub transcoder: Option<Arc<Transcoder>>,
    /// What serves the route's requests.
    pub handler: Handler,
    /// What the route's plugins need of the request body.
    pub body_plan: BodyPlan,
    /// Its metric series, resolved on first use.
    pub metrics: RouteMetrics,
}

impl Snapshot {
    /// Builds the runtime state of a loaded config, taking over the plugins and transcoders its
    /// validation built. Nothing runs until `start_tasks`.
    pub fn new(built: Built, generation: u64) -> Self {
        Self::after(built, generation, None)
    }

    /// [`Snapshot::new`] for a config that replaces `previous`: its brokers whose settings did
    /// not change are `previous`'s (same connections).
    pub fn after(built: Built, generation: u64, previous: Option<&Snapshot>) -> Self {
        let Built { config, instances } = built;
        let brokers = Brokers::build(&config.brokers, previous.map(|p| &p.brokers));
        let idempotency = idempotency_stores(&config.routes, previous);
        let replies = reply_stores(&config.routes, previous);
        create_config_series(
            config.upstreams.iter().map(|u| &*u.name),
            config.routes.iter().map(|r| &*r.name),
        );
        let clusters = config
            .upstreams
            .iter()
            .cloned()
            .map(|u| Arc::new(Cluster::new(u)))
            .collect();
        let routes = instances
            .routes
            .into_iter()
            .zip(&config.routes)
            .map(|(r, route)| RouteRuntime {
                body_plan: BodyPlan::of_chain(r.plugins.iter().map(|e| &*e.plugin)),
                plugins: r.plugins.into(),
                handler: handler(
                    route,
                    r.transcoder.as_ref(),
                    &brokers,
                    &idempotency,
                    &replies,
                ),
                transcoder: r.transcoder,
                metrics: RouteMetrics::default(),
            })
            .collect();
        let (stop, _) = watch::channel(false);
        Self {
            generation,
            config,
            clusters,
            brokers,
            idempotency,
            replies,
            routes,
            global_plugins: instances.global_plugins.into(),
            stop,
        }
    }

    /// Route `id` of the route table: its config and its runtime objects.
    pub fn route(&self, id: usize) -> Option<(&Route, &RouteRuntime)> {
        Some((self.config.routes.get(id)?, self.routes.get(id)?))
    }

    /// The plugin chain of a request: its route's, or the global one when no route matched.
    pub fn plugins_for(&self, route: Option<usize>) -> Arc<[PluginEntry]> {
        match route.and_then(|id| self.routes.get(id)) {
            Some(r) => r.plugins.clone(),
            None => self.global_plugins.clone(),
        }
    }

    /// The global plugins, in execution order.
    pub fn global_plugins(&self) -> &[PluginEntry] {
        &self.global_plugins
    }

    /// Every target of every cluster as `(upstream, address, may take traffic now)`.
    pub fn target_availability(&self) -> Vec<(&str, SocketAddr, bool)> {
        let now = now_ms();
        let mut out = Vec::new();
        for c in &self.clusters {
            for t in c.targets().targets.iter() {
                out.push((c.name(), t.address, t.health.is_available(now)));
            }
        }
        out
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
    fn reflecting_routes(&self) -> Vec<(Arc<Transcoder>, Arc<Cluster>)> {
        self.config
            .routes
            .iter()
            .zip(&self.routes)
            .filter_map(|(r, rt)| {
                let t = rt.transcoder.clone()?;
                let c = self.clusters.get(r.upstream?)?.clone();
                (t.needs_reflection() && !t.is_ready()).then_some((t, c))
            })
            .collect()
    }

    /// Starts the background tasks of every cluster and plugin on the current tokio runtime.
    pub fn start_tasks(&self) {
        self.brokers.start();
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
            .routes
            .iter()
            .flat_map(|r| r.plugins.iter())
            .chain(self.global_plugins.iter());
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

/// A store of `Idempotency-Key` answers per publish route that keeps them; a route whose
/// settings did not change keeps `previous`'s store (and so its answers).
fn idempotency_stores(
    routes: &[Route],
    previous: Option<&Snapshot>,
) -> HashMap<Arc<str>, Arc<idempotency::Keys>> {
    routes
        .iter()
        .filter_map(|r| {
            let config = r.publish.as_ref()?.idempotency.as_ref()?;
            let kept = previous
                .and_then(|p| p.idempotency.get(&r.name))
                .filter(|s| s.config() == config)
                .cloned();
            Some((
                r.name.clone(),
                kept.unwrap_or_else(|| Arc::new(idempotency::Keys::new(config))),
            ))
        })
        .collect()
}

/// The asynchronous replies of each request-reply route that offers them; a route whose
/// settings did not change keeps `previous`'s.
fn reply_stores(
    routes: &[Route],
    previous: Option<&Snapshot>,
) -> HashMap<Arc<str>, Arc<KeptReplies>> {
    routes
        .iter()
        .filter_map(|r| {
            let config = r.request_reply.as_ref()?.respond_async.as_ref()?;
            let kept = previous
                .and_then(|p| p.replies.get(&r.name))
                .filter(|s| s.config() == config)
                .cloned();
            Some((
                r.name.clone(),
                kept.unwrap_or_else(|| Arc::new(KeptReplies::new(*config))),
            ))
        })
        .collect()
}

/// What serves a route: its publish, subscribe or request-reply table's broker, its
/// transcoder, or the proxy.
fn handler(
    route: &Route,
    transcoder: Option<&Arc<Transcoder>>,
    brokers: &Brokers,
    idempotency: &HashMap<Arc<str>, Arc<idempotency::Keys>>,
    replies: &HashMap<Arc<str>, Arc<KeptReplies>>,
) -> Handler {
    if let Some(rr) = &route.request_reply {
        if let Some(broker) = brokers.get(rr.broker) {
            return Handler::Serve(Arc::new(RequestReplyHandler::new(
                route.name.clone(),
                rr.clone(),
                broker.clone(),
                replies.get(&route.name).cloned(),
            )));
        }
    }
    if let Some(publish) = &route.publish {
        if let Some(broker) = brokers.get(publish.broker) {
            return Handler::Serve(Arc::new(PublishHandler::new(
                route.name.clone(),
                publish.clone(),
                broker.clone(),
                idempotency.get(&route.name).cloned(),
            )));
        }
    }
    if let Some(subscribe) = &route.subscribe {
        if let Some(broker) = brokers.get(subscribe.broker) {
            return Handler::Serve(Arc::new(SubscribeHandler::new(
                route.name.clone(),
                subscribe.clone(),
                broker.clone(),
            )));
        }
    }
    match transcoder {
        Some(t) => Handler::Serve(Arc::new(GrpcHandler::new(t.clone()))),
        None => Handler::Proxy,
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

/// Why a route's gRPC schema could not be loaded by reflection this time (retried).
#[derive(Debug, thiserror::Error)]
enum LoadReflectionError {
    /// The upstream has no target to ask (none found yet, or none available).
    #[error("upstream `{0}` has no target to ask")]
    NoTarget(String),
    /// The TLS client for the target could not be set up.
    #[error(transparent)]
    Target(#[from] crate::grpc::TargetError),
    /// The target's reflection service did not give a schema.
    #[error(transparent)]
    Reflection(#[from] crate::grpc::ReflectionError),
}

/// Loads a route's gRPC schema from one of its upstream's targets.
async fn load_reflection(t: &Transcoder, c: &Cluster) -> Result<(), LoadReflectionError> {
    let target = c
        .select(None, &[])
        .ok_or_else(|| LoadReflectionError::NoTarget(c.name().to_string()))?;
    Ok(t.prepare_with(&*c.grpc_target(&target)?).await?)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::Snapshot;

    fn snapshot(text: &str) -> Snapshot {
        let registry = crate::plugins::builtin_registry();
        match crate::config::load_str(Path::new("gateway.toml"), text, &registry) {
            Ok(built) => Snapshot::new(built, 1),
            Err(e) => panic!("{e}"),
        }
    }

    const TEXT: &str = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
                        [plugins.request-id]\n\
                        [upstreams.u]\ntargets = [\"127.0.0.1:3000\", \"127.0.0.1:3001\"]\n\
                        [routes.a]\nprefix = \"/a\"\nupstream = \"u\"\n\
                        [routes.a.plugins.headers]\n\
                        [routes.b]\nprefix = \"/b\"\nupstream = \"u\"\n";

    #[test]
    fn each_route_has_its_runtime_objects_and_unrouted_requests_get_the_globals() {
        let snap = snapshot(TEXT);
        let (a, runtime) = snap.route(0).expect("route a");
        assert_eq!(&*a.name, "a");
        let names = |chain: &[crate::config::PluginEntry]| -> Vec<String> {
            chain.iter().map(|p| p.name.to_string()).collect()
        };
        assert_eq!(names(&runtime.plugins), ["request-id", "headers"]);
        assert!(runtime.transcoder.is_none());
        assert!(snap.route(2).is_none());
        assert_eq!(names(&snap.plugins_for(None)), ["request-id"]);
        assert_eq!(names(&snap.plugins_for(Some(1))), ["request-id"]);
        assert_eq!(names(&snap.plugins_for(Some(7))), ["request-id"]);
    }

    /// A global plugin is one instance, whichever chain runs it (its state, such as rate-limit
    /// buckets, is shared).
    #[test]
    fn a_global_plugin_is_one_instance_in_every_chain() {
        let snap = snapshot(TEXT);
        let global = &snap.global_plugins()[0].plugin;
        for id in [0, 1] {
            let chain = snap.plugins_for(Some(id));
            assert!(chain.iter().any(|p| Arc::ptr_eq(&p.plugin, global)));
        }
        assert_eq!(snap.plugins().len(), 2);
    }

    #[test]
    fn clusters_and_target_availability_follow_the_upstreams() {
        let snap = snapshot(TEXT);
        assert_eq!(snap.clusters.len(), 1);
        let targets: Vec<(String, String, bool)> = snap
            .target_availability()
            .into_iter()
            .map(|(u, a, ok)| (u.to_string(), a.to_string(), ok))
            .collect();
        assert_eq!(
            targets,
            [
                ("u".to_string(), "127.0.0.1:3000".to_string(), true),
                ("u".to_string(), "127.0.0.1:3001".to_string(), true),
            ]
        );
    }
}
