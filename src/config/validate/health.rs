//! Health of an upstream's targets: active checks (`health_check`) and passive outlier
//! detection (`outlier_detection`).

use std::time::Duration;

use super::super::spanned::Spanned;
use http::Method;

use super::super::file;
use super::super::model::{HealthCheckConfig, OutlierConfig, ProbeKind, Protocol};
use super::Validator;

impl Validator<'_, '_> {
    /// `[upstreams.NAME.health_check]`: what one check does, how often, and the thresholds.
    pub(super) fn health_check(
        &mut self,
        h: &Spanned<file::HealthCheckSection>,
        protocol: Protocol,
    ) -> HealthCheckConfig {
        let s = h.get_ref();
        let kind = s.kind.unwrap_or(file::HealthCheckKind::Http);
        let probe = match kind {
            file::HealthCheckKind::Http => self.http_probe(h, protocol),
            file::HealthCheckKind::Tcp => ProbeKind::Tcp,
            file::HealthCheckKind::Grpc => {
                if protocol == Protocol::Http1 {
                    self.c.at(
                        h.span(),
                        "a `grpc` health check needs `protocol = \"h2c\"` (gRPC runs over HTTP/2)",
                    );
                }
                ProbeKind::Grpc {
                    service: s.service.clone().unwrap_or_default(),
                    authority: s.host.clone(),
                }
            }
        };
        let interval = self.min_duration(s.interval.as_ref(), Duration::from_secs(10), "interval");
        let timeout = s
            .timeout
            .as_ref()
            .map_or(Duration::from_secs(2), |t| t.get_ref().0);
        if let Some(t) = &s.timeout {
            // A timeout above the interval only delays the next round (rounds never overlap).
            if t.get_ref().0.is_zero() {
                self.c
                    .at(t.span(), "health check `timeout` must be above 0");
            }
        }
        let jitter = s.jitter.as_ref().map_or(Duration::ZERO, |j| j.get_ref().0);
        HealthCheckConfig {
            probe,
            interval,
            timeout,
            jitter,
            healthy_threshold: self.positive(s.healthy_threshold.as_ref(), 2, "healthy_threshold"),
            unhealthy_threshold: self.positive(
                s.unhealthy_threshold.as_ref(),
                3,
                "unhealthy_threshold",
            ),
        }
    }

    /// An HTTP check (HTTP/1.1, or h2c on h2c upstreams).
    fn http_probe(
        &mut self,
        h: &Spanned<file::HealthCheckSection>,
        protocol: Protocol,
    ) -> ProbeKind {
        let s = h.get_ref();
        let path = s.path.as_ref().map_or("/", |p| p.get_ref().as_str());
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            let span = s.path.as_ref().map_or(h.span(), |p| p.span());
            self.c.at(
                span,
                format!("health check path `{path}` must be a path starting with `/`"),
            );
        }
        let method = match &s.method {
            None => Method::GET,
            Some(m) => match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(m) => m,
                Err(_) => {
                    self.c
                        .at(m.span(), format!("invalid method `{}`", m.get_ref()));
                    Method::GET
                }
            },
        };
        let expected = s
            .expected_statuses
            .as_ref()
            .map(|v| v.iter().map(|r| (r.get_ref().0, r.get_ref().1)).collect())
            .unwrap_or_else(|| vec![(200, 299)]);
        ProbeKind::Http {
            path: path.to_string(),
            method,
            host: s.host.clone(),
            expected,
            h2c: protocol == Protocol::H2c,
        }
    }

    /// `outlier_detection`: on unless `enabled = false`.
    pub(super) fn outlier(
        &mut self,
        o: Option<&Spanned<file::OutlierSection>>,
    ) -> Option<OutlierConfig> {
        let default = OutlierConfig {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            failure_statuses: vec![(500, 599)],
        };
        let Some(o) = o else {
            return Some(default);
        };
        let s = o.get_ref();
        if s.enabled == Some(false) {
            return None;
        }
        let base = s
            .base_ejection_time
            .as_ref()
            .map_or(default.base_ejection_time, |d| d.get_ref().0);
        let max = s
            .max_ejection_time
            .as_ref()
            .map_or(default.max_ejection_time.max(base), |d| d.get_ref().0);
        if let Some(m) = &s.max_ejection_time {
            if m.get_ref().0 < base {
                self.c.at(
                    m.span(),
                    "`max_ejection_time` must not be below `base_ejection_time`",
                );
            }
        }
        let percent = match &s.max_ejection_percent {
            Some(p) if *p.get_ref() > 100 => {
                self.c
                    .at(p.span(), "`max_ejection_percent` must be between 0 and 100");
                50
            }
            Some(p) => *p.get_ref(),
            None => default.max_ejection_percent,
        };
        Some(OutlierConfig {
            consecutive_failures: self.positive(
                s.consecutive_failures.as_ref(),
                default.consecutive_failures,
                "consecutive_failures",
            ),
            base_ejection_time: base,
            max_ejection_time: max,
            max_ejection_percent: percent,
            failure_statuses: s
                .failure_statuses
                .as_ref()
                .map(|v| v.iter().map(|r| (r.get_ref().0, r.get_ref().1)).collect())
                .unwrap_or(default.failure_statuses),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::super::model::ProbeKind;
    use super::super::testing::{errors, valid};

    const UPSTREAM: &str = "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n";

    #[test]
    fn zero_thresholds_and_short_intervals_are_reported_at_the_value() {
        assert_eq!(
            errors(&format!(
                "{UPSTREAM}[upstreams.a.health_check]\nhealthy_threshold = 0\n\
                 unhealthy_threshold = 0\ninterval = \"20ms\"\ntimeout = \"0s\"\n"
            )),
            [
                "gateway.toml:4:21: `healthy_threshold` must be at least 1",
                "gateway.toml:5:23: `unhealthy_threshold` must be at least 1",
                "gateway.toml:6:12: `interval` must be at least 100ms (checking more often only adds load)",
                "gateway.toml:7:11: health check `timeout` must be above 0",
            ]
        );
    }

    #[test]
    fn unknown_check_type_and_bad_status_range_are_reported() {
        assert_eq!(
            errors(&format!(
                "{UPSTREAM}[upstreams.a.health_check]\ntype = \"icmp\"\n"
            )),
            ["gateway.toml:4:8: unknown variant `icmp`, expected one of `http`, `tcp`, `grpc`"]
        );
        assert_eq!(
            errors(&format!(
                "{UPSTREAM}[upstreams.a.health_check]\nexpected_statuses = [\"200-299\", \"299-200\"]\n"
            )),
            ["gateway.toml:4:33: invalid status range `299-200`: write e.g. \"200-299\" or \"503\" (100 to 599)"]
        );
    }

    #[test]
    fn bad_http_check_path_and_method_are_reported() {
        assert_eq!(
            errors(&format!(
                "{UPSTREAM}[upstreams.a.health_check]\npath = \"healthz\"\nmethod = \"GE T\"\n"
            )),
            [
                "gateway.toml:4:8: health check path `healthz` must be a path starting with `/`",
                "gateway.toml:5:10: invalid method `GE T`",
            ]
        );
    }

    #[test]
    fn a_grpc_check_needs_http2() {
        assert_eq!(
            errors(&format!(
                "{UPSTREAM}health_check = {{ type = \"grpc\" }}\n"
            )),
            ["gateway.toml:3:16: a `grpc` health check needs `protocol = \"h2c\"` (gRPC runs over HTTP/2)"]
        );
    }

    #[test]
    fn outlier_limits_are_validated() {
        assert_eq!(
            errors(&format!(
                "{UPSTREAM}outlier_detection = {{ max_ejection_percent = 150, consecutive_failures = 0, \
                 base_ejection_time = \"1m\", max_ejection_time = \"30s\" }}\n"
            )),
            [
                "gateway.toml:3:46: `max_ejection_percent` must be between 0 and 100",
                "gateway.toml:3:74: `consecutive_failures` must be at least 1",
                "gateway.toml:3:124: `max_ejection_time` must not be below `base_ejection_time`",
            ]
        );
    }

    #[test]
    fn checks_and_outlier_detection_reach_the_model() {
        let built = valid(&format!(
            "{UPSTREAM}protocol = \"h2c\"\n[upstreams.a.health_check]\npath = \"/ready\"\n\
             expected_statuses = [204]\n\
             [upstreams.b]\ntargets = [\"127.0.0.1:1\"]\noutlier_detection = {{ enabled = false }}\n"
        ));
        let [a, b] = &built.config.upstreams[..] else {
            panic!("two upstreams");
        };
        let check = a.health_check.as_ref().expect("health check");
        assert_eq!(
            check.probe,
            ProbeKind::Http {
                path: "/ready".into(),
                method: http::Method::GET,
                host: None,
                expected: vec![(204, 204)],
                h2c: true,
            }
        );
        assert_eq!(check.interval, Duration::from_secs(10));
        assert_eq!(check.timeout, Duration::from_secs(2));
        assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 3));
        let outlier = a.outlier.as_ref().expect("on by default");
        assert_eq!(outlier.consecutive_failures, 5);
        assert_eq!(outlier.failure_statuses, [(500, 599)]);
        assert!(b.outlier.is_none());
    }
}
