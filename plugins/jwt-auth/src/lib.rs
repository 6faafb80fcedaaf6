//! SKELETON: the `jwt-auth` plugin is being written; building it fails on purpose.

use std::sync::Arc;

use serde::Deserialize;
use tollgate_plugin_api::{BuildContext, Plugin, PluginFactory};

/// Configuration (placeholder).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// Factory of the `jwt-auth` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct JwtAuthPlugin;

impl PluginFactory for JwtAuthPlugin {
    const NAME: &'static str = "jwt-auth";
    const PRIORITY: i32 = 8000;
    type Config = Config;

    fn build(_config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        Err("the jwt-auth plugin is not available yet".to_string())
    }
}
