//! Upstream clusters: the runtime state of each configured upstream (its current targets, their
//! health, admission counters) and the choice of a target for each attempt.
//!
//! Small parts, composed here: `balance` picks, `health` judges one target, `probe` runs one
//! active check, `discovery` finds targets, `tasks` runs checks and discovery in the background,
//! `retry` decides whether a failed attempt is tried again, `peer` turns a target into a pingora
//! peer.

mod attempt;
mod balance;
pub mod discovery;
mod health;
mod peer;
pub mod probe;
mod retry;
pub mod tasks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{Algorithm, UpstreamConfig};

pub use attempt::{Attempt, Verdict};
pub use balance::hash64;
pub use discovery::Endpoint;
pub use health::{now_ms, HealthView, TargetHealth};
pub use peer::build_peer;
pub use retry::{backoff, budget_allows, FailureKind};

/// One target as requests see it.
#[derive(Debug)]
pub struct Target {
    /// Where to connect.
    pub address: SocketAddr,
    /// The host name it was found under (default TLS SNI), if any.
    pub hostname: Option<String>,
    /// Relative share of requests.
    pub weight: u32,
    /// Shared health record.
    pub health: Arc<TargetHealth>,
    /// The target as the gRPC engine calls it (transcoding, gRPC-Web), built on first use:
    /// its authority and TLS name would otherwise be formatted on every call.
    pub grpc: std::sync::OnceLock<Result<Arc<crate::grpc::Target>, crate::grpc::TargetError>>,
}

/// The targets of a cluster at one moment, with their picking structures.
#[derive(Debug, Default)]
pub struct TargetSet {
    /// The targets.
    pub targets: Vec<Arc<Target>>,
    picker: balance::Picker,
}

/// Admission counters of a cluster.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests in flight to this upstream.
    pub in_flight: AtomicUsize,
    /// Attempts waiting for a connection.
    pub pending: AtomicUsize,
    /// Retries in flight.
    pub retries: AtomicUsize,
}

/// The rustls client of an upstream's `tls` settings for connections the gateway makes itself.
fn tls_client_config(
    tls: &crate::config::UpstreamTls,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, crate::grpc::TargetError> {
    let client_cert = tls.client_cert.as_ref().map(|c| &c.certified_key);
    crate::grpc::client_config(tls.ca_certs.as_deref(), tls.verify, client_cert, alpn)
}

/// A digest of what makes two upstreams' TLS clients differ: trust roots, verification and
/// client certificate. Equal settings in another config snapshot give the same value, so pooled
/// gRPC connections survive a reload that does not touch them.
fn tls_identity(tls: &crate::config::UpstreamTls) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tls.verify.hash(&mut h);
    tls.ca_certs.hash(&mut h);
    if let Some(c) = &tls.client_cert {
        for cert in &c.certified_key.cert {
            cert.as_ref().hash(&mut h);
        }
    }
    h.finish()
}

/// Runtime state of one upstream, shared by all worker threads of a snapshot.
#[derive(Debug)]
pub struct Cluster {
    /// The validated config.
    pub config: Arc<UpstreamConfig>,
    set: ArcSwap<TargetSet>,
    /// Health records by address, kept when targets leave so a returning target keeps its
    /// history. Only touched when the target set changes.
    records: Mutex<HashMap<SocketAddr, Arc<TargetHealth>>>,
    cursor: AtomicUsize,
    /// Admission counters.
    pub counters: Arc<Counters>,
    /// When panic mode was last logged (process-clock ms).
    panic_logged_ms: std::sync::atomic::AtomicU64,
    /// TLS client config of the gateway's own gRPC calls, built on first use.
    grpc_tls: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, crate::grpc::TargetError>>,
    /// TLS client config of the health checks, built on first use (the ALPN of the protocol).
    probe_tls: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, crate::grpc::TargetError>>,
}

impl Cluster {
    /// Where the gateway's own gRPC calls (transcoding, reflection) to `target` go: h2c, or h2
    /// over TLS with the upstream's `tls` settings and the same SNI rule as proxied requests;
    /// `:authority` is `host_header`, else the target's host name and port, else its address.
    pub fn grpc_target(
        &self,
        target: &Target,
    ) -> Result<Arc<crate::grpc::Target>, crate::grpc::TargetError> {
        target
            .grpc
            .get_or_init(|| self.build_grpc_target(target).map(Arc::new))
            .clone()
    }

    /// TLS of a health check of `target`: the upstream's `tls` settings with the SNI rule of
    /// proxied requests, offering the ALPN proxied requests offer. `None` for plaintext.
    pub fn probe_tls(
        &self,
        target: &Target,
    ) -> Result<Option<crate::upstream::probe::ProbeTls>, crate::grpc::TargetError> {
        let Some(tls) = &self.config.tls else {
            return Ok(None);
        };
        let alpn: &[&[u8]] = match self.config.protocol {
            crate::config::Protocol::H2 => &[b"h2"],
            _ => &[b"http/1.1"],
        };
        let config = self
            .probe_tls
            .get_or_init(|| tls_client_config(tls, alpn))
            .clone()?;
        let sni = server_name(tls, target);
        let server_name = rustls::pki_types::ServerName::try_from(sni.clone())
            .map_err(|_| crate::grpc::TargetError::ServerName(sni))?;
        Ok(Some(crate::upstream::probe::ProbeTls {
            config,
            server_name,
        }))
    }

    fn build_grpc_target(
        &self,
        target: &Target,
    ) -> Result<crate::grpc::Target, crate::grpc::TargetError> {
        let t = match &self.config.tls {
            None => crate::grpc::Target::h2c(target.address),
            Some(tls) => {
                let config = self
                    .grpc_tls
                    .get_or_init(|| tls_client_config(tls, &[b"h2"]))
                    .clone()?;
                crate::grpc::Target::h2(target.address, config, &server_name(tls, target))?
                    .with_tls_identity(tls_identity(tls))
            }
        };
        let authority = self
            .config
            .host_header
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                target
                    .hostname
                    .as_ref()
                    .map(|h| format!("{h}:{}", target.address.port()))
            });
        Ok(match authority {
            Some(a) => t.with_authority(&a),
            None => t,
        })
    }

    /// Builds the runtime state of an upstream, with the targets written as IP addresses.
    /// Host names and discovery fill in the rest from the background tasks.
    pub fn new(config: Arc<UpstreamConfig>) -> Self {
        let cluster = Self {
            config: config.clone(),
            set: ArcSwap::from_pointee(TargetSet::default()),
            records: Mutex::new(HashMap::new()),
            cursor: AtomicUsize::new(0),
            counters: Arc::new(Counters::default()),
            panic_logged_ms: std::sync::atomic::AtomicU64::new(0),
            grpc_tls: std::sync::OnceLock::new(),
            probe_tls: std::sync::OnceLock::new(),
        };
        let endpoints: Vec<Endpoint> = config
            .targets
            .iter()
            .filter_map(|t| {
                t.address.map(|address| Endpoint {
                    address,
                    weight: t.weight,
                    hostname: None,
                })
            })
            .collect();
        cluster.set_endpoints(endpoints);
        cluster
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The current targets.
    pub fn targets(&self) -> arc_swap::Guard<Arc<TargetSet>> {
        self.set.load()
    }

    /// Replaces the target set. Targets keep their health record by address; new ones start
    /// unchecked when active checks are configured.
    pub fn set_endpoints(&self, mut endpoints: Vec<Endpoint>) {
        endpoints.sort();
        endpoints.dedup_by(|a, b| a.address == b.address);
        let checked = self.config.health_check.is_some();
        let Ok(mut records) = self.records.lock() else {
            return;
        };
        let targets: Vec<Arc<Target>> = endpoints
            .into_iter()
            .map(|e| {
                let health = records
                    .entry(e.address)
                    .or_insert_with(|| Arc::new(TargetHealth::new(checked)))
                    .clone();
                Arc::new(Target {
                    address: e.address,
                    hostname: e.hostname,
                    weight: e.weight.max(1),
                    health,
                    grpc: std::sync::OnceLock::new(),
                })
            })
            .collect();
        let weights: Vec<(SocketAddr, u32)> =
            targets.iter().map(|t| (t.address, t.weight)).collect();
        let picker = balance::Picker::new(self.config.balance.algorithm, &weights);
        self.set.store(Arc::new(TargetSet { targets, picker }));
    }

    /// Whether the current set equals `endpoints` (same addresses, weights, names).
    pub fn has_endpoints(&self, endpoints: &[Endpoint]) -> bool {
        let set = self.set.load();
        let mut want: Vec<&Endpoint> = endpoints.iter().collect();
        want.sort();
        want.dedup_by(|a, b| a.address == b.address);
        set.targets.len() == want.len()
            && set.targets.iter().zip(want).all(|(t, e)| {
                t.address == e.address && t.weight == e.weight.max(1) && t.hostname == e.hostname
            })
    }

    /// Picks a target for an attempt, skipping `tried` addresses. `key` is the request's hash
    /// for ring hashing. In panic mode, when no target at all is available, every untried
    /// target is a candidate.
    pub fn select(&self, key: Option<u64>, tried: &[SocketAddr]) -> Option<Arc<Target>> {
        let set = self.set.load();
        let targets = &set.targets;
        if targets.is_empty() {
            return None;
        }
        let now = now_ms();
        let algorithm = self.config.balance.algorithm;
        let load = |i: usize| targets[i].health.in_flight.load(Ordering::Relaxed);
        let untried = |i: usize| !tried.contains(&targets[i].address);
        let ok = |i: usize| untried(i) && targets[i].health.is_available(now);
        if let Some(i) = set.picker.pick(algorithm, &self.cursor, key, &ok, &load) {
            return targets.get(i).cloned();
        }
        let none_available = !targets.iter().any(|t| t.health.is_available(now));
        if self.config.panic_mode && none_available {
            // Once a second at most: in an outage this runs for every request.
            let last = self.panic_logged_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000 {
                self.panic_logged_ms.store(now, Ordering::Relaxed);
                tracing::warn!(upstream = %self.name(), "no healthy target: panic mode, trying all");
            }
            let i = set
                .picker
                .pick(algorithm, &self.cursor, key, &untried, &load)?;
            return targets.get(i).cloned();
        }
        None
    }

    /// Records a successful attempt on `target`.
    pub fn report_success(&self, target: &Target) {
        target.health.record_success();
    }

    /// Records a failed attempt on `target`, ejecting it when outlier detection says so and the
    /// ejection limit allows.
    pub fn report_failure(&self, target: &Target, reason: &str) {
        let outlier = self.config.outlier.as_ref();
        if !target.health.record_failure(reason, outlier) {
            return;
        }
        let Some(outlier) = outlier else {
            return;
        };
        let set = self.set.load();
        let now = now_ms();
        let ejected = set
            .targets
            .iter()
            .filter(|t| t.health.is_ejected(now))
            .count();
        let limit = (set.targets.len() * outlier.max_ejection_percent as usize / 100).max(1);
        if ejected >= limit {
            tracing::debug!(
                upstream = %self.name(),
                target = %target.address,
                ejected,
                "not ejecting: max_ejection_percent reached"
            );
            return;
        }
        let length = target.health.eject(outlier);
        if let Some(m) = crate::telemetry::metrics::metrics() {
            m.ejections.with_label_values(&[self.name()]).inc();
        }
        tracing::warn!(
            upstream = %self.name(),
            target = %target.address,
            reason,
            ejected_for_ms = length.as_millis() as u64,
            "target ejected"
        );
    }

    /// Number of current targets.
    pub fn len(&self) -> usize {
        self.set.load().targets.len()
    }

    /// Whether the upstream has no targets right now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The admin view of the cluster.
    pub fn view(&self) -> serde_json::Value {
        let set = self.set.load();
        let targets: Vec<serde_json::Value> = set
            .targets
            .iter()
            .map(|t| {
                let h = t.health.view();
                let now = now_ms();
                serde_json::json!({
                    "address": t.address.to_string(),
                    "hostname": t.hostname,
                    "weight": t.weight,
                    "available": t.health.is_available(now),
                    "healthy": h.healthy,
                    "checked": h.checked,
                    "ejected_for_ms": h.ejected_for_ms,
                    "times_ejected": h.times_ejected,
                    "in_flight": h.in_flight,
                    "consecutive_failures": h.consecutive_failures,
                    "total_failures": h.total_failures,
                    "last_problem": h.last_problem,
                })
            })
            .collect();
        serde_json::json!({
            "name": self.name(),
            "algorithm": algorithm_name(self.config.balance.algorithm),
            "panic_mode": self.config.panic_mode,
            "in_flight": self.counters.in_flight.load(Ordering::Relaxed),
            "pending": self.counters.pending.load(Ordering::Relaxed),
            "retries_in_flight": self.counters.retries.load(Ordering::Relaxed),
            "targets": targets,
        })
    }
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RoundRobin => "round_robin",
        Algorithm::Random => "random",
        Algorithm::LeastRequest => "least_request",
        Algorithm::RingHash => "ring_hash",
    }
}

/// Holds one unit of a counter and gives it back on drop, so every exit path of a request
/// (errors, client gone, panics in a plugin) releases what it took.
#[derive(Debug)]
pub struct CounterGuard {
    counter: Arc<Counters>,
    which: fn(&Counters) -> &AtomicUsize,
}

impl CounterGuard {
    /// Takes one unit of the counter `which` selects; `None` when that would exceed `limit`.
    pub fn acquire(
        counter: &Arc<Counters>,
        which: fn(&Counters) -> &AtomicUsize,
        limit: Option<usize>,
    ) -> Option<Self> {
        let now = which(counter).fetch_add(1, Ordering::AcqRel) + 1;
        if limit.is_some_and(|l| now > l) {
            which(counter).fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self {
            counter: counter.clone(),
            which,
        })
    }
}

impl Drop for CounterGuard {
    fn drop(&mut self) {
        (self.which)(&self.counter).fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a request in flight on one target (least request reads it).
#[derive(Debug)]
pub struct TargetLoad(Arc<Target>);

impl TargetLoad {
    /// Counts one request on `target` until dropped.
    pub fn new(target: Arc<Target>) -> Self {
        target.health.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(target)
    }
}

impl Drop for TargetLoad {
    fn drop(&mut self) {
        self.0.health.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The name a TLS client of the gateway's own sends to `target` and checks its certificate
/// against: the upstream's `sni`, else the target's host name, else its IP address.
fn server_name(tls: &crate::config::UpstreamTls, target: &Target) -> String {
    tls.sni
        .clone()
        .or_else(|| target.hostname.clone())
        .unwrap_or_else(|| target.address.ip().to_string())
}
