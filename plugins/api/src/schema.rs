//! Pieces of JSON Schema shared by the gateway's config and the plugins' configs, so that a value
//! written the same way is described the same way everywhere.

use schemars::Schema;

/// The text `humantime::parse_duration` reads: numbers (a fraction allowed) each followed by a
/// unit, spaces allowed around them, e.g. `"250ms"`, `"1m 30s"`, `"1.5h"`.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+(\.[0-9]+)?\s*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*)+$";

/// The schema of a duration written as text (`"250ms"`, `"5s"`, `"1m 30s"`).
pub fn duration() -> Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "description": "A duration: numbers with units, e.g. \"250ms\", \"5s\", \"1m 30s\" \
            (units ns, us, ms, s, m, h, d, w and their long names)."
    })
}
