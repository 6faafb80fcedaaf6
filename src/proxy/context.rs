//! Per-request state of the proxy dispatcher.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tollgate_plugin_api::{PluginError, RequestContext, Scheme};

use crate::config::{ClientLimits, PluginEntry, Route};
use crate::snapshot::{RouteRuntime, Snapshot};
use crate::telemetry::metrics::metrics;
use crate::telemetry::trace::{AttemptSpan, RequestSpan};
use crate::upstream::{Cluster, CounterGuard, Target, TargetLoad};

/// Holds one unit of the in-flight gauge for the life of a request, whatever path it ends on.
struct InFlightMetric;

impl InFlightMetric {
    fn new() -> Self {
        if let Some(m) = metrics() {
            m.in_flight.inc();
        }
        Self
    }
}

impl Drop for InFlightMetric {
    fn drop(&mut self) {
        if let Some(m) = metrics() {
            m.in_flight.dec();
        }
    }
}

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
    /// The route's upstream, once a target is being chosen.
    pub cluster: Option<Arc<Cluster>>,
    /// Addresses already tried, in order (inline: most requests make one attempt, and a heap
    /// allocation for it showed in every request's profile).
    pub tried: smallvec::SmallVec<[SocketAddr; 2]>,
    /// The target of the current attempt.
    pub target: Option<Arc<Target>>,
    /// Counts this request on the current target (least request).
    pub target_load: Option<TargetLoad>,
    /// Counts this request in flight on the upstream (circuit breaker, retry budget).
    pub in_flight: Option<CounterGuard>,
    /// Counts this attempt as waiting for a connection.
    pub pending: Option<CounterGuard>,
    /// Counts this request as a retry in flight (retry budget).
    pub retrying: Option<CounterGuard>,
    /// Retries made so far.
    pub retries: u32,
    /// The current attempt was ended by the gateway for a retryable status.
    pub status_retry: bool,
    /// The next attempt retries a refused connect, which the retry budget does not count.
    pub retry_after_connect_failure: bool,
    /// What the client gets if no further attempt can be made.
    pub last_failure: Option<PluginError>,
    /// Code of the error the gateway answered with, if it did (metrics, access log).
    pub gateway_code: Option<&'static str>,
    /// The request's server span, when traced.
    pub span: Option<RequestSpan>,
    /// The current upstream attempt's client span.
    pub attempt_span: Option<AttemptSpan>,
    /// When the current upstream attempt started.
    pub attempt_started: Option<Instant>,
    /// Time spent in upstream attempts so far.
    pub upstream_time: std::time::Duration,
    /// Counts the request in `tollgate_requests_in_flight` while it lives.
    _in_flight: InFlightMetric,
    /// An error decided by the gateway, answered by `fail_to_proxy`.
    pub error: Option<PluginError>,
    /// Status sent to the client by the gateway itself (0 if none).
    pub gateway_status: u16,
    /// When the request started (its pipeline did).
    pub started: Instant,
    /// When the request's head began to arrive, when the connection loop knows it (HTTP/1.x).
    pub head_started: Option<Instant>,
    /// The listener's client deadlines and path rules.
    pub limits: ClientLimits,
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
            cluster: None,
            tried: smallvec::SmallVec::new(),
            target: None,
            target_load: None,
            in_flight: None,
            pending: None,
            retrying: None,
            retries: 0,
            status_retry: false,
            retry_after_connect_failure: false,
            last_failure: None,
            gateway_code: None,
            span: None,
            attempt_span: None,
            attempt_started: None,
            upstream_time: std::time::Duration::ZERO,
            _in_flight: InFlightMetric::new(),
            error: None,
            gateway_status: 0,
            started: Instant::now(),
            head_started: None,
            limits: ClientLimits::default(),
        }
    }

    /// When the whole request must have arrived (`request_timeout`), if it is bounded.
    pub fn request_deadline(&self) -> Option<Instant> {
        let limit = self.limits.request_timeout?;
        Some(self.head_started.unwrap_or(self.started) + limit)
    }

    /// The matched route, if any.
    pub fn route(&self) -> Option<&Route> {
        let snap = self.snapshot.as_ref()?;
        snap.route(self.route?).map(|(r, _)| r)
    }

    /// The runtime objects of the matched route (transcoder, metric handles), if any.
    pub fn route_runtime(&self) -> Option<&RouteRuntime> {
        let snap = self.snapshot.as_ref()?;
        snap.route(self.route?).map(|(_, rt)| rt)
    }

    /// The plugins that apply to this request: the route's chain, or the global plugins when no
    /// route matched.
    pub fn plugins(&self) -> Option<Arc<[PluginEntry]>> {
        let snap = self.snapshot.as_ref()?;
        Some(snap.plugins_for(self.route))
    }
}

impl Default for RequestState {
    fn default() -> Self {
        Self::new()
    }
}
