//! The Docker Compose setup (docker-compose.yml, Dockerfile, .dockerignore, deploy/) cannot be run
//! here or in CI (no Docker), so these tests check that its files agree with each other and with
//! the repo: every path it mounts or builds from exists, every service it names is defined, the
//! gateway's ports, routes, upstreams and plugins match gateway.toml, the upstream targets are the
//! compose services on the ports they listen on, Prometheus scrapes the admin listener, the
//! Grafana dashboard queries only metrics tollgate exports, and `tollgate check` accepts the
//! compose config.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value as Yaml;

const COMPOSE_FILE: &str = "docker-compose.yml";
const COMPOSE_GATEWAY: &str = "deploy/gateway.compose.toml";
const REPO_GATEWAY: &str = "gateway.toml";
const PROMETHEUS_CONFIG: &str = "deploy/prometheus.yml";
const GRAFANA_DATASOURCES: &str = "deploy/grafana/provisioning/datasources/datasources.yml";
const GRAFANA_DASHBOARD_PROVIDERS: &str = "deploy/grafana/provisioning/dashboards/dashboards.yml";
const GRAFANA_DASHBOARDS_DIR: &str = "deploy/grafana/dashboards";

/// The gateway's service in docker-compose.yml.
const GATEWAY_SERVICE: &str = "tollgate";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric family tollgate's admin `/metrics` exports (name, kind), as the gateway's own
/// metrics registry lists them (a labelled family appears on `/metrics` with its first series):
/// the only names the dashboard may query, and each needs a panel.
fn exported_metrics() -> Vec<(String, Kind)> {
    let families = tollgate::telemetry::metrics::families();
    assert!(
        families.iter().any(|(n, _)| n == "tollgate_requests_total"),
        "the gateway lists its metric families: {families:?}"
    );
    families
        .into_iter()
        .map(|(name, kind)| {
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                other => panic!("{name}: a {other} has no dashboard rule here yet"),
            };
            (name, kind)
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Reading the files
// ------------------------------------------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Yaml {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

fn toml_table(rel: &str) -> toml::Table {
    toml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid TOML: {e}"))
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"))
}

struct Compose {
    doc: Yaml,
}

impl Compose {
    fn load() -> Self {
        Self {
            doc: yaml(COMPOSE_FILE),
        }
    }

    fn service_names(&self) -> BTreeSet<String> {
        self.doc["services"]
            .as_mapping()
            .expect("docker-compose.yml has a `services` mapping")
            .keys()
            .map(|k| k.as_str().expect("service names are strings").to_string())
            .collect()
    }

    fn service(&self, name: &str) -> &Yaml {
        let s = &self.doc["services"][name];
        assert!(s.is_mapping(), "docker-compose.yml has no service `{name}`");
        s
    }

    fn services(&self) -> Vec<(String, &Yaml)> {
        self.service_names()
            .into_iter()
            .map(|n| {
                let s = self.service(&n);
                (n, s)
            })
            .collect()
    }

    fn named_volumes(&self) -> BTreeSet<String> {
        match self.doc["volumes"].as_mapping() {
            Some(m) => m
                .keys()
                .map(|k| k.as_str().expect("volume names are strings").to_string())
                .collect(),
            None => BTreeSet::new(),
        }
    }
}

/// A string or a list of strings (compose's `command`, `entrypoint`, healthcheck `test`).
fn words(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Null => Vec::new(),
        Yaml::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Yaml::Sequence(items) => items
            .iter()
            .map(|i| scalar(i).unwrap_or_else(|| panic!("not a scalar: {i:?}")))
            .collect(),
        other => panic!("expected a string or a list, got {other:?}"),
    }
}

fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Names a service's `depends_on` lists (short list form or long mapping form).
fn depends_on(service: &Yaml) -> Vec<String> {
    match &service["depends_on"] {
        Yaml::Null => Vec::new(),
        Yaml::Sequence(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .expect("depends_on entries are names")
                    .to_string()
            })
            .collect(),
        Yaml::Mapping(m) => m
            .keys()
            .map(|k| k.as_str().expect("depends_on keys are names").to_string())
            .collect(),
        other => panic!("unexpected depends_on: {other:?}"),
    }
}

/// A service volume: a bind mount of a host path, or a named volume.
#[derive(Debug)]
enum Mount {
    Bind { source: String, target: String },
    Named { name: String },
}

fn mounts(service: &Yaml) -> Vec<Mount> {
    let Some(items) = service["volumes"].as_sequence() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|v| match v {
            // Short syntax: SOURCE:TARGET[:MODE]; a source that is not a path is a named volume.
            Yaml::String(s) => {
                let mut parts = s.split(':');
                let source = parts.next().unwrap_or_default().to_string();
                let target = parts
                    .next()
                    .unwrap_or_else(|| panic!("volume `{s}` has no container path"))
                    .to_string();
                if source.starts_with('.') || source.starts_with('/') || source.starts_with('~') {
                    Mount::Bind { source, target }
                } else {
                    Mount::Named { name: source }
                }
            }
            Yaml::Mapping(_) => {
                let source = v["source"].as_str().unwrap_or_default().to_string();
                let target = v["target"].as_str().expect("volume target").to_string();
                match v["type"].as_str() {
                    Some("bind") => Mount::Bind { source, target },
                    Some("volume") => Mount::Named { name: source },
                    other => panic!("unsupported volume type {other:?} in {v:?}"),
                }
            }
            other => panic!("unexpected volume entry {other:?}"),
        })
        .collect()
}

/// The bind mount of a service whose container path is `target`, as (host path, container path).
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    mounts(service)
        .into_iter()
        .filter_map(|m| match m {
            Mount::Bind { source, target } => Some((source, target)),
            Mount::Named { .. } => None,
        })
        .collect()
}

/// `./deploy/x` -> `deploy/x`, for comparing a compose host path with a repo path.
fn repo_relative(source: &str) -> String {
    let p = source.strip_prefix("./").unwrap_or(source);
    p.trim_end_matches('/').to_string()
}

/// A published port: (host port, container port).
fn published_ports(service: &Yaml) -> Vec<(u16, u16)> {
    let Some(items) = service["ports"].as_sequence() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|p| match p {
            Yaml::Mapping(_) => {
                let target = scalar(&p["target"]).expect("port target");
                let published = scalar(&p["published"]).unwrap_or_else(|| target.clone());
                (parse_port(&published), parse_port(&target))
            }
            _ => {
                // [IP:]HOST:CONTAINER[/PROTO], or a bare CONTAINER port.
                let s = scalar(p).expect("a port entry");
                let s = s.split('/').next().unwrap_or_default();
                let parts: Vec<&str> = s.rsplitn(3, ':').collect();
                match parts.as_slice() {
                    [container] => (parse_port(container), parse_port(container)),
                    [container, host, ..] => (parse_port(host), parse_port(container)),
                    _ => panic!("cannot read port `{s}`"),
                }
            }
        })
        .collect()
}

fn parse_port(s: &str) -> u16 {
    s.parse()
        .unwrap_or_else(|e| panic!("`{s}` is not a single port number: {e}"))
}

/// Container ports a service makes known to others: published and `expose`d ones.
fn container_ports(service: &Yaml) -> BTreeSet<u16> {
    let mut ports: BTreeSet<u16> = published_ports(service).into_iter().map(|p| p.1).collect();
    if let Some(items) = service["expose"].as_sequence() {
        for i in items {
            let s = scalar(i).expect("expose entries are ports");
            ports.insert(parse_port(s.split('/').next().unwrap_or_default()));
        }
    }
    ports
}

/// The socket address a sample service listens on: the address among its command's arguments.
fn listen_addr(name: &str, service: &Yaml) -> SocketAddr {
    let args = words(&service["command"]);
    args.iter()
        .find_map(|a| a.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("service `{name}`: no IP:PORT argument in its command {args:?}"))
}

/// Splits `HOST:PORT` (host names or IPv4; no IPv6 here).
fn host_port(addr: &str) -> (String, u16) {
    let (host, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("`{addr}` is not HOST:PORT"));
    (host.to_string(), parse_port(port))
}

/// `http://host:port/...` -> (host, port).
fn url_host_port(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("`{url}` is not an http:// URL"));
    let authority = rest.split('/').next().unwrap_or_default();
    host_port(authority)
}

// ------------------------------------------------------------------------------------------------
// gateway.toml
// ------------------------------------------------------------------------------------------------

struct GatewayPorts {
    listeners: Vec<SocketAddr>,
    admin: SocketAddr,
}

impl GatewayPorts {
    fn of(config: &toml::Table) -> Self {
        let listeners = config
            .get("listeners")
            .and_then(|l| l.as_array())
            .expect("the config has [[listeners]]")
            .iter()
            .map(|l| socket_addr(&l["address"]))
            .collect();
        // The admin listener defaults to 127.0.0.1:9901 when [admin] or its address is absent.
        let admin = config
            .get("admin")
            .and_then(|a| a.get("address"))
            .map(socket_addr)
            .unwrap_or_else(|| "127.0.0.1:9901".parse().expect("default admin address"));
        Self { listeners, admin }
    }

    /// Every port the gateway binds: listeners, then admin.
    fn all(&self) -> BTreeSet<u16> {
        let mut ports: BTreeSet<u16> = self.listeners.iter().map(|a| a.port()).collect();
        ports.insert(self.admin.port());
        ports
    }
}

fn socket_addr(v: &toml::Value) -> SocketAddr {
    let s = v.as_str().expect("addresses are strings");
    s.parse()
        .unwrap_or_else(|e| panic!("`{s}` is not IP:PORT: {e}"))
}

fn table<'a>(config: &'a toml::Table, key: &str) -> &'a toml::Table {
    config
        .get(key)
        .and_then(|v| v.as_table())
        .unwrap_or_else(|| panic!("the config has no [{key}] table"))
}

/// `targets` entries as `HOST:PORT` strings (plain strings or `{ address = ... }` tables).
fn target_addresses(upstream: &toml::Value) -> Vec<String> {
    upstream
        .get("targets")
        .and_then(|t| t.as_array())
        .expect("compose upstreams list `targets`")
        .iter()
        .map(|t| match t {
            toml::Value::String(s) => s.clone(),
            toml::Value::Table(t) => t["address"]
                .as_str()
                .expect("target address is a string")
                .to_string(),
            other => panic!("unexpected target {other:?}"),
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Dockerfile
// ------------------------------------------------------------------------------------------------

/// The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments
/// dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends in a continuation line"
    );
    out
}

fn dockerfile_json_array(instructions: &[(String, String)], keyword: &str) -> Vec<String> {
    let args = instructions
        .iter()
        .rev()
        .find(|(k, _)| k == keyword)
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| panic!("the Dockerfile has no {keyword}"));
    serde_json::from_str(&args)
        .unwrap_or_else(|e| panic!("{keyword} {args} is not in JSON (exec) form: {e}"))
}

/// The packages the Dockerfile builds and ships: `ARG PACKAGES="..."`.
fn dockerfile_packages(instructions: &[(String, String)]) -> Vec<String> {
    let value = instructions
        .iter()
        .filter(|(k, _)| k == "ARG")
        .find_map(|(_, a)| a.strip_prefix("PACKAGES="))
        .expect("the Dockerfile declares ARG PACKAGES=\"...\" with a default");
    value
        .trim_matches('"')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Workspace packages that have a binary of their own name: package name -> manifest dir.
fn workspace_binaries() -> BTreeMap<String, PathBuf> {
    let manifest = toml_table("Cargo.toml");
    let members = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .map(|m| m.as_str().expect("member paths are strings").to_string());
    let mut dirs = Vec::new();
    for m in members {
        if let Some(parent) = m.strip_suffix("/*") {
            for entry in std::fs::read_dir(root().join(parent)).expect("member glob dir") {
                let path = entry.expect("dir entry").path();
                if path.join("Cargo.toml").is_file() {
                    dirs.push(path);
                }
            }
        } else {
            dirs.push(root().join(m));
        }
    }
    let mut out = BTreeMap::new();
    for dir in dirs {
        let text = std::fs::read_to_string(dir.join("Cargo.toml")).expect("member manifest");
        let m: toml::Table = toml::from_str(&text).expect("member manifest is TOML");
        let name = m["package"]["name"]
            .as_str()
            .expect("package name")
            .to_string();
        let named_bin = m
            .get("bin")
            .and_then(|b| b.as_array())
            .is_some_and(|bins| bins.iter().any(|b| b["name"].as_str() == Some(&name)));
        if named_bin || dir.join("src/main.rs").is_file() {
            out.insert(name, dir);
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// PromQL (just enough to find the metric names a query selects)
// ------------------------------------------------------------------------------------------------

/// Keywords after which a parenthesised list holds label names, not expressions.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Words that are never metric names even when not followed by `(`.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects. Skips strings, label matchers `{...}`, ranges
/// `[...]`, numbers and durations, Grafana variables (`$x`, `${x}`), function and aggregation
/// names, and the label lists of `by (...)`, `on (...)` and the like.
fn promql_metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let next_non_space = |from: usize| {
        chars[from..]
            .iter()
            .position(|c| !c.is_whitespace())
            .map(|p| from + p)
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_until(&chars, i, '}'),
            '[' => i = skip_until(&chars, i, ']'),
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_until(&chars, i, '}');
                } else {
                    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = next_non_space(i);
                let opens_paren = next.is_some_and(|n| chars[n] == '(');
                if LABEL_LIST_KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    if let (true, Some(n)) = (opens_paren, next) {
                        i = skip_until(&chars, n, ')');
                    }
                } else if !opens_paren
                    && !PROMQL_WORDS.contains(&word.to_ascii_lowercase().as_str())
                {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Index just past the string literal starting at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    panic!(
        "unterminated string in PromQL: {}",
        chars.iter().collect::<String>()
    )
}

/// Index just past the `close` matching the opener at `start`, skipping string literals.
fn skip_until(chars: &[char], start: usize, close: char) -> usize {
    let open = chars[start];
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!(
        "unbalanced `{open}` in PromQL: {}",
        chars.iter().collect::<String>()
    )
}

/// The metric names a Grafana Prometheus variable query selects: `label_values(LABEL)`,
/// `label_values(SELECTOR, LABEL)` or `query_result(EXPR)`.
fn variable_query_metric_names(query: &str) -> Vec<String> {
    let q = query.trim();
    if let Some(args) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match args.rsplit_once(',') {
            Some((selector, _label)) => promql_metric_names(selector),
            None => Vec::new(),
        };
    }
    if let Some(expr) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return promql_metric_names(expr);
    }
    panic!("unsupported variable query `{q}`: teach tests/compose.rs to read it")
}

/// Every PromQL expression in the dashboard: panel targets' `expr` anywhere in the JSON, and the
/// template variables' queries (already reduced to metric names).
struct DashboardQueries {
    exprs: Vec<String>,
    variable_metrics: Vec<(String, Vec<String>)>,
}

fn dashboard_queries(dashboard: &serde_json::Value) -> DashboardQueries {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "expr" {
                        out.push(v.as_str().expect("expr is a string").to_string());
                    } else if k != "templating" {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(dashboard, &mut exprs);
    let mut variable_metrics = Vec::new();
    if let Some(vars) = dashboard["templating"]["list"].as_array() {
        for var in vars {
            if var["type"] != "query" {
                continue;
            }
            let query = match &var["query"] {
                serde_json::Value::String(s) => s.clone(),
                q => q["query"]
                    .as_str()
                    .expect("variable query is a string or has a `query` string")
                    .to_string(),
            };
            variable_metrics.push((query.clone(), variable_query_metric_names(&query)));
        }
    }
    DashboardQueries {
        exprs,
        variable_metrics,
    }
}

/// Which listed metric a series name belongs to; histograms only through `_bucket`, `_sum` and
/// `_count` (a histogram has no series under its bare name).
fn listed_metric(series: &str) -> Option<String> {
    exported_metrics().into_iter().find_map(|(name, kind)| {
        let matches = match kind {
            Kind::Counter | Kind::Gauge => series == name,
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| series.strip_prefix(name.as_str()) == Some(suffix)),
        };
        matches.then_some(name)
    })
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = root().join(GRAFANA_DASHBOARDS_DIR);
    let mut out: Vec<(String, serde_json::Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let rel = p
                .strip_prefix(root())
                .expect("inside the repo")
                .to_string_lossy()
                .into_owned();
            let value = json(&rel);
            (rel, value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        !out.is_empty(),
        "no dashboard JSON in {GRAFANA_DASHBOARDS_DIR}"
    );
    out
}

// ------------------------------------------------------------------------------------------------
// Files, mounts and build
// ------------------------------------------------------------------------------------------------

#[test]
fn every_host_path_compose_builds_from_or_mounts_exists_in_the_repo() {
    let compose = Compose::load();
    let declared_volumes = compose.named_volumes();
    for (name, service) in compose.services() {
        match &service["build"] {
            Yaml::Null => {}
            build => {
                let (context, dockerfile) = match build {
                    Yaml::String(ctx) => (ctx.clone(), "Dockerfile".to_string()),
                    _ => (
                        build["context"].as_str().unwrap_or(".").to_string(),
                        build["dockerfile"]
                            .as_str()
                            .unwrap_or("Dockerfile")
                            .to_string(),
                    ),
                };
                let context = root().join(repo_relative(&context));
                assert!(
                    context.is_dir(),
                    "service `{name}`: build context {} is not a directory",
                    context.display()
                );
                assert!(
                    context.join(&dockerfile).is_file(),
                    "service `{name}`: Dockerfile {dockerfile} not found in {}",
                    context.display()
                );
            }
        }
        for mount in mounts(service) {
            match mount {
                Mount::Bind { source, target } => {
                    assert!(
                        source.starts_with("./") || source.starts_with("../") || source == ".",
                        "service `{name}`: bind mount `{source}` -> {target} must be a path \
                         relative to the repo, so the file works on every machine"
                    );
                    let path = root().join(repo_relative(&source));
                    assert!(
                        path.exists(),
                        "service `{name}`: mounted path {} does not exist",
                        path.display()
                    );
                }
                Mount::Named { name: volume } => assert!(
                    declared_volumes.contains(&volume),
                    "service `{name}`: named volume `{volume}` is not declared under `volumes:`"
                ),
            }
        }
    }
}

#[test]
fn dockerfile_copies_only_repo_paths_the_dockerignore_keeps() {
    let instructions = dockerfile();
    let ignore: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_string())
        .collect();
    assert!(
        ignore.iter().any(|p| p == "target"),
        ".dockerignore must leave out target/ (gigabytes of build output)"
    );
    // What the workspace build reads, and every path the Dockerfile copies from the context.
    let mut needed: Vec<String> = ["Cargo.toml", "Cargo.lock", "src", "plugins", "examples"]
        .map(str::to_string)
        .to_vec();
    for (keyword, args) in &instructions {
        if keyword != "COPY" || args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args
            .split_whitespace()
            .filter(|a| !a.starts_with("--"))
            .collect();
        let (_dest, sources) = parts.split_last().expect("COPY has a destination");
        for source in sources {
            if *source == "." {
                continue;
            }
            assert!(
                root().join(source).exists(),
                "Dockerfile: COPY {source}: no such path in the repo"
            );
            needed.push(source.trim_end_matches('/').to_string());
        }
    }
    for path in &needed {
        for pattern in &ignore {
            assert!(
                !ignore_pattern_matches(pattern, path),
                ".dockerignore pattern `{pattern}` leaves `{path}` out of the build context, \
                 but the build needs it"
            );
        }
    }
}

/// Whether a .dockerignore pattern (no negations) excludes `path` or a directory containing it.
fn ignore_pattern_matches(pattern: &str, path: &str) -> bool {
    let components: Vec<&str> = path.split('/').collect();
    (1..=components.len()).any(|n| glob(pattern, &components[..n].join("/")))
}

/// `*` matches within one path component, `**` across components.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) if p.get(1) == Some(&b'*') => {
                // `**/` matches zero or more whole components.
                let rest = p[2..].strip_prefix(b"/").unwrap_or(&p[2..]);
                (0..=t.len())
                    .filter(|&k| k == 0 || t[k - 1] == b'/')
                    .any(|k| go(rest, &t[k..]))
            }
            (Some(b'*'), _) => (0..=t.len())
                .take_while(|&k| k == 0 || t[k - 1] != b'/')
                .any(|k| go(&p[1..], &t[k..])),
            (Some(b'?'), Some(c)) if *c != b'/' => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

#[test]
fn image_ships_every_binary_compose_runs_and_builds_only_workspace_packages() {
    let instructions = dockerfile();
    let packages = dockerfile_packages(&instructions);
    let workspace = workspace_binaries();
    for p in &packages {
        assert!(
            workspace.contains_key(p),
            "Dockerfile PACKAGES names `{p}`, which is not a workspace package with a binary \
             of that name (known: {:?})",
            workspace.keys().collect::<Vec<_>>()
        );
    }
    let entrypoint = dockerfile_json_array(&instructions, "ENTRYPOINT");
    assert_eq!(entrypoint, ["tollgate"], "the image's ENTRYPOINT");
    assert!(packages.iter().any(|p| p == "tollgate"));

    // Services on the image the gateway service builds run one of its binaries, and never try
    // to pull that local image from a registry.
    let compose = Compose::load();
    let image = compose.service(GATEWAY_SERVICE)["image"]
        .as_str()
        .expect("the gateway service names the image it builds, so others can reuse it")
        .to_string();
    for (name, service) in compose.services() {
        if service["image"].as_str() != Some(image.as_str()) || name == GATEWAY_SERVICE {
            continue;
        }
        assert!(
            service["build"].is_null(),
            "service `{name}` reuses {image}; only `{GATEWAY_SERVICE}` builds it"
        );
        assert_eq!(
            service["pull_policy"].as_str(),
            Some("never"),
            "service `{name}` runs the locally built {image}: it must not be pulled"
        );
        let binary = words(&service["entrypoint"])
            .first()
            .cloned()
            .unwrap_or_else(|| entrypoint[0].clone());
        assert!(
            packages.contains(&binary),
            "service `{name}` runs `{binary}`, which the Dockerfile does not build (PACKAGES = \
             {packages:?})"
        );
    }

    let user = instructions
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.clone())
        .expect("the runtime stage sets a USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid != "root" && uid != "0",
        "the image must not run as root (USER {user})"
    );
}

#[test]
fn gateway_container_reads_the_mounted_compose_config() {
    let instructions = dockerfile();
    let compose = Compose::load();
    let gateway = compose.service(GATEWAY_SERVICE);
    let args = match &gateway["command"] {
        Yaml::Null => dockerfile_json_array(&instructions, "CMD"),
        cmd => words(cmd),
    };
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "-c" || w[0] == "--config")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| panic!("the gateway's arguments {args:?} name no -c CONFIG"));
    let mounted: Vec<(String, String)> = bind_mounts(gateway)
        .into_iter()
        .filter(|(_, target)| *target == config_path)
        .collect();
    assert_eq!(
        mounted
            .iter()
            .map(|(source, _)| repo_relative(source))
            .collect::<Vec<_>>(),
        [COMPOSE_GATEWAY],
        "the gateway reads {config_path}; compose must mount {COMPOSE_GATEWAY} there"
    );
    let cmd = dockerfile_json_array(&instructions, "CMD");
    assert_eq!(
        cmd,
        ["-c", config_path.as_str()],
        "the image's default CMD reads the same path compose mounts the config at"
    );
}

// ------------------------------------------------------------------------------------------------
// Service references
// ------------------------------------------------------------------------------------------------

#[test]
fn depends_on_names_only_defined_services() {
    let compose = Compose::load();
    let names = compose.service_names();
    for (name, service) in compose.services() {
        for dep in depends_on(service) {
            assert!(
                names.contains(&dep),
                "service `{name}` depends on `{dep}`, which is not defined"
            );
        }
    }
}

#[test]
fn prometheus_scrapes_the_gateway_admin_port_at_metrics_with_the_mounted_config() {
    let compose = Compose::load();
    let names = compose.service_names();
    let admin_port = GatewayPorts::of(&toml_table(COMPOSE_GATEWAY)).admin.port();

    let prometheus = compose.service("prometheus");
    let config_arg = words(&prometheus["command"])
        .into_iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(str::to_string))
        .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".to_string());
    assert!(
        bind_mounts(prometheus)
            .iter()
            .any(|(s, t)| repo_relative(s) == PROMETHEUS_CONFIG && *t == config_arg),
        "prometheus reads {config_arg}; compose must mount {PROMETHEUS_CONFIG} there"
    );

    let config = yaml(PROMETHEUS_CONFIG);
    let jobs = config["scrape_configs"]
        .as_sequence()
        .expect("prometheus.yml has scrape_configs");
    let mut targets = Vec::new();
    for job in jobs {
        let path = job["metrics_path"].as_str().unwrap_or("/metrics");
        for sc in job["static_configs"].as_sequence().into_iter().flatten() {
            for t in sc["targets"].as_sequence().into_iter().flatten() {
                let t = t.as_str().expect("targets are strings").to_string();
                let (host, _) = host_port(&t);
                assert!(
                    names.contains(&host),
                    "prometheus scrapes `{t}`, but there is no compose service `{host}`"
                );
                targets.push((t, path.to_string()));
            }
        }
    }
    assert_eq!(
        targets,
        [(
            format!("{GATEWAY_SERVICE}:{admin_port}"),
            "/metrics".to_string()
        )],
        "prometheus must scrape the gateway's admin listener ({COMPOSE_GATEWAY} [admin])"
    );
}

#[test]
fn grafana_data_sources_point_at_compose_services_on_ports_they_offer() {
    let compose = Compose::load();
    let names = compose.service_names();
    let grafana = compose.service("grafana");
    assert!(
        bind_mounts(grafana).iter().any(|(s, t)| {
            repo_relative(s) == "deploy/grafana/provisioning/datasources"
                && t == "/etc/grafana/provisioning/datasources"
        }),
        "grafana must get deploy/grafana/provisioning/datasources mounted"
    );
    let config = yaml(GRAFANA_DATASOURCES);
    let sources = config["datasources"]
        .as_sequence()
        .expect("datasources.yml lists datasources");
    let mut types = BTreeSet::new();
    for ds in sources {
        let url = ds["url"].as_str().expect("every data source has a url");
        let (host, port) = url_host_port(url);
        assert!(
            names.contains(&host),
            "data source {url}: no compose service `{host}`"
        );
        let offered = container_ports(compose.service(&host));
        assert!(
            offered.contains(&port),
            "data source {url}: service `{host}` offers ports {offered:?}, not {port}"
        );
        types.insert(ds["type"].as_str().expect("data source type").to_string());
    }
    assert_eq!(
        types,
        BTreeSet::from(["jaeger".to_string(), "prometheus".to_string()])
    );
}

#[test]
fn grafana_loads_the_dashboards_kept_in_the_repo() {
    let compose = Compose::load();
    let grafana = compose.service("grafana");
    let mounts = bind_mounts(grafana);
    assert!(
        mounts.iter().any(|(s, t)| {
            repo_relative(s) == "deploy/grafana/provisioning/dashboards"
                && t == "/etc/grafana/provisioning/dashboards"
        }),
        "grafana must get deploy/grafana/provisioning/dashboards mounted"
    );
    let dashboards_target = mounts
        .iter()
        .find(|(s, _)| repo_relative(s) == GRAFANA_DASHBOARDS_DIR)
        .map(|(_, t)| t.clone())
        .unwrap_or_else(|| panic!("grafana must get {GRAFANA_DASHBOARDS_DIR} mounted"));
    let providers = yaml(GRAFANA_DASHBOARD_PROVIDERS);
    let paths: Vec<&str> = providers["providers"]
        .as_sequence()
        .expect("dashboards.yml lists providers")
        .iter()
        .map(|p| p["options"]["path"].as_str().expect("provider path"))
        .collect();
    assert_eq!(
        paths,
        [dashboards_target.as_str()],
        "the dashboard provider must read where {GRAFANA_DASHBOARDS_DIR} is mounted"
    );
    let uids: Vec<String> = dashboards()
        .iter()
        .map(|(rel, d)| {
            d["uid"]
                .as_str()
                .unwrap_or_else(|| panic!("{rel} has no uid"))
                .to_string()
        })
        .collect();
    let unique: BTreeSet<&String> = uids.iter().collect();
    assert_eq!(unique.len(), uids.len(), "dashboard uids must be unique");
}

// ------------------------------------------------------------------------------------------------
// Ports and addresses
// ------------------------------------------------------------------------------------------------

#[test]
fn gateway_publishes_exactly_its_listener_and_admin_ports_on_the_same_host_ports() {
    let compose = Compose::load();
    let ports = GatewayPorts::of(&toml_table(COMPOSE_GATEWAY));
    let published = published_ports(compose.service(GATEWAY_SERVICE));
    let container: BTreeSet<u16> = published.iter().map(|p| p.1).collect();
    assert_eq!(
        container,
        ports.all(),
        "{GATEWAY_SERVICE}'s published ports vs {COMPOSE_GATEWAY}'s listener and admin ports"
    );
    for (host, container) in published {
        assert_eq!(
            host, container,
            "host port {host} -> container {container}: keep them equal so the URLs are \
             those of the quick start"
        );
    }
    let exposed: BTreeSet<u16> = dockerfile()
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| {
            a.split_whitespace()
                .map(|p| parse_port(p.split('/').next().unwrap_or_default()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        exposed,
        ports.all(),
        "the Dockerfile's EXPOSE vs the gateway's listener and admin ports"
    );
}

#[test]
fn compose_config_uses_the_ports_of_the_repo_gateway_toml() {
    let repo = GatewayPorts::of(&toml_table(REPO_GATEWAY));
    let compose = GatewayPorts::of(&toml_table(COMPOSE_GATEWAY));
    assert_eq!(
        compose
            .listeners
            .iter()
            .map(|a| a.port())
            .collect::<Vec<_>>(),
        repo.listeners.iter().map(|a| a.port()).collect::<Vec<_>>(),
        "listener ports, in order"
    );
    assert_eq!(compose.admin.port(), repo.admin.port(), "admin port");
}

#[test]
fn compose_config_listens_on_all_interfaces_so_other_containers_reach_it() {
    let ports = GatewayPorts::of(&toml_table(COMPOSE_GATEWAY));
    for addr in ports.listeners.iter().chain([&ports.admin]) {
        assert!(
            addr.ip().is_unspecified(),
            "{COMPOSE_GATEWAY} binds {addr}: inside a container only 0.0.0.0 (or [::]) is \
             reachable through published ports and from other containers"
        );
    }
}

#[test]
fn healthchecks_probe_the_admin_healthz_and_the_samples_health_on_their_ports() {
    let compose = Compose::load();
    let admin = GatewayPorts::of(&toml_table(COMPOSE_GATEWAY)).admin.port();
    let gateway_check = words(&compose.service(GATEWAY_SERVICE)["healthcheck"]["test"]).join(" ");
    assert!(
        gateway_check.contains(&format!("127.0.0.1:{admin}/healthz")),
        "the gateway's healthcheck `{gateway_check}` must ask the admin /healthz on port {admin}"
    );
    for upstream in toml_table(COMPOSE_GATEWAY)["upstreams"]
        .as_table()
        .expect("upstreams")
        .values()
    {
        // gRPC upstreams are checked by tollgate's own gRPC health check; the image has no
        // gRPC client for a compose healthcheck.
        if upstream.get("protocol").and_then(|p| p.as_str()) == Some("h2c") {
            continue;
        }
        for target in target_addresses(upstream) {
            let (service_name, _) = host_port(&target);
            let service = compose.service(&service_name);
            let port = listen_addr(&service_name, service).port();
            let check = words(&service["healthcheck"]["test"]).join(" ");
            assert!(
                check.contains(&format!("127.0.0.1:{port}/health")),
                "service `{service_name}`: healthcheck `{check}` must ask /health on port {port}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// deploy/gateway.compose.toml against gateway.toml
// ------------------------------------------------------------------------------------------------

#[test]
fn upstream_targets_are_compose_services_on_the_ports_they_listen_on() {
    let compose = Compose::load();
    let gateway_deps = depends_on(compose.service(GATEWAY_SERVICE));
    let config = toml_table(COMPOSE_GATEWAY);
    for (upstream_name, upstream) in table(&config, "upstreams") {
        let targets = target_addresses(upstream);
        assert!(
            !targets.is_empty(),
            "upstream `{upstream_name}` has no targets"
        );
        for target in targets {
            let (host, port) = host_port(&target);
            assert!(
                compose.service_names().contains(&host),
                "upstream `{upstream_name}`: target `{target}` is not a compose service"
            );
            let service = compose.service(&host);
            let listen = listen_addr(&host, service);
            assert_eq!(
                port,
                listen.port(),
                "upstream `{upstream_name}`: target `{target}`, but `{host}` listens on {listen}"
            );
            assert!(
                listen.ip().is_unspecified(),
                "service `{host}` listens on {listen}: unreachable from the gateway's container"
            );
            let exposed = container_ports(service);
            assert!(
                exposed.is_empty() || exposed.contains(&port),
                "service `{host}` exposes {exposed:?} but listens on {port}"
            );
            assert!(
                gateway_deps.contains(&host),
                "the gateway should depend on `{host}`, the target of upstream `{upstream_name}`"
            );
        }
    }
}

#[test]
fn every_broker_of_the_compose_config_is_a_service_of_the_compose_file() {
    let compose = toml_table(COMPOSE_GATEWAY);
    let file = Compose::load();
    let services = file.service_names();
    for (name, broker) in table(&compose, "brokers") {
        let addresses: Vec<String> = ["url", "servers", "bootstrap"]
            .iter()
            .filter_map(|k| broker.get(k))
            .flat_map(|v| -> Vec<String> {
                match v {
                    toml::Value::Array(a) => a
                        .iter()
                        .filter_map(|s| s.as_str())
                        .map(str::to_owned)
                        .collect(),
                    v => v.as_str().map(str::to_owned).into_iter().collect(),
                }
            })
            .collect();
        assert!(!addresses.is_empty(), "broker `{name}` has no address");
        for address in addresses {
            // amqp://USER:PASSWORD@HOST:PORT/VHOST, nats://HOST:PORT, HOST:PORT
            let authority = address
                .split_once("://")
                .map_or(&*address, |(_, rest)| rest);
            let authority = authority.split(['/', '?']).next().unwrap_or_default();
            let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
            let (host, port) = host_port(authority);
            assert!(
                services.contains(&host),
                "broker `{name}` is at {address}, and compose has no service `{host}`"
            );
            let exposed = container_ports(file.service(&host));
            assert!(
                exposed.contains(&port),
                "broker `{name}` is at {address}, and service `{host}` exposes {exposed:?}"
            );
        }
    }
}

/// Upstream keys that may differ between the two configs: where the targets are and how often
/// their names are looked up again.
const UPSTREAM_KEYS_ALLOWED_TO_DIFFER: &[&str] = &["targets", "dns_refresh"];

#[test]
fn compose_config_has_the_routes_plugins_and_upstreams_of_the_repo_gateway_toml() {
    let repo = toml_table(REPO_GATEWAY);
    let compose = toml_table(COMPOSE_GATEWAY);

    // The compose file runs brokers the quick start does not (RabbitMQ, Kafka): their routes
    // are compose's own; every other route is the repo's.
    let repo_brokers = repo.get("brokers").and_then(|b| b.as_table());
    let compose_only = |route: &toml::Value| {
        ["publish", "subscribe"].iter().any(|k| {
            route
                .get(k)
                .and_then(|t| t.get("broker"))
                .and_then(|b| b.as_str())
                .is_some_and(|b| repo_brokers.is_none_or(|rb| !rb.contains_key(b)))
        })
    };
    let shared: toml::Table = table(&compose, "routes")
        .iter()
        .filter(|(_, r)| !compose_only(r))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        &shared,
        table(&repo, "routes"),
        "[routes] of {COMPOSE_GATEWAY} and {REPO_GATEWAY} must be identical (but for routes to \
         brokers only compose runs)"
    );
    assert_eq!(
        compose.get("plugins"),
        repo.get("plugins"),
        "[plugins] of {COMPOSE_GATEWAY} and {REPO_GATEWAY} must be identical"
    );

    let repo_upstreams = table(&repo, "upstreams");
    let compose_upstreams = table(&compose, "upstreams");
    assert_eq!(
        compose_upstreams.keys().collect::<Vec<_>>(),
        repo_upstreams.keys().collect::<Vec<_>>(),
        "upstream names"
    );
    for (name, repo_upstream) in repo_upstreams {
        let strip = |v: &toml::Value| {
            let mut t = v.as_table().expect("upstream table").clone();
            for k in UPSTREAM_KEYS_ALLOWED_TO_DIFFER {
                t.remove(*k);
            }
            t
        };
        assert_eq!(
            strip(&compose_upstreams[name]),
            strip(repo_upstream),
            "upstream `{name}`: only {UPSTREAM_KEYS_ALLOWED_TO_DIFFER:?} may differ"
        );
        let weights = |v: &toml::Value| -> Vec<Option<i64>> {
            v["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .map(|t| t.get("weight").and_then(|w| w.as_integer()))
                .collect()
        };
        assert_eq!(
            weights(&compose_upstreams[name]),
            weights(repo_upstream),
            "upstream `{name}`: the same number of targets with the same weights"
        );
    }

    // Listeners: the same names and options; only the bind IP differs.
    let listeners = |config: &toml::Table| -> Vec<toml::Table> {
        config["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .map(|l| {
                let mut t = l.as_table().expect("listener table").clone();
                t.remove("address");
                t
            })
            .collect()
    };
    assert_eq!(
        listeners(&compose),
        listeners(&repo),
        "[[listeners]] options"
    );
}

#[test]
fn tollgate_check_accepts_the_compose_config() {
    let path = root().join(COMPOSE_GATEWAY);
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run tollgate check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "tollgate check rejected {COMPOSE_GATEWAY}:\n{stderr}"
    );
    assert_eq!(stdout.trim_end(), format!("{}: ok", path.display()));
}

// ------------------------------------------------------------------------------------------------
// Grafana dashboard
// ------------------------------------------------------------------------------------------------

#[test]
fn promql_metric_extraction_skips_functions_labels_ranges_and_variables() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route=~"$route", x="b{c}"}[$__rate_interval]))) / on (route) group_left(x) max without(y) (b_total offset 5m) > bool 1e3 and ${var} or c"#,
    );
    assert_eq!(names, ["a_bucket", "b_total", "c"]);
    assert_eq!(
        variable_query_metric_names("label_values(tollgate_target_healthy{a=\"b\"}, upstream)"),
        ["tollgate_target_healthy"]
    );
    assert!(variable_query_metric_names("label_values(route)").is_empty());
}

#[test]
fn dashboard_queries_only_metrics_tollgate_exports() {
    for (rel, dashboard) in dashboards() {
        let queries = dashboard_queries(&dashboard);
        assert!(!queries.exprs.is_empty(), "{rel} has no queries");
        let from_exprs = queries
            .exprs
            .iter()
            .map(|e| (e.clone(), promql_metric_names(e)));
        for (query, names) in from_exprs.chain(queries.variable_metrics) {
            assert!(
                !names.is_empty() || query.starts_with("label_values("),
                "{rel}: query `{query}` selects no metric"
            );
            for name in names {
                assert!(
                    name.starts_with("tollgate_"),
                    "{rel}: `{name}` in `{query}` is not a tollgate metric"
                );
                assert!(
                    listed_metric(&name).is_some(),
                    "{rel}: `{name}` in `{query}` is not a metric tollgate exports (histograms \
                     only as _bucket/_sum/_count)"
                );
            }
        }
    }
}

#[test]
fn dashboard_has_a_panel_for_every_exported_metric() {
    let mut seen = BTreeSet::new();
    for (_, dashboard) in dashboards() {
        for expr in dashboard_queries(&dashboard).exprs {
            seen.extend(
                promql_metric_names(&expr)
                    .iter()
                    .filter_map(|n| listed_metric(n)),
            );
        }
    }
    let missing: Vec<String> = exported_metrics()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !seen.contains(n))
        .collect();
    assert!(missing.is_empty(), "no dashboard panel queries {missing:?}");
}

/// Two panels merged in from separate branches once got the same id and the same place: Grafana
/// links, repeats and saved edits go by the id, and overlapping panels hide each other.
#[test]
fn dashboard_panels_have_distinct_ids_and_do_not_overlap() {
    for (rel, dashboard) in dashboards() {
        let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
        let mut ids = BTreeSet::new();
        let mut placed: Vec<(String, [i64; 4])> = Vec::new();
        for p in &panels {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            let id = p["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{rel}: `{title}` has no id"));
            assert!(
                ids.insert(id),
                "{rel}: panel id {id} is used twice (`{title}`)"
            );
            let g = &p["gridPos"];
            let at = ["x", "y", "w", "h"].map(|k| g[k].as_i64().unwrap_or(0));
            for (other, o) in &placed {
                let apart = at[0] + at[2] <= o[0]
                    || o[0] + o[2] <= at[0]
                    || at[1] + at[3] <= o[1]
                    || o[1] + o[3] <= at[1];
                assert!(apart, "{rel}: `{title}` overlaps `{other}`");
            }
            placed.push((title, at));
        }
    }
}

#[test]
fn dashboard_panels_use_the_provisioned_data_sources() {
    let provisioned: BTreeSet<String> = yaml(GRAFANA_DATASOURCES)["datasources"]
        .as_sequence()
        .expect("datasources")
        .iter()
        .map(|d| {
            d["uid"]
                .as_str()
                .expect("data sources have fixed uids")
                .to_string()
        })
        .collect();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "datasource" {
                        if let Some(uid) = v["uid"].as_str() {
                            out.push(uid.to_string());
                        }
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    for (rel, dashboard) in dashboards() {
        let mut uids = Vec::new();
        walk(&dashboard, &mut uids);
        for uid in uids {
            assert!(
                provisioned.contains(&uid) || uid == "-- Grafana --" || uid.starts_with('$'),
                "{rel}: data source uid `{uid}` is not provisioned ({provisioned:?})"
            );
        }
    }
}
