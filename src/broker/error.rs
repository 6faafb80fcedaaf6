//! Why a message was not published, in the terms a client can act on.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

/// Why a message was not published (or not acknowledged).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// No connection to the broker, or it broke: nothing was published.
    #[error("broker `{broker}` is unavailable: {reason}")]
    Unavailable {
        /// The broker's name.
        broker: Arc<str>,
        /// What the client library said.
        reason: String,
    },
    /// As many messages as `max_in_flight` wait for the broker already.
    #[error("broker `{broker}` has {limit} messages waiting for acknowledgement; try again later")]
    Busy {
        /// The broker's name.
        broker: Arc<str>,
        /// `max_in_flight`.
        limit: usize,
    },
    /// The broker did not acknowledge in `publish_timeout`. The message may still arrive:
    /// a client that retries should send an `Idempotency-Key`.
    #[error("broker `{broker}` did not acknowledge the message within {}", humantime::format_duration(*after))]
    NoAck {
        /// The broker's name.
        broker: Arc<str>,
        /// `publish_timeout`.
        after: Duration,
    },
    /// The body is larger than the route or the broker takes.
    #[error("{0}")]
    TooLarge(String),
    /// An AMQP message no queue took (published `mandatory`).
    #[error("no queue is bound to exchange `{exchange}` for routing key `{routing_key}` on broker `{broker}`")]
    Unroutable {
        /// The broker's name.
        broker: Arc<str>,
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// The destination does not exist on the broker (topics, exchanges and streams are not
    /// created by the gateway). `from_request` when the request's values named it.
    #[error("broker `{broker}` has no {what} `{name}`")]
    NoDestination {
        /// The broker's name.
        broker: Arc<str>,
        /// `topic`, `exchange` or `stream for subject`.
        what: &'static str,
        /// Its name.
        name: String,
        /// Whether the request's values (path, headers, claims) chose it.
        from_request: bool,
    },
    /// The broker refused the message (an AMQP nack, a Kafka error that is not about the
    /// connection).
    #[error("broker `{broker}` refused the message: {reason}")]
    Rejected {
        /// The broker's name.
        broker: Arc<str>,
        /// Why.
        reason: String,
    },
}

/// `Retry-After: 1`, for the answers a retry may fix.
pub fn retry_after() -> &'static [(HeaderName, HeaderValue)] {
    &*RETRY_AFTER
}

static RETRY_AFTER: LazyLock<[(HeaderName, HeaderValue); 1]> =
    LazyLock::new(|| [(http::header::RETRY_AFTER, HeaderValue::from_static("1"))]);

impl PublishError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            PublishError::Unavailable { .. }
            | PublishError::Busy { .. }
            | PublishError::NoAck { .. } => StatusCode::SERVICE_UNAVAILABLE,
            PublishError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::NoDestination {
                from_request: true, ..
            } => StatusCode::NOT_FOUND,
            PublishError::Unroutable { .. }
            | PublishError::NoDestination { .. }
            | PublishError::Rejected { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The stable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::Unavailable { .. } | PublishError::NoAck { .. } => "broker_unavailable",
            PublishError::Busy { .. } => "broker_busy",
            PublishError::TooLarge(_) => "body_too_large",
            PublishError::Unroutable { .. } => "unroutable",
            PublishError::NoDestination { .. } => "unknown_destination",
            PublishError::Rejected { .. } => "broker_rejected",
        }
    }

    /// `Retry-After` on the answers a retry may fix.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        match self.status() {
            StatusCode::SERVICE_UNAVAILABLE => &*RETRY_AFTER,
            _ => &[],
        }
    }
}
