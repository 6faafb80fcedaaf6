//! The response headers that tell clients about their limits.
//!
//! Draft form, per draft-ietf-httpapi-ratelimit-headers-10 (structured-field Lists of String
//! items with parameters, the syntax introduced in -08):
//!
//! ```text
//! RateLimit-Policy: "default";q=100;w=60
//! RateLimit: "default";r=42;t=1
//! ```
//!
//! `q`/`w`: the rate as configured (q requests per w seconds); `r`: requests that would be
//! admitted right now; `t`: seconds until one more is (the -10 meaning of `t`, "time until
//! additional quota is made available"), rounded up.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::local::Verdict;
use crate::rate::Rate;

/// `RateLimit-Policy`, as a `&'static str`: pingora takes that without a copy, while a
/// `HeaderName` of a non-standard header is copied into a new buffer on every insert.
pub const RATELIMIT_POLICY_STR: &str = "ratelimit-policy";
/// `RateLimit`; see [`RATELIMIT_POLICY_STR`].
pub const RATELIMIT_STR: &str = "ratelimit";

/// Legacy `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset` (seconds from now).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up: a client that waits this long is never early.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1 (a refused request always has
/// something to wait for, and 0 would invite an immediate retry).
pub fn retry_after(d: Duration) -> HeaderValue {
    HeaderValue::from(ceil_secs(d).max(1))
}

/// `"name";q=COUNT;w=WINDOW, ...` for every limit. Policy names are restricted at build time to
/// characters that need no escaping in a structured-field String.
pub fn policy(limits: &[(&str, Rate)]) -> Option<HeaderValue> {
    let items: Vec<String> = limits
        .iter()
        .map(|(name, rate)| format!("\"{name}\";q={};w={}", rate.count(), rate.window_secs()))
        .collect();
    HeaderValue::try_from(items.join(", ")).ok()
}

/// `"name";r=REMAINING;t=SECONDS, ...` for the given verdicts.
pub fn ratelimit(items: &[(&str, Verdict)]) -> Option<HeaderValue> {
    use std::fmt::Write as _;
    if items.is_empty() {
        return None;
    }
    // One buffer for every item: this runs on every limited response.
    let mut out = String::with_capacity(32 * items.len());
    for (i, (name, v)) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "\"{name}\";r={};t={}",
            v.remaining,
            ceil_secs(v.refill_in)
        );
    }
    HeaderValue::try_from(out).ok()
}

/// The three legacy headers, for the most constraining verdict (fewest remaining, then longest
/// wait): one limit is all they can describe.
pub fn legacy(items: &[(Rate, Verdict)]) -> Option<[(HeaderName, HeaderValue); 3]> {
    let (rate, v) = items
        .iter()
        .min_by_key(|(_, v)| (v.remaining, std::cmp::Reverse(v.refill_in)))?;
    Some([
        (X_RATELIMIT_LIMIT, HeaderValue::from(rate.count())),
        (X_RATELIMIT_REMAINING, HeaderValue::from(v.remaining)),
        (X_RATELIMIT_RESET, HeaderValue::from(ceil_secs(v.refill_in))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(allowed: bool, remaining: u64, ms: u64) -> Verdict {
        Verdict {
            allowed,
            remaining,
            refill_in: Duration::from_millis(ms),
        }
    }

    #[test]
    fn seconds_are_rounded_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after(Duration::from_millis(50)), "1");
        assert_eq!(retry_after(Duration::from_millis(16_200)), "17");
        assert_eq!(retry_after(Duration::ZERO), "1");
    }

    #[test]
    fn policy_lists_every_limit_in_draft_syntax() {
        let v = policy(&[
            ("default", "100/min".parse().unwrap()),
            ("burst", "10/s".parse().unwrap()),
            ("daily", "5000/d".parse().unwrap()),
        ])
        .unwrap();
        assert_eq!(
            v,
            "\"default\";q=100;w=60, \"burst\";q=10;w=1, \"daily\";q=5000;w=86400"
        );
    }

    #[test]
    fn ratelimit_items_carry_remaining_and_seconds_to_the_next_unit() {
        let v = ratelimit(&[
            ("default", verdict(true, 42, 16_200)),
            ("burst", verdict(false, 0, 100)),
        ])
        .unwrap();
        assert_eq!(v, "\"default\";r=42;t=17, \"burst\";r=0;t=1");
        assert!(ratelimit(&[]).is_none());
    }

    #[test]
    fn legacy_headers_describe_the_most_constraining_limit() {
        let a: Rate = "100/min".parse().unwrap();
        let b: Rate = "10/s".parse().unwrap();
        let [limit, remaining, reset] =
            legacy(&[(a, verdict(true, 3, 600)), (b, verdict(true, 3, 2_500))]).unwrap();
        assert_eq!(limit.0, X_RATELIMIT_LIMIT);
        assert_eq!(limit.1, "10");
        assert_eq!(remaining.1, "3");
        assert_eq!(reset.1, "3");
        assert!(legacy(&[]).is_none());
    }
}
