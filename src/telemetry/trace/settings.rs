//! The `[tracing]` table of gateway.toml and the standard `OTEL_*` variables, merged into the
//! settings the exporter runs on.
//!
//! Precedence, per setting: a key written in the file wins, then the signal-specific variable
//! (`OTEL_EXPORTER_OTLP_TRACES_*`), then the generic one (`OTEL_EXPORTER_OTLP_*`), then the
//! default. The file is what the operator reviewed and `tollgate check`ed; variables fill in what
//! it leaves open, as OpenTelemetry SDKs treat code-level configuration. Only the file turns
//! tracing on; `OTEL_SDK_DISABLED=true` turns it off whatever the file says.

use std::collections::BTreeMap;
use std::time::Duration;

use http::uri::{Scheme, Uri};
use http::{HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tollgate_plugin_api::{redact_url, Secret, SecretUrl};

use super::error::{SettingProblem, SettingsError};

/// `[tracing]` of gateway.toml as serde reads it (and `/config` shows it, secrets redacted).
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    description = "`[tracing]`: OpenTelemetry traces over OTLP (docs/operations/tracing.md); `OTEL_*` variables apply too."
)]
pub struct TracingSection {
    /// Exports traces when true; nothing else turns tracing on.
    #[serde(default)]
    pub enabled: bool,
    /// Collector URL, `http://` or `https://`. For `http/protobuf` it is the base URL and
    /// `/v1/traces` is appended unless the path already ends with it. Credentials in it
    /// (`https://user:password@host`) are secret.
    pub endpoint: Option<SecretUrl>,
    /// `"grpc"` or `"http/protobuf"`.
    #[schemars(extend("enum" = ["grpc", "http/protobuf"], "default" = "http/protobuf"))]
    pub protocol: Option<String>,
    /// `service.name` of the exported resource.
    #[schemars(extend("default" = DEFAULT_SERVICE_NAME))]
    pub service_name: Option<String>,
    /// One of the `OTEL_TRACES_SAMPLER` names (see [`SAMPLERS`]).
    #[schemars(extend("enum" = SAMPLERS, "default" = "parentbased_traceidratio"))]
    pub sampler: Option<String>,
    /// Fraction of new traces kept by the `*traceidratio` samplers, in `[0, 1]`.
    pub ratio: Option<f64>,
    /// Deadline of one export, retries included (`"10s"`, `"500ms"`).
    #[schemars(
        schema_with = "duration_schema",
        extend("default" = humantime::format_duration(DEFAULT_TIMEOUT).to_string())
    )]
    // `schema_with` cannot see the `Option`: without `default` the key would be required.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Extra headers (gRPC metadata) sent with every export, e.g. an API key; the values are
    /// secret.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret<String>>,
    /// Finished spans buffered for export; past it spans are dropped, never waited for.
    #[schemars(extend("default" = DEFAULT_MAX_QUEUE_SIZE))]
    pub max_queue_size: Option<usize>,
    /// Most spans in one export request.
    #[schemars(extend("default" = DEFAULT_MAX_EXPORT_BATCH_SIZE))]
    pub max_export_batch_size: Option<usize>,
    /// Longest time a finished span waits before its batch is sent (`"5s"`).
    #[schemars(
        schema_with = "duration_schema",
        extend("default" = humantime::format_duration(DEFAULT_SCHEDULED_DELAY).to_string())
    )]
    // `schema_with` cannot see the `Option`: without `default` the key would be required.
    #[serde(default)]
    pub scheduled_delay: Option<String>,
}

fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    tollgate_plugin_api::schema::duration()
}

/// Validated tracing settings; `Default` is tracing off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TracingSettings {
    /// `None` when tracing is off.
    pub(super) export: Option<ExportSettings>,
}

impl TracingSettings {
    /// Whether spans are recorded and exported.
    pub fn enabled(&self) -> bool {
        self.export.is_some()
    }
}

/// The wire protocol to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC.
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
}

/// The sampler of traces that start here (`root`) and whether a caller's decision is followed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct SamplerChoice {
    pub(super) parent_based: bool,
    pub(super) root: RootSampler,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

/// Everything the exporter pipeline needs, already checked. Header values and the endpoint's
/// credentials are secrets, so `Debug` never shows them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ExportSettings {
    pub(super) protocol: Protocol,
    /// The full URL: for HTTP including `/v1/traces`; never with credentials (they are moved
    /// to an `authorization` header).
    pub(super) endpoint: String,
    pub(super) service_name: String,
    pub(super) sampler: SamplerChoice,
    pub(super) timeout: Duration,
    /// Lower-case names, values checked to be valid header values.
    pub(super) headers: Vec<(String, Secret<String>)>,
    pub(super) max_queue_size: usize,
    pub(super) max_export_batch_size: usize,
    pub(super) scheduled_delay: Duration,
}

/// Sampler names accepted in `sampler` and `OTEL_TRACES_SAMPLER`.
pub const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

const DEFAULT_SERVICE_NAME: &str = "tollgate";
const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
const HTTP_TRACES_PATH: &str = "/v1/traces";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_QUEUE_SIZE: usize = 2048;
const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 512;
const DEFAULT_SCHEDULED_DELAY: Duration = Duration::from_secs(5);
/// Bounds the queue's memory: a span is a few hundred bytes to a few KiB.
const MAX_QUEUE_SIZE: usize = 1_000_000;

impl TracingSection {
    /// Validates the section (and the standard OTEL_* variables).
    pub fn validate(&self) -> Result<TracingSettings, SettingsError> {
        self.validate_with(&|name| std::env::var(name).ok())
    }

    /// [`validate`](Self::validate) with the variables read through `env`, so tests don't
    /// touch the process environment.
    pub(super) fn validate_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<TracingSettings, SettingsError> {
        let at = |key| move |problem| SettingsError::new(key, problem);
        // The spec treats an empty variable as unset.
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if !self.enabled {
            // Variables are not even read: a stray OTEL_* value meant for another process in
            // the same pod must not break a gateway that doesn't trace.
            return Ok(TracingSettings::default());
        }
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(TracingSettings::default());
        }

        let protocol = match &self.protocol {
            Some(p) => parse_protocol(p).map_err(at("protocol"))?,
            None => match first_env(&env, &PROTOCOL_VARS) {
                Some((var, p)) => parse_protocol(&p).map_err(at(var))?,
                None => Protocol::HttpProtobuf,
            },
        };

        let endpoint = match &self.endpoint {
            Some(e) => endpoint_url(e.expose(), protocol, true).map_err(at("endpoint"))?,
            None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                // The signal-specific variable is the full URL, taken as written.
                Some(e) => endpoint_url(&e, protocol, false)
                    .map_err(at("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))?,
                None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    Some(e) => endpoint_url(&e, protocol, true)
                        .map_err(at("OTEL_EXPORTER_OTLP_ENDPOINT"))?,
                    None => {
                        let default = match protocol {
                            Protocol::Grpc => DEFAULT_GRPC_ENDPOINT,
                            Protocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
                        };
                        endpoint_url(default, protocol, true).map_err(at("endpoint"))?
                    }
                },
            },
        };

        let service_name = match &self.service_name {
            Some(s) => s.trim().to_string(),
            None => env("OTEL_SERVICE_NAME")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string()),
        };
        if service_name.is_empty() {
            return Err(SettingsError::new("service_name", SettingProblem::Empty));
        }

        let sampler_name = match &self.sampler {
            Some(s) => (s.clone(), "sampler"),
            None => match env("OTEL_TRACES_SAMPLER") {
                Some(s) => (s, "OTEL_TRACES_SAMPLER"),
                None => ("parentbased_traceidratio".to_string(), "sampler"),
            },
        };
        let ratio = match self.ratio {
            Some(r) => check_ratio(r).map_err(at("ratio"))?,
            None => match env("OTEL_TRACES_SAMPLER_ARG") {
                // The argument only means something to the ratio samplers; others ignore it,
                // as the spec asks.
                Some(arg) if sampler_name.0.trim().ends_with("traceidratio") => arg
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| SettingProblem::NotANumber(arg.trim().to_string()))
                    .and_then(check_ratio)
                    .map_err(at("OTEL_TRACES_SAMPLER_ARG"))?,
                _ => 1.0,
            },
        };
        let sampler = parse_sampler(&sampler_name.0, ratio).map_err(at(sampler_name.1))?;

        let timeout = match &self.timeout {
            Some(t) => parse_duration(t).map_err(at("timeout"))?,
            None => match first_env(&env, &TIMEOUT_VARS) {
                // The variables are integer milliseconds.
                Some((var, t)) => t
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
                    .ok_or_else(|| SettingProblem::NotMilliseconds(t.trim().to_string()))
                    .map_err(at(var))?,
                None => DEFAULT_TIMEOUT,
            },
        };

        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        for (name, value) in &self.headers {
            headers.push(check_header(name, value.expose(), protocol).map_err(at("headers"))?);
        }
        if let Some(basic) = endpoint.basic {
            if headers.iter().any(|(name, _)| name == "authorization") {
                return Err(SettingsError::new(
                    "endpoint",
                    SettingProblem::CredentialsTwice,
                ));
            }
            headers.push(("authorization".to_string(), basic));
        }

        let max_queue_size = self.max_queue_size.unwrap_or(DEFAULT_MAX_QUEUE_SIZE);
        if max_queue_size == 0 || max_queue_size > MAX_QUEUE_SIZE {
            return Err(SettingsError::new(
                "max_queue_size",
                SettingProblem::QueueSize {
                    max: MAX_QUEUE_SIZE,
                    got: max_queue_size,
                },
            ));
        }
        let max_export_batch_size = self
            .max_export_batch_size
            .unwrap_or(DEFAULT_MAX_EXPORT_BATCH_SIZE.min(max_queue_size));
        if max_export_batch_size == 0 || max_export_batch_size > max_queue_size {
            return Err(SettingsError::new(
                "max_export_batch_size",
                SettingProblem::BatchSize {
                    queue: max_queue_size,
                    got: max_export_batch_size,
                },
            ));
        }
        let scheduled_delay = match &self.scheduled_delay {
            Some(d) => parse_duration(d).map_err(at("scheduled_delay"))?,
            None => DEFAULT_SCHEDULED_DELAY,
        };

        Ok(TracingSettings {
            export: Some(ExportSettings {
                protocol,
                endpoint: endpoint.url,
                service_name,
                sampler,
                timeout,
                headers,
                max_queue_size,
                max_export_batch_size,
                scheduled_delay,
            }),
        })
    }
}

const PROTOCOL_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];
const TIMEOUT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
];

/// The first of `vars` that is set, with its name for error messages.
fn first_env(
    env: &dyn Fn(&str) -> Option<String>,
    vars: &[&'static str],
) -> Option<(&'static str, String)> {
    vars.iter().find_map(|var| env(var).map(|v| (*var, v)))
}

fn parse_protocol(p: &str) -> Result<Protocol, SettingProblem> {
    match p.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Err(SettingProblem::JsonProtocol),
        other => Err(SettingProblem::UnknownProtocol(other.to_string())),
    }
}

/// A checked collector URL, without credentials, and the credentials it was written with.
struct Endpoint {
    url: String,
    /// `Basic` credentials from the URL's user info, sent as the `authorization` header.
    basic: Option<Secret<String>>,
}

/// Checks a collector URL and, for HTTP with `append_path`, adds `/v1/traces` as the spec does
/// for the base endpoint. Messages quote it with its credentials redacted.
///
/// Credentials in the URL (`https://user:password@host`) are taken out of it and sent as an
/// `Authorization: Basic` header instead: the exporters' HTTP clients log the URL's authority
/// at debug level (a connection pool's key), password included.
fn endpoint_url(
    raw: &str,
    protocol: Protocol,
    append_path: bool,
) -> Result<Endpoint, SettingProblem> {
    let written = raw.trim();
    let url = || redact_url(written, &[]);
    let uri: Uri = written.parse().map_err(|e| SettingProblem::NotAUrl {
        url: url(),
        reason: format!("{e}"),
        protocol,
    })?;
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => {}
        Some(s) => {
            return Err(SettingProblem::BadScheme {
                url: url(),
                scheme: s.to_string(),
                protocol,
            })
        }
        None => {
            return Err(SettingProblem::NoScheme {
                url: url(),
                protocol,
            })
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(SettingProblem::NoHost {
            url: url(),
            protocol,
        });
    }
    if uri.query().is_some() {
        return Err(SettingProblem::QueryString(url()));
    }
    let (written, basic) = take_credentials(written);
    let url = if protocol == Protocol::HttpProtobuf && append_path {
        let base = written.trim_end_matches('/');
        if uri.path().trim_end_matches('/').ends_with(HTTP_TRACES_PATH) {
            base.to_string()
        } else {
            format!("{base}{HTTP_TRACES_PATH}")
        }
    } else {
        written
    };
    Ok(Endpoint { url, basic })
}

/// Splits the user info off a URL that parsed as one: the URL without it, and the
/// `Basic` credentials it held (percent escapes decoded).
fn take_credentials(url: &str) -> (String, Option<Secret<String>>) {
    use base64::Engine as _;
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((userinfo, host)) = rest[..authority_end].rsplit_once('@') else {
        return (url.to_string(), None);
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let pair = format!("{}:{}", decode(user), decode(password));
    let basic = base64::engine::general_purpose::STANDARD.encode(pair);
    (
        format!("{scheme}://{host}{}", &rest[authority_end..]),
        Some(Secret::new(format!("Basic {basic}"))),
    )
}

fn check_ratio(r: f64) -> Result<f64, SettingProblem> {
    if r.is_finite() && (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(SettingProblem::Ratio(r))
    }
}

fn parse_sampler(name: &str, ratio: f64) -> Result<SamplerChoice, SettingProblem> {
    let (parent_based, root) = match name.trim() {
        "always_on" => (false, RootSampler::AlwaysOn),
        "always_off" => (false, RootSampler::AlwaysOff),
        "traceidratio" => (false, RootSampler::Ratio(ratio)),
        "parentbased_always_on" => (true, RootSampler::AlwaysOn),
        "parentbased_always_off" => (true, RootSampler::AlwaysOff),
        "parentbased_traceidratio" => (true, RootSampler::Ratio(ratio)),
        other => return Err(SettingProblem::UnknownSampler(other.to_string())),
    };
    Ok(SamplerChoice { parent_based, root })
}

fn parse_duration(s: &str) -> Result<Duration, SettingProblem> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| SettingProblem::BadDuration {
        text: s.to_string(),
        reason: e.to_string(),
    })?;
    if d.is_zero() {
        return Err(SettingProblem::ZeroDuration(s.to_string()));
    }
    Ok(d)
}

/// Checks one configured header; the value is never echoed, it is often a secret.
fn check_header(
    name: &str,
    value: &str,
    protocol: Protocol,
) -> Result<(String, Secret<String>), SettingProblem> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| SettingProblem::HeaderName(name.to_string()))?;
    if HeaderValue::from_str(value).is_err() {
        return Err(SettingProblem::HeaderValue(name.to_string()));
    }
    if protocol == Protocol::Grpc && header.as_str().ends_with("-bin") {
        return Err(SettingProblem::BinaryMetadata(name.to_string()));
    }
    Ok((header.as_str().to_string(), Secret::new(value.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn section(toml_src: &str) -> TracingSection {
        toml::from_str(toml_src).unwrap()
    }

    fn validate(toml_src: &str, vars: &[(&str, &str)]) -> Result<ExportSettings, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        section(toml_src)
            .validate_with(&|name| vars.get(name).cloned())
            .map(|s| s.export.expect("tracing should be on"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn missing_section_or_enabled_false_is_off_even_with_bad_variables() {
        let vars: HashMap<&str, &str> = [("OTEL_TRACES_SAMPLER", "bogus")].into();
        let s = TracingSection::default()
            .validate_with(&|n| vars.get(n).map(|v| v.to_string()))
            .unwrap();
        assert!(!s.enabled());
        let s = section("enabled = false\nprotocol = \"grpc\"")
            .validate_with(&|_| None)
            .unwrap();
        assert!(!s.enabled());
    }

    #[test]
    fn defaults_follow_the_otel_spec() {
        let s = validate("enabled = true", &[]).unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(s.service_name, "tollgate");
        assert_eq!(
            s.sampler,
            SamplerChoice {
                parent_based: true,
                root: RootSampler::Ratio(1.0)
            }
        );
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!(s.max_queue_size, 2048);
        assert_eq!(s.max_export_batch_size, 512);

        let s = validate("enabled = true\nprotocol = \"grpc\"", &[]).unwrap();
        assert_eq!(s.endpoint, "http://localhost:4317");
    }

    #[test]
    fn file_keys_win_over_variables() {
        let s = validate(
            r#"
            enabled = true
            endpoint = "http://collector:4317"
            protocol = "grpc"
            service_name = "edge"
            sampler = "parentbased_traceidratio"
            ratio = 0.25
            timeout = "2s"
            "#,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://other:4318/v1/traces",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_SERVICE_NAME", "from-env"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.9"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
            ],
        )
        .unwrap();
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.endpoint, "http://collector:4317");
        assert_eq!(s.service_name, "edge");
        assert_eq!(s.sampler.root, RootSampler::Ratio(0.25));
        assert_eq!(s.timeout, Duration::from_secs(2));
    }

    #[test]
    fn variables_fill_what_the_file_leaves_open() {
        let s = validate(
            "enabled = true",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_SERVICE_NAME", "from-env"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
            ],
        )
        .unwrap();
        assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.service_name, "from-env");
        assert_eq!(
            s.sampler,
            SamplerChoice {
                parent_based: false,
                root: RootSampler::Ratio(0.5)
            }
        );
        assert_eq!(s.timeout, Duration::from_millis(1500));
    }

    #[test]
    fn signal_specific_variables_win_and_the_traces_endpoint_is_taken_as_written() {
        let s = validate(
            "enabled = true",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://traces:9999/custom",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "100"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "200"),
            ],
        )
        .unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.endpoint, "http://traces:9999/custom");
        assert_eq!(s.timeout, Duration::from_millis(200));
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let s = validate(
            "enabled = true",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
                ("OTEL_SERVICE_NAME", " "),
            ],
        )
        .unwrap();
        assert_eq!(s.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(s.service_name, "tollgate");
    }

    #[test]
    fn otel_sdk_disabled_turns_tracing_off() {
        let vars: HashMap<&str, &str> = [("OTEL_SDK_DISABLED", "TRUE")].into();
        let s = section("enabled = true")
            .validate_with(&|n| vars.get(n).map(|v| v.to_string()))
            .unwrap();
        assert!(!s.enabled());
    }

    #[test]
    fn http_endpoint_gets_v1_traces_once() {
        for (written, expected) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
            (
                "https://otlp.example.com/prefix",
                "https://otlp.example.com/prefix/v1/traces",
            ),
        ] {
            let s = validate(&format!("enabled = true\nendpoint = \"{written}\""), &[]).unwrap();
            assert_eq!(s.endpoint, expected, "{written}");
        }
    }

    #[test]
    fn bad_endpoint_url_is_rejected() {
        for bad in [
            "not a url",
            "collector:4317",
            "ftp://c:21",
            "http://",
            "http://c/?a=b",
        ] {
            let err = validate(&format!("enabled = true\nendpoint = \"{bad}\""), &[]).unwrap_err();
            assert!(err.starts_with("endpoint: "), "{bad}: {err}");
        }
        let err = validate(
            "enabled = true",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")],
        )
        .unwrap_err();
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: "), "{err}");
    }

    #[test]
    fn unknown_protocol_is_rejected() {
        let err = validate("enabled = true\nprotocol = \"thrift\"", &[]).unwrap_err();
        assert_eq!(
            err,
            "protocol: unknown protocol `thrift`, expected \"grpc\" or \"http/protobuf\""
        );
        let err = validate("enabled = true\nprotocol = \"http/json\"", &[]).unwrap_err();
        assert!(err.contains("not supported"), "{err}");
        let err =
            validate("enabled = true", &[("OTEL_EXPORTER_OTLP_PROTOCOL", "udp")]).unwrap_err();
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL: "), "{err}");
    }

    #[test]
    fn ratio_outside_zero_to_one_is_rejected() {
        for bad in ["-0.1", "1.5", "nan", "inf"] {
            let err = validate(&format!("enabled = true\nratio = {bad}"), &[]).unwrap_err();
            assert!(
                err.starts_with("ratio: must be between 0 and 1"),
                "{bad}: {err}"
            );
        }
        let err = validate("enabled = true", &[("OTEL_TRACES_SAMPLER_ARG", "2")]).unwrap_err();
        assert!(err.starts_with("OTEL_TRACES_SAMPLER_ARG: "), "{err}");
        let err = validate("enabled = true", &[("OTEL_TRACES_SAMPLER_ARG", "half")]).unwrap_err();
        assert!(err.contains("not a number"), "{err}");
        // The argument of a sampler that takes none is ignored, as the spec says.
        validate(
            "enabled = true\nsampler = \"always_on\"",
            &[("OTEL_TRACES_SAMPLER_ARG", "half")],
        )
        .unwrap();
    }

    #[test]
    fn unknown_sampler_is_rejected_with_the_accepted_names() {
        let err = validate("enabled = true\nsampler = \"jaeger_remote\"", &[]).unwrap_err();
        assert!(
            err.starts_with("sampler: unknown sampler `jaeger_remote`"),
            "{err}"
        );
        assert!(err.contains("parentbased_traceidratio"), "{err}");
        let err = validate("enabled = true", &[("OTEL_TRACES_SAMPLER", "xray")]).unwrap_err();
        assert!(err.starts_with("OTEL_TRACES_SAMPLER: "), "{err}");
    }

    #[test]
    fn bad_durations_and_sizes_are_rejected() {
        let err = validate("enabled = true\ntimeout = \"soon\"", &[]).unwrap_err();
        assert!(err.starts_with("timeout: invalid duration"), "{err}");
        let err = validate("enabled = true\ntimeout = \"0s\"", &[]).unwrap_err();
        assert!(err.starts_with("timeout: "), "{err}");
        let err = validate("enabled = true", &[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).unwrap_err();
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_TIMEOUT: "), "{err}");
        let err = validate("enabled = true\nmax_queue_size = 0", &[]).unwrap_err();
        assert!(err.starts_with("max_queue_size: "), "{err}");
        let err = validate(
            "enabled = true\nmax_queue_size = 10\nmax_export_batch_size = 11",
            &[],
        )
        .unwrap_err();
        assert!(err.starts_with("max_export_batch_size: "), "{err}");
        // A small queue without a batch size gets a batch that fits.
        let s = validate("enabled = true\nmax_queue_size = 10", &[]).unwrap();
        assert_eq!(s.max_export_batch_size, 10);
    }

    #[test]
    fn bad_headers_are_rejected_without_echoing_the_value() {
        let err = validate("enabled = true\nheaders = { \"bad name\" = \"x\" }", &[]).unwrap_err();
        assert!(
            err.contains("`bad name` is not a valid header name"),
            "{err}"
        );
        let err = validate("enabled = true\nheaders = { key = \"sec\\nret\" }", &[]).unwrap_err();
        assert!(err.contains("value of `key`"), "{err}");
        assert!(!err.contains("sec"), "{err}");
        let err = validate(
            "enabled = true\nprotocol = \"grpc\"\nheaders = { \"x-token-bin\" = \"abc\" }",
            &[],
        )
        .unwrap_err();
        assert!(err.contains("-bin"), "{err}");
        let s = validate("enabled = true\nheaders = { \"X-Api-Key\" = \"k\" }", &[]).unwrap();
        assert_eq!(
            s.headers,
            vec![("x-api-key".to_string(), Secret::new("k".to_string()))]
        );
    }

    #[test]
    fn debug_output_hides_header_values() {
        let s = validate(
            "enabled = true\nheaders = { authorization = \"Bearer s3cr3t\" }",
            &[],
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn endpoint_credentials_become_a_basic_authorization_header() {
        let s = validate(
            "enabled = true\nendpoint = \"https://u%40x:p%3Aw@c:4318\"",
            &[],
        )
        .unwrap();
        assert_eq!(s.endpoint, "https://c:4318/v1/traces");
        // base64("u@x:p:w")
        assert_eq!(
            s.headers,
            vec![(
                "authorization".to_string(),
                Secret::new("Basic dUB4OnA6dw==".to_string())
            )]
        );
        assert!(!format!("{s:?}").contains("dUB4OnA6dw"), "{s:?}");
        let err = validate(
            "enabled = true\nendpoint = \"https://u:pw@c\"\nheaders = { Authorization = \"x\" }",
            &[],
        )
        .unwrap_err();
        assert!(err.contains("keep one"), "{err}");
        let err = validate("enabled = true\nendpoint = \"ftp://u:pw@c:21\"", &[]).unwrap_err();
        assert!(err.contains("`ftp://u:<redacted>@c:21`"), "{err}");
    }

    #[test]
    fn the_section_is_shown_with_header_values_and_url_credentials_redacted() {
        let section =
            section("enabled = true\nendpoint = \"https://u:pw@c\"\nheaders = { k = \"v4lue\" }");
        assert_eq!(
            serde_json::to_value(&section).unwrap(),
            serde_json::json!({"enabled": true, "endpoint": "https://u:<redacted>@c",
                               "headers": {"k": "<redacted>"}, "protocol": null, "service_name": null,
                               "sampler": null, "ratio": null, "timeout": null, "max_queue_size": null,
                               "max_export_batch_size": null, "scheduled_delay": null})
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<TracingSection>("enabeld = true").unwrap_err();
        assert!(err.to_string().contains("unknown field `enabeld`"), "{err}");
    }
}
