//! SKELETON: the `key-auth` plugin is being written; building it fails on purpose.

use std::sync::Arc;

use serde::Deserialize;
use tollgate_plugin_api::{BuildContext, Plugin, PluginFactory};

/// Configuration (placeholder).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// Factory of the `key-auth` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyAuthPlugin;

impl PluginFactory for KeyAuthPlugin {
    const NAME: &'static str = "key-auth";
    const PRIORITY: i32 = 8100;
    type Config = Config;

    fn build(_config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        Err("the key-auth plugin is not available yet".to_string())
    }
}
