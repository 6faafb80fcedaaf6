//! Prometheus metrics: one process-wide registry, updated from the proxy phases and rendered in
//! the text format on the admin listener's `/metrics`. Per-target health is read from the live
//! snapshot at scrape time rather than mirrored on every change.

use std::net::SocketAddr;
use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use tollgate_plugin_api::Count;

/// Every metric family of the gateway.
pub struct Metrics {
    registry: Registry,
    /// What `families` answers.
    families: Vec<(String, &'static str)>,
    /// Requests by route, method and status class (`2xx`...).
    pub requests: IntCounterVec,
    /// Request duration, from the request head to the end of the logging phase.
    pub request_duration: HistogramVec,
    /// Upstream attempt duration, by upstream and outcome (`response`, `connect_error`, `error`).
    pub attempt_duration: HistogramVec,
    /// Requests being served.
    pub in_flight: IntGauge,
    /// Outlier ejections by upstream.
    pub ejections: IntCounterVec,
    /// Retries by upstream.
    pub retries: IntCounterVec,
    /// Requests refused by rate limits, by route.
    pub rate_limited: IntCounterVec,
    /// Authentication / authorization failures by route and reason (the error code).
    pub auth_failures: IntCounterVec,
    /// TLS handshakes that failed on a listener, by listener and reason.
    pub tls_handshake_failures: IntCounterVec,
    /// Config reloads by result (`ok`, `failed`).
    pub reloads: IntCounterVec,
    /// Generation of the live config.
    pub generation: IntGauge,
    /// Target health (1 available, 0 not), refreshed at scrape.
    target_healthy: IntGaugeVec,
    /// Seconds until each certificate in use expires, computed at scrape.
    certificate_expiry: IntGaugeVec,
    /// Message brokers and publishing.
    pub brokers: BrokerMetrics,
}

/// The metric families of message brokers.
pub struct BrokerMetrics {
    /// Whether a broker is connected (1) or not (0), refreshed at scrape.
    pub up: IntGaugeVec,
    /// Messages published (acknowledged, or handed over in fire-and-forget mode), by route and
    /// broker.
    pub published: IntCounterVec,
    /// Messages not published, by route, broker and error code.
    pub failed: IntCounterVec,
    /// Requests answered without publishing because their `Idempotency-Key` (or JetStream's
    /// `Nats-Msg-Id`) had been published already, by route and broker.
    pub deduplicated: IntCounterVec,
    /// Time from handing a message to the client library to its acknowledgement, by broker.
    pub publish_duration: HistogramVec,
    /// Clients streaming from a subscribe route now, by route and broker.
    pub subscribers: IntGaugeVec,
    /// Messages written to subscribers (one per subscriber that got it), by route and broker.
    pub delivered: IntCounterVec,
    /// Streams that ended before their client left, by route, broker and reason
    /// (`slow_client`, `broker_unavailable`).
    pub streams_ended: IntCounterVec,
    /// Request-reply requests by route, broker and outcome (`replied`, or the error code:
    /// `reply_timeout`, `no_responder`, `bad_reply`, `broker_unavailable`, ...).
    pub requests: IntCounterVec,
    /// Time from sending a request to its reply, by broker.
    pub reply_duration: HistogramVec,
    /// Replies no request waited for (late, after the timeout, or another gateway's), by
    /// broker.
    pub replies_unmatched: IntCounterVec,
}

fn broker_metrics(registry: &Registering) -> Result<BrokerMetrics, prometheus::Error> {
    let up = IntGaugeVec::new(
        Opts::new(
            "tollgate_broker_up",
            "Whether a message broker is connected (1) or not (0)",
        ),
        &["broker"],
    )?;
    let published = IntCounterVec::new(
        Opts::new(
            "tollgate_messages_published_total",
            "Messages published to a broker, by route and broker",
        ),
        &["route", "broker"],
    )?;
    let failed = IntCounterVec::new(
        Opts::new(
            "tollgate_messages_failed_total",
            "Messages not published, by route, broker and error code",
        ),
        &["route", "broker", "code"],
    )?;
    let deduplicated = IntCounterVec::new(
        Opts::new(
            "tollgate_messages_deduplicated_total",
            "Requests not published again because their Idempotency-Key was, by route and broker",
        ),
        &["route", "broker"],
    )?;
    let publish_duration = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_publish_duration_seconds",
            "Time from handing a message to the broker client to its acknowledgement",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["broker"],
    )?;
    let subscribers = IntGaugeVec::new(
        Opts::new(
            "tollgate_subscribers",
            "Clients streaming from a subscribe route now, by route and broker",
        ),
        &["route", "broker"],
    )?;
    let delivered = IntCounterVec::new(
        Opts::new(
            "tollgate_messages_delivered_total",
            "Messages written to subscribers, one per subscriber, by route and broker",
        ),
        &["route", "broker"],
    )?;
    let streams_ended = IntCounterVec::new(
        Opts::new(
            "tollgate_subscriptions_ended_total",
            "Subscriber streams the gateway ended (slow client, broker down), by route, broker and reason",
        ),
        &["route", "broker", "reason"],
    )?;
    registry.add(&subscribers)?;
    registry.add(&delivered)?;
    registry.add(&streams_ended)?;
    let requests = IntCounterVec::new(
        Opts::new(
            "tollgate_request_reply_total",
            "Request-reply requests, by route, broker and outcome (replied or the error code)",
        ),
        &["route", "broker", "outcome"],
    )?;
    let reply_duration = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_reply_duration_seconds",
            "Time from sending a request to a broker to its correlated reply",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["broker"],
    )?;
    let replies_unmatched = IntCounterVec::new(
        Opts::new(
            "tollgate_replies_unmatched_total",
            "Replies that no request waited for (late, or another gateway's), by broker",
        ),
        &["broker"],
    )?;
    registry.add(&requests)?;
    registry.add(&reply_duration)?;
    registry.add(&replies_unmatched)?;
    registry.add(&up)?;
    registry.add(&published)?;
    registry.add(&failed)?;
    registry.add(&deduplicated)?;
    registry.add(&publish_duration)?;
    Ok(BrokerMetrics {
        up,
        published,
        failed,
        deduplicated,
        publish_duration,
        subscribers,
        delivered,
        streams_ended,
        requests,
        reply_duration,
        replies_unmatched,
    })
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A registry that also keeps the name and type of every family registered in it: `gather`
/// leaves out a labelled family until its first series exists, and the families' list is what
/// dashboards are checked against (`families`).
struct Registering {
    registry: Registry,
    families: std::sync::Mutex<Vec<(String, &'static str)>>,
}

impl Registering {
    fn add<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        collector: &C,
    ) -> Result<(), prometheus::Error> {
        let described: Vec<_> = collector
            .collect()
            .iter()
            .map(|family| {
                (
                    family.name().to_string(),
                    type_name(family.get_field_type()),
                )
            })
            .collect();
        self.registry.register(Box::new(collector.clone()))?;
        if let Ok(mut families) = self.families.lock() {
            families.extend(described);
        }
        Ok(())
    }
}

fn type_name(t: prometheus::proto::MetricType) -> &'static str {
    use prometheus::proto::MetricType;
    match t {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    }
}

/// Every metric family the gateway exports, `(name, type)`, whether or not it has a series yet.
pub fn families() -> Vec<(String, &'static str)> {
    metrics().map(|m| m.families.clone()).unwrap_or_default()
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registering {
        registry: Registry::new(),
        families: std::sync::Mutex::new(Vec::new()),
    };
    let counter =
        |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.add(&c)?;
            Ok(c)
        };
    let histogram =
        |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )?;
            registry.add(&h)?;
            Ok(h)
        };
    let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
        let g = IntGauge::new(name, help)?;
        registry.add(&g)?;
        Ok(g)
    };
    let target_healthy = IntGaugeVec::new(
        Opts::new(
            "tollgate_target_healthy",
            "Whether an upstream target may take traffic (1) or not (0)",
        ),
        &["upstream", "target"],
    )?;
    registry.add(&target_healthy)?;
    let certificate_expiry = IntGaugeVec::new(
        Opts::new(
            "tollgate_certificate_expiry_seconds",
            "Seconds until a certificate in use expires (negative once expired), by use, name and serial",
        ),
        &["kind", "name", "serial"],
    )?;
    registry.add(&certificate_expiry)?;
    Ok(Metrics {
        requests: counter(
            "tollgate_requests_total",
            "Requests served, by route, method and status class",
            &["route", "method", "status_class"],
        )?,
        request_duration: histogram(
            "tollgate_request_duration_seconds",
            "Time from the request head to the end of the response",
            &["route"],
        )?,
        attempt_duration: histogram(
            "tollgate_upstream_attempt_duration_seconds",
            "Time of one upstream attempt, until the response head or the failure",
            &["upstream", "outcome"],
        )?,
        in_flight: gauge("tollgate_requests_in_flight", "Requests being served")?,
        ejections: counter(
            "tollgate_target_ejections_total",
            "Targets ejected by outlier detection",
            &["upstream"],
        )?,
        retries: counter(
            "tollgate_retries_total",
            "Retried upstream attempts",
            &["upstream"],
        )?,
        rate_limited: counter(
            "tollgate_rate_limited_total",
            "Requests refused by a rate limit",
            &["route"],
        )?,
        auth_failures: counter(
            "tollgate_auth_failures_total",
            "Requests refused by authentication or authorization, by reason",
            &["route", "reason"],
        )?,
        tls_handshake_failures: counter(
            "tollgate_tls_handshake_failures_total",
            "TLS handshakes that failed, by listener and reason",
            &["listener", "reason"],
        )?,
        reloads: {
            let reloads = counter(
                "tollgate_config_reloads_total",
                "Config reloads, by result",
                &["result"],
            )?;
            // Both results exist from the start, so the first failed reload is an increase.
            for result in RELOAD_RESULTS {
                reloads.with_label_values(&[result]);
            }
            reloads
        },
        generation: gauge(
            "tollgate_config_generation",
            "Generation of the live config",
        )?,
        target_healthy,
        certificate_expiry,
        brokers: broker_metrics(&registry)?,
        families: registry
            .families
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        registry: registry.registry,
    })
}

impl Metrics {
    /// Records what the plugins of a request counted ([`RequestContext::counts`]) under its
    /// route: the metric follows the plugin's own account, not the status or code it answered.
    ///
    /// [`RequestContext::counts`]: tollgate_plugin_api::RequestContext::counts
    pub fn record_counts(&self, route: &str, counts: &[Count]) {
        for count in counts {
            match *count {
                Count::RateLimited => self.rate_limited.with_label_values(&[route]).inc(),
                Count::AuthFailure { reason } => {
                    self.auth_failures.with_label_values(&[route, reason]).inc()
                }
            }
        }
    }
}

/// The `result` labels of `tollgate_config_reloads_total`.
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "failed"];

/// Creates at 0 every series whose labels the config fixes, so that `increase()` and `rate()`
/// count the first event of each: a series that first appears at 1 has no increase. Called for
/// every snapshot built (start and reloads); series of a previous config stay, as they would
/// once incremented.
///
/// Per upstream: retries and ejections. Per route: rate-limit refusals. Series with a label the
/// config does not fix (an error code as `reason`, a method, a status class) are left to their
/// first event, which keeps the count of series bounded by the config.
pub fn create_config_series<'a>(
    upstreams: impl IntoIterator<Item = &'a str>,
    routes: impl IntoIterator<Item = &'a str>,
) {
    let Some(m) = metrics() else {
        return;
    };
    for upstream in upstreams {
        m.retries.with_label_values(&[upstream]);
        m.ejections.with_label_values(&[upstream]);
    }
    for route in routes {
        m.rate_limited.with_label_values(&[route]);
    }
}

/// The process's metrics. Registration cannot fail for these fixed, distinct names; if it ever
/// did, the gateway would run without metrics rather than not run.
pub fn metrics() -> Option<&'static Metrics> {
    static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| match build() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "metrics unavailable");
                None
            }
        })
        .as_ref()
}

/// `2xx`, `4xx`... for a status; `none` when nothing was sent.
pub fn status_class(status: u16) -> &'static str {
    CLASSES[class_index(status)]
}

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// A route's request counters and duration histogram, resolved once per label set and kept with
/// the route: `with_label_values` hashes every label on each call, which was a visible share of
/// a plain request's cost. A reload builds new routes, so a removed route's cache goes with it.
#[derive(Default)]
pub struct RouteMetrics {
    requests: [[OnceLock<prometheus::IntCounter>; CLASSES.len()]; METHODS.len()],
    duration: OnceLock<prometheus::Histogram>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics").finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// Counts one request of `route` and records its duration.
    pub fn record(
        &self,
        m: &Metrics,
        route: &str,
        method: &http::Method,
        status: u16,
        seconds: f64,
    ) {
        let mi = method_index(method);
        let ci = class_index(status);
        self.requests[mi][ci]
            .get_or_init(|| {
                m.requests
                    .with_label_values(&[route, METHODS[mi], CLASSES[ci]])
            })
            .inc();
        self.duration
            .get_or_init(|| m.request_duration.with_label_values(&[route]))
            .observe(seconds);
    }
}

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}

/// A method label with bounded cardinality.
pub fn method_label(m: &http::Method) -> &'static str {
    METHODS[method_index(m)]
}

/// One series of `tollgate_certificate_expiry_seconds`.
pub struct CertificateExpiry<'a> {
    /// `listener` or `upstream`.
    pub kind: &'a str,
    /// The listener's or upstream's name.
    pub name: &'a str,
    /// The certificate's serial, hex.
    pub serial: &'a str,
    /// Seconds left at the scrape; negative once expired.
    pub expires_in_seconds: i64,
}

/// The text exposition of every metric, with the live config's generation, the health of
/// its targets, given as `(upstream, address, available)`, and its certificates.
pub fn render<'a>(
    generation: u64,
    targets: impl IntoIterator<Item = (&'a str, SocketAddr, bool)>,
    brokers: impl IntoIterator<Item = (&'a str, bool)>,
    certificates: impl IntoIterator<Item = CertificateExpiry<'a>>,
) -> String {
    let Some(m) = metrics() else {
        return String::new();
    };
    // From the live snapshot at scrape time: a broker replaced or removed by a reload leaves
    // no stale series behind, and its old client's last events cannot overwrite the new one's.
    m.brokers.up.reset();
    for (broker, up) in brokers {
        m.brokers.up.with_label_values(&[broker]).set(i64::from(up));
    }
    m.target_healthy.reset();
    for (upstream, address, available) in targets {
        m.target_healthy
            .with_label_values(&[upstream, &address.to_string()])
            .set(i64::from(available));
    }
    // A renewed certificate has a new serial: its predecessor's series goes with it.
    m.certificate_expiry.reset();
    for c in certificates {
        m.certificate_expiry
            .with_label_values(&[c.kind, c.name, c.serial])
            .set(c.expires_in_seconds);
    }
    m.generation
        .set(i64::try_from(generation).unwrap_or(i64::MAX));
    let mut out = Vec::new();
    if TextEncoder::new()
        .encode(&m.registry.gather(), &mut out)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod route_metrics_tests {
    use super::*;

    #[test]
    fn plugin_counts_go_to_their_families_under_the_route() {
        let m = build().expect("metrics");
        m.record_counts(
            "orders",
            &[
                Count::RateLimited,
                Count::AuthFailure {
                    reason: "invalid_token",
                },
                Count::AuthFailure {
                    reason: "invalid_token",
                },
            ],
        );
        m.record_counts("users", &[]);
        assert_eq!(m.rate_limited.with_label_values(&["orders"]).get(), 1);
        assert_eq!(
            m.auth_failures
                .with_label_values(&["orders", "invalid_token"])
                .get(),
            2
        );
        assert_eq!(m.rate_limited.with_label_values(&["users"]).get(), 0);
    }

    #[test]
    fn labels_come_from_the_tables_by_status_class_and_method() {
        for (status, class) in [
            (0, "none"),
            (99, "none"),
            (100, "1xx"),
            (204, "2xx"),
            (302, "3xx"),
            (404, "4xx"),
            (503, "5xx"),
            (599, "5xx"),
            (600, "none"),
            (1000, "none"),
        ] {
            assert_eq!(CLASSES[class_index(status)], class, "{status}");
            assert_eq!(status_class(status), class, "{status}");
        }
        for (m, label) in [
            ("GET", "GET"),
            ("HEAD", "HEAD"),
            ("POST", "POST"),
            ("PUT", "PUT"),
            ("DELETE", "DELETE"),
            ("PATCH", "PATCH"),
            ("OPTIONS", "OPTIONS"),
            ("CONNECT", "CONNECT"),
            ("TRACE", "TRACE"),
            ("PURGE", "OTHER"),
        ] {
            let m = http::Method::from_bytes(m.as_bytes()).expect("method");
            assert_eq!(METHODS[method_index(&m)], label, "{m}");
            assert_eq!(method_label(&m), label, "{m}");
        }
    }
}
