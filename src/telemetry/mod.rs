//! What the gateway tells operators: Prometheus metrics, the access log, OpenTelemetry traces.

pub mod access_log;
pub mod metrics;
pub mod trace;
