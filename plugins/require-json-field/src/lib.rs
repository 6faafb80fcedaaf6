//! The `require-json-field` plugin: refuses a request whose body is not a JSON object with every
//! field of `fields`, before the upstream sees anything. The worked example of docs/plugins.md
//! ("Adding a plugin"): a plugin that reads the whole body and answers.
//!
//! Config keys:
//! - `fields` (required): names of top-level fields the object must have (not `null`).
//! - `max_bytes` (default 64 KiB): the largest body read; a larger one is refused with 413.
//!
//! Every non-empty body is checked; an empty one is refused on POST, PUT and PATCH (they carry
//! the document) and let through on other methods (a GET has no document to check).

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tollgate_plugin_api::http::{Method, StatusCode};
use tollgate_plugin_api::{
    async_trait, BodyAccess, BuildContext, ByteSize, Bytes, Flow, Plugin, PluginError,
    PluginFactory, RequestContext, RequestHeader,
};

/// Configuration of the `require-json-field` plugin.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct RequireJsonFieldConfig {
    /// Top-level fields the JSON object must have.
    pub fields: Vec<String>,
    /// The largest body read whole.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
}

fn default_max_bytes() -> ByteSize {
    ByteSize(64 * 1024)
}

/// Factory of the `require-json-field` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequireJsonFieldPlugin;

impl PluginFactory for RequireJsonFieldPlugin {
    const NAME: &'static str = "require-json-field";
    // After body-limit (5000), whose streamed count stops an oversized body first; before
    // headers (1000).
    const PRIORITY: i32 = 4500;
    type Config = RequireJsonFieldConfig;

    fn config_schema(
        generator: &mut tollgate_plugin_api::schemars::SchemaGenerator,
    ) -> tollgate_plugin_api::schemars::Schema {
        generator.subschema_for::<Self::Config>()
    }

    fn build(config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        if config.fields.is_empty() {
            return Err("`fields` must name at least one field, e.g. fields = [\"name\"]".into());
        }
        for (i, field) in config.fields.iter().enumerate() {
            if field.is_empty() {
                return Err("`fields` has an empty name".into());
            }
            if config.fields[..i].contains(field) {
                return Err(format!("`fields` names `{field}` twice"));
            }
        }
        if config.max_bytes.as_u64() == 0 {
            return Err("`max_bytes` must be greater than 0".into());
        }
        Ok(Arc::new(RequireJsonField {
            fields: config.fields,
            max_bytes: config.max_bytes.as_u64(),
        }))
    }
}

/// A built `require-json-field` plugin.
#[derive(Debug)]
struct RequireJsonField {
    fields: Vec<String>,
    max_bytes: u64,
}

fn bad_request(code: &'static str, message: String) -> PluginError {
    PluginError::new(StatusCode::BAD_REQUEST, code, message)
}

impl RequireJsonField {
    /// `Ok` when `body` is a JSON object with every field; the refusal otherwise.
    fn check(&self, body: &[u8]) -> Result<(), PluginError> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            bad_request("invalid_json", format!("the request body is not JSON: {e}"))
        })?;
        let Some(object) = value.as_object() else {
            return Err(bad_request(
                "invalid_json",
                format!(
                    "the request body must be a JSON object with {}",
                    self.listed()
                ),
            ));
        };
        let missing: Vec<String> = self
            .fields
            .iter()
            .filter(|f| {
                object
                    .get(f.as_str())
                    .is_none_or(serde_json::Value::is_null)
            })
            .map(|f| format!("`{f}`"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(bad_request(
            "missing_field",
            format!("the JSON body lacks {}", missing.join(", ")),
        ))
    }

    fn listed(&self) -> String {
        let names: Vec<String> = self.fields.iter().map(|f| format!("`{f}`")).collect();
        names.join(", ")
    }
}

#[async_trait]
impl Plugin for RequireJsonField {
    fn name(&self) -> &'static str {
        RequireJsonFieldPlugin::NAME
    }

    fn body_access(&self) -> BodyAccess {
        BodyAccess::Buffer {
            max_bytes: self.max_bytes,
        }
    }

    async fn on_request_body_buffered(
        &self,
        req: &mut RequestHeader,
        body: &mut Bytes,
        _ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        let carries_document = matches!(req.method, Method::POST | Method::PUT | Method::PATCH);
        if body.is_empty() && !carries_document {
            return Ok(Flow::Continue);
        }
        self.check(body)?;
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests;
