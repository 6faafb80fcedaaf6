//! Upstream clusters: the runtime state of each configured upstream (its targets, which of them
//! may take traffic) and the choice of a target for each attempt.
//!
//! Balancing is smooth weighted round robin over a schedule computed once per snapshot, so a pick
//! is one atomic increment. A target that refused a connection is skipped for the upstream's
//! `connect_failure_cooldown`; when every target is cooling down the request gets a fast 503.

mod peer;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::{TargetConfig, UpstreamConfig};

pub use peer::build_peer;

/// Runtime state of one upstream, shared by all worker threads of a snapshot.
#[derive(Debug)]
pub struct Cluster {
    /// The validated config.
    pub config: Arc<UpstreamConfig>,
    targets: Vec<TargetState>,
    schedule: Vec<usize>,
    cursor: AtomicUsize,
}

#[derive(Debug)]
struct TargetState {
    config: TargetConfig,
    /// Milliseconds on the process clock until which the target is skipped.
    down_until_ms: AtomicU64,
}

impl Cluster {
    /// Builds the runtime state of an upstream.
    pub fn new(config: Arc<UpstreamConfig>) -> Self {
        let weights: Vec<u32> = config.targets.iter().map(|t| t.weight).collect();
        let schedule = smooth_wrr_schedule(&weights);
        let targets = config
            .targets
            .iter()
            .map(|t| TargetState {
                config: t.clone(),
                down_until_ms: AtomicU64::new(0),
            })
            .collect();
        Self {
            config,
            targets,
            schedule,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The config of target `idx`.
    pub fn target(&self, idx: usize) -> Option<&TargetConfig> {
        self.targets.get(idx).map(|t| &t.config)
    }

    /// Picks the next target that may take traffic, skipping `tried` ones; `None` when none can.
    pub fn select(&self, tried: &[usize]) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let now = now_ms();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        // One pass over the schedule visits every target at least once.
        for step in 0..self.schedule.len() {
            let idx = self.schedule[(start + step) % self.schedule.len()];
            if tried.contains(&idx) {
                continue;
            }
            if self.targets[idx].down_until_ms.load(Ordering::Relaxed) <= now {
                return Some(idx);
            }
        }
        None
    }

    /// Takes target `idx` out of rotation for the cooldown after it refused a connection.
    pub fn report_connect_failure(&self, idx: usize) {
        if let Some(t) = self.targets.get(idx) {
            let until = now_ms() + self.config.connect_failure_cooldown.as_millis() as u64;
            t.down_until_ms.store(until, Ordering::Relaxed);
        }
    }

    /// Puts target `idx` back in rotation after a successful connection.
    pub fn report_connect_success(&self, idx: usize) {
        if let Some(t) = self.targets.get(idx) {
            if t.down_until_ms.load(Ordering::Relaxed) != 0 {
                t.down_until_ms.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether the upstream has no targets.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// Milliseconds since the first call; monotonic.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // +1 so that a target never marked (0) always counts as up.
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The order nginx's smooth weighted round robin visits targets in, over one full period
/// (sum of weights picks): heavy targets are interleaved with light ones, not sent in bursts.
fn smooth_wrr_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        assert_eq!(smooth_wrr_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr_schedule(&[1, 1]), vec![0, 1]);
        assert!(smooth_wrr_schedule(&[]).is_empty());
    }
}
