//! The `request-id` plugin: chooses the header a request id is read from, forwarded in and echoed
//! in, and whether a client's own id is trusted.
//!
//! The gateway core already keeps a sane incoming `x-request-id` (or generates one) and forwards
//! it upstream; this plugin changes that behaviour per route or globally.
//!
//! Config keys:
//! - `header` (default `"x-request-id"`): the header the id is read from, sent upstream in and
//!   echoed in.
//! - `trust_incoming` (default `true`): keep a client's id when it is sane; `false` always
//!   generates a fresh one.
//! - `echo` (default `true`): set the id on every response.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use tollgate_plugin_api::{
    async_trait, generate_request_id, is_sane_request_id, BuildContext, Flow, Plugin, PluginError,
    PluginFactory, RequestContext, RequestHeader, ResponseHeader,
};

/// Configuration of the `request-id` plugin.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct RequestIdConfig {
    /// Header the id is read from, forwarded in and echoed in.
    pub header: String,
    /// Keep a sane id sent by the client instead of generating one.
    pub trust_incoming: bool,
    /// Set the id on every response.
    pub echo: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        Self {
            header: "x-request-id".to_owned(),
            trust_incoming: true,
            echo: true,
        }
    }
}

/// Factory of the `request-id` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdPlugin;

impl PluginFactory for RequestIdPlugin {
    const NAME: &'static str = "request-id";
    // Runs first so that every later plugin, and every error it returns, sees the final id.
    const PRIORITY: i32 = 10000;
    type Config = RequestIdConfig;

    fn config_schema(
        generator: &mut tollgate_plugin_api::schemars::SchemaGenerator,
    ) -> tollgate_plugin_api::schemars::Schema {
        generator.subschema_for::<Self::Config>()
    }

    fn build(config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        let header = HeaderName::try_from(config.header.as_str())
            .map_err(|_| format!("header: `{}` is not a valid header name", config.header))?;
        Ok(Arc::new(RequestId {
            header,
            trust_incoming: config.trust_incoming,
            echo: config.echo,
        }))
    }
}

/// A built `request-id` plugin.
#[derive(Debug)]
struct RequestId {
    header: HeaderName,
    trust_incoming: bool,
    echo: bool,
}

impl RequestId {
    fn id_header_value(&self, ctx: &RequestContext) -> Option<HeaderValue> {
        // The core only ever stores sane or generated ids, which are always valid header values;
        // should that change, sending no header beats failing the request over it.
        HeaderValue::from_str(&ctx.request_id).ok()
    }
}

#[async_trait]
impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        RequestIdPlugin::NAME
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        if !self.trust_incoming {
            // The core may already have adopted the client's `x-request-id`.
            ctx.request_id = generate_request_id();
            return Ok(Flow::Continue);
        }
        if let Some(v) = req.headers.get(&self.header) {
            if is_sane_request_id(v.as_bytes()) {
                // Sane ids are ASCII, so this conversion cannot fail.
                if let Ok(s) = v.to_str() {
                    ctx.request_id = s.to_owned();
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<(), PluginError> {
        if let Some(v) = self.id_header_value(ctx) {
            // Replaces whatever the client sent, which may be insane or untrusted.
            req.insert_header(self.header.clone(), v).map_err(|e| {
                PluginError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "request_id_failed",
                    format!("could not set the `{}` header: {e}", self.header),
                )
            })?;
        }
        Ok(())
    }

    fn on_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestContext) {
        if !self.echo {
            return;
        }
        if let Some(v) = self.id_header_value(ctx) {
            // Only fails when the response already has ~32k headers; the id is not worth a 500.
            let _ = resp.insert_header(self.header.clone(), v);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tollgate_plugin_api::{BuildError, BuildErrorKind};

    fn build(toml_src: &str) -> Result<Arc<dyn Plugin>, BuildError> {
        tollgate_plugin_test::build::<RequestIdPlugin>(toml_src)
    }

    /// A context whose id the core chose: `core-id`.
    fn ctx() -> RequestContext {
        let mut c = tollgate_plugin_test::ctx();
        c.request_id = "core-id".to_owned();
        c
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        tollgate_plugin_test::request("GET", "/", headers)
    }

    #[tokio::test]
    async fn sane_incoming_id_in_the_configured_header_is_kept() {
        let p = build(r#"{ header = "X-Trace-Id" }"#).unwrap();
        let mut req = request(&[("x-trace-id", "abc-123")]);
        let mut ctx = ctx();
        p.on_request(&mut req, &mut ctx).await.unwrap();
        assert_eq!(ctx.request_id, "abc-123");
    }

    #[tokio::test]
    async fn insane_incoming_id_leaves_the_core_id() {
        let p = build("{}").unwrap();
        let mut req = request(&[("x-request-id", "has space")]);
        let mut ctx = ctx();
        p.on_request(&mut req, &mut ctx).await.unwrap();
        assert_eq!(ctx.request_id, "core-id");
    }

    #[tokio::test]
    async fn untrusted_incoming_id_is_replaced_by_a_fresh_one() {
        let p = build("{ trust_incoming = false }").unwrap();
        let mut req = request(&[("x-request-id", "core-id")]);
        let mut ctx = ctx();
        p.on_request(&mut req, &mut ctx).await.unwrap();
        assert_ne!(ctx.request_id, "core-id");
        assert_eq!(ctx.request_id.len(), 36);
        assert!(is_sane_request_id(ctx.request_id.as_bytes()));
    }

    #[test]
    fn upstream_request_carries_the_id_in_the_configured_header() {
        let p = build(r#"{ header = "x-trace-id" }"#).unwrap();
        let mut req = request(&[("x-trace-id", "client supplied junk")]);
        let mut ctx = ctx();
        p.on_upstream_request(&mut req, &mut ctx).unwrap();
        let values: Vec<_> = req.headers.get_all("x-trace-id").iter().collect();
        assert_eq!(values, ["core-id"]);
    }

    #[test]
    fn response_echoes_the_id_by_default() {
        let p = build("{}").unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        p.on_response(&mut resp, &mut ctx());
        assert_eq!(resp.headers.get("x-request-id").unwrap(), "core-id");
    }

    #[test]
    fn response_has_no_id_when_echo_is_off() {
        let p = build("{ echo = false }").unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        p.on_response(&mut resp, &mut ctx());
        assert!(resp.headers.get("x-request-id").is_none());
    }

    #[test]
    fn bad_header_name_is_rejected() {
        let err = build(r#"{ header = "x request id" }"#).err().unwrap();
        assert_eq!(err.kind, BuildErrorKind::Invalid);
        assert!(
            err.message
                .contains("`x request id` is not a valid header name"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_a_span() {
        let err = build("{ echoo = false }").err().unwrap();
        assert_eq!(err.kind, BuildErrorKind::Config);
        assert!(err.message.contains("echoo"), "{}", err.message);
        assert_eq!(err.span, Some(2..7));
    }
}
