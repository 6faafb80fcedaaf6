//! A rate as written in the config: `"100/s"`, `"6000/min"`, `"50/h"`, `"1000/d"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};
use serde::{Serialize, Serializer};

/// Requests per window. The GCRA admits one request every `window / count` on average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    window: Window,
}

/// The time units a rate may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Second,
    Minute,
    Hour,
    Day,
}

impl Window {
    fn secs(self) -> u64 {
        match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
        }
    }

    fn short(self) -> &'static str {
        match self {
            Window::Second => "s",
            Window::Minute => "min",
            Window::Hour => "h",
            Window::Day => "d",
        }
    }
}

/// Both the in-process and the Redis GCRA keep time in whole microseconds or finer; an emission
/// interval below 1 µs could not be represented by the Redis script.
const MAX_PER_SECOND: u64 = 1_000_000;

impl Rate {
    fn new(count: u32, window: Window) -> Result<Self, String> {
        if count == 0 {
            return Err("a rate must allow at least 1 request".to_owned());
        }
        if u64::from(count) > MAX_PER_SECOND * window.secs() {
            return Err(format!(
                "{count}/{} is too fast: at most {MAX_PER_SECOND} requests per second per key",
                window.short()
            ));
        }
        Ok(Rate { count, window })
    }

    /// Requests per window (the `q` of `RateLimit-Policy`).
    pub fn count(self) -> u32 {
        self.count
    }

    /// The window in seconds (the `w` of `RateLimit-Policy`).
    pub fn window_secs(self) -> u64 {
        self.window.secs()
    }

    /// The emission interval: the time one request "costs", `window / count`.
    pub fn interval(self) -> Duration {
        // `count <= 10^6 * window_secs`, so the interval is at least 1 µs and never zero.
        Duration::from_nanos(self.window.secs() * 1_000_000_000 / u64::from(self.count))
    }

    /// The emission interval in microseconds, fractional, exactly `window / count` (what the
    /// Redis script is given, so that e.g. 3/s does not drift by rounding each step).
    pub fn interval_micros(self) -> f64 {
        (self.window.secs() as f64) * 1e6 / f64::from(self.count)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.window.short())
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hint = "write COUNT/UNIT with a unit of s, min, h or d, e.g. \"100/s\" or \"6000/min\"";
        let Some((count, unit)) = s.split_once('/') else {
            return Err(format!("invalid rate `{s}`: {hint}"));
        };
        let count: u32 = count.trim().parse().map_err(|_| {
            format!(
                "invalid rate `{s}`: `{}` is not a whole number; {hint}",
                count.trim()
            )
        })?;
        let window = match unit.trim() {
            "s" | "sec" | "second" => Window::Second,
            "min" | "minute" => Window::Minute,
            "h" | "hour" => Window::Hour,
            "d" | "day" => Window::Day,
            other => {
                return Err(format!(
                    "invalid rate `{s}`: unknown unit `{other}`; {hint}"
                ))
            }
        };
        Rate::new(count, window).map_err(|e| format!("invalid rate `{s}`: {e}"))
    }
}

impl schemars::JsonSchema for Rate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rate".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Requests per window: COUNT/UNIT with a unit of s, min, h or d, \
                e.g. \"100/s\" or \"6000/min\".",
            "type": "string",
            "pattern": r"^\s*[0-9]+\s*/\s*(s|sec|second|min|minute|h|hour|d|day)\s*$"
        })
    }
}

/// Written as `COUNT/UNIT`, which reads back the same.
impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Rate, String> {
        s.parse()
    }

    #[test]
    fn rates_parse_in_every_unit() {
        let r = parse("100/s").unwrap();
        assert_eq!((r.count(), r.window_secs()), (100, 1));
        assert_eq!(r.interval(), Duration::from_millis(10));
        let r = parse("6000/min").unwrap();
        assert_eq!((r.count(), r.window_secs()), (6000, 60));
        assert_eq!(r.interval(), Duration::from_millis(10));
        let r = parse("50/h").unwrap();
        assert_eq!((r.count(), r.window_secs()), (50, 3600));
        assert_eq!(r.interval(), Duration::from_secs(72));
        let r = parse("1000/d").unwrap();
        assert_eq!(r.window_secs(), 86_400);
        for (long, short) in [
            ("7/second", "7/s"),
            ("7/minute", "7/min"),
            ("7 / hour", "7/h"),
        ] {
            assert_eq!(parse(long).unwrap().to_string(), short);
        }
    }

    #[test]
    fn fractional_intervals_are_exact_for_redis() {
        let r = parse("3/s").unwrap();
        assert!((r.interval_micros() - 333_333.333_333).abs() < 1e-3);
        assert_eq!(r.interval(), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn unknown_unit_is_rejected_with_a_hint() {
        let err = parse("10/fortnight").unwrap_err();
        assert_eq!(
            err,
            "invalid rate `10/fortnight`: unknown unit `fortnight`; write COUNT/UNIT with a unit \
             of s, min, h or d, e.g. \"100/s\" or \"6000/min\""
        );
    }

    #[test]
    fn malformed_rates_are_rejected() {
        for bad in [
            "", "10", "/s", "ten/s", "-1/s", "1.5/s", "10/", "10/m", "10/S",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.starts_with("invalid rate"), "{bad}: {err}");
        }
        assert!(parse("0/s").unwrap_err().contains("at least 1 request"));
        assert!(parse("99999999999/s")
            .unwrap_err()
            .contains("not a whole number"));
    }

    #[test]
    fn rates_faster_than_a_microsecond_are_rejected() {
        assert!(parse("1000000/s").is_ok());
        let err = parse("1000001/s").unwrap_err();
        assert!(err.contains("too fast"), "{err}");
        assert!(parse("60000000/min").is_ok());
    }
}
