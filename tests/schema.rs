//! The JSON Schema of gateway.toml (`tollgate schema`, committed as schema/gateway.schema.json)
//! checked by an independent validator (the `jsonschema` crate): it is current, the repo's
//! configs pass it, and broken configs fail it as they fail the loader.
//!
//! After a change to the config types, regenerate the committed file with
//! `UPDATE_SCHEMA=1 cargo test --test schema` (or `tollgate schema > schema/gateway.schema.json`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const SCHEMA_FILE: &str = "schema/gateway.schema.json";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validator() -> jsonschema::Validator {
    let schema = tollgate::config::schema(&tollgate::plugins::builtin_registry());
    jsonschema::draft202012::new(&schema)
        .expect("the generated schema is a valid draft 2020-12 schema")
}

/// The schema's complaints about a TOML text, one per line; empty when it passes.
fn schema_errors(validator: &jsonschema::Validator, src: &str) -> Vec<String> {
    let doc: Value = match toml::from_str(src) {
        Ok(doc) => doc,
        Err(e) => return vec![format!("not TOML: {e}")],
    };
    validator
        .iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn loader_errors(path: &Path, src: &str) -> Option<String> {
    tollgate::config::load_str(path, src, &tollgate::plugins::builtin_registry())
        .err()
        .map(|e| e.to_string())
}

#[test]
fn the_committed_schema_is_what_tollgate_schema_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("schema")
        .output()
        .expect("run tollgate schema");
    assert!(out.status.success(), "tollgate schema failed: {out:?}");
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    let path = repo_root().join(SCHEMA_FILE);
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &printed).expect("write the schema");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == printed,
        "{SCHEMA_FILE} is stale: regenerate it with `UPDATE_SCHEMA=1 cargo test --test schema` \
         and commit it"
    );
    let schema: Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "draft 2020-12"
    );
}

/// Every registered plugin has a schema of its own, not the default that accepts any table.
#[test]
fn every_builtin_plugin_describes_its_table() {
    let registry = tollgate::plugins::builtin_registry();
    let schema = tollgate::config::schema(&registry);
    let plugins = &schema["$defs"]["Plugins"]["properties"];
    for name in registry.names() {
        let entry = &plugins[name];
        let reference = entry["$ref"].as_str().unwrap_or_default();
        let target = reference
            .strip_prefix("#/$defs/")
            .map(|d| &schema["$defs"][d])
            .unwrap_or(entry);
        assert_eq!(
            target["additionalProperties"],
            Value::Bool(false),
            "plugin `{name}`: its schema does not list its keys: {entry}"
        );
    }
}

#[test]
fn the_repos_configs_pass_the_loader_and_the_schema() {
    let root = repo_root();
    let validator = validator();
    for rel in ["gateway.toml", "deploy/gateway.compose.toml"] {
        let path = root.join(rel);
        let src = std::fs::read_to_string(&path).expect("read config");
        assert_eq!(
            loader_errors(&path, &src),
            None,
            "{rel}: the loader refuses it"
        );
        assert_eq!(
            schema_errors(&validator, &src),
            Vec::<String>::new(),
            "{rel}"
        );
    }
    // Templates with `@@PLACEHOLDER@@`s the bench harness fills in: inside strings they stay as
    // they are; a line that is one placeholder (a section the harness may add) is left out.
    let templates = root.join("benches/load/templates");
    let mut seen = 0;
    for entry in std::fs::read_dir(&templates).expect("list templates") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let template = std::fs::read_to_string(&path).expect("read template");
            let src: String = template
                .lines()
                .filter(|l| !(l.starts_with("@@") && l.ends_with("@@")))
                .map(|l| format!("{l}\n"))
                .collect();
            let errors = schema_errors(&validator, &src);
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            seen += 1;
        }
    }
    assert!(seen > 0, "no template under {}", templates.display());
}

/// A small valid file the broken cases below change one thing of.
const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"

[upstreams.users]
targets = ["127.0.0.1:3001"]

[routes.users]
prefix = "/users"
upstream = "users"
"#;

#[test]
fn broken_configs_fail_the_schema_as_they_fail_the_loader() {
    let validator = validator();
    let path = Path::new("gateway.toml");
    assert_eq!(loader_errors(path, BASE), None, "the base config loads");
    assert!(schema_errors(&validator, BASE).is_empty());
    let cases: &[(&str, &str)] = &[
        ("unknown top-level table", "[sever]\nthreads = 2\n"),
        ("unknown key in [server]", "[server]\nthread = 2\n"),
        ("wrong type", "[server]\nthreads = \"eight\"\n"),
        ("bad enum value", "[log]\nformat = \"yaml\"\n"),
        (
            "bad duration",
            "[server]\nrequest_timeout = \"5 parsecs\"\n",
        ),
        ("duration as a number", "[server]\nrequest_timeout = 5\n"),
        (
            "bad byte size",
            "[server]\nmax_uri_bytes = \"8 kilobytes\"\n",
        ),
        (
            "unknown key of an upstream",
            "[upstreams.orders]\ntargets = [\"127.0.0.1:3002\"]\nbalanse = \"random\"\n",
        ),
        (
            "bad balance algorithm",
            "[upstreams.orders]\ntargets = [\"127.0.0.1:3002\"]\nbalance = \"fastest\"\n",
        ),
        (
            "bad status range",
            "[upstreams.orders]\ntargets = [\"127.0.0.1:3002\"]\n\
             [upstreams.orders.retry]\nstatuses = [\"5xx\"]\n",
        ),
        ("unknown plugin", "[plugins.rate-limiter]\nlimits = []\n"),
        (
            "unknown key of a plugin",
            "[routes.users.plugins.cors]\nallow_origins = [\"*\"]\nallow_origin = \"*\"\n",
        ),
        (
            "wrong type in a plugin",
            "[routes.users.plugins.body-limit]\nmax_bytes = true\n",
        ),
        (
            "bad rate of a plugin",
            "[plugins.rate-limit]\nlimits = [{ rate = \"100 per second\" }]\n",
        ),
        ("missing required key", "[[listeners]]\nname = \"second\"\n"),
        ("bad broker kind", "[brokers.events]\nkind = \"mqtt\"\n"),
    ];
    let mut wrong = Vec::new();
    for (what, change) in cases {
        let src = format!("{BASE}\n{change}");
        if loader_errors(path, &src).is_none() {
            wrong.push(format!(
                "{what}: the loader accepts it, so the case is not broken"
            ));
        }
        if schema_errors(&validator, &src).is_empty() {
            wrong.push(format!("{what}: the schema accepts it:\n{change}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The patterns the schema gives durations, sizes, statuses and rates accept what the loader
/// reads and refuse what it refuses.
#[test]
fn value_patterns_agree_with_the_loader() {
    let validator = validator();
    let path = Path::new("gateway.toml");
    let cases: &[(&str, bool)] = &[
        ("[server]\nrequest_timeout = \"250ms\"", true),
        ("[server]\nrequest_timeout = \"1m 30s\"", true),
        ("[server]\nrequest_timeout = \"1.5s\"", true),
        ("[server]\nrequest_timeout = \"2h\"", true),
        ("[server]\nrequest_timeout = \"10 seconds\"", true),
        ("[server]\nrequest_timeout = \"10\"", false),
        ("[server]\nrequest_timeout = \"ms\"", false),
        ("[server]\nrequest_timeout = \"5 fortnights\"", false),
        ("[server]\nmax_uri_bytes = 8192", true),
        ("[server]\nmax_uri_bytes = \"8KiB\"", true),
        ("[server]\nmax_uri_bytes = \"10 MB\"", true),
        ("[server]\nmax_uri_bytes = \"10mb\"", false),
        ("[server]\nmax_uri_bytes = \"1.5MB\"", false),
        ("[server]\nmax_uri_bytes = -1", false),
        (
            "[upstreams.users.retry]\nstatuses = [503, \"500-504\"]",
            true,
        ),
        ("[upstreams.users.retry]\nstatuses = [700]", false),
        (
            "[plugins.rate-limit]\nlimits = [{ rate = \"6000/min\", key = [\"consumer\", \"header:x-tenant\"] }]",
            true,
        ),
        (
            "[plugins.rate-limit]\nlimits = [{ rate = \"100/s\", key = \"cookie:session\" }]",
            false,
        ),
        ("[plugins.rate-limit]\nlimits = [{ rate = \"100/week\" }]", false),
        (
            "[upstreams.hashed]\ntargets = [\"127.0.0.1:3002\"]\nbalance = \"ring_hash\"\nhash_on = \"header:x-user\"",
            true,
        ),
        (
            "[upstreams.hashed]\ntargets = [\"127.0.0.1:3002\"]\nbalance = \"ring_hash\"\nhash_on = \"client-ip\"",
            false,
        ),
        ("[access_log]\nfields = [\"status\", \"route\"]", true),
        ("[access_log]\nfields = [\"status\", \"latency\"]", false),
        ("[upstreams.users.retry]\non = [\"reset\", \"timeout\"]", true),
        ("[upstreams.users.retry]\non = [\"reset\", \"5xx\"]", false),
    ];
    let mut wrong = Vec::new();
    for (change, valid) in cases {
        // `[upstreams.users.*]` extends the base's upstream; the rest adds to it.
        let src = format!("{BASE}\n{change}\n");
        let loads = loader_errors(path, &src).is_none();
        let passes = schema_errors(&validator, &src).is_empty();
        if loads != *valid || passes != *valid {
            wrong.push(format!(
                "{change:?}: expected valid={valid}, the loader says {loads}, the schema {passes}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_schema_carries_docs_defaults_and_allowed_values() {
    let schema = tollgate::config::schema(&tollgate::plugins::builtin_registry());
    let defs = &schema["$defs"];
    let server = &defs["ServerSection"]["properties"];
    assert!(
        server["threads"]["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "a key's doc comment is its description: {}",
        server["threads"]
    );
    assert_eq!(server["max_uri_bytes"]["default"], 8192);
    let balance = &defs["Balance"];
    let allowed = balance["enum"].as_array().cloned().unwrap_or_default();
    assert!(
        allowed.contains(&Value::from("least_request")),
        "allowed values: {balance}"
    );
    let cors = &defs["CorsConfig"]["properties"];
    assert_eq!(cors["max_age_secs"]["default"], 600, "a plugin's default");
}

/// The defaults the schema states are the ones validation applies: a file that leaves the keys
/// out loads into a model holding exactly the schema's values.
#[test]
fn stated_defaults_are_what_the_loader_applies() {
    let schema = tollgate::config::schema(&tollgate::plugins::builtin_registry());
    let defs = &schema["$defs"];
    let default = |section: &str, key: &str| -> Value {
        let d = defs[section]["properties"][key]["default"].clone();
        assert!(!d.is_null(), "{section}.{key} states no default");
        d
    };
    let duration = |section: &str, key: &str| -> std::time::Duration {
        let d = default(section, key);
        humantime::parse_duration(d.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{section}.{key}: default {d} is not a duration: {e}"))
    };
    let number = |section: &str, key: &str| -> u64 {
        default(section, key)
            .as_u64()
            .unwrap_or_else(|| panic!("{section}.{key}: the default is not a whole number"))
    };
    let src = format!(
        "{BASE}\n[upstreams.users.health_check]\n[upstreams.users.outlier_detection]\n\
         [upstreams.users.retry]\n"
    );
    let built = tollgate::config::load_str(
        Path::new("gateway.toml"),
        &src,
        &tollgate::plugins::builtin_registry(),
    )
    .expect("loads");
    let config = &built.config;
    let server = &config.server;
    let s = "ServerSection";
    assert_eq!(
        server.max_request_header_bytes as u64,
        number(s, "max_request_header_bytes")
    );
    assert_eq!(server.max_uri_bytes as u64, number(s, "max_uri_bytes"));
    assert_eq!(
        server.keepalive_pool_size as u64,
        number(s, "keepalive_pool_size")
    );
    assert_eq!(
        server.graceful_shutdown_timeout,
        duration(s, "graceful_shutdown_timeout")
    );
    assert_eq!(server.watch_config, default(s, "watch_config") == true);
    assert_eq!(
        server.upgrade_sock.display().to_string(),
        default(s, "upgrade_sock").as_str().unwrap_or_default()
    );
    assert_eq!(
        server.client.request_header_timeout,
        duration(s, "request_header_timeout")
    );
    assert_eq!(
        server.client.client_body_timeout,
        duration(s, "client_body_timeout")
    );

    let up = &config.upstreams[0];
    let u = "UpstreamSection";
    assert_eq!(up.dns_refresh, duration(u, "dns_refresh"));
    assert_eq!(up.timeouts.connect, duration(u, "connect_timeout"));
    assert_eq!(up.timeouts.read, duration(u, "read_timeout"));
    assert_eq!(up.timeouts.write, duration(u, "write_timeout"));
    assert_eq!(up.timeouts.idle, duration(u, "idle_timeout"));
    assert_eq!(up.panic_mode, default(u, "panic_mode") == true);

    let health = up.health_check.as_ref().expect("a health check");
    let h = "HealthCheckSection";
    assert_eq!(health.interval, duration(h, "interval"));
    assert_eq!(health.timeout, duration(h, "timeout"));
    assert_eq!(health.jitter, duration(h, "jitter"));
    assert_eq!(
        u64::from(health.healthy_threshold),
        number(h, "healthy_threshold")
    );
    assert_eq!(
        u64::from(health.unhealthy_threshold),
        number(h, "unhealthy_threshold")
    );

    let outlier = up
        .outlier
        .as_ref()
        .expect("outlier detection is on by default");
    let o = "OutlierSection";
    assert_eq!(
        u64::from(outlier.consecutive_failures),
        number(o, "consecutive_failures")
    );
    assert_eq!(
        outlier.base_ejection_time,
        duration(o, "base_ejection_time")
    );
    assert_eq!(outlier.max_ejection_time, duration(o, "max_ejection_time"));
    assert_eq!(
        u64::from(outlier.max_ejection_percent),
        number(o, "max_ejection_percent")
    );

    let retry = &up.retry;
    let r = "RetrySection";
    assert_eq!(u64::from(retry.attempts), number(r, "attempts"));
    assert_eq!(retry.backoff_base, duration(r, "backoff_base"));
    assert_eq!(retry.backoff_max, duration(r, "backoff_max"));
    assert_eq!(
        Some(retry.budget_ratio),
        default(r, "budget_ratio").as_f64()
    );
    assert_eq!(
        u64::from(retry.budget_min_retries),
        number(r, "budget_min_retries")
    );
}

/// Every key has a text for hovers and completion: its own `description`, or the one of the
/// definition it refers to.
#[test]
fn every_key_is_described() {
    fn walk(node: &Value, defs: &Value, path: &str, missing: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    // An enum variant written as a one-key table (`{ header = "..." }`): the
                    // variant's text is the key's.
                    let variant = props.len() == 1 && map.get("description").is_some();
                    for (key, prop) in props {
                        let own = prop.get("description").is_some();
                        let referred = prop["$ref"]
                            .as_str()
                            .and_then(|r| r.strip_prefix("#/$defs/"))
                            .is_some_and(|d| defs[d].get("description").is_some());
                        if !own && !referred && !variant {
                            missing.push(format!("{path}.{key}"));
                        }
                    }
                }
                for (k, v) in map {
                    walk(v, defs, &format!("{path}/{k}"), missing);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, defs, path, missing)),
            _ => {}
        }
    }
    let schema = tollgate::config::schema(&tollgate::plugins::builtin_registry());
    let mut missing = Vec::new();
    walk(&schema, &schema["$defs"], "", &mut missing);
    assert!(
        missing.is_empty(),
        "keys without a doc comment: {missing:#?}"
    );
}
