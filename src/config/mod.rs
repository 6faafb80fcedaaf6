//! Loading gateway.toml: parse (with spans), validate, resolve references, build plugins and
//! compile the route table. Everything that can be wrong with a config is found here, reported as
//! `FILE:LINE:COL: message`, before anything starts serving.

mod error;
mod file;
pub mod model;
mod tls;
mod values;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use serde::Deserialize;
use tollgate_plugin_api::{BuildContext, PluginRegistry};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;

use crate::router::{self, HeaderMatch, HostMatch, PathMatch, RouteSpec, RouteTable};
use error::Collector;
use file::{FileConfig, HeaderCondition, TargetEntry};

/// Default admin address when `[admin]` is absent.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// Reads and validates a config file.
pub fn load(path: &Path, registry: &PluginRegistry) -> Result<GatewayConfig, ConfigErrors> {
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
pub fn load_str(
    path: &Path,
    src: &str,
    registry: &PluginRegistry,
) -> Result<GatewayConfig, ConfigErrors> {
    let mut c = Collector::new(path, src);
    let root = match DeTable::parse(src) {
        Ok(root) => root,
        Err(e) => {
            c.at(e.span().unwrap_or(0..0), e.message().trim_end().to_string());
            return Err(c.finish().err().unwrap_or(ConfigErrors(Vec::new())));
        }
    };
    // serde stops at the first error, so each section is read on its own first: a file with
    // mistakes in several places gets all of them reported at once.
    if !section_errors(root.get_ref(), &mut c) {
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

/// Deserializes every top-level section (and every entry of the listener, upstream and route
/// collections) separately, recording each failure. Returns whether all of them were well formed.
fn section_errors(root: &DeTable<'_>, c: &mut Collector<'_>) -> bool {
    use serde::de::DeserializeOwned;
    use toml::de::ValueDeserializer;

    fn one<T: DeserializeOwned>(value: &Spanned<DeValue<'_>>, c: &mut Collector<'_>) -> bool {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(_) => true,
            Err(e) => {
                let span = e.span().unwrap_or_else(|| value.span());
                c.at(span, e.message().trim_end().to_string());
                false
            }
        }
    }
    fn each<T: DeserializeOwned>(value: &Spanned<DeValue<'_>>, c: &mut Collector<'_>) -> bool {
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
            "routes" => each::<file::RouteSection>(value, c),
            // Plugin tables are read by the registry, with their own errors.
            "plugins" => true,
            other => {
                c.at(
                    key.span(),
                    format!(
                        "unknown field `{other}`, expected one of `server`, `log`, `listeners`, \
                         `admin`, `upstreams`, `routes`, `plugins`"
                    ),
                );
                false
            }
        };
    }
    ok
}

struct Validator<'a, 'c> {
    c: &'a mut Collector<'c>,
    base_dir: &'a Path,
    registry: &'a PluginRegistry,
    root: &'a DeTable<'a>,
}

/// Upper bound of a target weight; keeps the round-robin schedule small.
const MAX_WEIGHT: i64 = 1000;

impl Validator<'_, '_> {
    fn validate(mut self, file: FileConfig, path: &Path) -> Option<GatewayConfig> {
        let server = self.server(&file.server);
        let log = LogSettings {
            format: file.log.format.unwrap_or_default(),
            level: self.log_level(file.log.level.as_ref()),
        };
        let listeners = self.listeners(&file.listeners);
        if file.listeners.is_empty() {
            self.c.at(
                0..0,
                "no `[[listeners]]`: add at least one, e.g. `[[listeners]]` with `address = \"0.0.0.0:8080\"`",
            );
        }
        let admin = self.admin(file.admin.as_ref());
        if let (Some(admin), Some(section)) = (&admin, file.admin.as_ref()) {
            if let Some(l) = listeners.iter().find(|l| l.address == admin.address) {
                let span = section.address.as_ref().map_or(0..0, |a| a.span());
                self.c.at(
                    span,
                    format!(
                        "admin address {} is already used by listener `{}`",
                        admin.address, l.name
                    ),
                );
            }
        } else if let Some(admin) = &admin {
            if let Some(l) = listeners.iter().find(|l| l.address == admin.address) {
                self.c.at(
                    0..0,
                    format!(
                        "listener `{}` uses {}, the default admin address; move it or set `[admin] address`",
                        l.name, admin.address
                    ),
                );
            }
        }
        let (upstreams, upstream_index) = self.upstreams(&file.upstreams);
        let globals = self.global_plugins(&file.plugins);
        let routes = self.routes(&file.routes, &upstreams, &upstream_index, &globals);
        let table = self.route_table(&file.routes, routes.iter().map(|(spec, _)| spec.clone()));
        let routes = routes.into_iter().map(|(_, r)| r).collect();
        Some(GatewayConfig {
            source: path.to_path_buf(),
            server,
            log,
            listeners,
            admin,
            upstreams,
            routes,
            table: Arc::new(table?),
            global_plugins: {
                let mut g = globals;
                g.sort_by(|a, b| {
                    b.priority
                        .cmp(&a.priority)
                        .then_with(|| a.name.cmp(&b.name))
                });
                g.into()
            },
        })
    }

    fn server(&mut self, s: &file::ServerSection) -> ServerSettings {
        let threads = match &s.threads {
            Some(t) if *t.get_ref() == 0 => {
                self.c.at(t.span(), "`threads` must be at least 1");
                1
            }
            Some(t) => *t.get_ref(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let mut trusted_proxies = Vec::new();
        for p in &s.trusted_proxies {
            match parse_cidr(p.get_ref()) {
                Ok(net) => trusted_proxies.push(net),
                Err(m) => self.c.at(p.span(), m),
            }
        }
        let max_request_header_bytes = self.positive_size(
            s.max_request_header_bytes.as_ref(),
            32 * 1024,
            "max_request_header_bytes",
        );
        let max_uri_bytes = self.positive_size(s.max_uri_bytes.as_ref(), 8 * 1024, "max_uri_bytes");
        ServerSettings {
            threads,
            trusted_proxies,
            max_request_header_bytes,
            max_uri_bytes,
            keepalive_pool_size: s.keepalive_pool_size.unwrap_or(128),
            graceful_shutdown_timeout: s
                .graceful_shutdown_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
        }
    }

    fn positive_size(
        &mut self,
        v: Option<&Spanned<values::ByteSize>>,
        default: usize,
        key: &str,
    ) -> usize {
        match v {
            None => default,
            Some(v) => {
                let n = v.get_ref().as_u64();
                if n == 0 {
                    self.c
                        .at(v.span(), format!("`{key}` must be greater than 0"));
                }
                usize::try_from(n).unwrap_or(usize::MAX)
            }
        }
    }

    fn listeners(&mut self, ls: &[Spanned<file::ListenerSection>]) -> Vec<Listener> {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for (i, l) in ls.iter().enumerate() {
            let l = l.get_ref();
            let address = match l.address.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.c.at(
                        l.address.span(),
                        format!(
                            "invalid listener address `{}`: expected IP:PORT, e.g. \"0.0.0.0:8080\"",
                            l.address.get_ref()
                        ),
                    );
                    continue;
                }
            };
            if let Some(prev) = seen.insert(address, i) {
                self.c.at(
                    l.address.span(),
                    format!(
                        "listener address {address} is already used by listener #{}",
                        prev + 1
                    ),
                );
            }
            let tls = match &l.tls {
                Some(t) => {
                    let t = t.get_ref();
                    let cert_file = self.existing_file(&t.cert_file, "certificate");
                    let key_file = self.existing_file(&t.key_file, "private key");
                    let (Some(cert_file), Some(key_file)) = (cert_file, key_file) else {
                        continue;
                    };
                    let certified_key = match tls::load_certified_key(&cert_file, &key_file) {
                        Ok(k) => k,
                        Err(tls::KeyError::Cert(m)) => {
                            self.c.at(t.cert_file.span(), m);
                            continue;
                        }
                        Err(tls::KeyError::Key(m)) => {
                            self.c.at(t.key_file.span(), m);
                            continue;
                        }
                    };
                    Some(ListenerTls {
                        cert_file,
                        key_file,
                        h2: t.h2.unwrap_or(true),
                        certified_key,
                    })
                }
                None => None,
            };
            out.push(Listener {
                name: l
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("listener-{}", i + 1)),
                address,
                h2c: l.h2c.unwrap_or(tls.is_none()),
                tls,
            });
        }
        out
    }

    fn existing_file(&mut self, p: &Spanned<String>, what: &str) -> Option<PathBuf> {
        let path = self.resolve(p.get_ref());
        if path.is_file() {
            Some(path)
        } else {
            self.c.at(
                p.span(),
                format!("{what} file `{}` does not exist", path.display()),
            );
            None
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let path = PathBuf::from(p);
        if path.is_absolute() {
            path
        } else {
            self.base_dir.join(path)
        }
    }

    fn log_level(&mut self, level: Option<&Spanned<String>>) -> String {
        let Some(level) = level else {
            return "info".to_string();
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
            self.c.at(
                level.span(),
                format!(
                    "invalid log level `{}`: {e} (use e.g. \"info\" or \"info,tollgate=debug\")",
                    level.get_ref()
                ),
            );
        }
        level.get_ref().clone()
    }

    fn admin(&mut self, a: Option<&file::AdminSection>) -> Option<AdminSettings> {
        if a.and_then(|a| a.enabled) == Some(false) {
            return None;
        }
        let addr = match a.and_then(|a| a.address.as_ref()) {
            Some(s) => match s.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.c.at(
                        s.span(),
                        format!("invalid admin address `{}`: expected IP:PORT", s.get_ref()),
                    );
                    return None;
                }
            },
            None => DEFAULT_ADMIN_ADDRESS.parse().ok()?,
        };
        Some(AdminSettings { address: addr })
    }

    fn upstreams(
        &mut self,
        ups: &BTreeMap<Spanned<String>, Spanned<file::UpstreamSection>>,
    ) -> (Vec<Arc<UpstreamConfig>>, HashMap<String, usize>) {
        let mut out = Vec::new();
        let mut index = HashMap::new();
        for (name, u) in ups {
            let u = u.get_ref();
            let mut targets = Vec::new();
            if u.targets.get_ref().is_empty() {
                self.c.at(
                    u.targets.span(),
                    format!("upstream `{}` has no targets", name.get_ref()),
                );
            }
            for t in u.targets.get_ref() {
                if let Some(target) = self.target(t) {
                    targets.push(target);
                }
            }
            let protocol = u.protocol.unwrap_or(Protocol::Http1);
            let tls = match (&u.tls, protocol) {
                (Some(t), Protocol::H2c) => {
                    self.c.at(
                        t.span(),
                        "`tls` cannot be used with protocol \"h2c\" (h2c is plaintext; use \"h2\")",
                    );
                    None
                }
                (Some(t), _) => Some(self.upstream_tls(t.get_ref())),
                (None, Protocol::H2) => Some(UpstreamTls {
                    sni: None,
                    ca_certs: None,
                    verify: true,
                }),
                (None, _) => None,
            };
            let host_header = u.host_header.as_ref().and_then(|h| {
                HeaderValue::from_str(h.get_ref())
                    .map_err(|_| {
                        self.c
                            .at(h.span(), "`host_header` is not a valid header value")
                    })
                    .ok()
            });
            let max_h2_streams = match &u.max_h2_streams {
                Some(n) if *n.get_ref() == 0 => {
                    self.c.at(n.span(), "`max_h2_streams` must be at least 1");
                    1
                }
                Some(n) => *n.get_ref(),
                None => 100,
            };
            index.insert(name.get_ref().clone(), out.len());
            out.push(Arc::new(UpstreamConfig {
                name: Arc::from(name.get_ref().as_str()),
                targets,
                protocol,
                tls,
                host_header,
                timeouts: Timeouts {
                    connect: u.connect_timeout.map_or(Duration::from_secs(5), |d| d.0),
                    read: u.read_timeout.map_or(Duration::from_secs(60), |d| d.0),
                    write: u.write_timeout.map_or(Duration::from_secs(60), |d| d.0),
                    idle: u.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
                },
                connect_failure_cooldown: u
                    .connect_failure_cooldown
                    .map_or(Duration::from_secs(2), |d| d.0),
                max_h2_streams,
            }));
        }
        (out, index)
    }

    fn target(&mut self, t: &Spanned<TargetEntry>) -> Option<TargetConfig> {
        let (address, weight) = match t.get_ref() {
            TargetEntry::Address(a) => (a.as_str(), 1),
            TargetEntry::Weighted(w) => (w.address.as_str(), w.weight.unwrap_or(1)),
        };
        if !(1..=MAX_WEIGHT).contains(&weight) {
            self.c.at(
                t.span(),
                format!(
                    "target `{address}`: weight must be between 1 and {MAX_WEIGHT}, got {weight}"
                ),
            );
            return None;
        }
        if let Ok(sa) = address.parse::<SocketAddr>() {
            return Some(TargetConfig {
                label: address.to_string(),
                address: sa,
                hostname: None,
                weight: weight as u32,
            });
        }
        let Some((host, port)) = address.rsplit_once(':') else {
            self.c.at(
                t.span(),
                format!("target `{address}` must be HOST:PORT, e.g. \"127.0.0.1:3000\""),
            );
            return None;
        };
        if port.parse::<u16>().is_err() || host.is_empty() {
            self.c.at(
                t.span(),
                format!("target `{address}` must be HOST:PORT with a port from 1 to 65535"),
            );
            return None;
        }
        match address.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(sa)) => Some(TargetConfig {
                label: address.to_string(),
                address: sa,
                hostname: Some(host.to_string()),
                weight: weight as u32,
            }),
            Ok(None) | Err(_) => {
                self.c.at(
                    t.span(),
                    format!("target `{address}`: cannot resolve host `{host}`"),
                );
                None
            }
        }
    }

    fn upstream_tls(&mut self, t: &file::UpstreamTls) -> UpstreamTls {
        let ca_certs = t.ca_file.as_ref().and_then(|f| {
            let path = self.existing_file(f, "CA")?;
            match tls::read_pem_certs(&path) {
                Ok(certs) => Some(certs),
                Err(m) => {
                    self.c.at(f.span(), m);
                    None
                }
            }
        });
        UpstreamTls {
            sni: t.sni.clone(),
            ca_certs,
            verify: t.verify.unwrap_or(true),
        }
    }

    fn global_plugins(
        &mut self,
        plugins: &BTreeMap<Spanned<String>, serde::de::IgnoredAny>,
    ) -> Vec<PluginEntry> {
        let table = self.root.get("plugins").map(|v| v.get_ref());
        self.build_plugins(table, plugins.keys().map(|k| k.span()).collect(), true)
    }

    fn build_plugins(
        &mut self,
        table: Option<&DeValue<'_>>,
        _key_spans: Vec<Range<usize>>,
        global: bool,
    ) -> Vec<PluginEntry> {
        let Some(table) = table else {
            return Vec::new();
        };
        let Some(table) = table.as_table() else {
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

    fn routes(
        &mut self,
        routes: &BTreeMap<Spanned<String>, Spanned<file::RouteSection>>,
        upstreams: &[Arc<UpstreamConfig>],
        upstream_index: &HashMap<String, usize>,
        globals: &[PluginEntry],
    ) -> Vec<(RouteSpec, Route)> {
        let route_tables = self.root.get("routes").and_then(|v| v.get_ref().as_table());
        let mut out = Vec::new();
        for (id, (name, r)) in routes.iter().enumerate() {
            let route_span = r.span();
            let r = r.get_ref();
            let route_name = name.get_ref().as_str();
            let upstream = match upstream_index.get(r.upstream.get_ref()) {
                Some(i) => Some(*i),
                None => {
                    self.c.at(
                        r.upstream.span(),
                        format!(
                            "route `{route_name}`: upstream `{}` is not defined",
                            r.upstream.get_ref()
                        ),
                    );
                    None
                }
            };
            let path = self.route_path(route_name, r, route_span.clone());
            let host = r.host.as_ref().and_then(|h| self.host(route_name, h));
            let mut methods_ok = true;
            let methods = r.methods.as_ref().map(|ms| {
                if ms.get_ref().is_empty() {
                    methods_ok = false;
                    self.c.at(
                        ms.span(),
                        format!("route `{route_name}`: `methods` must not be empty (leave it out to allow any method)"),
                    );
                }
                ms.get_ref()
                    .iter()
                    .filter_map(|m| {
                        let upper = m.get_ref().to_ascii_uppercase();
                        match Method::from_bytes(upper.as_bytes()) {
                            Ok(method) if !upper.is_empty() => Some(method),
                            _ => {
                                methods_ok = false;
                                self.c.at(
                                    m.span(),
                                    format!(
                                        "route `{route_name}`: invalid method `{}`",
                                        m.get_ref()
                                    ),
                                );
                                None
                            }
                        }
                    })
                    .collect::<Vec<_>>()
            });
            let mut headers = Vec::new();
            for (hname, cond) in &r.headers {
                let Ok(header) = HeaderName::from_bytes(hname.get_ref().as_bytes()) else {
                    self.c.at(
                        hname.span(),
                        format!(
                            "route `{route_name}`: invalid header name `{}`",
                            hname.get_ref()
                        ),
                    );
                    continue;
                };
                let value = match cond.get_ref() {
                    HeaderCondition::Equals(v) => Some(v.clone()),
                    HeaderCondition::Present(true) => None,
                    HeaderCondition::Present(false) => {
                        self.c.at(
                            cond.span(),
                            format!(
                                "route `{route_name}`: header condition must be a string or `true`"
                            ),
                        );
                        continue;
                    }
                };
                headers.push(HeaderMatch {
                    name: header,
                    value,
                });
            }
            let param_names: Vec<Arc<str>> = match &path {
                Some(PathMatch::Template(t)) => router::template_param_names(t)
                    .map(|v| v.into_iter().map(|s| Arc::from(s.as_str())).collect())
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let rewrite = self.rewrite(route_name, r, path.as_ref(), &param_names);
            let plugins = self.route_plugins(route_name, r, route_tables, globals);
            let (Some(path), Some(upstream), true) = (path, upstream, methods_ok) else {
                continue;
            };
            out.push((
                RouteSpec {
                    id,
                    name: route_name.to_string(),
                    host,
                    path,
                    methods,
                    headers,
                },
                Route {
                    name: Arc::from(route_name),
                    upstream,
                    upstream_name: upstreams[upstream].name.clone(),
                    param_names,
                    rewrite,
                    connect_timeout: r.connect_timeout.map(|d| d.0),
                    read_timeout: r.read_timeout.map(|d| d.0),
                    write_timeout: r.write_timeout.map(|d| d.0),
                    plugins: plugins.into(),
                },
            ));
        }
        out
    }

    fn route_path(
        &mut self,
        route: &str,
        r: &file::RouteSection,
        route_span: Range<usize>,
    ) -> Option<PathMatch> {
        let given: Vec<_> = [
            r.exact.as_ref().map(|p| ("exact", p)),
            r.prefix.as_ref().map(|p| ("prefix", p)),
            r.template.as_ref().map(|p| ("template", p)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let (kind, p) = match given.as_slice() {
            [one] => *one,
            [] => {
                self.c.at(
                    route_span,
                    format!("route `{route}`: set one of `exact`, `prefix` or `template`"),
                );
                return None;
            }
            [_, (kind, p), ..] => {
                self.c.at(
                    p.span(),
                    format!("route `{route}`: `{kind}` cannot be combined with another path match; set only one of `exact`, `prefix`, `template`"),
                );
                return None;
            }
        };
        let value = p.get_ref();
        if !value.starts_with('/') {
            self.c.at(
                p.span(),
                format!("route `{route}`: {kind} path `{value}` must start with `/`"),
            );
            return None;
        }
        match router::normalize_path(value) {
            Ok(n) if n == value.as_str() => {}
            Ok(n) => {
                self.c.at(
                    p.span(),
                    format!("route `{route}`: {kind} path `{value}` is not in normal form (write `{n}`)"),
                );
                return None;
            }
            Err(e) => {
                self.c.at(
                    p.span(),
                    format!("route `{route}`: {kind} path `{value}`: {e}"),
                );
                return None;
            }
        }
        Some(match kind {
            "exact" => PathMatch::Exact(value.clone()),
            "prefix" => PathMatch::Prefix(value.clone()),
            _ => {
                if let Err(m) = router::template_param_names(value) {
                    self.c.at(p.span(), format!("route `{route}`: {m}"));
                    return None;
                }
                PathMatch::Template(value.clone())
            }
        })
    }

    fn host(&mut self, route: &str, h: &Spanned<String>) -> Option<HostMatch> {
        let v = h.get_ref().to_ascii_lowercase();
        let (wild, name) = match v.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, v.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            self.c.at(
                h.span(),
                format!("route `{route}`: invalid host `{}` (write a name like \"api.example.com\" or \"*.example.com\", without port)", h.get_ref()),
            );
            return None;
        }
        Some(if wild {
            HostMatch::Wildcard(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_string())
        })
    }

    fn rewrite(
        &mut self,
        route: &str,
        r: &file::RouteSection,
        path: Option<&PathMatch>,
        params: &[Arc<str>],
    ) -> Rewrite {
        let strip = r.strip_prefix.as_ref().filter(|s| *s.get_ref());
        let is_prefix = matches!(path, Some(PathMatch::Prefix(_)));
        match (strip, &r.rewrite) {
            (Some(s), Some(_)) => {
                self.c.at(
                    s.span(),
                    format!("route `{route}`: `strip_prefix` and `rewrite` cannot both be set"),
                );
                Rewrite::None
            }
            (Some(s), None) => {
                if !is_prefix && path.is_some() {
                    self.c.at(
                        s.span(),
                        format!("route `{route}`: `strip_prefix` needs a `prefix` route"),
                    );
                }
                Rewrite::Prefix(String::new())
            }
            (None, Some(rw)) => {
                let value = rw.get_ref();
                if !value.starts_with('/') {
                    self.c.at(
                        rw.span(),
                        format!("route `{route}`: rewrite `{value}` must start with `/`"),
                    );
                    return Rewrite::None;
                }
                if is_prefix {
                    if value.contains('{') {
                        self.c.at(
                            rw.span(),
                            format!("route `{route}`: a prefix route's rewrite replaces the prefix and cannot use `{{params}}`"),
                        );
                    }
                    return Rewrite::Prefix(value.clone());
                }
                match parse_rewrite(value, params) {
                    Ok(parts) => Rewrite::Template(parts),
                    Err(m) => {
                        self.c.at(
                            rw.span(),
                            format!("route `{route}`: rewrite `{value}`: {m}"),
                        );
                        Rewrite::None
                    }
                }
            }
            (None, None) => Rewrite::None,
        }
    }

    fn route_plugins(
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
        let own = self.build_plugins(table, Vec::new(), false);
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
            .collect::<Vec<_>>()
            .into_iter()
            .chain(own)
            .collect();
        chain.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        chain
    }

    fn route_table(
        &mut self,
        routes: &BTreeMap<Spanned<String>, Spanned<file::RouteSection>>,
        specs: impl Iterator<Item = RouteSpec>,
    ) -> Option<RouteTable> {
        let spans: Vec<(Range<usize>, Range<usize>)> = routes
            .iter()
            .map(|(name, r)| {
                let r = r.get_ref();
                let path_span = r
                    .exact
                    .as_ref()
                    .or(r.prefix.as_ref())
                    .or(r.template.as_ref())
                    .map(|p| p.span())
                    .unwrap_or_else(|| name.span());
                (name.span(), path_span)
            })
            .collect();
        match RouteTable::build(specs.collect()) {
            Ok(t) => Some(t),
            Err(errors) => {
                for e in errors {
                    let (id, message) = match e {
                        router::RouteError::InvalidTemplate { id, message }
                        | router::RouteError::InvalidHost { id, message }
                        | router::RouteError::InvalidMatcher { id, message }
                        | router::RouteError::InvalidPath { id, message }
                        | router::RouteError::Conflict { id, message, .. } => (id, message),
                    };
                    let span = spans.get(id).map(|s| s.1.clone()).unwrap_or(0..0);
                    self.c.at(span, message);
                }
                None
            }
        }
    }
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!("invalid CIDR or IP address `{s}` (write e.g. \"10.0.0.0/8\" or \"192.168.1.7\")")
    })
}

fn parse_rewrite(value: &str, params: &[Arc<str>]) -> Result<Vec<RewritePart>, String> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(RewritePart::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("unclosed `{`")?;
        let name = &after[..close];
        let idx = params
            .iter()
            .position(|p| &**p == name)
            .ok_or_else(|| format!("`{{{name}}}` is not a parameter of the route's template"))?;
        parts.push(RewritePart::Param(idx));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched `}`".into());
    }
    if !rest.is_empty() {
        parts.push(RewritePart::Literal(rest.to_string()));
    }
    Ok(parts)
}
