//! PLACEHOLDER (a helper is writing the real module): OpenTelemetry tracing. The API below is the
//! contract the proxy calls; this version records nothing.

use std::net::IpAddr;

use pingora_http::RequestHeader;
use serde::Deserialize;

/// `[tracing]` of gateway.toml as serde reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {}

/// Validated tracing settings.
#[derive(Debug, Clone, Default)]
pub struct TracingSettings {}

impl TracingSection {
    /// Validates the section (and the standard OTEL_* variables).
    pub fn validate(&self) -> Result<TracingSettings, String> {
        Ok(TracingSettings {})
    }
}

/// Starts the exporter; call once, inside a tokio runtime that lives as long as the process.
pub fn init(_settings: &TracingSettings) -> Result<(), String> {
    Ok(())
}

/// Flushes and stops the exporter (on shutdown).
pub fn shutdown() {}

/// The server span of one request.
pub struct RequestSpan {}

impl RequestSpan {
    /// Starts the span for a request (extracting `traceparent`/`tracestate`); `None` when tracing
    /// is off or the request is not sampled.
    pub fn start(
        _req: &RequestHeader,
        _client: Option<IpAddr>,
        _server_address: Option<&str>,
        _protocol_version: &str,
    ) -> Option<Self> {
        None
    }

    /// Names the span `{method} {http_route}` and records the route and upstream.
    pub fn set_route(&mut self, _http_route: &str, _route: &str, _upstream: &str) {}

    /// Starts a client span for one upstream attempt (each retry its own).
    pub fn start_attempt(&self, _peer: &str, _attempt: u32) -> AttemptSpan {
        AttemptSpan {}
    }

    /// The trace id (32 hex digits), for the access log.
    pub fn trace_id(&self) -> Option<String> {
        None
    }

    /// Ends the span with the status sent to the client.
    pub fn finish(self, _status: u16, _error_type: Option<&str>) {}
}

/// The client span of one upstream attempt.
pub struct AttemptSpan {}

impl AttemptSpan {
    /// Writes `traceparent` (and `tracestate`) of this attempt into the upstream request.
    pub fn inject(&self, _req: &mut RequestHeader) {}

    /// Ends the span with the upstream's status, or the error that ended the attempt.
    pub fn finish(self, _status: Option<u16>, _error_type: Option<&str>) {}
}
