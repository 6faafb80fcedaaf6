//! Typed plugin configuration and the explicit registry of plugin factories.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

use crate::Plugin;

/// Builds one kind of plugin from its typed config.
///
/// `Config` should derive `Deserialize` with `#[serde(deny_unknown_fields)]` so that a typo in
/// gateway.toml is an error with its line and column, never a silent default. Its `Serialize` is
/// how the admin `/config` view shows the plugin: every field that can hold a credential must be
/// a [`Secret`](crate::Secret) or [`SecretUrl`](crate::SecretUrl), which serialize redacted.
pub trait PluginFactory: Send + Sync + 'static {
    /// The name used in gateway.toml (`[routes.x.plugins.NAME]`).
    const NAME: &'static str;
    /// Plugins of a request run in descending priority; ties run in name order.
    const PRIORITY: i32;
    /// The plugin's config, deserialized from its TOML table and serialized (redacted) for display.
    type Config: DeserializeOwned + Serialize;

    /// Validates the config and builds the plugin. The message of an error is shown to the user
    /// with the position of the plugin's table.
    fn build(config: Self::Config, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String>;

    /// The JSON Schema of the plugin's table, for `tollgate schema` (editor completion and
    /// checks). The default accepts any table: a plugin whose config derives
    /// [`JsonSchema`](schemars::JsonSchema) returns `generator.subschema_for::<Self::Config>()`,
    /// so its schema cannot drift from what it deserializes.
    fn config_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let _ = generator;
        schemars::json_schema!({ "type": "object" })
    }
}

/// What a factory may need from the surroundings when it builds a plugin.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    /// Directory of the config file; relative paths in plugin configs are resolved against it.
    pub base_dir: PathBuf,
}

impl BuildContext {
    /// Resolves a path from a plugin config against the config file's directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Why a plugin could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildErrorKind {
    /// No plugin of that name is registered.
    Unknown,
    /// The config table did not deserialize (unknown key, wrong type, ...).
    Config,
    /// The factory rejected the config.
    Invalid,
}

/// A plugin build error; `span` is a byte range of the config file when known.
#[derive(Debug, Clone)]
pub struct BuildError {
    /// What kind of failure this is.
    pub kind: BuildErrorKind,
    /// The message for the user.
    pub message: String,
    /// Byte range in the config file.
    pub span: Option<Range<usize>>,
}

type BuildFn =
    for<'i> fn(Spanned<DeValue<'i>>, &BuildContext) -> Result<Arc<dyn Plugin>, BuildError>;
type RenderFn = for<'i> fn(Spanned<DeValue<'i>>) -> Result<serde_json::Value, BuildError>;
type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// A registered plugin kind.
#[derive(Clone)]
pub struct PluginSpec {
    /// The registered name.
    pub name: &'static str,
    /// Execution priority (higher runs first).
    pub priority: i32,
    build: BuildFn,
    render: RenderFn,
    schema: SchemaFn,
}

impl std::fmt::Debug for PluginSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSpec")
            .field("name", &self.name)
            .field("priority", &self.priority)
            .finish()
    }
}

fn typed_config<F: PluginFactory>(value: Spanned<DeValue<'_>>) -> Result<F::Config, BuildError> {
    let span = value.span();
    F::Config::deserialize(ValueDeserializer::from(value)).map_err(|e| BuildError {
        kind: BuildErrorKind::Config,
        message: format!("plugin `{}`: {}", F::NAME, e.message()),
        span: e.span().or(Some(span)),
    })
}

fn build_typed<F: PluginFactory>(
    value: Spanned<DeValue<'_>>,
    ctx: &BuildContext,
) -> Result<Arc<dyn Plugin>, BuildError> {
    let span = value.span();
    let config = typed_config::<F>(value)?;
    F::build(config, ctx).map_err(|message| BuildError {
        kind: BuildErrorKind::Invalid,
        message: format!("plugin `{}`: {message}", F::NAME),
        span: Some(span),
    })
}

/// The config as the plugin reads it, defaults filled in and secrets redacted: read through the
/// typed config rather than guessed from key names, so a field is redacted because of its type.
fn render_typed<F: PluginFactory>(
    value: Spanned<DeValue<'_>>,
) -> Result<serde_json::Value, BuildError> {
    let span = value.span();
    let config = typed_config::<F>(value)?;
    serde_json::to_value(&config).map_err(|e| BuildError {
        kind: BuildErrorKind::Invalid,
        message: format!("plugin `{}`: the config cannot be shown: {e}", F::NAME),
        span: Some(span),
    })
}

use serde::Deserialize as _;

/// The one registry of plugin kinds. Built-ins and third-party plugins are registered the same
/// way, explicitly, before the config is loaded.
#[derive(Debug, Clone, Default)]
pub struct PluginRegistry {
    specs: BTreeMap<&'static str, PluginSpec>,
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a plugin kind; a later registration under the same name replaces the earlier.
    pub fn register<F: PluginFactory>(&mut self) -> &mut Self {
        self.specs.insert(
            F::NAME,
            PluginSpec {
                name: F::NAME,
                priority: F::PRIORITY,
                build: build_typed::<F>,
                render: render_typed::<F>,
                schema: F::config_schema,
            },
        );
        self
    }

    /// The registered kind of that name.
    pub fn get(&self, name: &str) -> Option<&PluginSpec> {
        self.specs.get(name)
    }

    /// The JSON Schema of every registered kind's table, by name; definitions they share are
    /// added to `generator`.
    pub fn config_schemas(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> BTreeMap<&'static str, schemars::Schema> {
        self.specs
            .values()
            .map(|spec| (spec.name, (spec.schema)(generator)))
            .collect()
    }

    /// Names of all registered kinds, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.specs.keys().copied()
    }

    /// Builds a plugin of kind `name` from its config value (which keeps its file spans).
    pub fn build(
        &self,
        name: &str,
        value: Spanned<DeValue<'_>>,
        ctx: &BuildContext,
    ) -> Result<(Arc<dyn Plugin>, i32), BuildError> {
        let Some(spec) = self.specs.get(name) else {
            let known: Vec<_> = self.names().collect();
            return Err(BuildError {
                kind: BuildErrorKind::Unknown,
                message: format!(
                    "unknown plugin `{name}` (known plugins: {})",
                    known.join(", ")
                ),
                span: None,
            });
        };
        (spec.build)(value, ctx).map(|p| (p, spec.priority))
    }

    /// The config of a plugin of kind `name` as it may be shown (admin `/config`): deserialized
    /// into the plugin's typed config, defaults applied, and serialized back with every
    /// [`Secret`](crate::Secret) redacted.
    pub fn render(
        &self,
        name: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Result<serde_json::Value, BuildError> {
        let Some(spec) = self.specs.get(name) else {
            return Err(BuildError {
                kind: BuildErrorKind::Unknown,
                message: format!("unknown plugin `{name}`"),
                span: None,
            });
        };
        (spec.render)(value)
    }
}
