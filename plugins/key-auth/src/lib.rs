//! The `key-auth` plugin: lets a request through only with a known API key, and tells the upstream
//! (and later plugins, e.g. `rate-limit` keyed on `consumer`) which consumer it belongs to.
//!
//! Config keys:
//! - `header` (default `"x-api-key"`): request header the key is read from.
//! - `query` (optional): query parameter the key is also read from (after the header).
//! - `consumers` (default `[]`): `{ name = "alice", key_sha256 = "<64 hex digits>" }` entries.
//! - `keys_file` (optional): a file of `NAME SHA256HEX` lines (`#` starts a comment), relative to
//!   the config file. At least one consumer must come from `consumers` or the file.
//! - `consumer_header` (default `"x-consumer"`): header the consumer name is sent upstream in; a
//!   client's own copy is always removed.
//! - `strip_key` (default `true`): remove the key from the request before it goes upstream.
//! - `allow_preflight` (default `true`): let CORS preflights through without a key.
//!
//! Only SHA-256 hashes of keys are configured, so a leaked config does not leak keys. A missing key
//! is answered with 401 `missing_api_key`, an unknown one with 401 `invalid_api_key`; both carry
//! `WWW-Authenticate: ApiKey`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tollgate_plugin_api::{
    async_trait, decode_query_value, BuildContext, Count, Flow, Plugin, PluginError, PluginFactory,
    RequestContext, RequestHeader, Secret,
};

/// Configuration of the `key-auth` plugin.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KeyAuthConfig {
    /// Header the key is read from.
    pub header: String,
    /// Query parameter the key is also read from.
    pub query: Option<String>,
    /// Consumers and the SHA-256 of their keys.
    pub consumers: Vec<ConsumerEntry>,
    /// A file of `NAME SHA256HEX` lines.
    pub keys_file: Option<String>,
    /// Header the consumer name is forwarded in.
    pub consumer_header: String,
    /// Remove the key before proxying.
    pub strip_key: bool,
    /// Let CORS preflights through.
    pub allow_preflight: bool,
}

impl Default for KeyAuthConfig {
    fn default() -> Self {
        Self {
            header: "x-api-key".into(),
            query: None,
            consumers: Vec::new(),
            keys_file: None,
            consumer_header: "x-consumer".into(),
            strip_key: true,
            allow_preflight: true,
        }
    }
}

/// One consumer in the config.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerEntry {
    /// Consumer name (forwarded upstream, usable as a rate-limit key).
    pub name: String,
    /// Hex SHA-256 of the key. Secret too: a hash of a short or guessable key can be reversed
    /// by trying candidates, and it is all an attacker needs to check them offline.
    pub key_sha256: Secret<String>,
}

/// Factory of the `key-auth` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyAuthPlugin;

impl PluginFactory for KeyAuthPlugin {
    const NAME: &'static str = "key-auth";
    // Authentication runs after IP rules and CORS (preflights answered first) and before rate
    // limiting, so limits can be keyed on the consumer.
    const PRIORITY: i32 = 8100;
    type Config = KeyAuthConfig;

    fn config_schema(
        generator: &mut tollgate_plugin_api::schemars::SchemaGenerator,
    ) -> tollgate_plugin_api::schemars::Schema {
        generator.subschema_for::<Self::Config>()
    }

    fn build(config: Self::Config, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .map_err(|_| format!("`header` `{}` is not a valid header name", config.header))?;
        let consumer_header =
            HeaderName::from_bytes(config.consumer_header.as_bytes()).map_err(|_| {
                format!(
                    "`consumer_header` `{}` is not a valid header name",
                    config.consumer_header
                )
            })?;
        if config.query.as_deref().is_some_and(str::is_empty) {
            return Err("`query` must not be empty; leave it out to read only the header".into());
        }
        let mut keys: HashMap<[u8; 32], Arc<str>> = HashMap::new();
        let mut add = |name: &str, hash: &str, origin: &str| -> Result<(), String> {
            if name.is_empty() || HeaderValue::from_str(name).is_err() {
                return Err(format!(
                    "{origin}: consumer name `{name}` must be non-empty printable text"
                ));
            }
            let digest = parse_sha256(hash).ok_or_else(|| {
                format!(
                    "{origin}: the key of consumer `{name}` is not a SHA-256 hash (64 hex digits)"
                )
            })?;
            if keys.insert(digest, Arc::from(name)).is_some() {
                return Err(format!(
                    "{origin}: the key of consumer `{name}` is listed twice"
                ));
            }
            Ok(())
        };
        for c in &config.consumers {
            add(&c.name, c.key_sha256.expose(), "consumers")?;
        }
        if let Some(file) = &config.keys_file {
            let path = ctx.resolve(file);
            for (name, hash, line) in read_keys_file(&path)? {
                add(&name, &hash, &format!("{}:{line}", path.display()))?;
            }
        }
        if keys.is_empty() {
            return Err("no consumers: list some in `consumers` or `keys_file`".into());
        }
        Ok(Arc::new(KeyAuth {
            header,
            query: config.query,
            keys,
            consumer_header,
            strip_key: config.strip_key,
            allow_preflight: config.allow_preflight,
        }))
    }
}

fn parse_sha256(hex_text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_text.trim()).ok()?;
    bytes.try_into().ok()
}

/// `(name, hash, line number)` of every entry of a keys file.
fn read_keys_file(path: &Path) -> Result<Vec<(String, String, usize)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `keys_file` {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(hash), None) => out.push((name.to_string(), hash.to_string(), i + 1)),
            _ => {
                return Err(format!(
                    "{}:{}: expected `NAME SHA256HEX`",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    Ok(out)
}

/// A built `key-auth` plugin.
#[derive(Debug)]
struct KeyAuth {
    header: HeaderName,
    query: Option<String>,
    /// SHA-256 of each key → consumer. Lookups hash the presented key first, so the map is never
    /// probed with (or compared against) a secret itself.
    keys: HashMap<[u8; 32], Arc<str>>,
    consumer_header: HeaderName,
    strip_key: bool,
    allow_preflight: bool,
}

/// A 401, counted as an auth failure under its code.
fn unauthorized(code: &'static str, message: &str, ctx: &mut RequestContext) -> PluginError {
    ctx.count(Count::AuthFailure { reason: code });
    PluginError::new(StatusCode::UNAUTHORIZED, code, message)
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"))
}

impl KeyAuth {
    /// The key the request carries, and whether it came from the query.
    fn presented_key(&self, req: &RequestHeader) -> Option<(String, bool)> {
        if let Some(v) = req.headers.get(&self.header) {
            return Some((
                String::from_utf8_lossy(v.as_bytes()).trim().to_string(),
                false,
            ));
        }
        let name = self.query.as_deref()?;
        let query = req.uri.query()?;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (decode_query_value(v), true))
    }

    fn strip_from_query(&self, req: &mut RequestHeader) {
        let (Some(name), Some(query)) = (self.query.as_deref(), req.uri.query()) else {
            return;
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| pair.split('=').next() != Some(name))
            .collect();
        let path = req.uri.path();
        let pq = if kept.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", kept.join("&"))
        };
        let mut parts = req.uri.clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                req.set_uri(uri);
            }
        }
    }
}

#[async_trait]
impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        KeyAuthPlugin::NAME
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        // Never let a client name its own consumer.
        req.remove_header(&self.consumer_header);
        if self.allow_preflight
            && req.method == Method::OPTIONS
            && req.headers.contains_key("origin")
            && req.headers.contains_key("access-control-request-method")
        {
            return Ok(Flow::Continue);
        }
        let Some((key, from_query)) = self.presented_key(req) else {
            return Err(unauthorized(
                "missing_api_key",
                "an API key is required",
                ctx,
            ));
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let Some(consumer) = self.keys.get(&digest) else {
            return Err(unauthorized(
                "invalid_api_key",
                "the API key is not valid",
                ctx,
            ));
        };
        ctx.vars.insert("consumer".into(), consumer.to_string());
        if self.strip_key {
            if from_query {
                self.strip_from_query(req);
            } else {
                req.remove_header(&self.header);
            }
        }
        if let Ok(v) = HeaderValue::from_str(consumer) {
            let _ = req.insert_header(self.consumer_header.clone(), v);
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_plugin_test::{ctx, request};

    fn sha(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    /// Builds the plugin through the registry; the error is the message `tollgate check` shows.
    fn build(toml_text: &str) -> Result<Arc<dyn Plugin>, String> {
        tollgate_plugin_test::build::<KeyAuthPlugin>(toml_text).map_err(|e| e.message)
    }

    fn plugin() -> Arc<dyn Plugin> {
        build(&format!(
            "query = \"api_key\"\nconsumers = [{{ name = \"alice\", key_sha256 = \"{}\" }}]",
            sha("s3cret")
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn valid_key_in_header_names_the_consumer_and_is_stripped() {
        let p = plugin();
        let mut req = request(
            "GET",
            "/x",
            &[("x-api-key", "s3cret"), ("x-consumer", "mallory")],
        );
        let mut c = ctx();
        assert!(matches!(
            p.on_request(&mut req, &mut c).await,
            Ok(Flow::Continue)
        ));
        assert_eq!(c.vars.get("consumer"), Some("alice"));
        assert!(c.counts().is_empty());
        assert!(req.headers.get("x-api-key").is_none());
        assert_eq!(req.headers["x-consumer"], "alice");
    }

    #[tokio::test]
    async fn key_in_query_is_accepted_and_removed_from_the_query() {
        let p = plugin();
        let mut req = request("GET", "/x?a=1&api_key=s3cret&b=2", &[]);
        let mut c = ctx();
        assert!(matches!(
            p.on_request(&mut req, &mut c).await,
            Ok(Flow::Continue)
        ));
        assert_eq!(req.uri.query(), Some("a=1&b=2"));
    }

    #[tokio::test]
    async fn missing_and_wrong_keys_are_401() {
        let p = plugin();
        let mut req = request("GET", "/x", &[]);
        let mut c = ctx();
        let err = p.on_request(&mut req, &mut c).await.err().unwrap();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
        assert_eq!(err.code, "missing_api_key");
        assert_eq!(
            c.counts(),
            [Count::AuthFailure {
                reason: "missing_api_key"
            }]
        );
        req.insert_header("x-api-key", "guess").unwrap();
        let mut c = ctx();
        let err = p.on_request(&mut req, &mut c).await.err().unwrap();
        assert_eq!(err.code, "invalid_api_key");
        assert!(err.headers.iter().any(|(n, _)| n == WWW_AUTHENTICATE));
        assert_eq!(
            c.counts(),
            [Count::AuthFailure {
                reason: "invalid_api_key"
            }]
        );
    }

    #[tokio::test]
    async fn preflight_passes_without_a_key() {
        let p = plugin();
        let mut req = request(
            "OPTIONS",
            "/x",
            &[
                ("origin", "https://a.example"),
                ("access-control-request-method", "POST"),
            ],
        );
        assert!(matches!(
            p.on_request(&mut req, &mut ctx()).await,
            Ok(Flow::Continue)
        ));
    }

    #[test]
    fn keys_file_is_read_and_bad_entries_are_reported_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, format!("# team keys\nbob {}  # ops\n\n", sha("b"))).unwrap();
        let cfg = format!("keys_file = \"{}\"", file.display());
        assert!(build(&cfg).is_ok());
        std::fs::write(&file, format!("bob {}\ncarol nothex\n", sha("b"))).unwrap();
        let err = build(&cfg).err().unwrap();
        assert!(err.contains(":2:"), "{err}");
        assert!(err.contains("not a SHA-256"), "{err}");
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(build("").err().unwrap().contains("no consumers"));
        let e = build("consumers = [{ name = \"a\", key_sha256 = \"abc\" }]")
            .err()
            .unwrap();
        assert!(e.contains("not a SHA-256"), "{e}");
        assert!(!e.contains("abc"), "a key hash is never quoted: {e}");
        let twice = format!(
            "consumers = [{{ name = \"a\", key_sha256 = \"{0}\" }}, {{ name = \"b\", key_sha256 = \"{0}\" }}]",
            sha("k")
        );
        assert!(build(&twice).err().unwrap().contains("twice"));
        assert!(build("header = \"bad header\"\nconsumers = []").is_err());
    }

    #[test]
    fn key_hashes_are_shown_redacted() {
        let hash = sha("s3cret");
        let src = format!("{{ consumers = [{{ name = \"alice\", key_sha256 = \"{hash}\" }}] }}");
        let shown = tollgate_plugin_test::render::<KeyAuthPlugin>(&src).unwrap();
        assert_eq!(
            shown["consumers"],
            serde_json::json!([{"name": "alice", "key_sha256": "<redacted>"}])
        );
        assert_eq!(shown["header"], "x-api-key", "defaults are shown: {shown}");
        let config: KeyAuthConfig = toml::from_str(&format!(
            "consumers = [{{ name = \"a\", key_sha256 = \"{hash}\" }}]"
        ))
        .unwrap();
        assert!(!format!("{config:?}").contains(&hash));
    }

    #[test]
    fn percent_decoding_never_panics() {
        assert_eq!(decode_query_value("a%20b+c"), "a b c");
        assert_eq!(decode_query_value("%"), "%");
        assert_eq!(decode_query_value("%4"), "%4");
        assert_eq!(decode_query_value("%zz"), "%zz");
    }
}
