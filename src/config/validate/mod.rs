//! Validation: the file format, read with spans, becomes the model. Every mistake is recorded in
//! the collector with the position of the value it is about, and validation goes on, so one run
//! reports all of them.
//!
//! One room per part of the file, each with its tests (through `load_str`, asserting the exact
//! `FILE:LINE:COL: message`): `server.rs` (`[server]`, client limits), `listeners.rs`
//! (`[[listeners]]`, `[admin]`), `upstreams.rs` (`[upstreams.NAME]`, targets, balancing, TLS),
//! `discovery.rs`, `health.rs` (active checks, outlier detection), `retry.rs` (retries, circuit
//! breaker), `brokers.rs` (`[brokers.NAME]`), `routes.rs` (`[routes.NAME]`, the route table),
//! `publish.rs` (`[routes.NAME.publish]`) and `subscribe.rs` (`[routes.NAME.subscribe]`) with
//! `template.rs` (their destination templates),
//! `request_reply.rs` (`[routes.NAME.request_reply]`, sharing publish's destinations),
//! `plugins.rs` (building plugins, chains), `logs.rs` (`[log]`, `[access_log]`), `tracing.rs` (`[tracing]`). This file holds
//! what they share and the order they run in.

mod brokers;
mod discovery;
mod health;
mod listeners;
mod logs;
mod plugins;
mod publish;
mod request_reply;
mod retry;
mod routes;
mod server;
mod subscribe;
mod template;
#[cfg(test)]
mod testing;
mod tracing;
mod upstreams;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::spanned::Spanned;
use serde::de::DeserializeOwned;
use tollgate_plugin_api::PluginRegistry;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::built::{Built, Instances};
use super::error::Collector;
use super::file::{self, FileConfig};
use super::model::GatewayConfig;
use super::values;

/// Deserializes every top-level section (and every entry of the listener, upstream and route
/// collections) separately, recording each failure. Returns whether all of them were well
/// formed. serde stops at the first error, so without this a file with mistakes in several
/// places would get only the first one reported.
pub(super) fn section_errors(root: &DeTable<'_>, c: &mut Collector<'_>) -> bool {
    fn one<T: DeserializeOwned>(value: &toml::Spanned<DeValue<'_>>, c: &mut Collector<'_>) -> bool {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(_) => true,
            Err(e) => {
                let span = e.span().unwrap_or_else(|| value.span());
                c.at(span, e.message().trim_end().to_string());
                false
            }
        }
    }
    fn each<T: DeserializeOwned>(
        value: &toml::Spanned<DeValue<'_>>,
        c: &mut Collector<'_>,
    ) -> bool {
        let mut ok = true;
        match value.get_ref() {
            DeValue::Array(items) => {
                for item in items.iter() {
                    ok &= one::<T>(item, c);
                }
            }
            DeValue::Table(entries) => {
                for (_, item) in entries.iter() {
                    ok &= one::<T>(item, c);
                }
            }
            _ => ok = one::<Vec<T>>(value, c),
        }
        ok
    }

    let mut ok = true;
    for (key, value) in root.iter() {
        ok &= match key.get_ref().as_ref() {
            "server" => one::<file::ServerSection>(value, c),
            "log" => one::<file::LogSection>(value, c),
            "admin" => one::<file::AdminSection>(value, c),
            "listeners" => each::<file::ListenerSection>(value, c),
            "upstreams" => each::<file::UpstreamSection>(value, c),
            "brokers" => each::<file::BrokerSection>(value, c),
            "routes" => each::<file::RouteSection>(value, c),
            // Plugin tables are read by the registry, with their own errors.
            "access_log" => one::<file::AccessLogSection>(value, c),
            "tracing" => one::<crate::telemetry::trace::TracingSection>(value, c),
            "plugins" => true,
            other => {
                c.at(
                    key.span(),
                    format!(
                        "unknown field `{other}`, expected one of `server`, `log`, `listeners`, \
                         `admin`, `upstreams`, `brokers`, `routes`, `plugins`, `access_log`, \
                         `tracing`"
                    ),
                );
                false
            }
        };
    }
    ok
}

/// Turns a well-formed file into the model, recording every mistake in `c`.
pub(super) struct Validator<'a, 'c> {
    /// Where mistakes go.
    pub(super) c: &'a mut Collector<'c>,
    /// The config file's folder: relative paths in the file resolve against it.
    pub(super) base_dir: &'a Path,
    /// Builds the plugins the file names.
    pub(super) registry: &'a PluginRegistry,
    /// The file's tables with spans, for what is read again with positions (plugin tables).
    pub(super) root: &'a DeTable<'a>,
}

/// Shortest interval of health checks and discovery refreshes.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl Validator<'_, '_> {
    /// The model and the instances built on the way, or `None` when something is wrong (and
    /// recorded).
    pub(super) fn validate(mut self, file: FileConfig, path: &Path) -> Option<Built> {
        let access_log = self.access_log(file.access_log.as_ref());
        let tracing = self.tracing(file.tracing.as_ref());
        let server = self.server(&file.server);
        let log = self.log(&file.log);
        let listeners = self.listeners(&file.listeners, server.client);
        let admin = self.admin(file.admin.as_ref(), &listeners);
        let (upstreams, upstream_index) = self.upstreams(&file.upstreams);
        let (brokers, broker_index) = self.brokers(&file.brokers);
        let global_plugins = self.global_plugins();
        let routes = self.routes(
            &file.routes,
            routes::Targets {
                upstreams: &upstreams,
                upstream_index: &upstream_index,
                brokers: &brokers,
                broker_index: &broker_index,
            },
            &global_plugins,
        );
        let table = self.route_table(&file.routes, routes.iter().map(|r| r.spec.clone()));
        let (routes, route_instances) = routes.into_iter().map(|r| (r.route, r.instances)).unzip();
        Some(Built {
            config: GatewayConfig {
                source: path.to_path_buf(),
                server,
                log,
                listeners,
                admin,
                upstreams,
                brokers,
                routes,
                table: Arc::new(table?),
                access_log,
                tracing,
                view: Arc::new(super::view::render(&file, self.root, self.registry)),
            },
            instances: Instances {
                global_plugins,
                routes: route_instances,
            },
        })
    }

    /// The path of a file the config names, which must exist.
    fn existing_file(&mut self, p: &Spanned<String>, what: &str) -> Option<PathBuf> {
        let path = self.resolve(p.get_ref());
        if path.is_file() {
            Some(path)
        } else {
            let problem = if path.is_dir() {
                "is a directory (name a file)"
            } else {
                "does not exist"
            };
            self.c.at(
                p.span(),
                format!("{what} file `{}` {problem}", path.display()),
            );
            None
        }
    }

    /// A path as written, resolved against the config file's folder.
    fn resolve(&self, p: &str) -> PathBuf {
        let path = PathBuf::from(p);
        if path.is_absolute() {
            path
        } else {
            self.base_dir.join(path)
        }
    }

    /// A duration that must be at least 100 ms (intervals); `default` when absent.
    fn min_duration(
        &mut self,
        d: Option<&Spanned<values::Duration>>,
        default: Duration,
        key: &str,
    ) -> Duration {
        match d {
            Some(d) if d.get_ref().0 < MIN_INTERVAL => {
                self.c.at(
                    d.span(),
                    format!("`{key}` must be at least 100ms (checking more often only adds load)"),
                );
                default
            }
            Some(d) => d.get_ref().0,
            None => default,
        }
    }

    /// A duration that must be longer than zero; `default` when absent. `message` words the
    /// error (each key's has its own wording).
    pub(super) fn nonzero_duration(
        &mut self,
        d: Option<&Spanned<values::Duration>>,
        default: Duration,
        message: impl FnOnce() -> String,
    ) -> Duration {
        match d {
            Some(d) if d.get_ref().0.is_zero() => {
                self.c.at(d.span(), message());
                default
            }
            Some(d) => d.get_ref().0,
            None => default,
        }
    }

    /// A count that must be at least 1; `default` when absent.
    fn positive(&mut self, v: Option<&Spanned<u32>>, default: u32, key: &str) -> u32 {
        match v {
            Some(n) if *n.get_ref() == 0 => {
                self.c.at(n.span(), format!("`{key}` must be at least 1"));
                default
            }
            Some(n) => *n.get_ref(),
            None => default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{errors, valid};

    #[test]
    fn toml_syntax_error_is_reported_at_the_broken_table_header() {
        assert_eq!(
            errors("[log]\nlevel = \"info\"\n[server\nthreads = 2\n"),
            ["gateway.toml:3:8: unclosed table, expected `]`"]
        );
    }

    #[test]
    fn duplicate_key_is_reported_on_the_second_occurrence() {
        assert_eq!(
            errors("[server]\nthreads = 1\nthreads = 2\n"),
            ["gateway.toml:3:1: duplicate key"]
        );
    }

    #[test]
    fn unknown_top_level_key_is_reported_at_the_key() {
        assert_eq!(
            errors("[server]\nthreads = 2\n\n[bogus]\nx = 1\n"),
            ["gateway.toml:4:2: unknown field `bogus`, expected one of `server`, `log`, `listeners`, `admin`, `upstreams`, `brokers`, `routes`, `plugins`, `access_log`, `tracing`"]
        );
    }

    /// Sections are read one by one, so shape errors in several of them are all reported.
    #[test]
    fn shape_errors_in_several_sections_are_all_reported() {
        assert_eq!(
            errors("[server]\nthreads = \"two\"\n[log]\nformat = \"xml\"\n"),
            [
                "gateway.toml:2:11: invalid type: string \"two\", expected usize",
                "gateway.toml:4:10: unknown variant `xml`, expected `text` or `json`",
            ]
        );
    }

    #[test]
    fn mistakes_of_every_section_are_reported_in_file_order() {
        assert_eq!(
            errors(
                "[routes.b]\ntemplate = \"/x/{1}\"\nupstream = \"u\"\n\
                 [upstreams.u]\ntargets = [\"127.0.0.1\"]\n\
                 [server]\ntrusted_proxies = [\"nope\"]\n\
                 [[listeners]]\naddress = \"0.0.0.0\"\n\
                 [routes.a]\nprefix = \"/\"\nupstream = \"missing\"\n"
            ),
            [
                "gateway.toml:2:12: route `b`: template `/x/{1}`: parameter name `1` must match [A-Za-z_][A-Za-z0-9_]*",
                "gateway.toml:5:12: target `127.0.0.1` must be HOST:PORT, e.g. \"127.0.0.1:3000\"",
                "gateway.toml:7:20: invalid CIDR or IP address `nope` (write e.g. \"10.0.0.0/8\" or \"192.168.1.7\")",
                "gateway.toml:9:11: invalid listener address `0.0.0.0`: expected IP:PORT, e.g. \"0.0.0.0:8080\"",
                "gateway.toml:12:12: route `a`: upstream `missing` is not defined",
            ]
        );
    }

    /// What validation built comes next to the model, one entry per route, for the snapshot
    /// to take over.
    #[test]
    fn a_valid_file_hands_over_the_model_and_its_instances() {
        let built = valid(
            "[plugins.request-id]\n[upstreams.u]\ntargets = [\"127.0.0.1:3000\"]\n\
             [routes.r]\nprefix = \"/\"\nupstream = \"u\"\n",
        );
        assert_eq!(built.config.routes.len(), 1);
        assert_eq!(built.instances.routes.len(), built.config.routes.len());
        assert_eq!(built.instances.global_plugins.len(), 1);
        assert!(built.instances.routes[0].transcoder.is_none());
    }
}
