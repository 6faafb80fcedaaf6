//! The registry of built-in plugins. Each plugin registers itself from its own folder: build.rs
//! lists every `plugins/NAME/` whose Cargo.toml names its factory (`[package.metadata.tollgate]
//! plugin = "..."`) and that the gateway depends on. Third-party plugins are registered by a
//! binary that embeds tollgate: `builtin_registry()` then `register::<TheirPlugin>()`.

use tollgate_plugin_api::PluginRegistry;

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// A registry holding every built-in plugin.
pub fn builtin_registry() -> PluginRegistry {
    let mut registry = PluginRegistry::new();
    register_builtins(&mut registry);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plugin_folder_registers_one_plugin_of_its_own_name() {
        let registry = builtin_registry();
        // Two plugins of one name would leave one registered: the later replaces the earlier.
        assert_eq!(
            registry.names().count(),
            BUILTIN_FOLDERS.len(),
            "registered {:?} from {BUILTIN_FOLDERS:?}",
            registry.names().collect::<Vec<_>>()
        );
        for name in [
            "request-id",
            "headers",
            "cors",
            "ip-restriction",
            "body-limit",
            "jwt-auth",
            "key-auth",
            "rate-limit",
        ] {
            assert!(registry.get(name).is_some(), "`{name}` is not registered");
        }
    }

    #[test]
    fn every_folder_that_declares_a_plugin_is_in_the_list() {
        let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
        let mut declared: Vec<String> = std::fs::read_dir(&plugins)
            .expect("plugins/")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let manifest = std::fs::read_to_string(plugins.join(&name).join("Cargo.toml"));
                manifest
                    .ok()?
                    .contains("[package.metadata.tollgate]")
                    .then(|| format!("plugins/{name}"))
            })
            .collect();
        declared.sort();
        assert_eq!(declared, BUILTIN_FOLDERS);
    }
}
