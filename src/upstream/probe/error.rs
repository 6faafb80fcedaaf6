//! `ProbeError`: why one active check found a target unhealthy. Its `Display` is the reason the
//! logs and `/upstreams` show, so each says what a person can look at on the target.

use std::io;
use std::time::Duration;

use http::HeaderValue;
use tollgate_plugin_api::error_chain;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer within the check's timeout.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// Nothing listens on the target's port.
    #[error("connect refused")]
    ConnectRefused,
    /// The TCP connect failed otherwise.
    #[error("connect failed: {0}")]
    Connect(io::Error),
    /// The TLS handshake failed (untrusted or mismatched certificate, client certificate
    /// refused, no common protocol).
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// The upstream's TLS client cannot be set up (no system CAs, an SNI that is no name).
    #[error("{0}")]
    TlsSetup(crate::grpc::TargetError),
    /// The check's path and host make no request target.
    #[error("invalid request target `{authority}` `{path}`")]
    InvalidTarget {
        /// The authority (`host` or the target's address).
        authority: String,
        /// The path of the check.
        path: String,
    },
    /// The request could not be built.
    #[error("invalid request: {0}")]
    InvalidRequest(http::Error),
    /// The host is not a valid `Host` header.
    #[error("invalid host `{0}`")]
    InvalidHost(String),
    /// The HTTP/1.1 or HTTP/2 handshake failed.
    #[error("{version} handshake failed: {}", error_chain(.cause))]
    Handshake {
        /// `http/1.1` or `http/2`.
        version: &'static str,
        /// hyper's error.
        cause: hyper::Error,
    },
    /// Sending the request or reading the response head failed.
    #[error("request failed: {}", error_chain(.0))]
    Request(hyper::Error),
    /// The HTTP answer's status is not one the check expects.
    #[error("status {status} not in {}", describe_ranges(.expected))]
    UnexpectedStatus {
        /// What the target answered.
        status: u16,
        /// The expected ranges, inclusive.
        expected: Vec<(u16, u16)>,
    },
    /// Reading an HTTP check's body failed.
    #[error("reading body: {}", error_chain(.0))]
    Body(hyper::Error),
    /// A gRPC check was answered with an HTTP status other than 200.
    #[error("http status {0} (not gRPC)")]
    NotGrpcStatus(u16),
    /// A gRPC check was answered with another content type.
    #[error("content-type `{0}` is not gRPC")]
    NotGrpcContentType(String),
    /// Reading a gRPC check's response failed.
    #[error("reading response: {}", error_chain(.0))]
    GrpcBody(hyper::Error),
    /// The gRPC response is over the probe's read limit.
    #[error("response larger than 64 KiB")]
    ResponseTooLarge,
    /// Neither headers nor trailers carry `grpc-status`.
    #[error("response has no grpc-status")]
    NoGrpcStatus,
    /// `grpc-status` is not a number.
    #[error("invalid grpc-status {0:?}")]
    InvalidGrpcStatus(HeaderValue),
    /// The call ended with a status other than OK.
    #[error("grpc-status {code}: {}", describe_status(*.code, .message))]
    GrpcStatus {
        /// The gRPC code.
        code: u32,
        /// `grpc-message`, decoded and cut to a length fit for logs.
        message: String,
    },
    /// A status OK without a message.
    #[error("gRPC response has no message")]
    NoMessage,
    /// The body ends inside the 5-byte frame header.
    #[error("truncated gRPC frame header")]
    TruncatedFrameHeader,
    /// The body ends inside the message.
    #[error("truncated gRPC message: {got} of {len} bytes")]
    TruncatedMessage {
        /// The bytes of the message that arrived.
        got: usize,
        /// The length its header declares.
        len: usize,
    },
    /// A compressed message, though the probe offers no compression.
    #[error("gRPC response is compressed, which was not offered")]
    Compressed,
    /// A frame flag gRPC does not define for a response message.
    #[error("bad gRPC frame flag {0}")]
    BadFrameFlag(u8),
    /// More than the one message of a unary call.
    #[error("unary gRPC response has more than one message")]
    ExtraMessages,
    /// The message is not a `HealthCheckResponse`.
    #[error("{0}")]
    Decode(prost::DecodeError),
    /// The service's serving status is not SERVING.
    #[error("grpc status {0}")]
    NotServing(String),
}

/// "200-299, 404" for error messages.
pub(super) fn describe_ranges(expected: &[(u16, u16)]) -> String {
    if expected.is_empty() {
        return "(no expected statuses)".to_string();
    }
    expected
        .iter()
        .map(|&(low, high)| {
            if low == high {
                low.to_string()
            } else {
                format!("{low}-{high}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's message, else the code's name in words ("unimplemented", "invalid argument").
fn describe_status(code: u32, message: &str) -> String {
    if !message.is_empty() {
        return message.to_string();
    }
    match crate::grpc::defined_code_name(code) {
        Some(name) => name.to_ascii_lowercase().replace('_', " "),
        None => "unrecognised code".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_listed_as_written() {
        assert_eq!(describe_ranges(&[(200, 299), (404, 404)]), "200-299, 404");
        assert_eq!(describe_ranges(&[]), "(no expected statuses)");
    }

    #[test]
    fn a_status_without_message_is_named_in_words() {
        let named = |code| {
            ProbeError::GrpcStatus {
                code,
                message: String::new(),
            }
            .to_string()
        };
        assert_eq!(named(12), "grpc-status 12: unimplemented");
        assert_eq!(named(3), "grpc-status 3: invalid argument");
        assert_eq!(named(99), "grpc-status 99: unrecognised code");
    }
}
