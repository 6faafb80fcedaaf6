//! SKELETON: the `rate-limit` plugin is being written; building it fails on purpose.

use std::sync::Arc;

use serde::Deserialize;
use tollgate_plugin_api::{BuildContext, Plugin, PluginFactory};

/// Configuration (placeholder).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// Factory of the `rate-limit` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimitPlugin;

impl PluginFactory for RateLimitPlugin {
    const NAME: &'static str = "rate-limit";
    const PRIORITY: i32 = 7000;
    type Config = Config;

    fn build(_config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        Err("the rate-limit plugin is not available yet".to_string())
    }
}
