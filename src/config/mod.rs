//! Loading gateway.toml: parse (with spans), validate, resolve references, build plugins and
//! transcoders, compile the route table. Everything that can be wrong with a config is found
//! here, reported as `FILE:LINE:COL: message`, before anything starts serving.
//!
//! Rooms: `file.rs` is the file format as serde reads it; `validate/` turns it into the model,
//! one room per section; `model/` is the model, plain data; `built.rs` is what loading hands
//! over (the model and the instances validation built); `error.rs` the errors and their
//! positions; `view.rs` the admin `/config` view; `effective.rs` that view with the defaults
//! filled in (`tollgate check --print`); `restart_only.rs` which keys a reload applies.

mod built;
mod effective;
mod error;
mod file;
pub mod model;
mod restart_only;
mod schema;
mod spanned;
mod tls;
mod validate;
mod values;
mod view;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tollgate_plugin_api::PluginRegistry;
use toml::de::DeTable;

pub use built::{Built, Instances, PluginEntry, RouteInstances};
pub use error::{ConfigError, ConfigErrors, Escaped};
pub use model::*;
pub use restart_only::ProcessSettings;
pub use schema::{schema, schema_text};
pub use tls::crypto_provider;

use error::Collector;
use file::FileConfig;
use validate::Validator;

/// The log filter of a `[log] level` (or `RUST_LOG`) directive. Field values in `{name=value}`
/// filters match literally: as regexes, tracing-subscriber compiles them into a DFA that takes
/// exponential time for some patterns (found by fuzz/config_load), so a level could hang a
/// start, a reload or `tollgate check`.
pub fn log_filter(
    level: &str,
) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(level)
}

/// The effective config `config` runs on, as TOML (`tollgate check --print`): the file as
/// written with every default filled in and every secret shown as `<redacted>`.
pub fn effective_text(config: &GatewayConfig, registry: &PluginRegistry) -> String {
    let filled = effective::fill_defaults(&config.view, &schema(registry));
    let body = effective::to_toml(&filled).unwrap_or_default();
    format!(
        "# The effective config of {}: the file with every default filled in; secrets are \
         shown as <redacted>.\n{body}",
        config.source.display()
    )
}

/// Default admin address when `[admin]` is absent.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// Reads and validates a config file.
pub fn load(path: &Path, registry: &PluginRegistry) -> Result<Built, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    load_str(path, &src, registry)
}

/// Validates config text as if it were read from `path` (relative paths resolve against its
/// directory).
pub fn load_str(path: &Path, src: &str, registry: &PluginRegistry) -> Result<Built, ConfigErrors> {
    let mut c = Collector::new(path, src);
    let root = match DeTable::parse(src) {
        Ok(root) => root,
        Err(e) => {
            c.at(e.span().unwrap_or(0..0), e.message().trim_end().to_string());
            return Err(c.finish().err().unwrap_or(ConfigErrors(Vec::new())));
        }
    };
    if !validate::section_errors(root.get_ref(), &mut c) {
        return Err(c.finish().err().unwrap_or(ConfigErrors(Vec::new())));
    }
    let parsed = FileConfig::deserialize(toml::de::Deserializer::from(root.clone()));
    let file = match parsed {
        Ok(f) => f,
        Err(e) => {
            c.at(e.span().unwrap_or(0..0), e.message().trim_end().to_string());
            return Err(c.finish().err().unwrap_or(ConfigErrors(Vec::new())));
        }
    };
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let built = Validator {
        c: &mut c,
        base_dir: &base_dir,
        registry,
        root: root.get_ref(),
    }
    .validate(file, path);
    c.finish()?;
    built.ok_or_else(|| ConfigErrors(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fuzz/config_load found a field filter whose value, compiled as a regex, took minutes;
    /// matched literally, it is read at once.
    #[test]
    fn log_levels_with_field_filters_are_read_literally_and_at_once() {
        let level = format!("app[span{{field=a{}b}}]=debug", ".".repeat(90));
        assert!(log_filter(&level).is_ok());
        assert!(log_filter("info,tollgate=debug").is_ok());
        assert!(log_filter("info,[{").is_err());
    }
}
