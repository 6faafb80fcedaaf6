//! The in-process limiter: governor's GCRA over the bounded store, one per configured limit.

use std::num::NonZeroU32;
use std::ops::Add;
use std::time::{Duration, Instant};

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::{Quota, RateLimiter};

use crate::rate::Rate;
use crate::store::BoundedStore;

/// What one limit made of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the limit admits the request.
    pub allowed: bool,
    /// Requests the limit would still admit right now (after this one, if admitted).
    pub remaining: u64,
    /// Time until the limit makes one more request available: for a refused request, how long
    /// to wait before retrying (`Retry-After`); for an admitted one, the draft's `t`.
    pub refill_in: Duration,
}

impl Verdict {
    /// The verdict on a bucket with theoretical arrival time `tat` at time `now` (both in the
    /// same frame, nanoseconds), for a GCRA of emission interval `interval` and burst `burst`.
    ///
    /// The bucket's credit is `now + burst·T − tat` (how far the TAT is from "full"), at most
    /// `burst·T`; every whole `T` of it is one request that would be admitted now.
    pub fn of_bucket(allowed: bool, tat: u64, now: u64, interval: u64, burst: u32) -> Self {
        let interval = interval.max(1);
        let full = interval.saturating_mul(u64::from(burst));
        let credit = now.saturating_add(full).saturating_sub(tat).min(full);
        let remaining = credit / interval;
        let refill_in = if remaining < u64::from(burst) {
            (remaining + 1) * interval - credit
        } else {
            0
        };
        Verdict {
            allowed,
            remaining,
            refill_in: Duration::from_nanos(refill_in),
        }
    }
}

/// governor's clock for our limiters: nanoseconds since the limiter was made, from the monotonic
/// `Instant` (so the reference point is ours to know, see `LocalLimiter::start`).
#[derive(Debug, Clone)]
struct MonoClock {
    base: Instant,
    /// Unit tests only: when set, the clock reads these nanoseconds instead of `base` and moves
    /// only when a test says so, which makes their GCRA arithmetic exact on any machine.
    #[cfg(test)]
    manual: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// A reading of [`MonoClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(u64);

impl Add<Nanos> for Tick {
    type Output = Tick;

    fn add(self, rhs: Nanos) -> Tick {
        Tick(self.0.saturating_add(rhs.as_u64()))
    }
}

impl Reference for Tick {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_sub(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        Tick(self.0.saturating_sub(duration.as_u64()))
    }
}

impl Clock for MonoClock {
    type Instant = Tick;

    fn now(&self) -> Tick {
        #[cfg(test)]
        if let Some(manual) = &self.manual {
            return Tick(manual.load(std::sync::atomic::Ordering::SeqCst));
        }
        // u64 nanoseconds last 584 years.
        Tick(u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

type Limiter = RateLimiter<Vec<u8>, BoundedStore, MonoClock, NoOpMiddleware<Tick>>;

/// One limit's GCRA state for every key, in this process.
#[derive(Debug)]
pub struct LocalLimiter {
    limiter: Limiter,
    clock: MonoClock,
    /// The limiter's reference point. governor reads it from the clock inside
    /// `RateLimiter::new` and keeps it private; it is read here just before, so it is earlier by
    /// the few nanoseconds of that call, which the whole-second headers cannot show.
    start: Tick,
    interval: u64,
    burst: u32,
}

impl LocalLimiter {
    /// A limiter admitting `burst` requests at once and one per `rate.interval()` after that,
    /// per key, for at most `max_keys` keys.
    pub fn new(rate: Rate, burst: NonZeroU32, max_keys: usize) -> Result<Self, String> {
        let clock = MonoClock {
            base: Instant::now(),
            #[cfg(test)]
            manual: None,
        };
        Self::with_clock(rate, burst, max_keys, clock)
    }

    fn with_clock(
        rate: Rate,
        burst: NonZeroU32,
        max_keys: usize,
        clock: MonoClock,
    ) -> Result<Self, String> {
        let quota = Quota::with_period(rate.interval())
            .ok_or_else(|| format!("rate {rate} has a zero emission interval"))?
            .allow_burst(burst);
        let start = clock.now();
        let limiter = RateLimiter::new(quota, BoundedStore::new(max_keys), clock.clone());
        Ok(LocalLimiter {
            limiter,
            clock,
            start,
            interval: u64::try_from(rate.interval().as_nanos()).unwrap_or(u64::MAX),
            burst: burst.get(),
        })
    }

    /// Counts one request under `key`: admits it and takes one unit, or refuses it.
    pub fn check(&self, key: &Vec<u8>) -> Verdict {
        let outcome = self.limiter.check_key(key);
        // Read right after the decision on this thread: that decision's TAT.
        let tat = BoundedStore::last_tat();
        let now = self.clock.now();
        match outcome {
            Ok(()) => Verdict::of_bucket(
                true,
                tat,
                now.0.saturating_sub(self.start.0),
                self.interval,
                self.burst,
            ),
            Err(not_until) => Verdict {
                allowed: false,
                remaining: 0,
                refill_in: not_until.wait_time_from(now),
            },
        }
    }

    /// Drops keys whose bucket is full again (indistinguishable from a new key) and gives back
    /// memory when most of it is unused. Run periodically.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limiter on a clock that stands still until the test moves it (`advance`).
    struct Manual {
        limiter: LocalLimiter,
        now: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl Manual {
        fn advance(&self, by: Duration) {
            let nanos = u64::try_from(by.as_nanos()).unwrap();
            self.now
                .fetch_add(nanos, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl std::ops::Deref for Manual {
        type Target = LocalLimiter;
        fn deref(&self) -> &LocalLimiter {
            &self.limiter
        }
    }

    fn limiter(rate: &str, burst: u32, max_keys: usize) -> Manual {
        let now = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let clock = MonoClock {
            base: Instant::now(),
            manual: Some(now.clone()),
        };
        let limiter = LocalLimiter::with_clock(
            rate.parse().unwrap(),
            NonZeroU32::new(burst).unwrap(),
            max_keys,
            clock,
        )
        .unwrap();
        Manual { limiter, now }
    }

    #[test]
    fn burst_then_refusal_with_exact_counts() {
        let l = limiter("1/min", 5, 100);
        let key = b"k".to_vec();
        let remaining: Vec<u64> = (0..5)
            .map(|_| {
                let v = l.check(&key);
                assert!(v.allowed);
                v.remaining
            })
            .collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let refused = l.check(&key);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        // The next unit comes one emission interval after the first request.
        assert_eq!(refused.refill_in, Duration::from_secs(60));
        l.advance(Duration::from_secs(15));
        assert_eq!(l.check(&key).refill_in, Duration::from_secs(45));
        // Other keys have their own buckets.
        assert!(l.check(&b"other".to_vec()).allowed);
    }

    #[test]
    fn refill_time_of_an_admitted_request_is_the_time_to_the_next_unit() {
        let l = limiter("1/min", 3, 100);
        let v = l.check(&b"k".to_vec());
        assert_eq!(v.remaining, 2);
        // One unit was taken just now; it comes back one interval later.
        assert_eq!(v.refill_in, Duration::from_secs(60));
    }

    #[test]
    fn steady_rate_after_the_burst() {
        let l = limiter("20/s", 1, 100);
        let key = b"k".to_vec();
        assert!(l.check(&key).allowed);
        let refused = l.check(&key);
        assert!(!refused.allowed);
        assert_eq!(refused.refill_in, Duration::from_millis(50));
        l.advance(Duration::from_millis(49));
        assert!(!l.check(&key).allowed, "49 ms: still within the interval");
        l.advance(Duration::from_millis(1));
        assert!(
            l.check(&key).allowed,
            "one interval (50 ms) later a unit is back"
        );
        assert!(!l.check(&key).allowed, "and only one");
    }

    #[test]
    fn bucket_view_math() {
        // T = 100, burst 5; a fresh bucket after one admission: TAT = now + T.
        let v = Verdict::of_bucket(true, 1_100, 1_000, 100, 5);
        assert_eq!((v.remaining, v.refill_in), (4, Duration::from_nanos(100)));
        // Empty bucket: TAT = now + 5T.
        let v = Verdict::of_bucket(true, 1_500, 1_000, 100, 5);
        assert_eq!((v.remaining, v.refill_in), (0, Duration::from_nanos(100)));
        // Part of an interval already elapsed.
        let v = Verdict::of_bucket(true, 1_430, 1_000, 100, 5);
        assert_eq!((v.remaining, v.refill_in), (0, Duration::from_nanos(30)));
        // Full bucket (TAT in the past): nothing more to come.
        let v = Verdict::of_bucket(true, 10, 1_000, 100, 5);
        assert_eq!((v.remaining, v.refill_in), (5, Duration::ZERO));
    }

    #[test]
    fn sweep_drops_idle_keys() {
        let l = limiter("1000/s", 1, 100);
        for i in 0..50 {
            l.check(&format!("k{i}").into_bytes());
        }
        assert_eq!(l.len(), 50);
        l.sweep();
        assert_eq!(l.len(), 50, "no bucket is full yet");
        // One interval (1 ms) later every bucket is full again; governor's `retain_recent`
        // drops a key one interval after that.
        l.advance(Duration::from_millis(1));
        l.sweep();
        assert_eq!(l.len(), 50, "full for no time yet");
        l.advance(Duration::from_millis(1));
        l.sweep();
        assert!(l.is_empty(), "{} keys left", l.len());
    }

    #[test]
    fn max_keys_bounds_memory_under_a_flood() {
        let l = limiter("1/min", 1, 500);
        for i in 0..20_000 {
            l.check(&format!("k{i}").into_bytes());
        }
        assert!(l.len() <= 500, "{}", l.len());
    }
}
