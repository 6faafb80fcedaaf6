//! The admin `/config` view of a loaded file: the file's shape (TOML as JSON), built from the
//! typed sections rather than from the text, so every value that can hold a credential is shown
//! redacted because of its type (`Secret`, `SecretUrl`), never because of its key's name.
//!
//! Core sections are serialized from the file-format structs; each plugin table is read into
//! its plugin's typed config and serialized back by the registry. Keys the file did not write
//! (serde defaults) are left out, so the view reads like the file.

use serde_json::{Map, Value};
use tollgate_plugin_api::PluginRegistry;
use toml::de::{DeTable, DeValue};

use super::file::FileConfig;

/// Shown in place of a table that cannot be rendered (only for a config that failed to load).
const NOT_SHOWN: &str = "<not shown: the table did not load>";

/// The view of `file`, whose parsed text is `root`.
pub(super) fn render(file: &FileConfig, root: &DeTable<'_>, registry: &PluginRegistry) -> Value {
    let mut view = serde_json::to_value(file).unwrap_or_else(|_| Value::String(NOT_SHOWN.into()));
    if let Value::Object(sections) = &mut view {
        if let Some(plugins) = table(root.get("plugins").map(|v| v.get_ref())) {
            sections.insert("plugins".into(), render_plugins(plugins, registry));
        }
        let routes = table(root.get("routes").map(|v| v.get_ref()));
        let shown_routes = sections.get_mut("routes").and_then(Value::as_object_mut);
        if let (Some(routes), Some(shown_routes)) = (routes, shown_routes) {
            for (name, route) in routes.iter() {
                let plugins = table(
                    route
                        .get_ref()
                        .as_table()
                        .and_then(|r| r.get("plugins"))
                        .map(|v| v.get_ref()),
                );
                let shown = shown_routes
                    .get_mut(name.get_ref().as_ref())
                    .and_then(Value::as_object_mut);
                if let (Some(plugins), Some(shown)) = (plugins, shown) {
                    shown.insert("plugins".into(), render_plugins(plugins, registry));
                }
            }
        }
    }
    keep_written(&mut view, &DeValue::Table(root.clone()));
    view
}

fn table<'a, 'i>(v: Option<&'a DeValue<'i>>) -> Option<&'a DeTable<'i>> {
    v.and_then(DeValue::as_table)
}

/// `{name: config}` of a `plugins` table, each config as its plugin shows it.
fn render_plugins(plugins: &DeTable<'_>, registry: &PluginRegistry) -> Value {
    let mut out = Map::new();
    for (name, value) in plugins.iter() {
        let shown = registry
            .render(name.get_ref(), value.clone())
            .unwrap_or_else(|_| Value::String(NOT_SHOWN.into()));
        out.insert(name.get_ref().to_string(), shown);
    }
    Value::Object(out)
}

/// Drops what the file did not write from `shown`: keys of tables that are absent from the same
/// table of `written`, and nulls (unset options). Where the two differ in shape (a value written
/// in a short form and shown in the long one, e.g. a Redis URL shown as its table), the shown
/// value is kept whole.
fn keep_written(shown: &mut Value, written: &DeValue<'_>) {
    match (shown, written) {
        (Value::Object(fields), DeValue::Table(source)) => {
            fields.retain(|k, v| !v.is_null() && source.get(k.as_str()).is_some());
            for (k, v) in fields.iter_mut() {
                if let Some(w) = source.get(k.as_str()) {
                    keep_written(v, w.get_ref());
                }
            }
        }
        (Value::Array(items), DeValue::Array(source)) if items.len() == source.len() => {
            for (v, w) in items.iter_mut().zip(source.iter()) {
                keep_written(v, w.get_ref());
            }
        }
        (Value::Object(fields), _) => drop_nulls(fields),
        (Value::Array(items), _) => {
            for v in items {
                if let Value::Object(fields) = v {
                    drop_nulls(fields);
                }
            }
        }
        _ => {}
    }
}

fn drop_nulls(fields: &mut Map<String, Value>) {
    fields.retain(|_, v| !v.is_null());
    for v in fields.values_mut() {
        if let Value::Object(inner) = v {
            drop_nulls(inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    fn view(src: &str) -> serde_json::Value {
        let registry = crate::plugins::builtin_registry();
        let config = super::super::load_str(Path::new("/tmp/gateway.toml"), src, &registry)
            .unwrap_or_else(|e| panic!("{e}"));
        (*config.config.view).clone()
    }

    const BASE: &str = "[[listeners]]\naddress = \"127.0.0.1:1\"\n\
                        [upstreams.u]\ntargets = [\"127.0.0.1:2\", { address = \"127.0.0.1:3\", weight = 2 }]\n";

    #[test]
    fn the_view_is_the_file_as_written() {
        let v = view(&format!(
            "{BASE}[server]\nthreads = 2\n\
             [upstreams.u.retry]\nstatuses = [503, \"500-502\"]\nper_try_timeout = \"1500ms\"\n\
             [routes.r]\nprefix = \"/api\"\nupstream = \"u\"\nheaders = {{ x-env = \"prod\", x-any = true }}\n"
        ));
        assert_eq!(
            v,
            json!({
                "server": {"threads": 2},
                "listeners": [{"address": "127.0.0.1:1"}],
                "upstreams": {"u": {
                    "targets": ["127.0.0.1:2", {"address": "127.0.0.1:3", "weight": 2}],
                    "retry": {"statuses": [503, "500-502"], "per_try_timeout": "1s 500ms"},
                }},
                "routes": {"r": {"prefix": "/api", "upstream": "u",
                                 "headers": {"x-env": "prod", "x-any": true}}},
            })
        );
    }

    #[test]
    fn plugins_are_shown_through_their_typed_config() {
        let v = view(&format!(
            "{BASE}[plugins.headers]\nrequest = {{ set = {{ authorization = \"Bearer t0ken\" }} }}\n\
             [routes.r]\nprefix = \"/\"\nupstream = \"u\"\n\
             [routes.r.plugins.rate-limit]\nlimits = [{{ rate = \"10/s\" }}]\n\
             backend = {{ redis = \"redis://app:pw@127.0.0.1:6379/0\" }}\n"
        ));
        assert_eq!(
            v["plugins"],
            json!({"headers": {"request": {"set": {"authorization": "<redacted>"}}}})
        );
        let redis = &v["routes"]["r"]["plugins"]["rate-limit"]["backend"]["redis"];
        // Written as a URL, shown as the table it stands for (defaults included).
        assert_eq!(redis["url"], "redis://app:<redacted>@127.0.0.1:6379/0");
        assert_eq!(redis["timeout"], "100ms");
        assert_eq!(
            v["routes"]["r"]["plugins"]["rate-limit"]["limits"],
            json!([{"rate": "10/s"}])
        );
    }

    #[test]
    fn brokers_are_shown_without_their_credentials() {
        let v = view(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n\
             [brokers.k]\nkind = \"kafka\"\nbootstrap = [\"kafka-1:9092\"]\n\
             sasl = { mechanism = \"PLAIN\", username = \"gw\", password = \"kafka-pa55\" }\n\
             [brokers.q]\nkind = \"amqp\"\nurl = \"amqps://gw:amqp-pa55@rabbit:5671/orders\"\n\
             [brokers.n]\nkind = \"nats\"\nservers = [\"nats://gw:url-pa55@nats:4222\"]\n\
             [brokers.t]\nkind = \"nats\"\nservers = [\"nats://nats:4222\"]\ntoken = \"nats-t0ken\"\n\
             [brokers.u]\nkind = \"nats\"\nservers = [\"nats://nats:4222\"]\nuser = \"gw\"\npassword = \"nats-pa55\"\n\
             [routes.r]\nexact = \"/orders\"\n[routes.r.publish]\nbroker = \"k\"\ntopic = \"orders\"\n",
        );
        let shown = v.to_string();
        for secret in [
            "kafka-pa55",
            "amqp-pa55",
            "url-pa55",
            "nats-t0ken",
            "nats-pa55",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(
            v["brokers"],
            json!({
                "k": {"kind": "kafka", "bootstrap": ["kafka-1:9092"],
                      "sasl": {"mechanism": "PLAIN", "username": "gw", "password": "<redacted>"}},
                "q": {"kind": "amqp", "url": "amqps://gw:<redacted>@rabbit:5671/orders"},
                "n": {"kind": "nats", "servers": ["nats://gw:<redacted>@nats:4222"]},
                "t": {"kind": "nats", "servers": ["nats://nats:4222"], "token": "<redacted>"},
                "u": {"kind": "nats", "servers": ["nats://nats:4222"], "user": "gw",
                      "password": "<redacted>"},
            })
        );
        assert_eq!(
            v["routes"]["r"],
            json!({"exact": "/orders", "publish": {"broker": "k", "topic": "orders"}})
        );
    }
}
