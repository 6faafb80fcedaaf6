//! `tollgate check --print`: the config as the gateway runs it. It is the admin `/config` view
//! (the file as written, every secret redacted by its type) with each key the file left out
//! filled in with its default, the defaults being those of the schema (`schema.rs`), which are
//! written beside the file-format fields. Printing, loading the printed text and comparing the
//! two models is how the tests keep those defaults honest (tests/check_config.rs).
//!
//! A few defaults hold only under a condition the schema states in prose (a Kafka-only key, a
//! key read only with `respond_async`); filling those in would make the printed file say
//! something the loader refuses or reads differently, so they are left out where the condition
//! does not hold.

use serde_json::{Map, Value};

/// Top-level sections that apply with every default when absent. Tables below the top are not
/// added: an absent `health_check`, `retry` or `tracing` endpoint means "off", not "defaults".
const IMPLIED_SECTIONS: &[&str] = &["server", "log", "admin", "access_log"];

/// `view` with defaults filled in from `schema`.
pub fn fill_defaults(view: &Value, schema: &Value) -> Value {
    let mut out = view.clone();
    let Some(defs) = schema.get("$defs").and_then(Value::as_object) else {
        return out;
    };
    let kinds = broker_kinds(view);
    let filler = Filler {
        defs,
        kinds: &kinds,
    };
    if let (Value::Object(sections), Some(props)) = (
        &mut out,
        schema.get("properties").and_then(Value::as_object),
    ) {
        for name in IMPLIED_SECTIONS {
            if props.contains_key(*name) {
                sections
                    .entry(name.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
            }
        }
    }
    // `[tracing]` keys the file leaves out come from the `OTEL_*` variables first; a default
    // written in would override them.
    let tracing = out.as_object_mut().and_then(|o| o.remove("tracing"));
    filler.fill(&mut out, schema, Context::default());
    if let (Some(tracing), Value::Object(sections)) = (tracing, &mut out) {
        sections.insert("tracing".into(), tracing);
    }
    out
}

/// The kind of each broker by name, for the defaults of one kind only (on brokers and on the
/// routes that use them).
fn broker_kinds(view: &Value) -> Map<String, Value> {
    view.get("brokers")
        .and_then(Value::as_object)
        .map(|brokers| {
            brokers
                .iter()
                .filter_map(|(name, b)| Some((name.clone(), b.get("kind")?.clone())))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Clone, Copy, Default)]
struct Context {
    /// The broker kind that applies to the table being filled, when known.
    kind: Option<&'static str>,
}

fn known_kind(kind: Option<&Value>) -> Option<&'static str> {
    match kind.and_then(Value::as_str)? {
        "kafka" => Some("kafka"),
        "amqp" => Some("amqp"),
        "nats" => Some("nats"),
        _ => None,
    }
}

struct Filler<'a> {
    defs: &'a Map<String, Value>,
    kinds: &'a Map<String, Value>,
}

impl<'a> Filler<'a> {
    /// The schema `node` stands for, through `$ref`s to `#/$defs/...`.
    fn resolve(&self, mut node: &'a Value) -> &'a Value {
        // A bound, in case of a reference cycle: real schemas are a few levels deep.
        for _ in 0..16 {
            match node
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .and_then(|name| self.defs.get(name))
            {
                Some(target) => node = target,
                None => break,
            }
        }
        node
    }

    /// The object schema among `node`'s choices that describes `value`: the one whose properties
    /// name every key of it.
    fn object_schema(&self, node: &'a Value, value: &Map<String, Value>) -> Option<&'a Value> {
        let node = self.resolve(node);
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            if value.keys().all(|k| props.contains_key(k)) {
                return Some(node);
            }
        }
        if node
            .get("additionalProperties")
            .is_some_and(Value::is_object)
        {
            return Some(node);
        }
        ["anyOf", "oneOf", "allOf"]
            .iter()
            .filter_map(|k| node.get(*k).and_then(Value::as_array))
            .flatten()
            .find_map(|choice| self.object_schema(choice, value))
    }

    fn items_schema(&self, node: &'a Value) -> Option<&'a Value> {
        let node = self.resolve(node);
        node.get("items").or_else(|| {
            ["anyOf", "oneOf"]
                .iter()
                .filter_map(|k| node.get(*k).and_then(Value::as_array))
                .flatten()
                .find_map(|choice| self.items_schema(choice))
        })
    }

    fn fill(&self, value: &mut Value, node: &'a Value, cx: Context) {
        match value {
            Value::Object(fields) => {
                let Some(schema) = self.object_schema(node, fields) else {
                    return;
                };
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    let cx = self.context_of(fields, cx);
                    for (key, prop) in props {
                        if let Some(default) = prop.get("default") {
                            if !fields.contains_key(key) && applies(key, prop, fields, cx) {
                                fields.insert(key.clone(), default.clone());
                            }
                        }
                    }
                    for (key, v) in fields.iter_mut() {
                        if let Some(prop) = props.get(key) {
                            self.fill(v, prop, cx);
                        }
                    }
                } else if let Some(each) = schema.get("additionalProperties") {
                    for v in fields.values_mut() {
                        self.fill(v, each, cx);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(each) = self.items_schema(node) {
                    for v in items {
                        self.fill(v, each, cx);
                    }
                }
            }
            _ => {}
        }
    }

    /// A broker table's own kind, or the kind of the broker a messaging route names.
    fn context_of(&self, fields: &Map<String, Value>, cx: Context) -> Context {
        if fields.contains_key("kind") {
            return Context {
                kind: known_kind(fields.get("kind")),
            };
        }
        if let Some(broker) = fields.get("broker").and_then(Value::as_str) {
            return Context {
                kind: known_kind(self.kinds.get(broker)),
            };
        }
        cx
    }
}

/// Defaults the loader reads only beside another key (with this value, when given), which the
/// schema states in prose. Leaving them out elsewhere keeps the printed file loadable: the loader
/// refuses them where they cannot apply.
const ONLY_WITH: &[(&str, &str, Option<&str>)] = &[
    ("retry_non_idempotent", "upstream", None),
    ("strip_prefix", "upstream", None),
    ("hash_on", "balance", Some("ring_hash")),
];

/// Whether a default holds for this table: the schema starts the description of a default that
/// holds only for one broker kind with that kind (`Kafka: ...`), and of one read only beside
/// another key with `With KEY: ...`; `ONLY_WITH` lists the others.
/// Defaults that mean nothing beside another key (a listener's `h2c` once it has `tls`).
const NOT_WITH: &[(&str, &str)] = &[("h2c", "tls")];

fn applies(key: &str, prop: &Value, fields: &Map<String, Value>, cx: Context) -> bool {
    if NOT_WITH
        .iter()
        .any(|(only, not_with)| key == *only && fields.contains_key(*not_with))
    {
        return false;
    }
    for (only, with, value) in ONLY_WITH {
        if key == *only {
            return fields
                .get(*with)
                .is_some_and(|v| value.is_none_or(|want| v.as_str() == Some(want)));
        }
    }
    let description = prop
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for (label, kind) in [("Kafka:", "kafka"), ("AMQP:", "amqp"), ("NATS:", "nats")] {
        if description.starts_with(label) {
            return cx.kind == Some(kind);
        }
    }
    if let Some(rest) = description.strip_prefix("With ") {
        if let Some((key, _)) = rest.split_once(':') {
            return fields.get(key).is_some_and(|v| v != &Value::Bool(false));
        }
    }
    true
}

/// `value` as TOML text; `None` when it has no TOML form (it always has one: it came from TOML).
pub fn to_toml(value: &Value) -> Option<String> {
    toml::to_string_pretty(value).ok()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    use crate::config::{effective_text, load, load_str, GatewayConfig};

    /// The model without its view, which is the file as written and so differs on purpose, and
    /// with `table`'s route table: its hash maps print in an order of their own (the routes it is
    /// compiled from are compared).
    fn model(config: &GatewayConfig, table: &GatewayConfig) -> String {
        let mut config = config.clone();
        config.view = std::sync::Arc::new(Value::Null);
        config.table = table.table.clone();
        format!("{config:?}")
    }

    /// Prints `path`'s effective config, loads that, and checks that it runs the same model and
    /// that printing it again changes nothing: a default stated wrongly in the schema would
    /// make the printed file mean something else.
    fn round_trip(path: &Path, src: &str) -> Value {
        let registry = crate::plugins::builtin_registry();
        let first = load_str(path, src, &registry).unwrap_or_else(|e| panic!("{e}"));
        let printed = effective_text(&first.config, &registry);
        // A redacted secret is read back as something that passes for any credential (a
        // SHA-256 in hex, a long enough HMAC secret): secrets show as redacted in the model too.
        let loadable = printed.replace("<redacted>", &"0".repeat(64));
        let second = load_str(path, &loadable, &registry)
            .unwrap_or_else(|e| panic!("the printed config does not load: {e}\n{printed}"));
        assert_eq!(
            model(&first.config, &first.config),
            model(&second.config, &first.config),
            "the printed config of {} runs differently:\n{printed}",
            path.display()
        );
        let again = effective_text(&second.config, &registry);
        assert_eq!(printed, again, "printing is not stable");
        check_plugin_defaults(&registry, &second.config.view);
        (*second.config.view).clone()
    }

    /// Each plugin table, read into its plugin's typed config and shown back, is unchanged: the
    /// filled-in defaults are the plugin's own.
    fn check_plugin_defaults(registry: &tollgate_plugin_api::PluginRegistry, view: &Value) {
        let mut tables: Vec<&Value> = view.get("plugins").into_iter().collect();
        if let Some(routes) = view.get("routes").and_then(Value::as_object) {
            tables.extend(routes.values().filter_map(|r| r.get("plugins")));
        }
        for plugins in tables.into_iter().filter_map(Value::as_object) {
            for (name, table) in plugins {
                let text = toml::to_string(table).unwrap_or_else(|e| panic!("{e}"));
                let parsed = toml::de::DeTable::parse(&text).unwrap_or_else(|e| panic!("{e}"));
                let value = toml::Spanned::new(0..0, toml::de::DeValue::Table(parsed.into_inner()));
                let shown = registry
                    .render(name, value)
                    .unwrap_or_else(|e| panic!("{name}: {}", e.message));
                assert_eq!(
                    without_empty(shown),
                    without_empty(table.clone()),
                    "plugin `{name}`: a filled-in default is not the plugin's"
                );
            }
        }
    }

    /// `v` without nulls and empty tables and lists, at every depth: an empty default is the
    /// same as none, and the schema leaves the defaults of whole sub-tables unstated.
    fn without_empty(v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k, without_empty(v)))
                    .filter(|(_, v)| !is_empty(v))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(without_empty).collect()),
            other => other,
        }
    }

    fn is_empty(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => false,
        }
    }

    fn repo(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    #[test]
    fn the_repo_configs_print_what_they_run() {
        for file in ["gateway.toml", "deploy/gateway.compose.toml"] {
            let path = repo(file);
            let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
            let registry = crate::plugins::builtin_registry();
            load(&path, &registry).unwrap_or_else(|e| panic!("{e}"));
            let shown = round_trip(&path, &src);
            // Defaults the file leaves out are shown.
            assert_eq!(shown["server"]["max_uri_bytes"], 8192, "{file}");
            assert!(shown["admin"]["address"].is_string(), "{file}");
        }
    }

    #[test]
    fn every_section_prints_what_it_runs() {
        let src = "\
[[listeners]]
address = \"127.0.0.1:1\"
[[listeners]]
address = \"127.0.0.1:2\"
h2c = false
request_header_timeout = \"3s\"
[upstreams.u]
targets = [\"127.0.0.1:2\", { address = \"localhost:3\", weight = 2 }]
balance = \"ring_hash\"
[upstreams.u.health_check]
path = \"/healthz\"
[upstreams.u.retry]
statuses = [503]
[upstreams.u.outlier_detection]
[upstreams.g]
targets = [\"127.0.0.1:4\"]
protocol = \"h2c\"
[brokers.k]
kind = \"kafka\"
bootstrap = [\"127.0.0.1:9092\"]
sasl = { mechanism = \"PLAIN\", username = \"gw\", password = \"pa55\" }
[brokers.q]
kind = \"amqp\"
url = \"amqp://127.0.0.1:5672/%2F\"
[brokers.n]
kind = \"nats\"
servers = [\"nats://127.0.0.1:4222\"]
[plugins.request-id]
[routes.r]
prefix = \"/api\"
upstream = \"u\"
[routes.r.plugins.rate-limit]
limits = [{ rate = \"10/s\" }]
[routes.r.plugins.jwt-auth]
providers = [{ issuer = \"i\", secret_file = \"jwt-secret\" }]
[routes.r.plugins.cors]
allow_origins = [\"https://app.example\"]
[routes.p]
exact = \"/orders\"
[routes.p.publish]
broker = \"k\"
topic = \"orders\"
[routes.a]
exact = \"/amqp\"
[routes.a.publish]
broker = \"q\"
routing_key = \"orders\"
[routes.s]
exact = \"/events\"
[routes.s.subscribe]
broker = \"n\"
subject = \"events\"
[routes.rr]
exact = \"/ask\"
[routes.rr.request_reply]
broker = \"n\"
subject = \"ask\"
respond_async = true
[tracing]
enabled = true
endpoint = \"http://127.0.0.1:4317\"
";
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("jwt-secret"),
            "s3cret-s3cret-s3cret-s3cret-s3cret",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("gateway.toml");
        let shown = round_trip(&path, src);
        assert_eq!(shown["brokers"]["k"]["linger"], "5ms");
        assert!(shown["brokers"]["n"].get("linger").is_none());
        assert_eq!(shown["brokers"]["n"]["jetstream"], true);
        assert_eq!(shown["routes"]["rr"]["request_reply"]["async_ttl"], "5m");
        assert_eq!(
            shown["tracing"],
            serde_json::json!({"enabled": true, "endpoint": "http://127.0.0.1:4317"}),
            "OTEL_* variables fill in what [tracing] leaves out"
        );
        assert_eq!(
            shown["routes"]["r"]["plugins"]["rate-limit"]["max_keys"],
            100000
        );
        assert_eq!(
            shown["brokers"]["k"]["sasl"]["password"], "<redacted>",
            "secrets stay redacted"
        );
        assert!(!effective_text(
            &load_str(&path, src, &crate::plugins::builtin_registry())
                .unwrap_or_else(|e| panic!("{e}"))
                .config,
            &crate::plugins::builtin_registry()
        )
        .contains("pa55"));
    }
}
