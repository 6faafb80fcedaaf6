//! The `headers` plugin: adds, replaces and removes headers of the request sent upstream and of
//! the response sent to the client.
//!
//! Config keys (all optional):
//! - `request = { add = { name = "value", ... }, set = { ... }, remove = ["name", ...] }`: applied
//!   to the request as the upstream receives it.
//! - `response = { add = { ... }, set = { ... }, remove = [...] }`: applied to every response,
//!   including the gateway's own error responses.
//!
//! `add` appends a value and keeps existing ones, `set` replaces all values, `remove` deletes the
//! header; they apply in the order remove, set, add.
//!
//! Values added to the request are secrets: they are how a gateway hands an upstream its
//! credentials (`authorization`, `x-api-key`), so `/config` and error messages never show them.
//! Response values go to every client anyway and are shown.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use http::{header, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use tollgate_plugin_api::{
    async_trait, BuildContext, Plugin, PluginError, PluginFactory, RequestContext, RequestHeader,
    ResponseHeader, Secret,
};

/// Configuration of the `headers` plugin.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct HeadersConfig {
    /// Changes to the request sent upstream (values are secret: they often carry credentials).
    pub request: HeaderOpsConfig<Secret<String>>,
    /// Changes to the response sent to the client.
    pub response: HeaderOpsConfig<String>,
}

/// Header changes of one direction, as written in the config; `V` is how a value is held.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
#[schemars(bound = "V: schemars::JsonSchema + Default + Serialize")]
pub struct HeaderOpsConfig<V> {
    /// Headers to append, keeping existing values.
    pub add: BTreeMap<String, V>,
    /// Headers to replace.
    pub set: BTreeMap<String, V>,
    /// Headers to delete.
    pub remove: Vec<String>,
}

/// A configured header value: its text, and whether an error message may quote it.
trait ValueText {
    /// Whether the value may appear in messages.
    const SHOWN: bool;
    /// The value's text.
    fn text(&self) -> &str;
}

impl ValueText for String {
    const SHOWN: bool = true;
    fn text(&self) -> &str {
        self
    }
}

impl ValueText for Secret<String> {
    const SHOWN: bool = false;
    fn text(&self) -> &str {
        self.expose()
    }
}

/// Factory of the `headers` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadersPlugin;

impl PluginFactory for HeadersPlugin {
    const NAME: &'static str = "headers";
    // Low so that it runs after the other plugins of each phase: its changes are the last word on
    // what the upstream and the client see (e.g. it can strip a header another plugin added).
    const PRIORITY: i32 = 1000;
    type Config = HeadersConfig;

    fn config_schema(
        generator: &mut tollgate_plugin_api::schemars::SchemaGenerator,
    ) -> tollgate_plugin_api::schemars::Schema {
        generator.subschema_for::<Self::Config>()
    }

    fn build(config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(Headers {
            request: HeaderOps::compile("request", config.request)?,
            response: HeaderOps::compile("response", config.response)?,
        }))
    }
}

/// Header changes of one direction, parsed so that applying them does no parsing.
#[derive(Debug, Default)]
struct HeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    fn compile<V: ValueText>(direction: &str, config: HeaderOpsConfig<V>) -> Result<Self, String> {
        let mut remove = Vec::with_capacity(config.remove.len());
        let mut seen = HashSet::new();
        for name in &config.remove {
            let parsed = parse_name(&format!("{direction}.remove"), name)?;
            if seen.insert(parsed.clone()) {
                remove.push(parsed);
            }
        }
        Ok(Self {
            remove,
            set: compile_pairs(&format!("{direction}.set"), config.set)?,
            add: compile_pairs(&format!("{direction}.add"), config.add)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

fn compile_pairs<V: ValueText>(
    key: &str,
    pairs: BTreeMap<String, V>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        let parsed = parse_name(key, &name)?;
        // Keys that differ only in case are one header; silently keeping one would hide a mistake.
        if out.iter().any(|(n, _)| *n == parsed) {
            return Err(format!(
                "{key}: header `{parsed}` is listed more than once (header names ignore case)"
            ));
        }
        let mut value = HeaderValue::from_str(value.text()).map_err(|_| {
            let shown = if V::SHOWN {
                format!(": {:?}", value.text())
            } else {
                String::new()
            };
            format!(
                "{key}: the value of `{name}` is not a valid header value \
                 (visible ASCII characters, spaces and tabs only){shown}"
            )
        })?;
        if !V::SHOWN {
            // `Debug` of the header map (pingora logs requests at debug level) then prints
            // `Sensitive`, and HTTP/2 never puts the value in its compression tables.
            value.set_sensitive(true);
        }
        out.push((parsed, value));
    }
    Ok(out)
}

fn parse_name(key: &str, name: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::try_from(name)
        .map_err(|_| format!("{key}: `{name}` is not a valid header name"))?;
    // These describe the framing of the message the proxy itself writes; rewriting them would
    // make the gateway send a body that does not match its own headers.
    if parsed == header::CONTENT_LENGTH || parsed == header::TRANSFER_ENCODING {
        return Err(format!(
            "{key}: `{parsed}` describes the message framing and cannot be changed by this plugin"
        ));
    }
    Ok(parsed)
}

/// A built `headers` plugin.
#[derive(Debug)]
struct Headers {
    request: HeaderOps,
    response: HeaderOps,
}

/// The header mutators `RequestHeader` and `ResponseHeader` share. They must be used instead of
/// the inner map so that pingora's record of the original header case stays consistent.
trait HeaderTarget {
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), String>;
    fn append(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), String>;
}

impl HeaderTarget for RequestHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), String> {
        self.insert_header(name, value).map_err(|e| e.to_string())
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), String> {
        self.append_header(name, value)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl HeaderTarget for ResponseHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), String> {
        self.insert_header(name, value).map_err(|e| e.to_string())
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), String> {
        self.append_header(name, value)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl HeaderOps {
    /// Applies the changes in the order remove, set, add, so that `set` and `add` of one name
    /// combine into "replace, then append".
    fn apply(&self, target: &mut impl HeaderTarget) -> Result<(), String> {
        for name in &self.remove {
            target.remove(name);
        }
        for (name, value) in &self.set {
            target.insert(name.clone(), value.clone())?;
        }
        for (name, value) in &self.add {
            target.append(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

#[async_trait]
impl Plugin for Headers {
    fn name(&self) -> &'static str {
        HeadersPlugin::NAME
    }

    fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        _ctx: &mut RequestContext,
    ) -> Result<(), PluginError> {
        if self.request.is_empty() {
            return Ok(());
        }
        // Only fails when the request already holds pingora's maximum number of headers.
        self.request.apply(req).map_err(|e| {
            PluginError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too_many_headers",
                format!("the request headers could not be rewritten: {e}"),
            )
        })
    }

    fn on_response(&self, resp: &mut ResponseHeader, _ctx: &mut RequestContext) {
        if self.response.is_empty() {
            return;
        }
        // Only fails when the response already holds pingora's maximum number of headers; the
        // response is better delivered without the extra headers than not at all.
        let _ = self.response.apply(resp);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tollgate_plugin_api::{BuildError, BuildErrorKind};
    use tollgate_plugin_test::{ctx, header_values as values, request};

    fn build(toml_src: &str) -> Result<Arc<dyn Plugin>, BuildError> {
        tollgate_plugin_test::build::<HeadersPlugin>(toml_src)
    }

    fn build_err(toml_src: &str) -> BuildError {
        tollgate_plugin_test::build_err::<HeadersPlugin>(toml_src)
    }

    #[test]
    fn request_changes_apply_remove_then_set_then_add() {
        let p = build(
            r#"{ request = {
                remove = ["x-internal", "x-both"],
                set = { "x-set" = "new", "X-Both" = "set" },
                add = { "x-add" = "appended", "x-both" = "added" },
            } }"#,
        )
        .unwrap();
        let mut req = request(
            "GET",
            "/",
            &[
                ("x-internal", "secret"),
                ("x-set", "old"),
                ("x-set", "older"),
                ("x-add", "existing"),
                ("x-both", "original"),
            ],
        );
        p.on_upstream_request(&mut req, &mut ctx()).unwrap();
        assert!(req.headers.get("x-internal").is_none());
        assert_eq!(values(&req.headers, "x-set"), ["new"]);
        assert_eq!(values(&req.headers, "x-add"), ["existing", "appended"]);
        assert_eq!(values(&req.headers, "x-both"), ["set", "added"]);
    }

    #[test]
    fn request_changes_do_not_touch_the_response() {
        let p = build(r#"{ request = { set = { "x-a" = "1" } } }"#).unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        p.on_response(&mut resp, &mut ctx());
        assert!(resp.headers.is_empty());
    }

    #[test]
    fn response_changes_apply_to_every_response() {
        let p = build(
            r#"{ response = {
                remove = ["server"],
                set = { "cache-control" = "no-store" },
                add = { "vary" = "Accept" },
            } }"#,
        )
        .unwrap();
        for status in [200, 502] {
            let mut resp = ResponseHeader::build(status, None).unwrap();
            resp.append_header("server", "upstream/1.0").unwrap();
            resp.append_header("cache-control", "max-age=60").unwrap();
            resp.append_header("vary", "Origin").unwrap();
            p.on_response(&mut resp, &mut ctx());
            assert!(resp.headers.get("server").is_none());
            assert_eq!(values(&resp.headers, "cache-control"), ["no-store"]);
            assert_eq!(values(&resp.headers, "vary"), ["Origin", "Accept"]);
        }
    }

    #[test]
    fn empty_config_changes_nothing() {
        let p = build("{}").unwrap();
        let mut req = request("GET", "/", &[("x-a", "1")]);
        p.on_upstream_request(&mut req, &mut ctx()).unwrap();
        assert_eq!(values(&req.headers, "x-a"), ["1"]);
    }

    #[test]
    fn bad_header_name_is_rejected() {
        let err = build_err(r#"{ request = { set = { "x bad" = "1" } } }"#);
        assert_eq!(err.kind, BuildErrorKind::Invalid);
        assert!(
            err.message
                .contains("request.set: `x bad` is not a valid header name"),
            "{}",
            err.message
        );
        let err = build_err(r#"{ response = { remove = ["x:y"] } }"#);
        assert!(err.message.contains("response.remove"), "{}", err.message);
    }

    #[test]
    fn bad_header_value_is_rejected() {
        let err = build_err(r#"{ response = { add = { "x-a" = "line\nbreak" } } }"#);
        assert_eq!(err.kind, BuildErrorKind::Invalid);
        assert!(
            err.message
                .contains("response.add: the value of `x-a` is not a valid header value"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_bad_request_value_is_rejected_without_quoting_it() {
        let err = build_err(r#"{ request = { set = { authorization = "Bearer s3cr3t\n" } } }"#);
        assert!(
            err.message
                .contains("request.set: the value of `authorization` is not a valid header value"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("s3cr3t"), "{}", err.message);
    }

    #[test]
    fn request_values_are_shown_redacted_and_response_values_as_written() {
        let shown = tollgate_plugin_test::render::<HeadersPlugin>(
            r#"{ request = { set = { authorization = "Bearer s3cr3t" }, add = { x-api-key = "k3y" } },
                 response = { set = { cache-control = "no-store" } } }"#,
        )
        .unwrap();
        assert_eq!(
            shown,
            serde_json::json!({
                "request": {"add": {"x-api-key": "<redacted>"},
                            "set": {"authorization": "<redacted>"}, "remove": []},
                "response": {"add": {}, "set": {"cache-control": "no-store"}, "remove": []},
            })
        );
    }

    #[test]
    fn names_differing_only_in_case_are_rejected() {
        let err = build_err(r#"{ request = { set = { "X-A" = "1", "x-a" = "2" } } }"#);
        assert!(
            err.message.contains("`x-a` is listed more than once"),
            "{}",
            err.message
        );
    }

    #[test]
    fn framing_headers_cannot_be_changed() {
        let err = build_err(r#"{ request = { remove = ["Content-Length"] } }"#);
        assert!(err.message.contains("message framing"), "{}", err.message);
        let err = build_err(r#"{ response = { set = { "transfer-encoding" = "gzip" } } }"#);
        assert!(err.message.contains("message framing"), "{}", err.message);
    }

    #[test]
    fn unknown_key_is_rejected_with_a_span() {
        let err = build_err(r#"{ request = { append = { "x-a" = "1" } } }"#);
        assert_eq!(err.kind, BuildErrorKind::Config);
        assert!(err.message.contains("append"), "{}", err.message);
        assert_eq!(err.span, Some(14..20));
    }
}
