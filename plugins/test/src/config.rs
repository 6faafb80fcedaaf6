//! Plugins built from TOML through a [`PluginRegistry`], the path gateway.toml takes: typed config
//! with its spans, then the factory's `build`.

use std::path::Path;
use std::sync::Arc;

use tollgate_plugin_api::{BuildContext, BuildError, Plugin, PluginFactory, PluginRegistry};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The plugin's table: an inline table (`{ max_bytes = 10 }`) as a value, anything else as a
/// whole document (`max_bytes = 10`, or several lines), as the plugin's table in a file.
fn table(src: &str) -> Spanned<DeValue<'_>> {
    if src.trim_start().starts_with('{') {
        return DeValue::parse(src).unwrap_or_else(|e| panic!("test TOML `{src}`: {e}"));
    }
    let table = DeTable::parse(src).unwrap_or_else(|e| panic!("test TOML `{src}`: {e}"));
    let span = table.span();
    Spanned::new(span, DeValue::Table(table.into_inner()))
}

fn registry<F: PluginFactory>() -> PluginRegistry {
    let mut registry = PluginRegistry::new();
    registry.register::<F>();
    registry
}

/// Builds plugin `F` from its TOML table, relative paths resolved against the working directory.
pub fn build<F: PluginFactory>(src: &str) -> Result<Arc<dyn Plugin>, BuildError> {
    build_in::<F>(Path::new(""), src)
}

/// Builds plugin `F` from its TOML table as if the config file were in `base_dir`.
pub fn build_in<F: PluginFactory>(
    base_dir: &Path,
    src: &str,
) -> Result<Arc<dyn Plugin>, BuildError> {
    let ctx = BuildContext {
        base_dir: base_dir.to_owned(),
    };
    registry::<F>()
        .build(F::NAME, table(src), &ctx)
        .map(|(plugin, _priority)| plugin)
}

/// The error of a config that must be refused; panics when it builds.
pub fn build_err<F: PluginFactory>(src: &str) -> BuildError {
    match build::<F>(src) {
        Ok(_) => panic!("plugin `{}` accepted the config `{src}`", F::NAME),
        Err(e) => e,
    }
}

/// The config as the admin `/config` view shows it (defaults filled in, secrets redacted).
pub fn render<F: PluginFactory>(src: &str) -> Result<serde_json::Value, BuildError> {
    registry::<F>().render(F::NAME, table(src))
}
