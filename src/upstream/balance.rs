//! Load-balancing algorithms over one target set. Each pick takes a filter (available and not yet
//! tried) so that health, ejection and retries never need a second data structure.
//!
//! Everything a pick needs that depends only on the targets and their weights (the round-robin
//! schedule, cumulative weights, the hash ring) is computed once when the set changes.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use crate::config::Algorithm;

/// Virtual nodes per unit of weight on the hash ring; enough for an even spread at small
/// target counts, few enough that a 100-target ring stays small.
const VNODES_PER_WEIGHT: u32 = 512;
/// Ceiling on ring size whatever the weights.
const MAX_RING: usize = 128 * 1024;

/// The precomputed picking structures of one target set.
#[derive(Debug, Default)]
pub struct Picker {
    weights: Vec<u32>,
    /// Smooth weighted round-robin order over one period.
    schedule: Vec<usize>,
    /// Running sums of weights, for weighted random picks.
    cumulative: Vec<u64>,
    /// (point, target) sorted by point.
    ring: Vec<(u64, usize)>,
}

impl Picker {
    /// Builds the structures for targets with these addresses and weights.
    pub fn new(algorithm: Algorithm, targets: &[(SocketAddr, u32)]) -> Self {
        let weights: Vec<u32> = targets.iter().map(|(_, w)| (*w).max(1)).collect();
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut sum = 0u64;
        for w in &weights {
            sum += u64::from(*w);
            cumulative.push(sum);
        }
        let schedule = match algorithm {
            Algorithm::RoundRobin => smooth_wrr_schedule(&weights),
            _ => Vec::new(),
        };
        let ring = match algorithm {
            Algorithm::RingHash => build_ring(targets),
            _ => Vec::new(),
        };
        Self {
            weights,
            schedule,
            cumulative,
            ring,
        }
    }

    /// Picks a target index accepted by `ok`; `None` when no target is accepted.
    /// `key` is the request's hash (ring hash only); `load` gives a target's requests in flight
    /// (least request only).
    pub fn pick(
        &self,
        algorithm: Algorithm,
        cursor: &AtomicUsize,
        key: Option<u64>,
        ok: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> usize,
    ) -> Option<usize> {
        if self.weights.is_empty() {
            return None;
        }
        match algorithm {
            Algorithm::RoundRobin => self.round_robin(cursor, ok),
            Algorithm::Random => self.random(ok),
            Algorithm::LeastRequest => self.least_request(ok, load),
            Algorithm::RingHash => match key {
                Some(k) => self.ring_hash(k, ok),
                None => self.random(ok),
            },
        }
    }

    fn round_robin(&self, cursor: &AtomicUsize, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        // Every pick takes slots off the shared cursor until one holds an acceptable target: a
        // skipped slot is used up, so the next pick does not land on the same neighbour. Walking
        // on from one slot instead gave an unavailable target's whole share to the target after
        // it in the schedule. One pass visits every target at least once.
        for _ in 0..len {
            let slot = cursor.fetch_add(1, Ordering::Relaxed);
            let i = self.schedule[slot % len];
            if ok(i) {
                return Some(i);
            }
        }
        None
    }

    fn weighted_random_index(&self, rng: &mut impl Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let r = rng.random_range(0..total);
        self.cumulative.partition_point(|&c| c <= r)
    }

    fn random(&self, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut rng = rand::rng();
        // Rejection sampling keeps the weights exact while most targets are available...
        for _ in 0..4 {
            let i = self.weighted_random_index(&mut rng);
            if ok(i) {
                return Some(i);
            }
        }
        // ...and a weighted pick among the available ones settles the rest.
        let total: u64 = (0..self.weights.len())
            .filter(|&i| ok(i))
            .map(|i| u64::from(self.weights[i]))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.random_range(0..total);
        for (i, w) in self.weights.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            if r < u64::from(*w) {
                return Some(i);
            }
            r -= u64::from(*w);
        }
        None
    }

    /// Power of two choices: two weighted random candidates, the one with fewer requests in
    /// flight per unit of weight wins.
    fn least_request(
        &self,
        ok: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> usize,
    ) -> Option<usize> {
        let a = self.random(ok)?;
        let b = match self.random(&|i| i != a && ok(i)) {
            Some(b) => b,
            None => return Some(a),
        };
        // load_a / w_a <= load_b / w_b, without division.
        let cost = |i: usize, other: usize| load(i) as u64 * u64::from(self.weights[other]);
        Some(if cost(a, b) <= cost(b, a) { a } else { b })
    }

    fn ring_hash(&self, key: u64, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.ring.len();
        if len == 0 {
            return None;
        }
        let start = self.ring.partition_point(|(p, _)| *p < key);
        // Walk clockwise to the first acceptable target, so an unavailable target's keys spread
        // over its neighbours instead of all landing on one.
        (0..len)
            .map(|step| self.ring[(start + step) % len].1)
            .find(|&i| ok(i))
    }
}

/// A stable 64-bit hash (same input, same value, for the life of the binary).
pub fn hash64(data: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

fn build_ring(targets: &[(SocketAddr, u32)]) -> Vec<(u64, usize)> {
    let total: u64 = targets.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
    let per_weight = if total * u64::from(VNODES_PER_WEIGHT) > MAX_RING as u64 {
        ((MAX_RING as u64 / total.max(1)).max(1)) as u32
    } else {
        VNODES_PER_WEIGHT
    };
    let mut ring = Vec::new();
    for (i, (addr, w)) in targets.iter().enumerate() {
        // Points depend on the address only, so adding or removing a target moves only the
        // keys on its own points.
        for v in 0..(*w).max(1) * per_weight {
            ring.push((hash64((addr, v)), i));
        }
    }
    ring.sort_unstable();
    ring
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

    fn addrs(weights: &[u32]) -> Vec<(SocketAddr, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)), *w))
            .collect()
    }

    fn counts(alg: Algorithm, weights: &[u32], n: usize, ok: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let p = Picker::new(alg, &addrs(weights));
        let cursor = AtomicUsize::new(0);
        let mut c = vec![0; weights.len()];
        for k in 0..n {
            let key = Some(hash64(k));
            if let Some(i) = p.pick(alg, &cursor, key, ok, &|_| 0) {
                c[i] += 1;
            }
        }
        c
    }

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        assert_eq!(smooth_wrr_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr_schedule(&[1, 1]), vec![0, 1]);
        assert!(smooth_wrr_schedule(&[]).is_empty());
    }

    #[test]
    fn every_algorithm_respects_weights() {
        for alg in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::RingHash,
            Algorithm::LeastRequest,
        ] {
            let c = counts(alg, &[1, 2, 3], 60_000, &|_| true);
            for (i, share) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
                let got = c[i] as f64 / 60_000.0;
                assert!(
                    (got - share).abs() < 0.05,
                    "{alg:?}: target {i} got {got}, want {share}"
                );
            }
        }
    }

    #[test]
    fn unavailable_targets_are_skipped() {
        for alg in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::RingHash,
            Algorithm::LeastRequest,
        ] {
            let c = counts(alg, &[1, 1, 1], 3000, &|i| i != 1);
            assert_eq!(c[1], 0, "{alg:?}");
            assert_eq!(c[0] + c[2], 3000, "{alg:?}");
            let c = counts(alg, &[1, 1, 1], 10, &|_| false);
            assert_eq!(c, vec![0, 0, 0], "{alg:?}");
        }
    }

    #[test]
    fn least_request_prefers_the_idle_target() {
        let p = Picker::new(Algorithm::LeastRequest, &addrs(&[1, 1]));
        let cursor = AtomicUsize::new(0);
        for _ in 0..100 {
            let i = p.pick(Algorithm::LeastRequest, &cursor, None, &|_| true, &|i| {
                if i == 0 {
                    10
                } else {
                    0
                }
            });
            assert_eq!(i, Some(1));
        }
    }

    #[test]
    fn round_robin_spreads_an_unavailable_targets_share_evenly() {
        let p = Picker::new(Algorithm::RoundRobin, &addrs(&[1, 1, 1]));
        let cursor = AtomicUsize::new(0);
        let mut picks = [0usize; 3];
        for _ in 0..3000 {
            let i = p
                .pick(Algorithm::RoundRobin, &cursor, None, &|i| i != 1, &|_| 0)
                .expect("a target");
            picks[i] += 1;
        }
        assert_eq!(picks, [1500, 0, 1500]);
    }

    /// docs/configuration.md: under `least_request`, weights set the proportions of requests in
    /// flight; with one request at a time they are the traffic split.
    #[test]
    fn least_request_keeps_in_flight_counts_in_proportion_to_weights() {
        let p = Picker::new(Algorithm::LeastRequest, &addrs(&[1, 2, 3]));
        let cursor = AtomicUsize::new(0);
        // Requests that never finish: every pick adds to a target's load.
        let loads: Vec<std::cell::Cell<usize>> = (0..3).map(|_| Default::default()).collect();
        for _ in 0..600 {
            let i = p
                .pick(Algorithm::LeastRequest, &cursor, None, &|_| true, &|i| {
                    loads[i].get()
                })
                .expect("a target");
            loads[i].set(loads[i].get() + 1);
        }
        for (i, want) in [100, 200, 300].into_iter().enumerate() {
            let got = loads[i].get();
            assert!(
                got.abs_diff(want) <= 10,
                "target {i}: {got} in flight, want ~{want}"
            );
        }
        // One request at a time: all idle at every pick, so the split is the weights'.
        let mut picks = [0usize; 3];
        for _ in 0..60_000 {
            let i = p
                .pick(Algorithm::LeastRequest, &cursor, None, &|_| true, &|_| 0)
                .expect("a target");
            picks[i] += 1;
        }
        for (i, want) in [10_000, 20_000, 30_000].into_iter().enumerate() {
            assert!(
                picks[i].abs_diff(want) <= 900,
                "target {i}: {} picks",
                picks[i]
            );
        }
    }

    #[test]
    fn ring_hash_remaps_only_the_removed_targets_keys() {
        let all = addrs(&[1, 1, 1, 1, 1]);
        let before = Picker::new(Algorithm::RingHash, &all);
        let after = Picker::new(Algorithm::RingHash, &all[..4]);
        let cursor = AtomicUsize::new(0);
        let mut moved = 0;
        for k in 0..10_000u64 {
            let key = Some(hash64(k));
            let a = before.pick(Algorithm::RingHash, &cursor, key, &|_| true, &|_| 0);
            let b = after.pick(Algorithm::RingHash, &cursor, key, &|_| true, &|_| 0);
            if a != Some(4) {
                assert_eq!(a, b, "a key of a remaining target moved");
            } else {
                moved += 1;
            }
        }
        assert!(
            (1_000..3_000).contains(&moved),
            "removed target owned {moved} keys"
        );
    }
}
