//! `GatewayError`: every error the gateway answers a request with. Each says its status, its
//! stable code and a message a client can act on; `proxy::respond` is the one place that renders
//! it (JSON, gRPC trailers-only, gRPC-Web). Plugins answer with their own `PluginError`, carried
//! here as `Plugin`.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use tollgate_plugin_api::PluginError;

/// An error the gateway answers a request with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The request is not HTTP the gateway can read.
    #[error("{0}")]
    BadRequest(String),
    /// The request target or path is refused.
    #[error("{0}")]
    BadPath(String),
    /// The host of the request is missing or malformed.
    #[error("{0}")]
    BadHost(String),
    /// `Content-Length` values that disagree or are not numbers.
    #[error("{0}")]
    BadContentLength(String),
    /// The request body could not be read.
    #[error("the request body could not be read: {0}")]
    BadRequestBody(String),
    /// No route matches.
    #[error("no route matches {method} {path}")]
    RouteNotFound {
        /// The request's method.
        method: Method,
        /// The normalised path.
        path: String,
    },
    /// The client did not send its request in time.
    #[error("{0}")]
    ClientTimeout(String),
    /// The request target is longer than `max_uri_bytes`.
    #[error("the request target is {len} bytes; the limit is {limit}")]
    UriTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The request head is larger than allowed.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// A transfer coding other than `chunked`.
    #[error("{0}")]
    UnsupportedTransferEncoding(String),
    /// No connection could be made to the upstream.
    #[error("could not connect to upstream `{0}`")]
    UpstreamUnreachable(Arc<str>),
    /// Connecting (or the TLS handshake) timed out.
    #[error("timed out connecting to upstream `{0}`")]
    UpstreamConnectTimeout(Arc<str>),
    /// The TLS handshake with the upstream failed.
    #[error("TLS handshake with upstream `{0}` failed")]
    UpstreamTls(Arc<str>),
    /// The TLS client of the gateway's own gRPC calls to the upstream could not be set up.
    #[error("upstream `{upstream}`: {detail}")]
    UpstreamTlsSetup {
        /// The upstream.
        upstream: Arc<str>,
        /// What went wrong.
        detail: crate::grpc::TargetError,
    },
    /// The upstream closed or broke the connection, or sent invalid HTTP.
    #[error("upstream `{0}` closed or broke the connection")]
    UpstreamReset(Arc<str>),
    /// The upstream did not answer in time.
    #[error("upstream `{0}` did not answer in time")]
    UpstreamTimeout(Arc<str>),
    /// No target of the upstream is available.
    #[error("upstream `{0}` has no target available")]
    NoHealthyTarget(Arc<str>),
    /// A circuit breaker limit is reached.
    #[error("upstream `{upstream}` is at its limit of {limit} {what}")]
    UpstreamOverloaded {
        /// The upstream.
        upstream: Arc<str>,
        /// What is counted.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A retryable status was answered and no other target could be tried.
    #[error("upstream `{upstream}` answered {} and no other target could be tried", status.as_u16())]
    UpstreamStatus {
        /// The upstream.
        upstream: Arc<str>,
        /// The status it answered.
        status: StatusCode,
    },
    /// A message was not published (or not acknowledged) by a broker.
    #[error(transparent)]
    Publish(#[from] crate::broker::PublishError),
    /// A request-reply route's request got no reply: not sent (as a publish), no reply within
    /// the route's timeout (504 `reply_timeout`), nobody subscribed (503 `no_responder`).
    #[error(transparent)]
    Request(crate::broker::RequestError),
    /// A reply the gateway cannot answer with (its status header is not a status).
    #[error("{0}")]
    BadReply(String),
    /// A poll for an asynchronous reply that this gateway does not know (never, or no more).
    #[error("no reply `{0}` is kept here: unknown, expired, or another client's")]
    ReplyNotFound(String),
    /// A publish route's template needs a value the request does not have, or has one that
    /// cannot be part of the destination.
    #[error(transparent)]
    Destination(#[from] crate::broker::template::TemplateError),
    /// An `Idempotency-Key` that is not 1 to 255 visible ASCII characters.
    #[error("{0}")]
    BadIdempotencyKey(String),
    /// The `Idempotency-Key` was used for another request (method, path or body).
    #[error("this Idempotency-Key was used for a different request (method, path or body); use a new key")]
    IdempotencyKeyReused,
    /// The shared store of `Idempotency-Key` answers did not answer.
    #[error("{0}")]
    IdempotencyStore(String),
    /// A request with the same `Idempotency-Key` is still being published.
    #[error("a request with this Idempotency-Key is still being published; try again")]
    IdempotencyKeyInUse,
    /// The request body is over the route's limit.
    #[error("{0}")]
    BodyTooLarge(String),
    /// A subscribe route has as many clients streaming as it takes.
    #[error("route `{route}` has {limit} subscribers, as many as it takes; try again later")]
    TooManySubscribers {
        /// The route.
        route: Arc<str>,
        /// Its `max_subscribers`.
        limit: usize,
    },
    /// A `Last-Event-ID` that is not one this route's events carry.
    #[error("{0}")]
    BadLastEventId(String),
    /// The gateway failed on its own.
    #[error("{0}")]
    Internal(String),
    /// A plugin's answer.
    #[error("{}", .0.message)]
    Plugin(PluginError),
}

impl GatewayError {
    /// The HTTP status a JSON client gets.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            BadRequest(_) | BadPath(_) | BadHost(_) | BadContentLength(_) | BadRequestBody(_) => {
                StatusCode::BAD_REQUEST
            }
            RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            UnsupportedTransferEncoding(_) => StatusCode::NOT_IMPLEMENTED,
            UpstreamUnreachable(_)
            | UpstreamTls(_)
            | UpstreamTlsSetup { .. }
            | UpstreamReset(_) => StatusCode::BAD_GATEWAY,
            UpstreamConnectTimeout(_) | UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            NoHealthyTarget(_) | UpstreamOverloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamStatus { status, .. } => *status,
            Publish(e) => e.status(),
            Request(crate::broker::RequestError::Publish(e)) => e.status(),
            Request(crate::broker::RequestError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Request(crate::broker::RequestError::NoResponder { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            BadReply(_) => StatusCode::BAD_GATEWAY,
            ReplyNotFound(_) => StatusCode::NOT_FOUND,
            Destination(_) | BadIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            IdempotencyKeyInUse => StatusCode::CONFLICT,
            IdempotencyStore(_) => StatusCode::SERVICE_UNAVAILABLE,
            IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            TooManySubscribers { .. } => StatusCode::SERVICE_UNAVAILABLE,
            BadLastEventId(_) => StatusCode::BAD_REQUEST,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Plugin(e) => e.status,
        }
    }

    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            BadRequest(_) => "bad_request",
            BadPath(_) => "bad_path",
            BadHost(_) => "bad_host",
            BadContentLength(_) => "bad_content_length",
            BadRequestBody(_) => "bad_request_body",
            RouteNotFound { .. } => "route_not_found",
            ClientTimeout(_) => "client_timeout",
            UriTooLong { .. } => "uri_too_long",
            HeadersTooLarge(_) => "headers_too_large",
            UnsupportedTransferEncoding(_) => "unsupported_transfer_encoding",
            UpstreamUnreachable(_) => "upstream_unreachable",
            UpstreamConnectTimeout(_) => "upstream_connect_timeout",
            UpstreamTls(_) => "upstream_tls_error",
            UpstreamTlsSetup { .. } => "upstream_tls_setup",
            UpstreamReset(_) => "upstream_reset",
            UpstreamTimeout(_) => "upstream_timeout",
            NoHealthyTarget(_) => "no_healthy_target",
            UpstreamOverloaded { .. } => "upstream_overloaded",
            UpstreamStatus { .. } => "upstream_error",
            Publish(e) => e.code(),
            Request(e) => e.code(),
            BadReply(_) => "bad_reply",
            ReplyNotFound(_) => "reply_not_found",
            Destination(e) => e.code(),
            BadIdempotencyKey(_) => "bad_idempotency_key",
            IdempotencyKeyInUse => "idempotency_key_in_use",
            IdempotencyStore(_) => "idempotency_store_unavailable",
            IdempotencyKeyReused => "idempotency_key_reused",
            BodyTooLarge(_) => "body_too_large",
            TooManySubscribers { .. } => "too_many_subscribers",
            BadLastEventId(_) => "bad_last_event_id",
            Internal(_) => "internal_error",
            Plugin(e) => e.code,
        }
    }

    /// Extra headers of the answer (a plugin's `WWW-Authenticate`, `Retry-After`, ...).
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        match self {
            GatewayError::Plugin(e) => &e.headers,
            GatewayError::Publish(e)
            | GatewayError::Request(crate::broker::RequestError::Publish(e)) => e.headers(),
            GatewayError::Request(crate::broker::RequestError::NoResponder { .. })
            | GatewayError::IdempotencyStore(_)
            | GatewayError::TooManySubscribers { .. } => crate::broker::retry_after(),
            _ => &[],
        }
    }

    /// The gRPC status code a gRPC client gets for it.
    pub fn grpc_code(&self) -> u32 {
        crate::grpc::code_for_gateway_status(self.status())
    }
}

impl From<crate::broker::RequestError> for GatewayError {
    fn from(e: crate::broker::RequestError) -> Self {
        match e {
            // One variant for a message that was not sent, by publish or request alike.
            crate::broker::RequestError::Publish(p) => GatewayError::Publish(p),
            e => GatewayError::Request(e),
        }
    }
}

impl From<PluginError> for GatewayError {
    fn from(e: PluginError) -> Self {
        GatewayError::Plugin(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_code_and_message() {
        let up: Arc<str> = Arc::from("users");
        for (e, status, code, message) in [
            (
                GatewayError::RouteNotFound {
                    method: Method::GET,
                    path: "/nope".into(),
                },
                404,
                "route_not_found",
                "no route matches GET /nope",
            ),
            (
                GatewayError::UpstreamUnreachable(up.clone()),
                502,
                "upstream_unreachable",
                "could not connect to upstream `users`",
            ),
            (
                GatewayError::UpstreamOverloaded {
                    upstream: up.clone(),
                    what: "requests in flight",
                    limit: 3,
                },
                503,
                "upstream_overloaded",
                "upstream `users` is at its limit of 3 requests in flight",
            ),
            (
                GatewayError::UpstreamStatus {
                    upstream: up,
                    status: StatusCode::SERVICE_UNAVAILABLE,
                },
                503,
                "upstream_error",
                "upstream `users` answered 503 and no other target could be tried",
            ),
            (
                GatewayError::UriTooLong { len: 9, limit: 8 },
                414,
                "uri_too_long",
                "the request target is 9 bytes; the limit is 8",
            ),
        ] {
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(e.code(), code);
            assert_eq!(e.to_string(), message);
        }
    }

    #[test]
    fn plugin_errors_keep_their_status_code_and_headers() {
        let e = GatewayError::from(
            PluginError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down")
                .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
        );
        assert_eq!((e.status().as_u16(), e.code()), (429, "rate_limited"));
        assert_eq!(e.to_string(), "slow down");
        assert_eq!(e.headers().len(), 1);
        assert_eq!(
            e.grpc_code(),
            crate::grpc::code_for_gateway_status(e.status())
        );
    }
}
