//! Per-request state of the proxy dispatcher.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tollgate_plugin_api::{PluginError, RequestContext, Scheme};

use crate::config::{PluginEntry, Route};
use crate::snapshot::Snapshot;

/// State carried through the phases of one request.
pub struct RequestState {
    /// The config version the request started with; it finishes on it.
    pub snapshot: Option<Arc<Snapshot>>,
    /// Index of the matched route in the snapshot.
    pub route: Option<usize>,
    /// What plugins see.
    pub ctx: RequestContext,
    /// Bytes of the path the route's prefix matched.
    pub prefix_len: usize,
    /// Targets already tried, in order.
    pub tried: Vec<usize>,
    /// An error decided by the gateway, answered by `fail_to_proxy`.
    pub error: Option<PluginError>,
    /// Status sent to the client by the gateway itself (0 if none).
    pub gateway_status: u16,
    /// When the request started.
    pub started: Instant,
}

fn unrouted() -> Arc<str> {
    static EMPTY: OnceLock<Arc<str>> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

impl RequestState {
    /// State before anything is known about the request.
    pub fn new() -> Self {
        Self {
            snapshot: None,
            route: None,
            ctx: RequestContext::new(String::new(), Scheme::Http, unrouted(), unrouted()),
            prefix_len: 0,
            tried: Vec::new(),
            error: None,
            gateway_status: 0,
            started: Instant::now(),
        }
    }

    /// The matched route, if any.
    pub fn route(&self) -> Option<&Route> {
        let snap = self.snapshot.as_ref()?;
        snap.config.routes.get(self.route?)
    }

    /// The plugins that apply to this request: the route's chain, or the global plugins when no
    /// route matched.
    pub fn plugins(&self) -> Option<Arc<[PluginEntry]>> {
        let snap = self.snapshot.as_ref()?;
        match self.route() {
            Some(r) => Some(r.plugins.clone()),
            None => Some(snap.config.global_plugins.clone()),
        }
    }
}

impl Default for RequestState {
    fn default() -> Self {
        Self::new()
    }
}
