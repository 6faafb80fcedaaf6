//! The errors of tracing: `SettingsError`, a mistake in `[tracing]` or an `OTEL_*` variable
//! (config places it in its report), and `PipelineError`, an exporter that could not start.

use opentelemetry_otlp::ExporterBuildError;
use opentelemetry_sdk::error::OTelSdkError;

use super::settings::{Protocol, SAMPLERS};

/// A mistake in the tracing settings: where it was written (a key of `[tracing]` or a variable's
/// name) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct SettingsError {
    /// The key or variable.
    pub at: &'static str,
    /// What is wrong with it.
    pub problem: SettingProblem,
}

/// What is wrong with one setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingProblem {
    /// `http/json`, which the exporter does not speak.
    #[error("`http/json` is not supported; use \"http/protobuf\" or \"grpc\"")]
    JsonProtocol,
    /// A protocol OTLP does not have.
    #[error("unknown protocol `{0}`, expected \"grpc\" or \"http/protobuf\"")]
    UnknownProtocol(String),
    /// An endpoint that is not a URL (quoted with its credentials redacted).
    #[error("`{url}` is not a URL ({reason}); {}", hint(*.protocol))]
    NotAUrl {
        /// The endpoint as written, redacted.
        url: String,
        /// Why it does not parse.
        reason: String,
        /// The protocol, for the example.
        protocol: Protocol,
    },
    /// A scheme other than http and https.
    #[error("`{url}`: scheme `{scheme}` is not http or https; {}", hint(*.protocol))]
    BadScheme {
        /// The endpoint as written, redacted.
        url: String,
        /// Its scheme.
        scheme: String,
        /// The protocol, for the example.
        protocol: Protocol,
    },
    /// An endpoint without a scheme.
    #[error("`{url}` has no scheme; {}", hint(*.protocol))]
    NoScheme {
        /// The endpoint as written, redacted.
        url: String,
        /// The protocol, for the example.
        protocol: Protocol,
    },
    /// An endpoint without a host.
    #[error("`{url}` has no host; {}", hint(*.protocol))]
    NoHost {
        /// The endpoint as written, redacted.
        url: String,
        /// The protocol, for the example.
        protocol: Protocol,
    },
    /// An endpoint with a query string.
    #[error("`{0}`: a collector endpoint takes no query string")]
    QueryString(String),
    /// Credentials in the endpoint and an `authorization` header.
    #[error("credentials in the URL and an `authorization` header are both given; keep one")]
    CredentialsTwice,
    /// An empty service name.
    #[error("must not be empty")]
    Empty,
    /// A ratio outside [0, 1].
    #[error("must be between 0 and 1, got {0}")]
    Ratio(f64),
    /// A sampler argument that is not a number.
    #[error("`{0}` is not a number")]
    NotANumber(String),
    /// A sampler OpenTelemetry does not name.
    #[error("unknown sampler `{0}`, expected one of {samplers}", samplers = SAMPLERS.join(", "))]
    UnknownSampler(String),
    /// A timeout variable that is not whole milliseconds.
    #[error("`{0}` is not a positive number of milliseconds")]
    NotMilliseconds(String),
    /// A duration humantime cannot read.
    #[error("invalid duration `{text}`: {reason} (write e.g. \"500ms\", \"10s\")")]
    BadDuration {
        /// The duration as written.
        text: String,
        /// humantime's reason.
        reason: String,
    },
    /// A duration of zero.
    #[error("`{0}` must be longer than zero")]
    ZeroDuration(String),
    /// `max_queue_size` out of bounds.
    #[error("must be between 1 and {max}, got {got}")]
    QueueSize {
        /// The largest allowed.
        max: usize,
        /// The value given.
        got: usize,
    },
    /// `max_export_batch_size` out of bounds.
    #[error("must be between 1 and max_queue_size ({queue}), got {got}")]
    BatchSize {
        /// The queue size it may not exceed.
        queue: usize,
        /// The value given.
        got: usize,
    },
    /// A header name HTTP does not allow.
    #[error("`{0}` is not a valid header name")]
    HeaderName(String),
    /// A header value HTTP does not allow; the value is never echoed, it is often a secret.
    #[error("the value of `{0}` is not a valid header value (visible ASCII only)")]
    HeaderValue(String),
    /// Binary gRPC metadata.
    #[error("`{0}`: binary (`-bin`) gRPC metadata is not supported")]
    BinaryMetadata(String),
}

/// An example endpoint for `protocol`.
fn hint(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Grpc => "write e.g. \"http://127.0.0.1:4317\"",
        Protocol::HttpProtobuf => "write e.g. \"http://127.0.0.1:4318\"",
    }
}

/// Why the exporter could not start, or a flush failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The exporter's own runtime could not start.
    #[error("cannot start the trace exporter's runtime: {0}")]
    Runtime(std::io::Error),
    /// The OTLP exporter refused its settings.
    #[error("cannot start the trace exporter for `{endpoint}`: {error}")]
    Exporter {
        /// The collector URL.
        endpoint: String,
        /// The exporter's error.
        error: ExporterBuildError,
    },
    /// A flush failed or timed out.
    #[error("flushing traces: {0}")]
    Flush(OTelSdkError),
}

impl SettingsError {
    /// `problem` at `at`.
    pub(super) fn new(at: &'static str, problem: SettingProblem) -> Self {
        Self { at, problem }
    }
}
