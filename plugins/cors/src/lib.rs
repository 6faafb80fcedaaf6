//! The `cors` plugin: answers CORS preflight requests at the edge and adds the CORS headers to
//! responses of cross-origin requests from allowed origins.
//!
//! Config keys:
//! - `allow_origins` (required, non-empty): `"*"` for any origin, exact origins such as
//!   `"https://app.example.com"`, or `"https://*.example.com"` for every subdomain (same scheme).
//! - `allow_methods` (default `["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]`).
//! - `allow_headers` (default `[]`: reflect the preflight's `Access-Control-Request-Headers`).
//! - `expose_headers` (default `[]`).
//! - `allow_credentials` (default `false`; cannot be combined with `"*"`).
//! - `max_age_secs` (default `600`): how long browsers may cache a preflight answer.
//!
//! A preflight from an origin that is not allowed, or for a method that is not allowed, is
//! refused with 403 `cors_forbidden`; other requests are never refused, only left without CORS
//! headers, and the browser keeps their response from the page.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod origin;

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tollgate_plugin_api::{
    async_trait, BuildContext, Count, Flow, Plugin, PluginError, PluginFactory, RequestContext,
    RequestHeader, Response, ResponseHeader,
};

use crate::origin::OriginRule;

/// Configuration of the `cors` plugin.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct CorsConfig {
    /// Allowed origins: `"*"`, exact origins, or `"scheme://*.host"` subdomain patterns.
    pub allow_origins: Vec<String>,
    /// Methods a cross-origin request may use.
    #[serde(default = "default_allow_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a cross-origin request may send; empty reflects what the preflight asks.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the page may read beyond the CORS-safelisted ones.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether cross-origin requests may carry cookies and credentials.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long, in seconds, a browser may cache a preflight answer.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u64,
}

fn default_allow_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}

fn default_max_age_secs() -> u64 {
    600
}

/// Factory of the `cors` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorsPlugin;

impl PluginFactory for CorsPlugin {
    const NAME: &'static str = "cors";
    // Before authentication and rate limiting: a browser's preflight carries no credentials, so
    // it must be answered before a plugin would refuse it for lacking them.
    const PRIORITY: i32 = 9000;
    type Config = CorsConfig;

    fn config_schema(
        generator: &mut tollgate_plugin_api::schemars::SchemaGenerator,
    ) -> tollgate_plugin_api::schemars::Schema {
        generator.subschema_for::<Self::Config>()
    }

    fn build(config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        Cors::compile(config).map(|c| Arc::new(c) as Arc<dyn Plugin>)
    }
}

/// A built `cors` plugin.
#[derive(Debug)]
struct Cors {
    origins: Vec<OriginRule>,
    /// Answer with `*` instead of the request's origin (any origin allowed, no credentials).
    wildcard: bool,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// `None` reflects the preflight's requested headers.
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    allow_credentials: bool,
    max_age: HeaderValue,
}

/// Per-request note, left by the request phase for the response phase, that the request's
/// origin is allowed; it holds the `Access-Control-Allow-Origin` value to send.
#[derive(Debug, Clone)]
struct AllowedOrigin(HeaderValue);

const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

impl Cors {
    fn compile(config: CorsConfig) -> Result<Self, String> {
        if config.allow_origins.is_empty() {
            return Err(
                "allow_origins must list at least one origin (or \"*\" for any)".to_owned(),
            );
        }
        let origins = config
            .allow_origins
            .iter()
            .map(|o| OriginRule::parse(o).map_err(|e| format!("allow_origins: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let any = origins.contains(&OriginRule::Any);
        if any && config.allow_credentials {
            return Err(
                "allow_credentials = true cannot be combined with allow_origins = [\"*\"] \
                 (browsers refuse credentials with a wildcard origin; list the origins instead)"
                    .to_owned(),
            );
        }

        if config.allow_methods.is_empty() {
            return Err("allow_methods must list at least one method".to_owned());
        }
        let mut methods: Vec<Method> = Vec::new();
        for m in &config.allow_methods {
            if m == "*" {
                return Err("allow_methods: `*` is not supported; list the methods".to_owned());
            }
            // Methods are case-sensitive on the wire; a lower-case entry is taken to mean the
            // standard method rather than an unusual custom one.
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("allow_methods: `{m}` is not a valid HTTP method"))?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        let allow_methods = join_value(methods.iter().map(Method::as_str))?;

        let allow_headers = header_list("allow_headers", &config.allow_headers, false)?;
        let expose_headers = header_list(
            "expose_headers",
            &config.expose_headers,
            !config.allow_credentials,
        )?;

        Ok(Self {
            origins,
            wildcard: any,
            methods,
            allow_methods,
            allow_headers,
            expose_headers,
            allow_credentials: config.allow_credentials,
            max_age: HeaderValue::from(config.max_age_secs),
        })
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        let origin = origin.as_bytes();
        self.origins.iter().any(|rule| rule.matches(origin))
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.wildcard {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    fn preflight(&self, req: &RequestHeader, origin: &HeaderValue) -> Result<Flow, PluginError> {
        if !self.origin_allowed(origin) {
            return Err(forbidden(format!(
                "origin `{}` is not allowed to make cross-origin requests to this route",
                String::from_utf8_lossy(origin.as_bytes())
            )));
        }
        let requested = req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !self
            .methods
            .iter()
            .any(|m| m.as_str().as_bytes() == requested)
        {
            return Err(forbidden(format!(
                "method `{}` is not allowed for cross-origin requests from `{}` (allowed: {})",
                String::from_utf8_lossy(requested),
                String::from_utf8_lossy(origin.as_bytes()),
                String::from_utf8_lossy(self.allow_methods.as_bytes()),
            )));
        }

        let mut resp = Response::new(StatusCode::NO_CONTENT)
            .with_header(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin_value(origin),
            )
            .with_header(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            );
        match &self.allow_headers {
            Some(list) => {
                resp = resp.with_header(header::ACCESS_CONTROL_ALLOW_HEADERS, list.clone());
            }
            None => {
                for v in req.headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                    resp = resp.with_header(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
                }
            }
        }
        resp = resp.with_header(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.allow_credentials {
            resp = resp.with_header(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        Ok(Flow::Respond(
            resp.with_header(header::VARY, PREFLIGHT_VARY),
        ))
    }
}

fn forbidden(message: String) -> PluginError {
    PluginError::new(StatusCode::FORBIDDEN, "cors_forbidden", message)
}

/// Parses a list of header names into one comma-separated value; `None` when the list is empty.
fn header_list(
    key: &str,
    names: &[String],
    wildcard_allowed: bool,
) -> Result<Option<HeaderValue>, String> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut parsed: Vec<HeaderName> = Vec::with_capacity(names.len());
    for n in names {
        if n == "*" {
            if wildcard_allowed {
                return Ok(Some(HeaderValue::from_static("*")));
            }
            return Err(if key == "allow_headers" {
                "allow_headers: leave the list empty to allow whatever headers the preflight \
                 asks for, instead of `*`"
                    .to_owned()
            } else {
                format!(
                    "{key}: browsers take `*` literally when credentials are allowed; \
                     list the headers"
                )
            });
        }
        let name = HeaderName::try_from(n.as_str())
            .map_err(|_| format!("{key}: `{n}` is not a valid header name"))?;
        if !parsed.contains(&name) {
            parsed.push(name);
        }
    }
    join_value(parsed.iter().map(HeaderName::as_str)).map(Some)
}

fn join_value<'a>(items: impl Iterator<Item = &'a str>) -> Result<HeaderValue, String> {
    let joined = items.collect::<Vec<_>>().join(", ");
    HeaderValue::try_from(joined.as_str())
        .map_err(|_| format!("`{joined}` is not a valid header value"))
}

/// Adds `Origin` to `Vary` unless the response already varies on it (or on everything).
fn add_vary_origin(resp: &mut ResponseHeader) {
    let covered = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|item| {
            let item = item.trim_ascii();
            item == b"*" || item.eq_ignore_ascii_case(b"origin")
        })
    });
    if !covered {
        // Only fails when the response already holds pingora's maximum number of headers.
        let _ = resp.append_header(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[async_trait]
impl Plugin for Cors {
    fn name(&self) -> &'static str {
        CorsPlugin::NAME
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        let Some(origin) = req.headers.get(header::ORIGIN) else {
            return Ok(Flow::Continue);
        };
        if req.method == Method::OPTIONS
            && req
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            let answer = self.preflight(req, origin);
            if let Err(refusal) = &answer {
                // An access decision like an address rule's: counted with the auth failures.
                ctx.count(Count::AuthFailure {
                    reason: refusal.code,
                });
            }
            return answer;
        }
        if self.origin_allowed(origin) {
            ctx.extensions
                .insert(AllowedOrigin(self.allow_origin_value(origin)));
        }
        Ok(Flow::Continue)
    }

    fn on_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestContext) {
        let Some(AllowedOrigin(allow_origin)) = ctx.extensions.get::<AllowedOrigin>() else {
            return;
        };
        // These inserts only fail when the response already holds pingora's maximum number of
        // headers; the response then goes out without CORS headers, which the browser blocks.
        let _ = resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin.clone());
        add_vary_origin(resp);
        if self.allow_credentials {
            let _ = resp.insert_header(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose_headers {
            let _ = resp.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
