//! Per-request state of the proxy dispatcher.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tollgate_plugin_api::{RequestContext, Scheme};

use crate::config::{ClientLimits, PluginEntry, Route};
use crate::error::GatewayError;
use crate::snapshot::{RouteRuntime, Snapshot};
use crate::telemetry::metrics::metrics;
use crate::telemetry::trace::{AttemptSpan, RequestSpan};
use crate::upstream::{Attempt, Target};

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
    /// The tries at the route's upstream, once the handler sends the request there.
    pub attempt: Option<Attempt>,
    /// The whole request body, when the route's plugins had it read before the handler.
    pub buffered_body: Option<bytes::Bytes>,
    /// The current try was ended by the gateway for a retryable status.
    pub status_retry: bool,
    /// An error decided by the gateway, answered by `fail_to_proxy`.
    pub error: Option<GatewayError>,
    /// Code of the error the gateway answered with, if it did (metrics, access log).
    pub gateway_code: Option<&'static str>,
    /// Status sent to the client by the gateway itself (0 if none).
    pub gateway_status: u16,
    /// The request's server span, when traced.
    pub span: Option<RequestSpan>,
    /// The current upstream try's client span.
    pub attempt_span: Option<AttemptSpan>,
    /// When the request started (its pipeline did).
    pub started: Instant,
    /// When the request's head began to arrive, when the connection loop knows it (HTTP/1.x).
    pub head_started: Option<Instant>,
    /// The listener's client deadlines and path rules.
    pub limits: ClientLimits,
    /// Counts the request in `tollgate_requests_in_flight` while it lives.
    _in_flight: InFlightMetric,
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
            attempt: None,
            buffered_body: None,
            status_retry: false,
            error: None,
            gateway_code: None,
            gateway_status: 0,
            span: None,
            attempt_span: None,
            started: Instant::now(),
            head_started: None,
            limits: ClientLimits::default(),
            _in_flight: InFlightMetric::new(),
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

    /// The target of the current (or last) upstream try.
    pub fn target(&self) -> Option<&Arc<Target>> {
        self.attempt.as_ref().and_then(Attempt::target)
    }
}

impl Default for RequestState {
    fn default() -> Self {
        Self::new()
    }
}
