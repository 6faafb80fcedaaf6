//! Loading gateway.toml: parse (with spans), validate, resolve references, build plugins and
//! compile the route table. Everything that can be wrong with a config is found here, reported as
//! `FILE:LINE:COL: message`, before anything starts serving.

mod error;
mod file;
pub mod model;
mod restart_only;
mod tls;
mod values;
mod view;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use serde::Deserialize;
use tollgate_plugin_api::{BuildContext, PluginRegistry, Secret};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use error::{ConfigError, ConfigErrors, Escaped};
pub use model::*;
pub use restart_only::ProcessSettings;

use crate::router::{self, HeaderMatch, HostMatch, PathMatch, RouteSpec, RouteTable};
use error::Collector;
use file::{FileConfig, HeaderCondition, TargetEntry};

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
            "access_log" => one::<file::AccessLogSection>(value, c),
            "tracing" => one::<crate::telemetry::trace::TracingSection>(value, c),
            "plugins" => true,
            other => {
                c.at(
                    key.span(),
                    format!(
                        "unknown field `{other}`, expected one of `server`, `log`, `listeners`, \
                         `admin`, `upstreams`, `routes`, `plugins`, `access_log`, `tracing`"
                    ),
                );
                false
            }
        };
    }
    ok
}

/// The client-limit keys of one `[server]` or `[[listeners]]` table.
struct ClientLimitKeys<'a> {
    request_header_timeout: Option<&'a Spanned<values::Duration>>,
    client_body_timeout: Option<&'a Spanned<values::Duration>>,
    request_timeout: Option<&'a Spanned<values::Duration>>,
    escaped_slashes: Option<file::EscapedSlashes>,
}

struct Validator<'a, 'c> {
    c: &'a mut Collector<'c>,
    base_dir: &'a Path,
    registry: &'a PluginRegistry,
    root: &'a DeTable<'a>,
}

/// Upper bound of a target weight; keeps the round-robin schedule small.
const MAX_WEIGHT: i64 = 1000;

/// Shortest interval of health checks and discovery refreshes.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl Validator<'_, '_> {
    fn validate(mut self, file: FileConfig, path: &Path) -> Option<GatewayConfig> {
        let access_log = self.access_log(file.access_log.as_ref());
        let tracing = match &file.tracing {
            Some(t) => match t.get_ref().validate() {
                Ok(settings) => settings,
                Err(m) => {
                    self.c.at(t.span(), format!("tracing: {m}"));
                    crate::telemetry::trace::TracingSettings::default()
                }
            },
            None => match crate::telemetry::trace::TracingSection::default().validate() {
                Ok(settings) => settings,
                Err(m) => {
                    self.c
                        .at(0..0, format!("tracing (from OTEL_* variables): {m}"));
                    crate::telemetry::trace::TracingSettings::default()
                }
            },
        };
        let server = self.server(&file.server);
        let log = LogSettings {
            format: file.log.format.unwrap_or_default(),
            level: self.log_level(file.log.level.as_ref()),
        };
        let listeners = self.listeners(&file.listeners, server.client);
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
            access_log,
            tracing,
            view: Arc::new(view::render(&file, self.root, self.registry)),
        })
    }

    fn access_log(
        &mut self,
        a: Option<&Spanned<file::AccessLogSection>>,
    ) -> crate::telemetry::access_log::AccessLogSettings {
        use crate::telemetry::access_log::{AccessLogSettings, Sink, FIELDS};
        let s = a.map(|a| a.get_ref());
        let enabled = s.and_then(|s| s.enabled).unwrap_or(true);
        let sink = match s.and_then(|s| s.path.as_ref()) {
            _ if !enabled => None,
            None => Some(Sink::Stdout),
            Some(p) if p.get_ref() == "-" => Some(Sink::Stdout),
            Some(p) => Some(Sink::File(self.base_dir.join(p.get_ref()))),
        };
        let mut fields = Vec::new();
        for f in s.and_then(|s| s.fields.as_ref()).into_iter().flatten() {
            if FIELDS.contains(&f.get_ref().as_str()) {
                fields.push(f.get_ref().clone());
            } else {
                self.c.at(
                    f.span(),
                    format!(
                        "unknown access log field `{}`; known fields: {}",
                        f.get_ref(),
                        FIELDS.join(", ")
                    ),
                );
            }
        }
        AccessLogSettings { sink, fields }
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
            watch_config: s.watch_config.unwrap_or(false),
            upgrade_sock: PathBuf::from(
                s.upgrade_sock
                    .clone()
                    .unwrap_or_else(|| "/tmp/tollgate_upgrade.sock".into()),
            ),
            client: self.client_limits(
                ClientLimits::default(),
                &ClientLimitKeys {
                    request_header_timeout: s.request_header_timeout.as_ref(),
                    client_body_timeout: s.client_body_timeout.as_ref(),
                    request_timeout: s.request_timeout.as_ref(),
                    escaped_slashes: s.escaped_slashes,
                },
            ),
        }
    }

    /// `base` with the keys given in a `[server]` or `[[listeners]]` table applied.
    fn client_limits(&mut self, base: ClientLimits, keys: &ClientLimitKeys<'_>) -> ClientLimits {
        let mut positive = |v: Option<&Spanned<values::Duration>>, key: &str| {
            let v = v?;
            if v.get_ref().0.is_zero() {
                let instead = if key == "request_timeout" {
                    "leave it out to have none"
                } else {
                    "leave it out for the default"
                };
                self.c.at(
                    v.span(),
                    format!("`{key}` must be longer than 0s ({instead})"),
                );
                return None;
            }
            Some(v.get_ref().0)
        };
        ClientLimits {
            request_header_timeout: positive(keys.request_header_timeout, "request_header_timeout")
                .unwrap_or(base.request_header_timeout),
            client_body_timeout: positive(keys.client_body_timeout, "client_body_timeout")
                .unwrap_or(base.client_body_timeout),
            request_timeout: positive(keys.request_timeout, "request_timeout")
                .or(base.request_timeout),
            escaped_slashes: keys.escaped_slashes.unwrap_or(base.escaped_slashes),
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

    fn listeners(
        &mut self,
        ls: &[Spanned<file::ListenerSection>],
        defaults: ClientLimits,
    ) -> Vec<Listener> {
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
                client: self.client_limits(
                    defaults,
                    &ClientLimitKeys {
                        request_header_timeout: l.request_header_timeout.as_ref(),
                        client_body_timeout: l.client_body_timeout.as_ref(),
                        request_timeout: l.request_timeout.as_ref(),
                        escaped_slashes: l.escaped_slashes,
                    },
                ),
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
        if let Err(e) = log_filter(level.get_ref()) {
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
        let token = match a.and_then(|a| a.token_env.as_ref()) {
            None => None,
            Some(var) => match std::env::var(var.get_ref()) {
                Ok(t) if !t.trim().is_empty() => Some(Secret::new(t.trim().to_string())),
                _ => {
                    self.c.at(
                        var.span(),
                        format!(
                            "admin token variable `{}` is not set (or empty)",
                            var.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        Some(AdminSettings {
            address: addr,
            token,
        })
    }

    fn upstreams(
        &mut self,
        ups: &BTreeMap<Spanned<String>, Spanned<file::UpstreamSection>>,
    ) -> (Vec<Arc<UpstreamConfig>>, HashMap<String, usize>) {
        let mut out = Vec::new();
        let mut index = HashMap::new();
        for (name, section) in ups {
            let u = section.get_ref();
            let uname = name.get_ref();
            let mut targets = Vec::new();
            match (&u.targets, &u.discovery) {
                (None, None) => self.c.at(
                    section.span(),
                    format!("upstream `{uname}` needs `targets` or `discovery`"),
                ),
                (Some(t), _) if t.get_ref().is_empty() => self
                    .c
                    .at(t.span(), format!("upstream `{uname}` has no targets")),
                (Some(_), Some(d)) => self.c.at(
                    d.span(),
                    format!("upstream `{uname}`: use either `targets` or `discovery`, not both"),
                ),
                _ => {}
            }
            for t in u.targets.iter().flat_map(|t| t.get_ref()) {
                if let Some(target) = self.target(t) {
                    targets.push(target);
                }
            }
            let discovery = u.discovery.as_ref().and_then(|d| self.discovery(uname, d));
            let dns_refresh = self.min_duration(
                u.dns_refresh.as_ref(),
                Duration::from_secs(30),
                "dns_refresh",
            );
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
                    ca: None,
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
            let algorithm = match u.balance.unwrap_or(file::Balance::RoundRobin) {
                file::Balance::RoundRobin => Algorithm::RoundRobin,
                file::Balance::Random => Algorithm::Random,
                file::Balance::LeastRequest => Algorithm::LeastRequest,
                file::Balance::RingHash => Algorithm::RingHash,
            };
            let hash_on = match (&u.hash_on, algorithm) {
                (Some(h), Algorithm::RingHash) => self.hash_on(h),
                (Some(h), _) => {
                    self.c.at(
                        h.span(),
                        "`hash_on` only applies to `balance = \"ring_hash\"`",
                    );
                    HashOn::ClientIp
                }
                (None, _) => HashOn::ClientIp,
            };
            let health_check = u
                .health_check
                .as_ref()
                .and_then(|h| self.health_check(h, protocol));
            let outlier = self.outlier(u.outlier_detection.as_ref());
            let retry = self.retry(u.retry.as_ref());
            let circuit_breaker = self.circuit_breaker(u.circuit_breaker.as_ref());
            index.insert(uname.clone(), out.len());
            out.push(Arc::new(UpstreamConfig {
                name: Arc::from(uname.as_str()),
                targets,
                discovery,
                dns_refresh,
                protocol,
                tls,
                host_header,
                timeouts: Timeouts {
                    connect: u.connect_timeout.map_or(Duration::from_secs(5), |d| d.0),
                    read: u.read_timeout.map_or(Duration::from_secs(60), |d| d.0),
                    write: u.write_timeout.map_or(Duration::from_secs(60), |d| d.0),
                    idle: u.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
                },
                max_h2_streams,
                balance: BalanceConfig { algorithm, hash_on },
                panic_mode: u.panic_mode.unwrap_or(true),
                health_check,
                outlier,
                retry,
                circuit_breaker,
            }));
        }
        (out, index)
    }

    /// A duration that must be at least 100 ms (intervals); `default` when absent.
    fn min_duration(
        &mut self,
        d: Option<&Spanned<crate::config::values::Duration>>,
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

    fn hash_on(&mut self, h: &Spanned<String>) -> HashOn {
        let v = h.get_ref();
        let parsed = match v.split_once(':') {
            Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
                .ok()
                .map(HashOn::Header),
            Some(("cookie", name)) if !name.trim().is_empty() => {
                Some(HashOn::Cookie(name.trim().to_string()))
            }
            None if v == "client_ip" => Some(HashOn::ClientIp),
            None if v == "path" => Some(HashOn::Path),
            _ => None,
        };
        parsed.unwrap_or_else(|| {
            self.c.at(
                h.span(),
                format!("invalid `hash_on` `{v}`: use \"header:NAME\", \"cookie:NAME\", \"client_ip\" or \"path\""),
            );
            HashOn::ClientIp
        })
    }

    fn discovery(
        &mut self,
        upstream: &str,
        d: &Spanned<file::DiscoverySection>,
    ) -> Option<DiscoveryConfig> {
        use crate::upstream::discovery::{ConsulQuery, Nameservers};
        let s = d.get_ref();
        let interval = self.min_duration(s.interval.as_ref(), Duration::from_secs(10), "interval");
        let missing = |c: &mut Collector<'_>, key: &str| {
            c.at(
                d.span(),
                format!(
                    "upstream `{upstream}`: `{}` discovery needs `{key}`",
                    match s.kind {
                        file::DiscoveryKind::Dns => "dns",
                        file::DiscoveryKind::DnsSrv => "dns_srv",
                        file::DiscoveryKind::Consul => "consul",
                    }
                ),
            );
        };
        let nameservers = |v: &mut Self| -> Option<Nameservers> {
            match &s.nameservers {
                None => Some(Nameservers::System),
                Some(list) => {
                    let mut out = Vec::new();
                    for ns in list {
                        let text = ns.get_ref();
                        let parsed = text
                            .parse::<SocketAddr>()
                            .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
                        match parsed {
                            Ok(a) => out.push(a),
                            Err(_) => v.c.at(
                                ns.span(),
                                format!("invalid name server `{text}`: expected IP or IP:PORT"),
                            ),
                        }
                    }
                    (out.len() == list.len()).then_some(Nameservers::Explicit(out))
                }
            }
        };
        let source = match s.kind {
            file::DiscoveryKind::Dns => {
                let (Some(name), Some(port)) = (&s.name, &s.port) else {
                    missing(self.c, "name` and `port");
                    return None;
                };
                DiscoverySource::Dns {
                    name: name.get_ref().clone(),
                    port: *port.get_ref(),
                    nameservers: nameservers(self)?,
                }
            }
            file::DiscoveryKind::DnsSrv => {
                let Some(name) = &s.name else {
                    missing(self.c, "name");
                    return None;
                };
                DiscoverySource::DnsSrv {
                    name: name.get_ref().clone(),
                    nameservers: nameservers(self)?,
                }
            }
            file::DiscoveryKind::Consul => {
                let Some(service) = &s.service else {
                    missing(self.c, "service");
                    return None;
                };
                let default = tollgate_plugin_api::SecretUrl::new("http://127.0.0.1:8500");
                let address = s.address.as_ref().map_or(&default, |a| a.get_ref());
                let span = || s.address.as_ref().map_or(d.span(), |a| a.span());
                let shown = address.redacted();
                let base = match address.expose().parse::<http::Uri>() {
                    // Credentials in the URL would not be sent, only logged with the address.
                    Ok(_) if address.has_user_info() => {
                        self.c.at(
                            span(),
                            format!(
                                "Consul address `{shown}` carries credentials, which are not \
                                 sent; give the ACL token as `token`"
                            ),
                        );
                        return None;
                    }
                    Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => u,
                    _ => {
                        self.c.at(
                            span(),
                            format!("invalid Consul address `{shown}`: expected http://HOST:PORT"),
                        );
                        return None;
                    }
                };
                let wait = s
                    .wait
                    .as_ref()
                    .map_or(Duration::from_secs(30), |w| w.get_ref().0);
                DiscoverySource::Consul {
                    query: ConsulQuery {
                        base,
                        service: service.get_ref().clone(),
                        datacenter: s.datacenter.clone(),
                        tag: s.tag.clone(),
                        token: s.token.clone(),
                    },
                    wait,
                }
            }
        };
        Some(DiscoveryConfig { source, interval })
    }

    fn health_check(
        &mut self,
        h: &Spanned<file::HealthCheckSection>,
        protocol: Protocol,
    ) -> Option<HealthCheckConfig> {
        use crate::upstream::probe::ProbeKind;
        let s = h.get_ref();
        let kind = s.kind.unwrap_or(file::HealthCheckKind::Http);
        let probe = match kind {
            file::HealthCheckKind::Http => {
                let path = s.path.as_ref().map_or("/", |p| p.get_ref().as_str());
                if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                    let span = s.path.as_ref().map_or(h.span(), |p| p.span());
                    self.c.at(
                        span,
                        format!("health check path `{path}` must be a path starting with `/`"),
                    );
                }
                let method = match &s.method {
                    None => Method::GET,
                    Some(m) => {
                        match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                            Ok(m) => m,
                            Err(_) => {
                                self.c
                                    .at(m.span(), format!("invalid method `{}`", m.get_ref()));
                                Method::GET
                            }
                        }
                    }
                };
                let expected = s
                    .expected_statuses
                    .as_ref()
                    .map(|v| v.iter().map(|r| (r.get_ref().0, r.get_ref().1)).collect())
                    .unwrap_or_else(|| vec![(200, 299)]);
                ProbeKind::Http {
                    path: path.to_string(),
                    method,
                    host: s.host.clone(),
                    expected,
                    h2c: protocol == Protocol::H2c,
                }
            }
            file::HealthCheckKind::Tcp => ProbeKind::Tcp,
            file::HealthCheckKind::Grpc => {
                if protocol == Protocol::Http1 {
                    self.c.at(
                        h.span(),
                        "a `grpc` health check needs `protocol = \"h2c\"` (gRPC runs over HTTP/2)",
                    );
                }
                ProbeKind::Grpc {
                    service: s.service.clone().unwrap_or_default(),
                    authority: s.host.clone(),
                }
            }
        };
        let interval = self.min_duration(s.interval.as_ref(), Duration::from_secs(10), "interval");
        let timeout = s
            .timeout
            .as_ref()
            .map_or(Duration::from_secs(2), |t| t.get_ref().0);
        if let Some(t) = &s.timeout {
            // A timeout above the interval only delays the next round (rounds never overlap).
            if t.get_ref().0.is_zero() {
                self.c
                    .at(t.span(), "health check `timeout` must be above 0");
            }
        }
        let jitter = s.jitter.as_ref().map_or(Duration::ZERO, |j| j.get_ref().0);
        Some(HealthCheckConfig {
            probe,
            interval,
            timeout,
            jitter,
            healthy_threshold: self.positive(s.healthy_threshold.as_ref(), 2, "healthy_threshold"),
            unhealthy_threshold: self.positive(
                s.unhealthy_threshold.as_ref(),
                3,
                "unhealthy_threshold",
            ),
        })
    }

    fn outlier(&mut self, o: Option<&Spanned<file::OutlierSection>>) -> Option<OutlierConfig> {
        let default = OutlierConfig {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            failure_statuses: vec![(500, 599)],
        };
        let Some(o) = o else {
            return Some(default);
        };
        let s = o.get_ref();
        if s.enabled == Some(false) {
            return None;
        }
        let base = s
            .base_ejection_time
            .as_ref()
            .map_or(default.base_ejection_time, |d| d.get_ref().0);
        let max = s
            .max_ejection_time
            .as_ref()
            .map_or(default.max_ejection_time.max(base), |d| d.get_ref().0);
        if let Some(m) = &s.max_ejection_time {
            if m.get_ref().0 < base {
                self.c.at(
                    m.span(),
                    "`max_ejection_time` must not be below `base_ejection_time`",
                );
            }
        }
        let percent = match &s.max_ejection_percent {
            Some(p) if *p.get_ref() > 100 => {
                self.c
                    .at(p.span(), "`max_ejection_percent` must be between 0 and 100");
                50
            }
            Some(p) => *p.get_ref(),
            None => default.max_ejection_percent,
        };
        Some(OutlierConfig {
            consecutive_failures: self.positive(
                s.consecutive_failures.as_ref(),
                default.consecutive_failures,
                "consecutive_failures",
            ),
            base_ejection_time: base,
            max_ejection_time: max,
            max_ejection_percent: percent,
            failure_statuses: s
                .failure_statuses
                .as_ref()
                .map(|v| v.iter().map(|r| (r.get_ref().0, r.get_ref().1)).collect())
                .unwrap_or(default.failure_statuses),
        })
    }

    fn retry(&mut self, r: Option<&Spanned<file::RetrySection>>) -> RetryConfig {
        let mut out = RetryConfig {
            attempts: 2,
            on_connect_failure: true,
            on_reset: true,
            on_timeout: false,
            statuses: Vec::new(),
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_ratio: 0.2,
            budget_min_retries: 3,
        };
        let Some(r) = r else {
            return out;
        };
        let s = r.get_ref();
        if let Some(a) = s.attempts {
            out.attempts = a.min(10);
        }
        if let Some(on) = &s.on {
            out.on_connect_failure = false;
            out.on_reset = false;
            out.on_timeout = false;
            for cond in on {
                match cond.get_ref().as_str() {
                    "connect_failure" => out.on_connect_failure = true,
                    "reset" => out.on_reset = true,
                    "timeout" => out.on_timeout = true,
                    other => self.c.at(
                        cond.span(),
                        format!("unknown retry condition `{other}`: use \"connect_failure\", \"reset\" or \"timeout\" (statuses go in `statuses`)"),
                    ),
                }
            }
        }
        if let Some(st) = &s.statuses {
            out.statuses = st.iter().map(|r| (r.get_ref().0, r.get_ref().1)).collect();
        }
        if let Some(t) = &s.per_try_timeout {
            if t.get_ref().0.is_zero() {
                self.c.at(t.span(), "`per_try_timeout` must be above 0");
            }
            out.per_try_timeout = Some(t.get_ref().0);
        }
        if let Some(b) = &s.backoff_base {
            out.backoff_base = b.get_ref().0;
        }
        if let Some(b) = &s.backoff_max {
            out.backoff_max = b.get_ref().0;
            if out.backoff_max < out.backoff_base {
                self.c
                    .at(b.span(), "`backoff_max` must not be below `backoff_base`");
            }
        }
        if let Some(ratio) = &s.budget_ratio {
            let v = *ratio.get_ref();
            if !(0.0..=1.0).contains(&v) {
                self.c
                    .at(ratio.span(), "`budget_ratio` must be between 0.0 and 1.0");
            } else {
                out.budget_ratio = v;
            }
        }
        if let Some(m) = s.budget_min_retries {
            out.budget_min_retries = m;
        }
        out
    }

    fn circuit_breaker(
        &mut self,
        c: Option<&Spanned<file::CircuitBreakerSection>>,
    ) -> CircuitBreakerConfig {
        let Some(c) = c else {
            return CircuitBreakerConfig::default();
        };
        let s = c.get_ref();
        let mut limit = |v: &Option<Spanned<u32>>, key: &str| {
            v.as_ref().map(|n| {
                if *n.get_ref() == 0 {
                    self.c.at(
                        n.span(),
                        format!("`{key}` must be at least 1 (leave it out for no limit)"),
                    );
                }
                *n.get_ref() as usize
            })
        };
        CircuitBreakerConfig {
            max_in_flight: limit(&s.max_in_flight, "max_in_flight"),
            max_pending: limit(&s.max_pending, "max_pending"),
        }
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
                address: Some(sa),
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
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 && !host.is_empty() => p,
            _ => {
                self.c.at(
                    t.span(),
                    format!("target `{address}` must be HOST:PORT with a port from 1 to 65535"),
                );
                return None;
            }
        };
        let valid_name = host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !valid_name {
            self.c.at(
                t.span(),
                format!("target `{address}`: `{host}` is neither an IP address nor a host name"),
            );
            return None;
        }
        // Names are resolved at runtime (and again every `dns_refresh`), so a name that doesn't
        // resolve yet is reported in the log and retried rather than refusing the whole config.
        Some(TargetConfig {
            label: address.to_string(),
            address: None,
            hostname: Some((host.to_string(), port)),
            weight: weight as u32,
        })
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
        // The DER was validated with x509-parser when read, so parse_x509 cannot panic.
        let ca = ca_certs.as_ref().map(|cas| {
            cas.iter()
                .map(|der| {
                    pingora_core::utils::tls::WrappedX509::new(
                        der.clone(),
                        pingora_core::utils::tls::parse_x509,
                    )
                })
                .collect()
        });
        UpstreamTls {
            sni: t.sni.clone(),
            ca_certs,
            ca,
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
            let grpc = match &r.grpc {
                None => None,
                Some(g) => match crate::grpc::Transcoder::build(g.get_ref(), self.base_dir) {
                    Ok(t) => Some(Arc::new(t)),
                    Err(m) => {
                        self.c.at(g.span(), format!("route `{route_name}`: {m}"));
                        continue;
                    }
                },
            };
            let pattern: Arc<str> = Arc::from(match &path {
                PathMatch::Exact(p) | PathMatch::Template(p) => p.clone(),
                PathMatch::Prefix(p) if p.ends_with('/') => format!("{p}*"),
                PathMatch::Prefix(p) => format!("{p}/*"),
            });
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
                    pattern,
                    rewrite,
                    connect_timeout: r.connect_timeout.map(|d| d.0),
                    read_timeout: r.read_timeout.map(|d| d.0),
                    write_timeout: r.write_timeout.map(|d| d.0),
                    retry_non_idempotent: r.retry_non_idempotent.unwrap_or(false),
                    grpc,
                    plugins: plugins.into(),
                    metrics: Default::default(),
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
                    let span = spans.get(e.id()).map(|s| s.1.clone()).unwrap_or(0..0);
                    match e {
                        // The count of unlisted conflicts closes the report.
                        router::RouteError::MoreConflicts { message, .. } => {
                            self.c.at_end(span, message)
                        }
                        router::RouteError::InvalidTemplate { message, .. }
                        | router::RouteError::InvalidHost { message, .. }
                        | router::RouteError::InvalidMatcher { message, .. }
                        | router::RouteError::InvalidPath { message, .. }
                        | router::RouteError::Conflict { message, .. } => self.c.at(span, message),
                    }
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
