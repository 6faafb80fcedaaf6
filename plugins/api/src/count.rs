//! What plugins count for the gateway's metrics: a plugin says what happened
//! ([`RequestContext::count`](crate::RequestContext::count)), the core turns it into the metric, so
//! no metric depends on the spelling of an error code.

/// Something a plugin counts for the gateway's metrics; each variant is one metric family.
// Exhaustive on purpose: the core matches on it, so a new variant does not build until the
// core records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A rate limit refused the request: `tollgate_rate_limited_total{route}`.
    RateLimited,
    /// Authentication or authorization refused the request:
    /// `tollgate_auth_failures_total{route, reason}`. `reason` is a stable snake_case word,
    /// by convention the code of the error the plugin answers with (`invalid_token`,
    /// `ip_forbidden`), so the metric and the client's error agree.
    AuthFailure {
        /// The `reason` label.
        reason: &'static str,
    },
}
