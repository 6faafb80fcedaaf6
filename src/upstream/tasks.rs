//! Background work of a cluster: finding its targets (host names in `targets`, DNS, DNS SRV,
//! Consul) and checking them actively. One set of tasks per cluster per snapshot; they stop when
//! the stop signal fires (the snapshot is replaced or the server shuts down).
//!
//! `prime` does one round of both before a snapshot takes traffic, so targets are known and
//! checked before the first request (and a name that does not resolve is reported at startup).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use super::discovery::{ConsulClient, ConsulError, DnsError, DnsResolver, Endpoint, Nameservers};
use super::probe::{probe, ProbeError};
use super::Cluster;
use crate::config::{DiscoverySource, HealthCheckConfig};

/// Shortest time between two Consul queries.
const CONSUL_MIN_SPACING: Duration = Duration::from_millis(100);

/// How long one DNS question may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a round of discovery did not bring the whole target set (the last good one stays).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A DNS lookup failed.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// A Consul query failed.
    #[error(transparent)]
    Consul(Box<ConsulError>),
    /// The DNS resolver could not be built (logged when it was tried).
    #[error("no DNS resolver")]
    NoResolver,
    /// No Consul client (one is made whenever the source is Consul).
    #[error("no Consul client")]
    NoConsulClient,
    /// Host-name targets that did not resolve: their labels and why.
    #[error("{}", describe_targets(.0))]
    Targets(Vec<(String, DiscoveryError)>),
}

impl From<ConsulError> for DiscoveryError {
    fn from(e: ConsulError) -> Self {
        DiscoveryError::Consul(Box::new(e))
    }
}

/// "target `a`: why; target `b`: why".
fn describe_targets(failures: &[(String, DiscoveryError)]) -> String {
    failures
        .iter()
        .map(|(label, e)| format!("target `{label}`: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Starts the cluster's background tasks on the current tokio runtime.
pub fn spawn(cluster: Arc<Cluster>, stop: watch::Receiver<bool>) {
    let needs_discovery = cluster.config.discovery.is_some()
        || cluster.config.targets.iter().any(|t| t.hostname.is_some());
    if needs_discovery {
        let (c, s) = (cluster.clone(), stop.clone());
        tokio::spawn(async move { discovery_loop(c, s).await });
    }
    if let Some(hc) = cluster.config.health_check.clone() {
        tokio::spawn(async move { check_loop(cluster, hc, stop).await });
    }
}

/// One round of discovery and one of health checks, for a cluster about to take traffic.
pub async fn prime(cluster: &Cluster) {
    let needs_discovery = cluster.config.discovery.is_some()
        || cluster.config.targets.iter().any(|t| t.hostname.is_some());
    if needs_discovery {
        let mut state = Discovery::new(cluster);
        if let Err(e) = state.refresh(cluster, None).await {
            tracing::error!(upstream = %cluster.name(), error = %e,
                "discovery failed at startup; retrying in the background");
        }
    }
    if let Some(hc) = &cluster.config.health_check {
        check_round(cluster, hc).await;
    }
}

/// True when stopped (or the sender is gone) before `d` passed.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

/// What discovery remembers between rounds.
struct Discovery {
    resolver: Option<DnsResolver>,
    consul: Option<ConsulClient>,
    consul_index: Option<u64>,
    /// Last good addresses of each host name in `targets`, kept when a lookup fails so a DNS
    /// hiccup does not empty the upstream.
    resolved: HashMap<String, Vec<Endpoint>>,
}

impl Discovery {
    fn new(cluster: &Cluster) -> Self {
        let ns = match &cluster.config.discovery {
            Some(d) => match &d.source {
                DiscoverySource::Dns { nameservers, .. }
                | DiscoverySource::DnsSrv { nameservers, .. } => nameservers.clone(),
                DiscoverySource::Consul { .. } => Nameservers::System,
            },
            None => Nameservers::System,
        };
        let needs_dns = !matches!(
            cluster.config.discovery.as_ref().map(|d| &d.source),
            Some(DiscoverySource::Consul { .. })
        );
        let resolver = if needs_dns {
            match DnsResolver::new(&ns, DNS_TIMEOUT) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(upstream = %cluster.name(), error = %e, "cannot build a DNS resolver");
                    None
                }
            }
        } else {
            None
        };
        let consul = matches!(
            cluster.config.discovery.as_ref().map(|d| &d.source),
            Some(DiscoverySource::Consul { .. })
        )
        .then(ConsulClient::new);
        Self {
            resolver,
            consul,
            consul_index: None,
            resolved: HashMap::new(),
        }
    }

    /// One refresh; installs the new target set when it changed. `stop` lets a long Consul
    /// blocking query end early.
    async fn refresh(
        &mut self,
        cluster: &Cluster,
        stop: Option<&mut watch::Receiver<bool>>,
    ) -> Result<(), DiscoveryError> {
        let endpoints = match cluster.config.discovery.as_ref().map(|d| &d.source) {
            Some(DiscoverySource::Dns { name, port, .. }) => {
                self.resolver()?.resolve_a(name, *port).await?
            }
            Some(DiscoverySource::DnsSrv { name, .. }) => {
                self.resolver()?.resolve_srv(name).await?
            }
            Some(DiscoverySource::Consul { query, wait }) => {
                let client = self.consul.as_ref().ok_or(DiscoveryError::NoConsulClient)?;
                // A blocking query waits up to `wait` for a change; the stop signal cuts it short.
                let fetch = client.fetch(query, self.consul_index, *wait);
                let (eps, index) = match stop {
                    Some(stop) => tokio::select! {
                        r = fetch => r?,
                        _ = stop.changed() => return Ok(()),
                    },
                    None => fetch.await?,
                };
                self.consul_index = Some(index);
                eps
            }
            None => self.static_names(cluster).await?,
        };
        if !cluster.has_endpoints(&endpoints) {
            tracing::info!(
                upstream = %cluster.name(),
                targets = ?endpoints.iter().map(|e| e.address.to_string()).collect::<Vec<_>>(),
                "targets changed"
            );
            cluster.set_endpoints(endpoints);
        }
        Ok(())
    }

    fn resolver(&self) -> Result<&DnsResolver, DiscoveryError> {
        self.resolver.as_ref().ok_or(DiscoveryError::NoResolver)
    }

    /// The IP targets plus the current addresses of the host-name targets.
    async fn static_names(&mut self, cluster: &Cluster) -> Result<Vec<Endpoint>, DiscoveryError> {
        let mut out: Vec<Endpoint> = Vec::new();
        let mut errors = Vec::new();
        for t in &cluster.config.targets {
            if let Some(address) = t.address {
                out.push(Endpoint {
                    address,
                    weight: t.weight,
                    hostname: None,
                });
                continue;
            }
            let Some((host, port)) = &t.hostname else {
                continue;
            };
            let looked_up = match self.resolver.as_ref() {
                Some(r) => r.resolve_a(host, *port).await.map_err(DiscoveryError::Dns),
                None => Err(DiscoveryError::NoResolver),
            };
            match looked_up {
                Ok(eps) => {
                    self.resolved.insert(t.label.clone(), eps);
                }
                Err(e) => errors.push((t.label.clone(), e)),
            }
            for e in self.resolved.get(&t.label).into_iter().flatten() {
                out.push(Endpoint {
                    weight: t.weight,
                    ..e.clone()
                });
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            // Install what resolved; report the rest (the caller logs it and tries again).
            if !cluster.has_endpoints(&out) {
                cluster.set_endpoints(out);
            }
            Err(DiscoveryError::Targets(errors))
        }
    }
}

async fn discovery_loop(cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    let mut state = Discovery::new(&cluster);
    let interval = match &cluster.config.discovery {
        Some(d) => d.interval,
        None => cluster.config.dns_refresh,
    };
    let is_consul = matches!(
        cluster.config.discovery.as_ref().map(|d| &d.source),
        Some(DiscoverySource::Consul { .. })
    );
    let mut failing = false;
    loop {
        // Consul's blocking query does the waiting itself; only errors pause the loop, and a
        // floor between queries keeps an index reset (immediate answers) from spinning.
        let pause = if !is_consul || failing {
            interval
        } else {
            CONSUL_MIN_SPACING
        };
        if sleep_or_stop(pause, &mut stop).await {
            return;
        }
        match state.refresh(&cluster, Some(&mut stop)).await {
            Ok(()) => failing = false,
            Err(e) => {
                failing = true;
                tracing::warn!(upstream = %cluster.name(), error = %e, "discovery failed; keeping the last targets");
            }
        }
    }
}

async fn check_loop(cluster: Arc<Cluster>, hc: HealthCheckConfig, mut stop: watch::Receiver<bool>) {
    loop {
        let jitter = if hc.jitter.is_zero() {
            Duration::ZERO
        } else {
            let ms = hc.jitter.as_millis() as u64;
            Duration::from_millis(rand::rng().random_range(0..=ms))
        };
        if sleep_or_stop(hc.interval + jitter, &mut stop).await {
            return;
        }
        check_round(&cluster, &hc).await;
    }
}

/// Checks every current target once, concurrently.
async fn check_round(cluster: &Cluster, hc: &HealthCheckConfig) {
    let targets = cluster.targets().targets.clone();
    let mut set = tokio::task::JoinSet::new();
    for t in targets {
        let kind = hc.probe.clone();
        let timeout = hc.timeout;
        let tls = cluster.probe_tls(&t);
        set.spawn(async move {
            let result = match tls {
                Ok(tls) => probe(&kind, t.address, timeout, tls.as_ref()).await,
                Err(e) => Err(ProbeError::TlsSetup(e)),
            };
            (t, result)
        });
    }
    while let Some(joined) = set.join_next().await {
        let Ok((t, result)) = joined else {
            continue;
        };
        if let Some(now_healthy) = t.health.record_check(
            result.as_ref().map(drop),
            hc.healthy_threshold,
            hc.unhealthy_threshold,
        ) {
            if now_healthy {
                tracing::info!(upstream = %cluster.name(), target = %t.address, "target healthy");
            } else {
                let reason = result.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(upstream = %cluster.name(), target = %t.address,
                    reason = %reason, "target unhealthy");
            }
        }
    }
}
