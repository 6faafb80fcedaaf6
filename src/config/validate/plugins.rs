//! `[plugins]` and `[routes.NAME.plugins]`: each table is handed to the plugin registry, which
//! builds the plugin from its typed config (so a plugin's own errors point into its table), and
//! each route's chain is composed: the global plugins it does not replace or disable, and its
//! own, by priority.

use std::collections::HashSet;
use std::sync::Arc;

use tollgate_plugin_api::BuildContext;
use toml::de::{DeTable, DeValue};

use super::super::built::{sort_chain, PluginEntry};
use super::super::file;
use super::Validator;

impl Validator<'_, '_> {
    /// The global plugins, in execution order.
    pub(super) fn global_plugins(&mut self) -> Vec<PluginEntry> {
        let table = self.root.get("plugins").map(|v| v.get_ref());
        let mut globals = self.build_plugins(table, true);
        sort_chain(&mut globals);
        globals
    }

    /// The chain of route `route`: its own plugins, and the global ones it neither configures
    /// itself nor disables, in execution order.
    pub(super) fn route_plugins(
        &mut self,
        route: &str,
        r: &file::RouteSection,
        route_tables: Option<&DeTable<'_>>,
        globals: &[PluginEntry],
    ) -> Vec<PluginEntry> {
        let table = route_tables
            .and_then(|t| t.get(route))
            .and_then(|r| r.get_ref().get("plugins"))
            .map(|v| v.get_ref());
        let own = self.build_plugins(table, false);
        let mut disabled = HashSet::new();
        for d in &r.disable_plugins {
            if !globals.iter().any(|g| *g.name == **d.get_ref()) {
                self.c.at(
                    d.span(),
                    format!(
                        "route `{route}`: cannot disable `{}`: it is not a global plugin",
                        d.get_ref()
                    ),
                );
            }
            disabled.insert(d.get_ref().as_str());
        }
        let mut chain: Vec<PluginEntry> = globals
            .iter()
            .filter(|g| !disabled.contains(&*g.name) && !own.iter().any(|o| o.name == g.name))
            .cloned()
            .collect();
        chain.extend(own);
        sort_chain(&mut chain);
        chain
    }

    /// Builds every plugin of one `plugins` table, reporting each one that fails.
    fn build_plugins(&mut self, table: Option<&DeValue<'_>>, global: bool) -> Vec<PluginEntry> {
        // A `plugins` value that is not a table was reported when the section was read.
        let Some(table) = table.and_then(DeValue::as_table) else {
            return Vec::new();
        };
        let ctx = BuildContext {
            base_dir: self.base_dir.to_path_buf(),
        };
        let mut out = Vec::new();
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            match self.registry.build(name, value.clone(), &ctx) {
                Ok((plugin, priority)) => out.push(PluginEntry {
                    name: Arc::from(name),
                    priority,
                    global,
                    plugin,
                }),
                Err(e) => {
                    let span = e.span.unwrap_or_else(|| key.span());
                    self.c.at(span, e.message);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, valid, UPSTREAM};

    /// `UPSTREAM` and a route `a` on `/`, then `more`, whose first line is line 6.
    fn with_route(more: &str) -> String {
        format!("{UPSTREAM}[routes.a]\nprefix = \"/\"\nupstream = \"u\"\n{more}")
    }

    #[test]
    fn unknown_plugin_names_are_reported_at_the_plugin_key() {
        // The list is the registry's, in name order: a new plugin adds to it, nothing here.
        let known = crate::plugins::builtin_registry()
            .names()
            .collect::<Vec<_>>()
            .join(", ");
        assert!(known.contains("rate-limit, request-id"), "{known}");
        assert_eq!(
            errors(&with_route(
                "[routes.a.plugins.rate-limiter]\nrps = 10\n[plugins.nope]\nx = 1\n"
            )),
            [
                format!(
                    "gateway.toml:6:19: unknown plugin `rate-limiter` (known plugins: {known})"
                ),
                format!("gateway.toml:8:10: unknown plugin `nope` (known plugins: {known})"),
            ]
        );
    }

    #[test]
    fn a_plugins_own_errors_point_into_its_table() {
        assert_eq!(
            errors(&with_route(
                "[routes.a.plugins.cors]\nalow_origins = [\"https://app.example.com\"]\n"
            )),
            ["gateway.toml:7:1: plugin `cors`: unknown field `alow_origins`, expected one of `allow_origins`, `allow_methods`, `allow_headers`, `expose_headers`, `allow_credentials`, `max_age_secs`"]
        );
        // The factory validates the whole config; its errors carry the table's position.
        assert_eq!(
            errors(&with_route(
                "[routes.a.plugins.ip-restriction]\nallow = [\"10.0.0.0/8\", \"300.1.2.3\"]\n"
            )),
            ["gateway.toml:6:1: plugin `ip-restriction`: allow: `300.1.2.3` is not an IP address or CIDR block (write e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\")"]
        );
        assert_eq!(
            errors(&with_route("plugins.body-limit.max_bytes = \"lots\"\n")),
            ["gateway.toml:6:32: plugin `body-limit`: invalid size `lots`: write a whole number of bytes or a whole number with a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. \"10MB\" or \"512KiB\""]
        );
    }

    #[test]
    fn route_plugins_that_are_not_a_table_are_reported() {
        assert_eq!(
            errors(&with_route("plugins = \"cors\"\n")),
            ["gateway.toml:6:11: invalid type: string \"cors\", expected a map"]
        );
    }

    #[test]
    fn disabling_a_plugin_that_is_not_global_is_reported() {
        assert_eq!(
            errors(&with_route("disable_plugins = [\"cors\"]\n")),
            ["gateway.toml:6:20: route `a`: cannot disable `cors`: it is not a global plugin"]
        );
    }

    #[test]
    fn a_routes_chain_merges_the_globals_it_keeps_by_priority() {
        let built = valid(&format!(
            "[plugins.request-id]\n[plugins.cors]\nallow_origins = [\"*\"]\n[plugins.headers]\n\
             {UPSTREAM}\
             [routes.a]\nprefix = \"/a\"\nupstream = \"u\"\ndisable_plugins = [\"headers\"]\n\
             [routes.a.plugins.cors]\nallow_origins = [\"https://a.example\"]\n\
             [routes.a.plugins.body-limit]\nmax_bytes = 10\n\
             [routes.b]\nprefix = \"/b\"\nupstream = \"u\"\n"
        ));
        let chain = |entries: &[super::PluginEntry]| -> Vec<(String, i32, bool)> {
            entries
                .iter()
                .map(|p| (p.name.to_string(), p.priority, p.global))
                .collect()
        };
        let own = |name: &str, priority| (name.to_string(), priority, false);
        let global = |name: &str, priority| (name.to_string(), priority, true);
        assert_eq!(
            chain(&built.instances.global_plugins),
            [
                global("request-id", 10000),
                global("cors", 9000),
                global("headers", 1000)
            ]
        );
        assert_eq!(
            chain(&built.instances.routes[0].plugins),
            [
                global("request-id", 10000),
                own("cors", 9000),
                own("body-limit", 5000)
            ]
        );
        assert_eq!(
            chain(&built.instances.routes[1].plugins),
            chain(&built.instances.global_plugins)
        );
    }
}
