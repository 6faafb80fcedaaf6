//! One config version as the proxy runs it: the validated config plus the runtime state built
//! from it (upstream clusters). Immutable once built; swapped whole behind an `ArcSwap`.

use crate::config::GatewayConfig;
use crate::upstream::Cluster;

/// Everything a request needs, from one config version.
pub struct Snapshot {
    /// Increases by one with every config that goes live.
    pub generation: u64,
    /// The validated config.
    pub config: GatewayConfig,
    /// Runtime state of each upstream, same index as `config.upstreams`.
    pub clusters: Vec<Cluster>,
}

impl Snapshot {
    /// Builds the runtime state for a validated config.
    pub fn new(config: GatewayConfig, generation: u64) -> Self {
        let clusters = config.upstreams.iter().cloned().map(Cluster::new).collect();
        Self {
            generation,
            config,
            clusters,
        }
    }
}
