//! Health of one target: the verdict of active checks and the passive (outlier) ejection state.
//! One `TargetHealth` per target address, shared by every worker thread and kept across
//! discovery updates, so a target that flaps in and out of DNS keeps its record.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::OutlierConfig;
use crate::upstream::probe::ProbeError;

/// Milliseconds on the process's monotonic clock; never 0, so 0 can mean "not set".
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The shared health record of one target.
#[derive(Debug)]
pub struct TargetHealth {
    /// Active checks' verdict; targets of upstreams without checks are always healthy.
    active_healthy: AtomicBool,
    /// Whether active checks have given a verdict yet (new targets wait for their first).
    active_checked: AtomicBool,
    /// Consecutive active passes / failures (only the checker task writes them).
    check_passes: AtomicU32,
    check_failures: AtomicU32,
    /// Consecutive failures of real requests.
    consecutive_failures: AtomicU32,
    /// Process-clock ms until which the target is ejected (0: not ejected).
    ejected_until_ms: AtomicU64,
    /// Ejections so far; multiplies the ejection time. Decays while the target behaves.
    times_ejected: AtomicU32,
    /// Requests in flight to the target (for least-request and the admin view).
    pub in_flight: AtomicUsize,
    /// Failures of real requests, all time.
    total_failures: AtomicU64,
    /// The last failure or check result worth showing an operator.
    last_problem: Mutex<Option<String>>,
}

impl TargetHealth {
    /// A new record. With active checks the target waits for its first passing check before it
    /// takes traffic; without, it is healthy at once.
    pub fn new(actively_checked: bool) -> Self {
        Self {
            active_healthy: AtomicBool::new(!actively_checked),
            active_checked: AtomicBool::new(!actively_checked),
            check_passes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            total_failures: AtomicU64::new(0),
            last_problem: Mutex::new(None),
        }
    }

    /// Whether the target may take traffic now.
    pub fn is_available(&self, now: u64) -> bool {
        self.active_healthy.load(Ordering::Relaxed) && !self.is_ejected(now)
    }

    /// Whether active checks consider it healthy.
    pub fn is_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    /// Whether passive health has it ejected at `now`.
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// Process-clock ms the ejection ends at, if ejected.
    pub fn ejected_until(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        (until > now).then_some(until)
    }

    /// Records an active check result; flips the verdict at the thresholds. Returns the new
    /// verdict when it changed.
    pub fn record_check(
        &self,
        result: Result<(), &ProbeError>,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let first = !self.active_checked.swap(true, Ordering::Relaxed);
        let healthy = self.active_healthy.load(Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.check_failures.store(0, Ordering::Relaxed);
                let passes = self.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
                // A new target is admitted on its first pass: it was never seen failing.
                if !healthy && (first || passes >= healthy_threshold) {
                    self.active_healthy.store(true, Ordering::Relaxed);
                    return Some(true);
                }
            }
            Err(reason) => {
                self.check_passes.store(0, Ordering::Relaxed);
                let fails = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
                self.set_problem(format!("health check: {reason}"));
                if healthy && fails >= unhealthy_threshold {
                    self.active_healthy.store(false, Ordering::Relaxed);
                    return Some(false);
                }
            }
        }
        None
    }

    /// Records a successful request.
    pub fn record_success(&self) {
        // Read first: the common case (no failures) then costs no write to a shared line.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed request. Returns true when this failure should eject the target (the
    /// caller checks the cluster-wide ejection limit and then calls `eject`).
    pub fn record_failure(&self, reason: &str, outlier: Option<&OutlierConfig>) -> bool {
        self.total_failures.fetch_add(1, Ordering::Relaxed);
        self.set_problem(reason.to_string());
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        outlier.is_some_and(|o| n >= o.consecutive_failures && !self.is_ejected(now_ms()))
    }

    /// Ejects the target for base × times ejected (capped). Returns the ejection length.
    pub fn eject(&self, outlier: &OutlierConfig) -> Duration {
        let now = now_ms();
        let base = outlier.base_ejection_time.as_millis() as u64;
        // The multiplier decays: one step for every base period the target spent back in
        // service since its last ejection ended, so an old incident doesn't punish forever.
        let last_end = self.ejected_until_ms.load(Ordering::Relaxed);
        let mut times = self.times_ejected.load(Ordering::Relaxed);
        if last_end != 0 && base > 0 {
            let decay = (now.saturating_sub(last_end) / base) as u32;
            times = times.saturating_sub(decay);
        }
        times = times.saturating_add(1);
        self.times_ejected.store(times, Ordering::Relaxed);
        let ms = base
            .saturating_mul(u64::from(times))
            .min(outlier.max_ejection_time.as_millis() as u64);
        self.ejected_until_ms.store(now + ms, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        Duration::from_millis(ms)
    }

    fn set_problem(&self, p: String) {
        if let Ok(mut g) = self.last_problem.lock() {
            *g = Some(p);
        }
    }

    /// A snapshot for the admin view.
    pub fn view(&self) -> HealthView {
        let now = now_ms();
        HealthView {
            healthy: self.is_healthy(),
            checked: self.active_checked.load(Ordering::Relaxed),
            ejected_for_ms: self.ejected_until(now).map(|u| u - now),
            times_ejected: self.times_ejected.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            total_failures: self.total_failures.load(Ordering::Relaxed),
            last_problem: self.last_problem.lock().ok().and_then(|g| g.clone()),
        }
    }
}

/// What the admin listener shows of a target's health.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthView {
    /// Active checks' verdict.
    pub healthy: bool,
    /// Whether active checks gave a verdict yet.
    pub checked: bool,
    /// Remaining ejection, if ejected.
    pub ejected_for_ms: Option<u64>,
    /// Ejections so far (after decay).
    pub times_ejected: u32,
    /// Requests in flight.
    pub in_flight: usize,
    /// Current run of failed requests.
    pub consecutive_failures: u32,
    /// Failed requests, all time.
    pub total_failures: u64,
    /// The last failure or failed check.
    pub last_problem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier(n: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: n,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: 50,
            failure_statuses: vec![(500, 599)],
        }
    }

    #[test]
    fn active_checks_flip_at_thresholds() {
        let h = TargetHealth::new(true);
        assert!(!h.is_available(now_ms()), "new targets wait for a check");
        assert_eq!(
            h.record_check(Ok(()), 2, 3),
            Some(true),
            "first pass admits"
        );
        assert_eq!(h.record_check(Err(&ProbeError::ConnectRefused), 2, 3), None);
        assert_eq!(h.record_check(Err(&ProbeError::ConnectRefused), 2, 3), None);
        assert_eq!(
            h.record_check(Err(&ProbeError::ConnectRefused), 2, 3),
            Some(false)
        );
        assert_eq!(h.record_check(Ok(()), 2, 3), None);
        assert_eq!(h.record_check(Ok(()), 2, 3), Some(true));
    }

    #[test]
    fn consecutive_failures_eject_with_growing_capped_time() {
        let o = outlier(2);
        let h = TargetHealth::new(false);
        assert!(!h.record_failure("a", Some(&o)));
        h.record_success();
        assert!(!h.record_failure("a", Some(&o)));
        assert!(h.record_failure("b", Some(&o)));
        assert_eq!(h.eject(&o), Duration::from_secs(10));
        assert!(!h.is_available(now_ms()));
        // Ejected again right away: twice the base, then capped.
        assert_eq!(h.eject(&o), Duration::from_secs(20));
        assert_eq!(h.eject(&o), Duration::from_secs(25));
        assert_eq!(h.view().last_problem.as_deref(), Some("b"));
    }

    #[test]
    fn without_outlier_detection_failures_never_eject() {
        let h = TargetHealth::new(false);
        for _ in 0..100 {
            assert!(!h.record_failure("x", None));
        }
        assert!(h.is_available(now_ms()));
    }
}
