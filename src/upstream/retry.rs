//! Whether a failed attempt is tried again, and how long to wait first.
//!
//! A retry must go to a different target, fit the policy (cause, method, attempts left) and fit
//! the budget: retries in flight may be at most `budget_ratio` of the requests in flight (but
//! `budget_min_retries` are always allowed), so that when an upstream is down, retries cannot
//! multiply its load.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pingora_core::{Error, ErrorType};
use rand::Rng;

use super::Counters;
use crate::config::RetryConfig;

/// Why an attempt failed, as far as retries and outlier detection care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection could not be made; nothing was sent.
    Connect,
    /// The connection broke before a response arrived.
    Reset,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream answered with a status the policy retries.
    Status(u16),
}

impl FailureKind {
    /// Classifies a pingora error raised while proxying (after connecting).
    pub fn of_proxy_error(e: &Error) -> Option<Self> {
        use ErrorType::*;
        match e.etype() {
            ReadTimedout | WriteTimedout => Some(Self::Timeout),
            ConnectionClosed | ReadError | WriteError | H2Error | InvalidH2 | H2Downgrade => {
                Some(Self::Reset)
            }
            ConnectTimedout | ConnectRefused | ConnectError | ConnectNoRoute
            | TLSHandshakeFailure | TLSHandshakeTimedout | SocketError => Some(Self::Connect),
            HTTPStatus(s) => Some(Self::Status(*s)),
            _ => None,
        }
    }

    /// Whether the policy retries this cause.
    pub fn retried_by(self, policy: &RetryConfig) -> bool {
        match self {
            Self::Connect => policy.on_connect_failure,
            Self::Reset => policy.on_reset,
            Self::Timeout => policy.on_timeout,
            Self::Status(s) => policy
                .statuses
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&s)),
        }
    }

    /// Short text for logs and the admin view.
    pub fn describe(self) -> String {
        match self {
            Self::Connect => "connect failed".into(),
            Self::Reset => "connection reset".into(),
            Self::Timeout => "timed out".into(),
            Self::Status(s) => format!("status {s}"),
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
    fn causes_follow_the_policy() {
        let p = policy();
        assert!(FailureKind::Connect.retried_by(&p));
        assert!(FailureKind::Reset.retried_by(&p));
        assert!(!FailureKind::Timeout.retried_by(&p));
        assert!(FailureKind::Status(503).retried_by(&p));
        assert!(!FailureKind::Status(500).retried_by(&p));
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
