//! What a finished request leaves behind: its access log line and request metrics. One entry
//! type for requests that went through the pipeline and for heads refused before it
//! (src/proxy/head.rs), so both are logged and counted alike.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;

use crate::telemetry::metrics::{method_label, metrics, status_class};

/// Route label of requests that matched no route.
pub const NO_ROUTE: &str = "(none)";

/// One finished request, as the access log sees it.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub trace_id: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub protocol: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub target: Option<SocketAddr>,
    pub status: u16,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration: Duration,
    pub upstream_time: Duration,
    pub attempts: usize,
    pub error: Option<&'a str>,
}

/// Writes `entry` to the access log with the configured `fields` (all when empty).
pub fn access_log(fields: &[String], e: &Entry<'_>) {
    let opt = |v: Option<String>| v.map_or(Value::Null, Value::String);
    let values: Vec<(&'static str, Value)> = vec![
        (
            "time",
            Value::String(
                humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            ),
        ),
        ("request_id", Value::String(e.request_id.to_owned())),
        ("trace_id", opt(e.trace_id.clone())),
        ("client_ip", opt(e.client_ip.map(|ip| ip.to_string()))),
        ("method", Value::String(e.method.to_owned())),
        ("host", opt(e.host.map(str::to_owned))),
        ("path", Value::String(e.path.to_owned())),
        ("query", opt(e.query.map(str::to_owned))),
        ("protocol", Value::String(e.protocol.to_owned())),
        ("route", Value::String(e.route.to_owned())),
        ("upstream", Value::String(e.upstream.to_owned())),
        ("target", opt(e.target.map(|t| t.to_string()))),
        ("status", Value::from(e.status)),
        ("bytes_sent", Value::from(e.bytes_sent)),
        ("bytes_received", Value::from(e.bytes_received)),
        (
            "duration_ms",
            Value::from(e.duration.as_secs_f64() * 1000.0),
        ),
        (
            "upstream_ms",
            Value::from(e.upstream_time.as_secs_f64() * 1000.0),
        ),
        ("attempts", Value::from(e.attempts)),
        ("error", opt(e.error.map(str::to_owned))),
    ];
    crate::telemetry::access_log::write(crate::telemetry::access_log::line(fields, &values));
}

/// Counts a request that matched no route (a route's own requests are counted by its
/// pre-resolved handles, `RouteMetrics`).
pub fn count_unrouted(method: &http::Method, status: u16, elapsed: Duration) {
    if let Some(m) = metrics() {
        m.requests
            .with_label_values(&[NO_ROUTE, method_label(method), status_class(status)])
            .inc();
        m.request_duration
            .with_label_values(&[NO_ROUTE])
            .observe(elapsed.as_secs_f64());
    }
}
