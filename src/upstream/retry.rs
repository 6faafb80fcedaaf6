//! Why an attempt failed (`FailureKind`, the one classification of pingora's errors), whether
//! it is tried again, and how long to wait first.
//!
//! A retry must go to a different target, fit the policy (cause, method, attempts left) and fit
//! the budget: retries in flight may be at most `budget_ratio` of the requests in flight (but
//! `budget_min_retries` are always allowed), so that when an upstream is down, retries cannot
//! multiply its load.

use std::sync::atomic::Ordering;
use std::time::Duration;

use std::sync::Arc;

use pingora_core::{Error, ErrorSource, ErrorType};
use rand::Rng;

use super::Counters;
use crate::config::RetryConfig;
use crate::error::GatewayError;

/// Why an attempt failed: the one classification of pingora's errors that retries, outlier
/// detection and the client's answer all follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The client did not send its request body in time: its own fault, never the target's.
    ClientTimeout,
    /// The client failed or went away: nothing can be answered, nothing is the target's fault.
    ClientGone,
    /// The client's request could not be read as HTTP.
    BadRequest,
    /// The connection could not be made; nothing was sent.
    Connect,
    /// Connecting (or the TLS handshake) timed out; nothing was sent.
    ConnectTimeout,
    /// The TLS handshake failed; nothing was sent.
    Tls,
    /// The connection broke, or the upstream sent something that is not HTTP, before a
    /// response arrived.
    Reset,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream answered with this status (the policy decides whether it is a failure).
    Status(u16),
    /// The gateway itself failed.
    Internal,
}

/// Whether the cause of `e` is a TLS alert the upstream sent.
fn tls_alert_received(e: &Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e
        .cause
        .as_deref()
        .map(|c| c as &(dyn std::error::Error + 'static));
    while let Some(c) = cause {
        let tls = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return matches!(tls, rustls::Error::AlertReceived(_));
        }
        // pingora nests its errors, sometimes boxed once more, and keeps them out of `source`.
        let nested = c
            .downcast_ref::<Error>()
            .or_else(|| c.downcast_ref::<Box<Error>>().map(|b| &**b));
        cause = match nested {
            Some(nested) => nested
                .cause
                .as_deref()
                .map(|c| c as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

impl FailureKind {
    /// Classifies a pingora error of an attempt. `request_body_done`: whether the client had
    /// sent its whole body — pingora restarts the upstream read timeout on every piece of body,
    /// so a read timeout with the body incomplete means the client stalled.
    pub fn of(e: &Error, request_body_done: bool) -> Self {
        use ErrorType::*;
        if *e.esource() == ErrorSource::Downstream {
            return match e.etype() {
                ReadTimedout => Self::ClientTimeout,
                ReadError | WriteError | ConnectionClosed | WriteTimedout => Self::ClientGone,
                _ => Self::BadRequest,
            };
        }
        match e.etype() {
            ReadTimedout if !request_body_done => Self::ClientTimeout,
            ReadTimedout | WriteTimedout => Self::Timeout,
            ConnectTimedout | TLSHandshakeTimedout => Self::ConnectTimeout,
            ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError => {
                Self::Connect
            }
            TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup => Self::Tls,
            // TLS 1.3 lets the client finish its handshake before the server has judged the
            // client certificate, so a refusal (no or an untrusted client certificate) arrives
            // as an alert on the first read: the upstream's TLS refused the connection and its
            // application never saw the request.
            ConnectionClosed | ReadError | WriteError if tls_alert_received(e) => Self::Tls,
            ConnectionClosed | ReadError | WriteError | H1Error | H2Error | InvalidH2
            | H2Downgrade | InvalidHTTPHeader => Self::Reset,
            HTTPStatus(s) => Self::Status(*s),
            _ => Self::Internal,
        }
    }

    /// Whether nothing reached the upstream: another target is always safe to try, whatever
    /// the method, and such a retry adds no load (the budget does not count it).
    pub fn nothing_sent(self) -> bool {
        matches!(self, Self::Connect | Self::ConnectTimeout | Self::Tls)
    }

    /// Whether the failure is the target's, for outlier detection (statuses are judged by the
    /// upstream's `failure_statuses` instead).
    pub fn counts_against_target(self) -> bool {
        matches!(
            self,
            Self::Connect | Self::ConnectTimeout | Self::Tls | Self::Reset | Self::Timeout
        )
    }

    /// Whether the policy retries this cause.
    pub fn retried_by(self, policy: &RetryConfig) -> bool {
        match self {
            Self::Connect | Self::ConnectTimeout | Self::Tls => policy.on_connect_failure,
            Self::Reset => policy.on_reset,
            Self::Timeout => policy.on_timeout,
            Self::Status(s) => policy
                .statuses
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&s)),
            Self::ClientTimeout | Self::ClientGone | Self::BadRequest | Self::Internal => false,
        }
    }

    /// What the client is told, when no other attempt follows; `None` when the client is gone.
    /// A client timeout's message depends on which wait ran out, so the caller words it.
    pub fn error(self, upstream: &Arc<str>) -> Option<GatewayError> {
        let u = upstream.clone();
        Some(match self {
            Self::ClientGone => return None,
            Self::ClientTimeout => GatewayError::ClientTimeout(
                "the client did not send its request in time".to_owned(),
            ),
            Self::BadRequest => {
                GatewayError::BadRequest("the request could not be read as valid HTTP".to_owned())
            }
            Self::Connect => GatewayError::UpstreamUnreachable(u),
            Self::ConnectTimeout => GatewayError::UpstreamConnectTimeout(u),
            Self::Tls => GatewayError::UpstreamTls(u),
            Self::Reset => GatewayError::UpstreamReset(u),
            Self::Timeout => GatewayError::UpstreamTimeout(u),
            Self::Status(s) => GatewayError::UpstreamStatus {
                upstream: u,
                status: http::StatusCode::from_u16(s).unwrap_or(http::StatusCode::BAD_GATEWAY),
            },
            Self::Internal => {
                GatewayError::Internal("the gateway failed to handle the request".to_owned())
            }
        })
    }

    /// Short text for logs, the admin view and metric labels.
    pub fn describe(self) -> String {
        match self {
            Self::Connect => "connect failed".into(),
            Self::ConnectTimeout => "connect timed out".into(),
            Self::Tls => "TLS handshake failed".into(),
            Self::Reset => "connection reset".into(),
            Self::Timeout => "timed out".into(),
            Self::Status(s) => format!("status {s}"),
            Self::ClientTimeout => "client timed out".into(),
            Self::ClientGone => "client gone".into(),
            Self::BadRequest => "bad request".into(),
            Self::Internal => "internal error".into(),
        }
    }
}

/// Whether the budget has room for one more retry now.
pub fn budget_allows(policy: &RetryConfig, counters: &Counters) -> bool {
    let retries = counters.retries.load(Ordering::Relaxed);
    let active = counters.in_flight.load(Ordering::Relaxed);
    let allowed =
        ((active as f64 * policy.budget_ratio) as usize).max(policy.budget_min_retries as usize);
    retries < allowed
}

/// Wait before retry number `retry` (1-based): exponential, capped, with full jitter so that
/// clients failing together do not come back together.
pub fn backoff(policy: &RetryConfig, retry: u32) -> Duration {
    let base = policy.backoff_base.as_millis() as u64;
    if base == 0 {
        return Duration::ZERO;
    }
    let exp = base.saturating_mul(1u64 << retry.saturating_sub(1).min(20));
    let cap = exp.min(policy.backoff_max.as_millis() as u64).max(1);
    Duration::from_millis(rand::rng().random_range(0..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryConfig {
        RetryConfig {
            attempts: 2,
            on_connect_failure: true,
            on_reset: true,
            on_timeout: false,
            statuses: vec![(502, 503)],
            per_try_timeout: None,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            budget_ratio: 0.2,
            budget_min_retries: 3,
        }
    }

    #[test]
    fn a_tls_alert_on_the_first_read_is_a_tls_failure_and_other_read_errors_a_reset() {
        let read_error = |cause: std::io::Error| {
            // As pingora nests it: the proxy's error around the HTTP/1 reader's.
            let inner = Error::because(
                ErrorType::ReadError,
                "while reading response headers",
                cause,
            );
            let mut e = Error::because(ErrorType::ReadError, "peer", inner);
            e.esource = ErrorSource::Upstream;
            FailureKind::of(&e, true)
        };
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        let refused = read_error(alert);
        assert_eq!(refused, FailureKind::Tls);
        assert_eq!(
            refused.error(&Arc::from("svc")).map(|e| e.code()),
            Some("upstream_tls_error")
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(read_error(reset), FailureKind::Reset);
    }

    #[test]
    fn causes_follow_the_policy() {
        let p = policy();
        assert!(FailureKind::Connect.retried_by(&p));
        assert!(FailureKind::Reset.retried_by(&p));
        assert!(!FailureKind::Timeout.retried_by(&p));
        assert!(FailureKind::Status(503).retried_by(&p));
        assert!(!FailureKind::Status(500).retried_by(&p));
    }

    #[test]
    fn one_classification_feeds_retries_outliers_and_the_answer() {
        let up: Arc<str> = Arc::from("svc");
        let upstream = |t: ErrorType| {
            let mut e = Error::new(t);
            e.esource = ErrorSource::Upstream;
            FailureKind::of(&e, true)
        };
        // An HTTP/1 protocol error from the upstream is a reset: reported, retried, answered 502
        // (two classifiers once disagreed on it).
        let h1 = upstream(ErrorType::H1Error);
        assert_eq!(h1, FailureKind::Reset);
        assert!(h1.counts_against_target() && h1.retried_by(&policy()));
        assert_eq!(h1.error(&up).map(|e| e.code()), Some("upstream_reset"));
        assert_eq!(upstream(ErrorType::ConnectRefused), FailureKind::Connect);
        assert!(FailureKind::Connect.nothing_sent());
        assert!(!FailureKind::Reset.nothing_sent());
        // A read timeout while the client's body is incomplete is the client's.
        let mut stalled = Error::new(ErrorType::ReadTimedout);
        stalled.esource = ErrorSource::Upstream;
        assert_eq!(FailureKind::of(&stalled, false), FailureKind::ClientTimeout);
        assert_eq!(FailureKind::of(&stalled, true), FailureKind::Timeout);
        let mut down = Error::new(ErrorType::ReadTimedout);
        down.esource = ErrorSource::Downstream;
        assert_eq!(FailureKind::of(&down, false), FailureKind::ClientTimeout);
        assert!(!FailureKind::ClientTimeout.counts_against_target());
        assert!(!FailureKind::ClientTimeout.retried_by(&policy()));
    }

    #[test]
    fn budget_is_a_share_of_active_requests_with_a_floor() {
        let p = policy();
        let c = Counters::default();
        c.in_flight.store(100, Ordering::Relaxed);
        c.retries.store(19, Ordering::Relaxed);
        assert!(budget_allows(&p, &c));
        c.retries.store(20, Ordering::Relaxed);
        assert!(!budget_allows(&p, &c));
        c.in_flight.store(1, Ordering::Relaxed);
        c.retries.store(2, Ordering::Relaxed);
        assert!(
            budget_allows(&p, &c),
            "the floor allows a few retries at low traffic"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy();
        for retry in 1..10 {
            let cap = (10u64 << (retry - 1)).min(50);
            for _ in 0..50 {
                assert!(backoff(&p, retry) <= Duration::from_millis(cap));
            }
        }
    }
}
