//! One request's tries at an upstream: admission (circuit breaker), the target of each try,
//! whether a failed try is sent again (policy, method, body, budget, backoff), and what outlier
//! detection and the client learn of each try. Every handler that sends a request upstream goes
//! through it — the proxy handler from pingora's upstream phases, the gRPC handler from its own
//! loop — so ring-hash keys, retries and `failure_statuses` hold alike for both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::{backoff, budget_allows, Cluster, CounterGuard, FailureKind, Target, TargetLoad};
use crate::error::GatewayError;
use crate::telemetry::metrics::metrics;

/// Whether another try follows a failed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the request again, to another target.
    Retry,
    /// No other try: the client gets the last failure (or the response).
    Stop,
}

/// The tries of one request at one upstream. Everything it holds (admission counts, the
/// target's load) is released when it is dropped, whatever path the request ends on.
#[derive(Debug)]
pub struct Attempt {
    cluster: Arc<Cluster>,
    upstream: Arc<str>,
    /// Addresses tried, in order (inline: most requests make one try).
    tried: SmallVec<[SocketAddr; 2]>,
    target: Option<Arc<Target>>,
    target_load: Option<TargetLoad>,
    in_flight: Option<CounterGuard>,
    pending: Option<CounterGuard>,
    retrying: Option<CounterGuard>,
    retries: u32,
    /// The next try retries a failure that sent nothing, which the budget does not count.
    retry_sent_nothing: bool,
    last_failure: Option<GatewayError>,
    started: Option<Instant>,
    upstream_time: Duration,
}

impl Attempt {
    /// No try yet at `cluster`, whose name is `upstream`.
    pub fn new(cluster: Arc<Cluster>, upstream: Arc<str>) -> Self {
        Self {
            cluster,
            upstream,
            tried: SmallVec::new(),
            target: None,
            target_load: None,
            in_flight: None,
            pending: None,
            retrying: None,
            retries: 0,
            retry_sent_nothing: false,
            last_failure: None,
            started: None,
            upstream_time: Duration::ZERO,
        }
    }

    /// The upstream.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The target of the current (or last) try.
    pub fn target(&self) -> Option<&Arc<Target>> {
        self.target.as_ref()
    }

    /// Tries made so far.
    pub fn tries(&self) -> usize {
        self.tried.len()
    }

    /// Retries made so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Time spent in tries so far.
    pub fn upstream_time(&self) -> Duration {
        self.upstream_time
    }

    /// Admits the request (circuit breaker) and picks the target of the next try, after the
    /// backoff when it is a retry. `key`: the request's ring-hash key, if the upstream hashes.
    pub async fn next_target(&mut self, key: Option<u64>) -> Result<Arc<Target>, GatewayError> {
        self.admit()?;
        let limits = &self.cluster.config.circuit_breaker;
        if !self.tried.is_empty() {
            self.retries += 1;
            if let Some(m) = metrics() {
                m.retries.with_label_values(&[&*self.upstream]).inc();
            }
            if self.retrying.is_none() && !self.retry_sent_nothing {
                self.retrying = CounterGuard::acquire(&self.cluster.counters, |c| &c.retries, None);
            }
            let wait = backoff(&self.cluster.config.retry, self.retries);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let Some(target) = self.cluster.select(key, &self.tried) else {
            return Err(self
                .last_failure
                .take()
                .unwrap_or_else(|| GatewayError::NoHealthyTarget(self.upstream.clone())));
        };
        let Some(pending) =
            CounterGuard::acquire(&self.cluster.counters, |c| &c.pending, limits.max_pending)
        else {
            return Err(self.overloaded("requests waiting for a connection", limits.max_pending));
        };
        self.pending = Some(pending);
        self.tried.push(target.address);
        self.target_load = Some(TargetLoad::new(target.clone()));
        self.target = Some(target.clone());
        self.started = Some(Instant::now());
        Ok(target)
    }

    /// Counts the request in flight on the upstream, or refuses it when the circuit breaker's
    /// limit is reached (once per request; `next_target` does it too).
    pub fn admit(&mut self) -> Result<(), GatewayError> {
        if self.in_flight.is_some() {
            return Ok(());
        }
        let max = self.cluster.config.circuit_breaker.max_in_flight;
        let Some(guard) = CounterGuard::acquire(&self.cluster.counters, |c| &c.in_flight, max)
        else {
            return Err(self.overloaded("requests in flight", max));
        };
        self.in_flight = Some(guard);
        Ok(())
    }

    /// The current try is connected: it no longer waits for a connection.
    pub fn connected(&mut self) {
        self.pending = None;
    }

    /// Ends the timing of the current try, with its `outcome` (`response`, `connect_error`,
    /// `error`, `client_timeout`, ...) for the attempt duration metric: how long it took, if
    /// one was running.
    pub fn end_try(&mut self, outcome: &str) -> Option<Duration> {
        let took = self.started.take()?.elapsed();
        self.upstream_time += took;
        if let Some(m) = metrics() {
            m.attempt_duration
                .with_label_values(&[&*self.upstream, outcome])
                .observe(took.as_secs_f64());
        }
        Some(took)
    }

    /// The current try failed with `kind`. Reports it to outlier detection when it is the
    /// target's fault (`reused_connection`: a pooled connection found closed is not), keeps
    /// what the client gets if no try follows, and says whether one does. `replay`: whether the
    /// request may be sent again once something of it reached the upstream (its method, the
    /// route's `retry_non_idempotent`, a body still at hand).
    pub fn failed(&mut self, kind: FailureKind, replay: bool, reused_connection: bool) -> Verdict {
        self.pending = None;
        if let Some(target) = self.target.clone() {
            if kind.counts_against_target() && !(reused_connection && kind == FailureKind::Reset) {
                self.cluster.report_failure(&target, &kind.describe());
            }
        }
        self.last_failure = kind.error(&self.upstream);
        self.decide(kind, replay)
    }

    /// The current try was answered with `status`: a success or, when the upstream's
    /// `failure_statuses` list it, a failure for outlier detection; a retry when the policy
    /// retries that status (the client then gets 'no other target' if none is left).
    pub fn answered(&mut self, status: u16, replay: bool) -> Verdict {
        self.pending = None;
        if let Some(target) = self.target.clone() {
            let failed = self.cluster.config.outlier.as_ref().is_some_and(|o| {
                o.failure_statuses
                    .iter()
                    .any(|(lo, hi)| (*lo..=*hi).contains(&status))
            });
            if failed {
                self.cluster
                    .report_failure(&target, &format!("status {status}"));
            } else {
                self.cluster.report_success(&target);
            }
        }
        let verdict = self.decide(FailureKind::Status(status), replay);
        if verdict == Verdict::Retry {
            self.last_failure = FailureKind::Status(status).error(&self.upstream);
        }
        verdict
    }

    /// What the client gets when no try succeeded.
    pub fn take_failure(&mut self) -> Option<GatewayError> {
        self.last_failure.take()
    }

    /// Whether a failed try is sent again: the policy retries the cause, attempts are left,
    /// the request may be replayed (always, when nothing of it was sent), another target exists
    /// and the budget has room (not asked when nothing was sent: that retry adds no load).
    fn decide(&mut self, kind: FailureKind, replay: bool) -> Verdict {
        let policy = &self.cluster.config.retry;
        if self.retries >= policy.attempts || !kind.retried_by(policy) {
            return Verdict::Stop;
        }
        if !kind.nothing_sent() && !replay {
            return Verdict::Stop;
        }
        if self.cluster.len() <= self.tried.len() {
            return Verdict::Stop;
        }
        // A request already retrying holds its slot in the budget; only a first retry asks.
        if !kind.nothing_sent()
            && self.retrying.is_none()
            && !budget_allows(policy, &self.cluster.counters)
        {
            tracing::warn!(upstream = %self.upstream, "retry budget exhausted; not retrying");
            return Verdict::Stop;
        }
        self.retry_sent_nothing = kind.nothing_sent();
        Verdict::Retry
    }

    fn overloaded(&self, what: &'static str, limit: Option<usize>) -> GatewayError {
        GatewayError::UpstreamOverloaded {
            upstream: self.upstream.clone(),
            what,
            limit: limit.unwrap_or(0),
        }
    }
}
