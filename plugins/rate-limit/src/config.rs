//! The plugin's TOML table, as written by users. Values that can be checked alone (rates, bursts,
//! keys, URLs, durations) fail at their own position; checks across values happen in `build`.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use tollgate_plugin_api::SecretUrl;

use crate::key::{KeySpec, MissingKey};
use crate::rate::Rate;

/// `[routes.x.plugins.rate-limit]`
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The limits; a request is admitted only when every one of them admits it. Required.
    pub limits: Vec<LimitConfig>,
    /// Which rate-limit headers responses carry.
    #[serde(default)]
    pub headers: HeaderMode,
    /// Most keys each limit keeps in memory (local mode, and the Redis mode's pre-check).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Where the counting happens.
    #[serde(default)]
    pub backend: BackendConfig,
}

fn default_max_keys() -> usize {
    100_000
}

/// One limit: `{ rate = "10/s", burst = 20, key = "client_ip" }`.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Sustained rate, e.g. `"100/s"`. Required.
    pub rate: Rate,
    /// Requests admitted at once from a full bucket; defaults to the rate's count.
    #[serde(default)]
    pub burst: Option<Burst>,
    /// What is counted: one bucket per distinct key.
    #[serde(default)]
    pub key: KeySpec,
    /// The policy name in the headers and the Redis key; defaults to `default` (one limit) or
    /// `limitN` (N = position from 1).
    #[serde(default)]
    pub name: Option<String>,
    /// What to do when the request lacks a part of the key.
    #[serde(default)]
    pub missing: MissingKey,
}

/// A burst size, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Burst(pub NonZeroU32);

impl schemars::JsonSchema for Burst {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Burst".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "minimum": 1, "maximum": u32::MAX })
    }
}

impl<'de> Deserialize<'de> for Burst {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u32::try_from(n)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Burst)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "burst must be a whole number from 1 to {}, not {n}: it is how many requests \
                     a full bucket admits at once (leave it out to use the rate's count)",
                    u32::MAX
                ))
            })
    }
}

/// Which rate-limit headers to send.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum HeaderMode {
    /// `RateLimit-Policy` and `RateLimit` of draft-ietf-httpapi-ratelimit-headers-10.
    #[default]
    Draft,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    /// No rate-limit headers (429s still carry `Retry-After`).
    None,
}

/// Where the counting happens: `"local"` or `{ redis = ... }`.
#[derive(Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// In this process; each gateway instance counts on its own.
    #[default]
    Local,
    /// In Redis, shared by every instance that uses the same server, prefix and policy name.
    Redis(Box<RedisConfig>),
}

/// `backend = { redis = "redis://host:6379/0" }` or a table with the options below; written
/// (for `/config`) as the table.
#[derive(Debug, Serialize)]
pub struct RedisConfig {
    /// The server, parsed.
    pub url: RedisUrl,
    /// Prepended to every Redis key.
    pub prefix: String,
    /// Longest wait of a request for Redis, dialling included.
    #[serde(serialize_with = "write_duration")]
    pub timeout: Duration,
    /// Longest a connection attempt may take (requests never wait longer than `timeout`).
    #[serde(serialize_with = "write_duration")]
    pub connect_timeout: Duration,
    /// After a failure, how long Redis is left alone (requests get `on_error` meanwhile).
    #[serde(serialize_with = "write_duration")]
    pub retry_interval: Duration,
    /// The answer while Redis cannot decide.
    pub on_error: OnError,
    /// Refuse requests a local limiter already finds over the limit, without asking Redis.
    pub local_precheck: bool,
}

/// What requests get while Redis cannot decide.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail open: admit (limited by the local pre-check if enabled).
    #[default]
    Allow,
    /// Fail closed: refuse with 503 `rate_limit_unavailable`.
    Deny,
}

/// The table form of [`RedisConfig`].
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    description = "`backend = { redis = { url = ..., ... } }`: Redis and how the limit uses it."
)]
struct RedisTable {
    /// The server: `redis://[USER:PASSWORD@]HOST[:PORT][/DB]`.
    url: RedisUrl,
    /// Prepended to every Redis key.
    #[serde(default = "default_prefix")]
    prefix: String,
    /// Longest wait of a request for Redis, dialling included.
    #[serde(default = "default_timeout")]
    timeout: ConfigDuration,
    /// Longest a connection attempt may take (requests never wait longer than `timeout`).
    #[serde(default = "default_connect_timeout")]
    connect_timeout: ConfigDuration,
    /// After a failure, how long Redis is left alone (requests get `on_error` meanwhile).
    #[serde(default = "default_retry_interval")]
    retry_interval: ConfigDuration,
    /// The answer while Redis cannot decide.
    #[serde(default)]
    on_error: OnError,
    /// Refuse requests a local limiter already finds over the limit, without asking Redis.
    #[serde(default)]
    local_precheck: bool,
}

fn default_prefix() -> String {
    "tollgate:rl:".to_owned()
}
fn default_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(100))
}
fn default_connect_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn default_retry_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}

impl From<RedisTable> for RedisConfig {
    fn from(t: RedisTable) -> Self {
        RedisConfig {
            url: t.url,
            prefix: t.prefix,
            timeout: t.timeout.0,
            connect_timeout: t.connect_timeout.0,
            retry_interval: t.retry_interval.0,
            on_error: t.on_error,
            local_precheck: t.local_precheck,
        }
    }
}

// Read as a URL alone or as the table `RedisTable`.
impl schemars::JsonSchema for RedisConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RedisBackend".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let table = generator.subschema_for::<RedisTable>();
        let url = generator.subschema_for::<RedisUrl>();
        schemars::json_schema!({ "anyOf": [url, table] })
    }
}

impl<'de> Deserialize<'de> for RedisConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RedisVisitor;

        impl<'de> Visitor<'de> for RedisVisitor {
            type Value = RedisConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Redis URL or a table with `url` and options")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RedisConfig, E> {
                let url = RedisUrl::parse(v).map_err(E::custom)?;
                let t = RedisTable {
                    url,
                    prefix: default_prefix(),
                    timeout: default_timeout(),
                    connect_timeout: default_connect_timeout(),
                    retry_interval: default_retry_interval(),
                    on_error: OnError::default(),
                    local_precheck: false,
                };
                Ok(t.into())
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RedisConfig, A::Error> {
                RedisTable::deserialize(de::value::MapAccessDeserializer::new(map)).map(Into::into)
            }
        }

        d.deserialize_any(RedisVisitor)
    }
}

/// A Redis URL, parsed (no network involved). Shown (`Debug`, `Serialize`) with its password
/// redacted: `redis://user:<redacted>@host:6379/0`.
#[derive(Clone)]
pub struct RedisUrl {
    /// The client for it.
    pub client: redis::Client,
    /// The URL as written; its password is secret.
    pub url: SecretUrl,
}

impl RedisUrl {
    fn parse(s: &str) -> Result<Self, String> {
        crate::remote::parse_url(s).map(|client| RedisUrl {
            client,
            url: secret_redis_url(s),
        })
    }
}

/// A Redis URL whose password is secret, in the user info or (for `unix://` sockets) in `pass=`.
pub(crate) fn secret_redis_url(url: &str) -> SecretUrl {
    SecretUrl::with_secret_query(url, &["pass", "password"])
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.url, f)
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.url.serialize(s)
    }
}

fn write_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

impl schemars::JsonSchema for RedisUrl {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RedisUrl".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A Redis URL, e.g. \"redis://cache:6379/0\" (its password is redacted \
                when shown)."
        })
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RedisUrl::parse(&s).map_err(de::Error::custom)
    }
}

/// A positive duration written like `"100ms"`, `"2s"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConfigDuration(Duration);

// Only for the defaults the schema states: written as it is read.
impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_duration(&self.0, s)
    }
}

impl schemars::JsonSchema for ConfigDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        tollgate_plugin_api::schema::duration()
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => Ok(ConfigDuration(d)),
            Ok(_) => Err(de::Error::custom(format!(
                "duration `{s}` must be more than zero"
            ))),
            Err(e) => Err(de::Error::custom(format!(
                "invalid duration `{s}` ({e}): write e.g. \"100ms\" or \"2s\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<RateLimitConfig, String> {
        toml::from_str(src).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn the_config_is_shown_in_its_own_syntax_with_the_redis_password_redacted() {
        let c = parse(
            r#"limits = [{ rate = "6000/min", burst = 5, key = ["consumer", "header:x-tenant"] }]
               backend = { redis = "redis://app:s3cret@cache.internal:6380/2" }"#,
        )
        .unwrap();
        let shown = serde_json::to_value(&c).unwrap();
        assert_eq!(
            shown["backend"]["redis"]["url"],
            "redis://app:<redacted>@cache.internal:6380/2"
        );
        assert_eq!(shown["backend"]["redis"]["timeout"], "100ms");
        assert_eq!(
            shown["limits"][0],
            serde_json::json!({"rate": "6000/min", "burst": 5, "key": ["consumer", "header:x-tenant"],
                               "name": null, "missing": "client_ip"})
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let unix = parse(
            r#"limits = [{ rate = "1/s" }]
                            backend = { redis = "redis+unix:///run/redis.sock?db=1&pass=s3cret" }"#,
        )
        .unwrap();
        let shown = serde_json::to_string(&unix).unwrap();
        assert!(
            shown.contains("pass=<redacted>") && !shown.contains("s3cret"),
            "{shown}"
        );
        // A config without secrets reads back from what is shown.
        let local = parse(r#"limits = [{ rate = "10/s", key = "route" }]"#).unwrap();
        let again: RateLimitConfig =
            serde_json::from_value(serde_json::to_value(&local).unwrap()).unwrap();
        assert_eq!(again.limits[0].rate, local.limits[0].rate);
        assert_eq!(again.limits[0].key, local.limits[0].key);
        assert!(matches!(again.backend, BackendConfig::Local));
    }

    #[test]
    fn minimal_config_has_the_documented_defaults() {
        let c = parse(r#"limits = [{ rate = "10/s" }]"#).unwrap();
        assert_eq!(c.headers, HeaderMode::Draft);
        assert_eq!(c.max_keys, 100_000);
        assert!(matches!(c.backend, BackendConfig::Local));
        let l = &c.limits[0];
        assert_eq!(l.burst, None);
        assert_eq!(l.key, KeySpec::default());
        assert_eq!(l.missing, MissingKey::ClientIp);
        assert_eq!(l.name, None);
    }

    #[test]
    fn several_limits_with_composite_keys() {
        let c = parse(
            r#"limits = [
                { rate = "10/s", burst = 20, key = "client_ip" },
                { rate = "1000/min", key = ["consumer", "route"], name = "per-consumer", missing = "skip" },
            ]
            headers = "legacy""#,
        )
        .unwrap();
        assert_eq!(c.limits.len(), 2);
        assert_eq!(c.limits[0].burst.map(|b| b.0.get()), Some(20));
        assert_eq!(c.limits[1].key.to_string(), "consumer+route");
        assert_eq!(c.limits[1].missing, MissingKey::Skip);
        assert_eq!(c.headers, HeaderMode::Legacy);
    }

    #[test]
    fn burst_zero_is_rejected_with_an_explanation() {
        let err = parse(r#"limits = [{ rate = "10/s", burst = 0 }]"#).unwrap_err();
        assert!(err.contains("burst must be a whole number from 1"), "{err}");
        let err = parse(r#"limits = [{ rate = "10/s", burst = -3 }]"#).unwrap_err();
        assert!(err.contains("not -3"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse(r#"limits = [{ rate = "10/s", brust = 2 }]"#).unwrap_err();
        assert!(err.contains("brust"), "{err}");
        let err = parse(
            r#"limits = [{ rate = "10/s" }]
            backend = { redis = { url = "redis://h", on_redis_error = "deny" } }"#,
        )
        .unwrap_err();
        assert!(err.contains("on_redis_error"), "{err}");
        let err = parse(
            r#"limits = [{ rate = "10/s" }]
            headers = "ietf""#,
        )
        .unwrap_err();
        assert!(err.contains("ietf"), "{err}");
    }

    #[test]
    fn redis_backend_from_a_url_or_a_table() {
        let c = parse(
            r#"limits = [{ rate = "10/s" }]
            backend = { redis = "redis://127.0.0.1:6379/0" }"#,
        )
        .unwrap();
        let BackendConfig::Redis(r) = c.backend else {
            panic!("not redis")
        };
        assert_eq!(r.prefix, "tollgate:rl:");
        assert_eq!(r.timeout, Duration::from_millis(100));
        assert_eq!(r.connect_timeout, Duration::from_secs(1));
        assert_eq!(r.retry_interval, Duration::from_secs(1));
        assert_eq!(r.on_error, OnError::Allow);
        assert!(!r.local_precheck);

        let c = parse(
            r#"limits = [{ rate = "10/s" }]
            [backend.redis]
            url = "redis://cache:6380/2"
            prefix = "gw1:"
            timeout = "30ms"
            connect_timeout = "250ms"
            retry_interval = "5s"
            on_error = "deny"
            local_precheck = true"#,
        )
        .unwrap();
        let BackendConfig::Redis(r) = c.backend else {
            panic!("not redis")
        };
        assert_eq!(r.prefix, "gw1:");
        assert_eq!(r.timeout, Duration::from_millis(30));
        assert_eq!(r.connect_timeout, Duration::from_millis(250));
        assert_eq!(r.retry_interval, Duration::from_secs(5));
        assert_eq!(r.on_error, OnError::Deny);
        assert!(r.local_precheck);

        assert!(matches!(
            parse(
                r#"limits = [{ rate = "10/s" }]
            backend = "local""#
            )
            .unwrap()
            .backend,
            BackendConfig::Local
        ));
    }

    #[test]
    fn malformed_redis_url_and_durations_are_rejected() {
        let err = parse(
            r#"limits = [{ rate = "10/s" }]
            backend = { redis = "redis//oops" }"#,
        )
        .unwrap_err();
        assert!(err.contains("invalid Redis URL `redis//oops`"), "{err}");
        for (bad, fragment) in [
            (r#"timeout = "0s""#, "more than zero"),
            (r#"timeout = "soon""#, "invalid duration `soon`"),
        ] {
            let err = parse(&format!(
                "limits = [{{ rate = \"10/s\" }}]\n[backend.redis]\nurl = \"redis://h\"\n{bad}"
            ))
            .unwrap_err();
            assert!(err.contains(fragment), "{bad}: {err}");
        }
    }
}
