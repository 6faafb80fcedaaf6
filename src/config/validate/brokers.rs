//! `[brokers.NAME]`: the message brokers publish routes send to, each with its kind's client
//! settings, the limits every kind shares, and TLS.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use super::super::spanned::Spanned;
use tollgate_plugin_api::{Secret, SecretUrl};

use super::super::file::{self, BrokerKind as Kind};
use super::super::model::{
    AmqpSettings, BrokerConfig, BrokerKind, BrokerTls, KafkaSasl, KafkaSettings, NatsSettings,
};
use super::super::{tls, values};
use super::Validator;

/// Kafka's own default `message.max.bytes` (1 MB and a little) rounded to 1 MiB.
const KAFKA_MESSAGE_MAX_BYTES: usize = 1 << 20;
/// Below RabbitMQ's 128 MiB default: a gateway holds every body in memory until it is confirmed.
const AMQP_MAX_MESSAGE_BYTES: usize = 16 << 20;
/// AMQP counts the heartbeat in whole seconds, in 16 bits.
const MAX_HEARTBEAT_SECS: u64 = u16::MAX as u64;

impl Validator<'_, '_> {
    /// Every broker, and its index by name (publish routes refer to brokers by index). A broker
    /// with mistakes is reported and still listed, so routes naming it are not also told it is
    /// undefined.
    pub(super) fn brokers(
        &mut self,
        brokers: &BTreeMap<Spanned<String>, Spanned<file::BrokerSection>>,
    ) -> (Vec<Arc<BrokerConfig>>, HashMap<String, usize>) {
        let mut out = Vec::new();
        let mut index = HashMap::new();
        for (name, section) in brokers {
            index.insert(name.get_ref().clone(), out.len());
            out.push(Arc::new(self.broker(name.get_ref(), section)));
        }
        (out, index)
    }

    fn broker(&mut self, name: &str, section: &Spanned<file::BrokerSection>) -> BrokerConfig {
        let b = section.get_ref();
        self.foreign_broker_keys(name, b);
        let connect_timeout =
            self.broker_timeout(name, b.connect_timeout.as_ref(), "connect_timeout");
        let publish_timeout =
            self.broker_timeout(name, b.publish_timeout.as_ref(), "publish_timeout");
        let max_in_flight = match &b.max_in_flight {
            Some(n) if *n.get_ref() == 0 => {
                self.c.at(
                    n.span(),
                    format!("broker `{name}`: `max_in_flight` must be at least 1"),
                );
                1
            }
            Some(n) => *n.get_ref(),
            None => 1024,
        };
        let mut tls = b.tls.as_ref().map(|t| self.broker_tls(t.get_ref()));
        let kind = match b.kind {
            Kind::Kafka => BrokerKind::Kafka(self.kafka(name, section, publish_timeout)),
            Kind::Amqp => {
                let (settings, secure) = self.amqp(name, section);
                if let (Some(t), Some(false)) = (&b.tls, secure) {
                    self.c.at(
                        t.span(),
                        format!(
                            "broker `{name}`: `tls` needs an `amqps://` url (`amqp://` is plaintext)"
                        ),
                    );
                }
                // `amqps://` is TLS whether or not a `tls` table says how.
                if secure == Some(true) && tls.is_none() {
                    tls = Some(default_tls());
                }
                BrokerKind::Amqp(settings)
            }
            Kind::Nats => {
                let (settings, secure) = self.nats(name, section);
                // A `tls://` server makes the client require TLS of every server.
                if secure && tls.is_none() {
                    tls = Some(default_tls());
                }
                BrokerKind::Nats(settings)
            }
        };
        BrokerConfig {
            name: Arc::from(name),
            kind,
            connect_timeout,
            publish_timeout,
            max_in_flight,
            required_for_readiness: b.required_for_readiness.unwrap_or(true),
            tls,
        }
    }

    /// Reports every key that belongs to another kind of broker, naming that kind.
    fn foreign_broker_keys(&mut self, name: &str, b: &file::BrokerSection) {
        fn at<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
            v.as_ref().map(Spanned::span)
        }
        let keys = [
            ("bootstrap", Kind::Kafka, at(&b.bootstrap)),
            ("client_id", Kind::Kafka, at(&b.client_id)),
            ("linger", Kind::Kafka, at(&b.linger)),
            ("compression", Kind::Kafka, at(&b.compression)),
            ("message_max_bytes", Kind::Kafka, at(&b.message_max_bytes)),
            ("sasl", Kind::Kafka, at(&b.sasl)),
            ("url", Kind::Amqp, at(&b.url)),
            ("heartbeat", Kind::Amqp, at(&b.heartbeat)),
            ("max_message_bytes", Kind::Amqp, at(&b.max_message_bytes)),
            ("servers", Kind::Nats, at(&b.servers)),
            ("user", Kind::Nats, at(&b.user)),
            ("password", Kind::Nats, at(&b.password)),
            ("token", Kind::Nats, at(&b.token)),
            ("jetstream", Kind::Nats, at(&b.jetstream)),
        ];
        for (key, owner, span) in keys {
            if let (Some(span), true) = (span, owner != b.kind) {
                self.c.at(
                    span,
                    format!(
                        "broker `{name}`: `{key}` applies to kind \"{}\", not \"{}\"",
                        owner.as_str(),
                        b.kind.as_str()
                    ),
                );
            }
        }
    }

    /// A timeout of a broker: above 0, 5 s when absent.
    fn broker_timeout(
        &mut self,
        name: &str,
        t: Option<&Spanned<values::Duration>>,
        key: &str,
    ) -> Duration {
        match t {
            Some(t) if t.get_ref().0.is_zero() => {
                self.c.at(
                    t.span(),
                    format!("broker `{name}`: `{key}` must be above 0"),
                );
                Duration::from_secs(5)
            }
            Some(t) => t.get_ref().0,
            None => Duration::from_secs(5),
        }
    }

    /// A message size limit of a broker: above 0, `default` when absent.
    fn message_limit(
        &mut self,
        name: &str,
        v: Option<&Spanned<values::ByteSize>>,
        default: usize,
        key: &str,
    ) -> usize {
        match v {
            Some(v) if v.get_ref().as_u64() == 0 => {
                self.c.at(
                    v.span(),
                    format!("broker `{name}`: `{key}` must be greater than 0"),
                );
                default
            }
            Some(v) => usize::try_from(v.get_ref().as_u64()).unwrap_or(usize::MAX),
            None => default,
        }
    }

    fn kafka(
        &mut self,
        name: &str,
        section: &Spanned<file::BrokerSection>,
        publish_timeout: Duration,
    ) -> KafkaSettings {
        let b = section.get_ref();
        let bootstrap = match &b.bootstrap {
            None => {
                self.c.at(
                    section.span(),
                    format!("broker `{name}`: kind \"kafka\" needs `bootstrap`"),
                );
                Vec::new()
            }
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.c.at(
                        list.span(),
                        format!("broker `{name}`: `bootstrap` must list at least one HOST:PORT"),
                    );
                }
                for server in list.get_ref() {
                    if let Err(m) = host_port(server.get_ref(), false) {
                        self.c.at(
                            server.span(),
                            format!(
                                "broker `{name}`: bootstrap server `{}` {m}, e.g. \"kafka-1:9092\"",
                                server.get_ref()
                            ),
                        );
                    }
                }
                list.get_ref().iter().map(|s| s.get_ref().clone()).collect()
            }
        };
        let client_id = match &b.client_id {
            Some(id) if id.get_ref().trim().is_empty() => {
                self.c.at(
                    id.span(),
                    format!("broker `{name}`: `client_id` must not be empty"),
                );
                String::new()
            }
            Some(id) => id.get_ref().clone(),
            None => "tollgate".to_string(),
        };
        let linger = b
            .linger
            .as_ref()
            .map_or(Duration::from_millis(5), |l| l.get_ref().0);
        if let Some(l) = b.linger.as_ref().filter(|_| linger >= publish_timeout) {
            self.c.at(
                l.span(),
                format!(
                    "broker `{name}`: `linger` must be shorter than `publish_timeout` ({}): \
                     every message may wait that long before it is sent",
                    humantime::format_duration(publish_timeout)
                ),
            );
        }
        let compression = match b.compression.as_ref().map(|c| *c.get_ref()) {
            None | Some(file::Compression::None) => "none",
            Some(file::Compression::Gzip) => "gzip",
            Some(file::Compression::Snappy) => "snappy",
            Some(file::Compression::Lz4) => "lz4",
            Some(file::Compression::Zstd) => "zstd",
        };
        let message_max_bytes = self.message_limit(
            name,
            b.message_max_bytes.as_ref(),
            KAFKA_MESSAGE_MAX_BYTES,
            "message_max_bytes",
        );
        let sasl = b.sasl.as_ref().map(|s| {
            let s = s.get_ref();
            if s.username.get_ref().is_empty() {
                self.c.at(
                    s.username.span(),
                    format!("broker `{name}`: sasl `username` must not be empty"),
                );
            }
            KafkaSasl {
                mechanism: match s.mechanism {
                    file::SaslMechanism::Plain => "PLAIN",
                    file::SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                    file::SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
                }
                .to_string(),
                username: s.username.get_ref().clone(),
                password: s.password.clone(),
            }
        });
        KafkaSettings {
            bootstrap,
            client_id,
            linger,
            compression: compression.to_string(),
            message_max_bytes,
            sasl,
        }
    }

    /// The AMQP settings, and whether the url asks for TLS (`amqps://`) when it is valid.
    fn amqp(
        &mut self,
        name: &str,
        section: &Spanned<file::BrokerSection>,
    ) -> (AmqpSettings, Option<bool>) {
        let b = section.get_ref();
        let mut secure = None;
        let url = match &b.url {
            None => {
                self.c.at(
                    section.span(),
                    format!("broker `{name}`: kind \"amqp\" needs `url`"),
                );
                SecretUrl::new("")
            }
            Some(u) => {
                match amqp_url(u.get_ref().expose()) {
                    Ok(tls) => secure = Some(tls),
                    Err(m) => self.c.at(
                        u.span(),
                        format!(
                            "broker `{name}`: invalid url `{}`: {m}",
                            u.get_ref().redacted()
                        ),
                    ),
                }
                u.get_ref().clone()
            }
        };
        let heartbeat = match &b.heartbeat {
            Some(h) => {
                let d = h.get_ref().0;
                if d.subsec_nanos() != 0 || d.as_secs() > MAX_HEARTBEAT_SECS {
                    self.c.at(
                        h.span(),
                        format!(
                            "broker `{name}`: `heartbeat` must be whole seconds up to 65535s \
                             (AMQP counts it in seconds; \"0s\" turns heartbeats off)"
                        ),
                    );
                }
                d
            }
            None => Duration::from_secs(10),
        };
        let max_message_bytes = self.message_limit(
            name,
            b.max_message_bytes.as_ref(),
            AMQP_MAX_MESSAGE_BYTES,
            "max_message_bytes",
        );
        let settings = AmqpSettings {
            url,
            heartbeat,
            max_message_bytes,
        };
        (settings, secure)
    }

    /// The NATS settings, and whether a server asks for TLS (`tls://`).
    fn nats(&mut self, name: &str, section: &Spanned<file::BrokerSection>) -> (NatsSettings, bool) {
        let b = section.get_ref();
        let mut secure = false;
        let mut url_credentials = None;
        let servers = match &b.servers {
            None => {
                self.c.at(
                    section.span(),
                    format!("broker `{name}`: kind \"nats\" needs `servers`"),
                );
                Vec::new()
            }
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.c.at(
                        list.span(),
                        format!(
                            "broker `{name}`: `servers` must list at least one \"nats://HOST:PORT\""
                        ),
                    );
                }
                for server in list.get_ref() {
                    let url = server.get_ref();
                    match nats_url(url.expose()) {
                        Ok(tls) => secure |= tls,
                        Err(m) => self.c.at(
                            server.span(),
                            format!("broker `{name}`: invalid server `{}`: {m}", url.redacted()),
                        ),
                    }
                    if url.has_user_info() && url_credentials.is_none() {
                        url_credentials = Some(server.span());
                    }
                }
                list.get_ref().iter().map(|s| s.get_ref().clone()).collect()
            }
        };
        let user = self.nats_credentials(name, b, url_credentials);
        let settings = NatsSettings {
            servers,
            user,
            token: b.token.as_ref().map(|t| t.get_ref().clone()),
            jetstream: b.jetstream.as_ref().is_none_or(|j| *j.get_ref()),
        };
        (settings, secure)
    }

    /// `user` and `password` (both or neither), or `token`, or credentials in the server urls:
    /// one of them, so it is clear what the client presents.
    fn nats_credentials(
        &mut self,
        name: &str,
        b: &file::BrokerSection,
        url_credentials: Option<Range<usize>>,
    ) -> Option<(String, Secret<String>)> {
        let user = match (&b.user, &b.password) {
            (Some(u), Some(p)) => Some((u.get_ref().clone(), p.get_ref().clone())),
            (Some(u), None) => {
                self.c.at(
                    u.span(),
                    format!("broker `{name}`: `user` needs `password`"),
                );
                None
            }
            (None, Some(p)) => {
                self.c.at(
                    p.span(),
                    format!("broker `{name}`: `password` needs `user`"),
                );
                None
            }
            (None, None) => None,
        };
        if let (Some(t), true) = (&b.token, b.user.is_some() || b.password.is_some()) {
            self.c.at(
                t.span(),
                format!("broker `{name}`: set `user` and `password` or `token`, not both"),
            );
        }
        let explicit = b.user.is_some() || b.password.is_some() || b.token.is_some();
        if let (Some(span), true) = (url_credentials, explicit) {
            self.c.at(
                span,
                format!(
                    "broker `{name}`: credentials are given both in a server url and as \
                     `user`/`token`; give them once"
                ),
            );
        }
        user
    }

    fn broker_tls(&mut self, t: &file::BrokerTls) -> BrokerTls {
        let ca_file = t.ca_file.as_ref().and_then(|f| {
            let path = self.existing_file(f, "CA")?;
            // Read now so a broken file is a config error, not a failed connection later.
            match tls::read_pem_certs(&path) {
                Ok(_) => Some(path),
                Err(m) => {
                    self.c.at(f.span(), m);
                    None
                }
            }
        });
        BrokerTls {
            ca_file,
            verify: t.verify.unwrap_or(true),
        }
    }
}

fn default_tls() -> BrokerTls {
    BrokerTls {
        ca_file: None,
        verify: true,
    }
}

/// Checks `HOST:PORT` (an IP address or a host name; IPv6 in brackets); the port may be left
/// out when the client has a default one.
fn host_port(s: &str, port_optional: bool) -> Result<(), &'static str> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = match s.strip_prefix('[').map(|rest| rest.split_once(']')) {
        Some(Some((v6, ""))) => (v6, None),
        Some(Some((v6, tail))) => match tail.strip_prefix(':') {
            Some(port) => (v6, Some(port)),
            None => return Err("must be HOST:PORT"),
        },
        Some(None) => return Err("must name a host: an IP address or a host name"),
        None => match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        },
    };
    match port {
        Some(p) if !matches!(p.parse::<u16>(), Ok(p) if p > 0) => {
            return Err("must have a port from 1 to 65535")
        }
        None if !port_optional => return Err("must be HOST:PORT"),
        _ => {}
    }
    let bracketed = s.starts_with('[');
    let valid = if bracketed {
        host.parse::<Ipv6Addr>().is_ok()
    } else {
        host.parse::<Ipv4Addr>().is_ok() || host_name(host)
    };
    if valid {
        Ok(())
    } else {
        Err("must name a host: an IP address or a host name")
    }
}

/// A host name: dot-separated labels of letters, digits, `-` and `_`.
fn host_name(host: &str) -> bool {
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The scheme of `url` (one of `schemes`), its `HOST[:PORT]` and what follows it (path, query,
/// fragment), as written.
fn url_parts<'a>(url: &'a str, schemes: &[&str]) -> Result<(String, &'a str, &'a str), String> {
    let expected = || {
        let list: Vec<String> = schemes.iter().map(|s| format!("`{s}://`")).collect();
        format!("expected a {} url", list.join(" or "))
    };
    let uri = url.parse::<http::Uri>().map_err(|_| expected())?;
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    if !schemes.contains(&scheme.as_str()) {
        return Err(expected());
    }
    // Sliced from `url` itself, which the Uri's authority is the start of (after `://`).
    let after_scheme = url.split_once("://").map_or("", |(_, rest)| rest);
    let authority_len = uri.authority().map_or(0, |a| a.as_str().len());
    let (Some(authority), Some(rest)) = (
        after_scheme.get(..authority_len),
        after_scheme.get(authority_len..),
    ) else {
        return Err(expected());
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err(expected());
    }
    Ok((scheme, host, rest))
}

/// Checks an AMQP url; `Ok(true)` for `amqps://`.
fn amqp_url(url: &str) -> Result<bool, String> {
    let (scheme, host, rest) = url_parts(url, &["amqp", "amqps"])?;
    host_port(host, true).map_err(|m| format!("the host {m}"))?;
    if rest.contains(['?', '#']) {
        return Err(
            "query parameters are not read; set `heartbeat` and `connect_timeout` as keys of the \
             broker"
                .into(),
        );
    }
    let vhost = rest.strip_prefix('/').unwrap_or(rest);
    if vhost.contains('/') {
        return Err(format!(
            "the virtual host `{vhost}` has a `/`; write it percent-encoded (`%2F`)"
        ));
    }
    Ok(scheme == "amqps")
}

/// Checks a NATS server url; `Ok(true)` for `tls://`.
fn nats_url(url: &str) -> Result<bool, String> {
    let (scheme, host, rest) = url_parts(url, &["nats", "tls"])?;
    host_port(host, true).map_err(|m| format!("the host {m}"))?;
    if !matches!(rest, "" | "/") {
        return Err("a NATS server url has no path or query".into());
    }
    Ok(scheme == "tls")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::super::model::{BrokerConfig, BrokerKind};
    use super::super::testing::{errors, valid};

    fn brokers(text: &str) -> Vec<BrokerConfig> {
        valid(text)
            .config
            .brokers
            .iter()
            .map(|b| (**b).clone())
            .collect()
    }

    #[test]
    fn defaults_of_every_kind_reach_the_model() {
        let [k, n, q] = &brokers(
            "[brokers.k]\nkind = \"kafka\"\nbootstrap = [\"kafka-1:9092\"]\n\
             [brokers.q]\nkind = \"amqp\"\nurl = \"amqp://rabbit\"\n\
             [brokers.n]\nkind = \"nats\"\nservers = [\"nats://nats:4222\"]\n",
        )[..] else {
            panic!("three brokers");
        };
        for b in [k, n, q] {
            assert_eq!(b.connect_timeout, Duration::from_secs(5), "{}", b.name);
            assert_eq!(b.publish_timeout, Duration::from_secs(5));
            assert_eq!(b.max_in_flight, 1024);
            assert!(b.required_for_readiness);
            assert_eq!(b.tls, None);
        }
        let BrokerKind::Kafka(kafka) = &k.kind else {
            panic!("kafka");
        };
        assert_eq!(&*k.name, "k");
        assert_eq!(kafka.bootstrap, ["kafka-1:9092"]);
        assert_eq!(kafka.client_id, "tollgate");
        assert_eq!(kafka.linger, Duration::from_millis(5));
        assert_eq!(kafka.compression, "none");
        assert_eq!(kafka.message_max_bytes, 1 << 20);
        assert_eq!(kafka.sasl, None);
        let BrokerKind::Amqp(amqp) = &q.kind else {
            panic!("amqp");
        };
        assert_eq!(amqp.url.expose(), "amqp://rabbit");
        assert_eq!(amqp.heartbeat, Duration::from_secs(10));
        assert_eq!(amqp.max_message_bytes, 16 << 20);
        let BrokerKind::Nats(nats) = &n.kind else {
            panic!("nats");
        };
        assert_eq!(nats.servers.len(), 1);
        assert_eq!(nats.servers[0].expose(), "nats://nats:4222");
        assert_eq!(nats.user, None);
        assert_eq!(nats.token, None);
        assert!(nats.jetstream);
    }

    #[test]
    fn every_key_of_every_kind_reaches_the_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["broker".to_owned()]).expect("cert");
        std::fs::write(&ca, cert.cert.pem()).expect("write ca");
        let [k, n, q] = &brokers(&format!(
            "[brokers.k]\nkind = \"kafka\"\nbootstrap = [\"kafka-1:9092\", \"10.0.0.2:9093\", \"[::1]:9094\"]\n\
             client_id = \"edge\"\nlinger = \"20ms\"\ncompression = \"zstd\"\nmessage_max_bytes = \"512KiB\"\n\
             sasl = {{ mechanism = \"SCRAM-SHA-512\", username = \"gw\", password = \"s3cret\" }}\n\
             tls = {{ ca_file = \"{}\" }}\nconnect_timeout = \"2s\"\npublish_timeout = \"10s\"\n\
             max_in_flight = 64\nrequired_for_readiness = false\n\
             [brokers.q]\nkind = \"amqp\"\nurl = \"amqps://gw:pw@rabbit.internal:5671/orders\"\n\
             heartbeat = \"30s\"\nmax_message_bytes = \"64MiB\"\ntls = {{ verify = false }}\n\
             [brokers.n]\nkind = \"nats\"\nservers = [\"tls://nats-1:4222\", \"tls://nats-2\"]\n\
             user = \"gw\"\npassword = \"pw\"\njetstream = false\n",
            ca.display()
        ))[..] else {
            panic!("three brokers");
        };
        let BrokerKind::Kafka(kafka) = &k.kind else {
            panic!("kafka");
        };
        assert_eq!(kafka.bootstrap.len(), 3);
        assert_eq!(kafka.client_id, "edge");
        assert_eq!(kafka.linger, Duration::from_millis(20));
        assert_eq!(kafka.compression, "zstd");
        assert_eq!(kafka.message_max_bytes, 512 << 10);
        let sasl = kafka.sasl.as_ref().expect("sasl");
        assert_eq!(
            (
                sasl.mechanism.as_str(),
                sasl.username.as_str(),
                sasl.password.expose().as_str()
            ),
            ("SCRAM-SHA-512", "gw", "s3cret")
        );
        let tls = k.tls.as_ref().expect("kafka tls");
        assert_eq!(tls.ca_file.as_deref(), Some(ca.as_path()));
        assert!(tls.verify);
        assert_eq!(k.connect_timeout, Duration::from_secs(2));
        assert_eq!(k.publish_timeout, Duration::from_secs(10));
        assert_eq!(k.max_in_flight, 64);
        assert!(!k.required_for_readiness);
        let BrokerKind::Amqp(amqp) = &q.kind else {
            panic!("amqp");
        };
        assert_eq!(
            amqp.url.redacted(),
            "amqps://gw:<redacted>@rabbit.internal:5671/orders"
        );
        assert_eq!(amqp.heartbeat, Duration::from_secs(30));
        assert_eq!(amqp.max_message_bytes, 64 << 20);
        assert_eq!(
            q.tls.as_ref().map(|t| (t.ca_file.clone(), t.verify)),
            Some((None::<PathBuf>, false))
        );
        let BrokerKind::Nats(nats) = &n.kind else {
            panic!("nats");
        };
        assert_eq!(nats.servers.len(), 2);
        let (user, password) = nats.user.as_ref().expect("user");
        assert_eq!((user.as_str(), password.expose().as_str()), ("gw", "pw"));
        assert!(!nats.jetstream);
        // `tls://` servers are TLS without a `tls` table.
        assert_eq!(n.tls.as_ref().map(|t| t.verify), Some(true));
    }

    #[test]
    fn amqps_and_tls_servers_imply_tls_and_a_nats_token_is_read() {
        let [n, q] = &brokers(
            "[brokers.q]\nkind = \"amqp\"\nurl = \"amqps://rabbit\"\n\
             [brokers.n]\nkind = \"nats\"\nservers = [\"nats://nats\"]\ntoken = \"t0k\"\ntls = {}\n",
        )[..] else {
            panic!("two brokers");
        };
        assert_eq!(
            q.tls.as_ref().map(|t| (t.ca_file.is_none(), t.verify)),
            Some((true, true))
        );
        assert!(n.tls.is_some());
        let BrokerKind::Nats(nats) = &n.kind else {
            panic!("nats");
        };
        assert_eq!(
            nats.token.as_ref().map(|t| t.expose().as_str()),
            Some("t0k")
        );
    }

    #[test]
    fn the_kind_is_required_and_one_of_three() {
        assert_eq!(
            errors("[brokers.a]\nbootstrap = [\"k:9092\"]\n[brokers.b]\nkind = \"redis\"\n"),
            [
                "gateway.toml:1:1: missing field `kind`",
                "gateway.toml:4:8: unknown variant `redis`, expected one of `kafka`, `amqp`, `nats`",
            ]
        );
    }

    #[test]
    fn keys_of_another_kind_are_reported_at_each_key() {
        assert_eq!(
            errors(
                "[brokers.q]\nkind = \"amqp\"\nurl = \"amqp://rabbit\"\nbootstrap = [\"k:9092\"]\n\
                 jetstream = true\n\
                 [brokers.k]\nkind = \"kafka\"\nbootstrap = [\"k:9092\"]\nheartbeat = \"5s\"\n\
                 token = \"t\"\n\
                 [brokers.n]\nkind = \"nats\"\nservers = [\"nats://n\"]\nsasl = { mechanism = \"PLAIN\", username = \"u\", password = \"p\" }\n\
                 max_message_bytes = 10\n"
            ),
            [
                "gateway.toml:4:13: broker `q`: `bootstrap` applies to kind \"kafka\", not \"amqp\"",
                "gateway.toml:5:13: broker `q`: `jetstream` applies to kind \"nats\", not \"amqp\"",
                "gateway.toml:9:13: broker `k`: `heartbeat` applies to kind \"amqp\", not \"kafka\"",
                "gateway.toml:10:9: broker `k`: `token` applies to kind \"nats\", not \"kafka\"",
                "gateway.toml:14:8: broker `n`: `sasl` applies to kind \"kafka\", not \"nats\"",
                "gateway.toml:15:21: broker `n`: `max_message_bytes` applies to kind \"amqp\", not \"nats\"",
            ]
        );
    }

    #[test]
    fn each_kind_needs_its_servers() {
        assert_eq!(
            errors(
                "[brokers.k]\nkind = \"kafka\"\n\
                 [brokers.k2]\nkind = \"kafka\"\nbootstrap = []\n\
                 [brokers.q]\nkind = \"amqp\"\n\
                 [brokers.n]\nkind = \"nats\"\n\
                 [brokers.n2]\nkind = \"nats\"\nservers = []\n"
            ),
            [
                "gateway.toml:1:1: broker `k`: kind \"kafka\" needs `bootstrap`",
                "gateway.toml:5:13: broker `k2`: `bootstrap` must list at least one HOST:PORT",
                "gateway.toml:6:1: broker `q`: kind \"amqp\" needs `url`",
                "gateway.toml:8:1: broker `n`: kind \"nats\" needs `servers`",
                "gateway.toml:12:11: broker `n2`: `servers` must list at least one \"nats://HOST:PORT\"",
            ]
        );
    }

    #[test]
    fn bootstrap_servers_are_host_and_port() {
        assert_eq!(
            errors(
                "[brokers.k]\nkind = \"kafka\"\n\
                 bootstrap = [\"kafka-1\", \"kafka-1:0\", \"ka fka:9092\", \"[::1\", \"::1:9092\"]\n"
            ),
            [
                "gateway.toml:3:14: broker `k`: bootstrap server `kafka-1` must be HOST:PORT, e.g. \"kafka-1:9092\"",
                "gateway.toml:3:25: broker `k`: bootstrap server `kafka-1:0` must have a port from 1 to 65535, e.g. \"kafka-1:9092\"",
                "gateway.toml:3:38: broker `k`: bootstrap server `ka fka:9092` must name a host: an IP address or a host name, e.g. \"kafka-1:9092\"",
                "gateway.toml:3:53: broker `k`: bootstrap server `[::1` must name a host: an IP address or a host name, e.g. \"kafka-1:9092\"",
                "gateway.toml:3:61: broker `k`: bootstrap server `::1:9092` must name a host: an IP address or a host name, e.g. \"kafka-1:9092\"",
            ]
        );
    }

    #[test]
    fn amqp_urls_are_checked_and_their_passwords_not_shown() {
        assert_eq!(
            errors(
                "[brokers.a]\nkind = \"amqp\"\nurl = \"http://u:hunter2@rabbit\"\n\
                 [brokers.b]\nkind = \"amqp\"\nurl = \"amqp://u:hunter2@rabbit:99999\"\n\
                 [brokers.c]\nkind = \"amqp\"\nurl = \"amqp://rabbit/?heartbeat=5\"\n\
                 [brokers.d]\nkind = \"amqp\"\nurl = \"amqp://rabbit/a/b\"\n\
                 [brokers.e]\nkind = \"amqp\"\nurl = \"amqp://rabbit\"\ntls = { verify = false }\n\
                 [brokers.f]\nkind = \"amqp\"\nurl = \"rabbit:5672\"\n"
            ),
            [
                "gateway.toml:3:7: broker `a`: invalid url `http://u:<redacted>@rabbit`: expected a `amqp://` or `amqps://` url",
                "gateway.toml:6:7: broker `b`: invalid url `amqp://u:<redacted>@rabbit:99999`: the host must have a port from 1 to 65535",
                "gateway.toml:9:7: broker `c`: invalid url `amqp://rabbit/?heartbeat=5`: query parameters are not read; set `heartbeat` and `connect_timeout` as keys of the broker",
                "gateway.toml:12:7: broker `d`: invalid url `amqp://rabbit/a/b`: the virtual host `a/b` has a `/`; write it percent-encoded (`%2F`)",
                "gateway.toml:16:7: broker `e`: `tls` needs an `amqps://` url (`amqp://` is plaintext)",
                "gateway.toml:19:7: broker `f`: invalid url `rabbit:5672`: expected a `amqp://` or `amqps://` url",
            ]
        );
    }

    #[test]
    fn nats_servers_and_credentials_are_checked() {
        assert_eq!(
            errors(
                "[brokers.a]\nkind = \"nats\"\nservers = [\"nats://n:4222\", \"ws://n:80\", \"nats://n/x\"]\n\
                 [brokers.b]\nkind = \"nats\"\nservers = [\"nats://n\"]\nuser = \"u\"\n\
                 [brokers.c]\nkind = \"nats\"\nservers = [\"nats://n\"]\npassword = \"p\"\ntoken = \"t\"\n\
                 [brokers.d]\nkind = \"nats\"\nservers = [\"nats://u:hunter2@n\"]\ntoken = \"t\"\n"
            ),
            [
                "gateway.toml:3:29: broker `a`: invalid server `ws://n:80`: expected a `nats://` or `tls://` url",
                "gateway.toml:3:42: broker `a`: invalid server `nats://n/x`: a NATS server url has no path or query",
                "gateway.toml:7:8: broker `b`: `user` needs `password`",
                "gateway.toml:11:12: broker `c`: `password` needs `user`",
                "gateway.toml:12:9: broker `c`: set `user` and `password` or `token`, not both",
                "gateway.toml:15:12: broker `d`: credentials are given both in a server url and as `user`/`token`; give them once",
            ]
        );
    }

    #[test]
    fn limits_and_timeouts_are_checked() {
        assert_eq!(
            errors(
                "[brokers.k]\nkind = \"kafka\"\nbootstrap = [\"k:9092\"]\n\
                 connect_timeout = \"0s\"\npublish_timeout = \"1s\"\nmax_in_flight = 0\n\
                 linger = \"1s\"\nmessage_max_bytes = 0\nclient_id = \" \"\n\
                 sasl = { mechanism = \"PLAIN\", username = \"\", password = \"p\" }\n\
                 [brokers.q]\nkind = \"amqp\"\nurl = \"amqp://rabbit\"\nheartbeat = \"1500ms\"\n\
                 max_message_bytes = 0\npublish_timeout = \"0s\"\n\
                 [brokers.q2]\nkind = \"amqp\"\nurl = \"amqp://rabbit\"\nheartbeat = \"19h\"\n"
            ),
            [
                "gateway.toml:4:19: broker `k`: `connect_timeout` must be above 0",
                "gateway.toml:6:17: broker `k`: `max_in_flight` must be at least 1",
                "gateway.toml:7:10: broker `k`: `linger` must be shorter than `publish_timeout` (1s): every message may wait that long before it is sent",
                "gateway.toml:8:21: broker `k`: `message_max_bytes` must be greater than 0",
                "gateway.toml:9:13: broker `k`: `client_id` must not be empty",
                "gateway.toml:10:42: broker `k`: sasl `username` must not be empty",
                "gateway.toml:14:13: broker `q`: `heartbeat` must be whole seconds up to 65535s (AMQP counts it in seconds; \"0s\" turns heartbeats off)",
                "gateway.toml:15:21: broker `q`: `max_message_bytes` must be greater than 0",
                "gateway.toml:16:19: broker `q`: `publish_timeout` must be above 0",
                "gateway.toml:20:13: broker `q2`: `heartbeat` must be whole seconds up to 65535s (AMQP counts it in seconds; \"0s\" turns heartbeats off)",
            ]
        );
    }

    #[test]
    fn bad_enumerations_are_named() {
        assert_eq!(
            errors(
                "[brokers.k]\nkind = \"kafka\"\nbootstrap = [\"k:9092\"]\ncompression = \"brotli\"\n\
                 sasl = { mechanism = \"plain\", username = \"u\", password = \"p\" }\n"
            ),
            ["gateway.toml:4:15: unknown variant `brotli`, expected one of `none`, `gzip`, `snappy`, `lz4`, `zstd`"]
        );
        assert_eq!(
            errors(
                "[brokers.k]\nkind = \"kafka\"\nbootstrap = [\"k:9092\"]\n\
                 sasl = { mechanism = \"plain\", username = \"u\", password = \"p\" }\n"
            ),
            ["gateway.toml:4:22: unknown variant `plain`, expected one of `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`"]
        );
    }

    #[test]
    fn ca_files_must_exist_and_hold_certificates() {
        assert_eq!(
            errors(
                "[brokers.k]\nkind = \"kafka\"\nbootstrap = [\"k:9092\"]\ntls = { ca_file = \"no-ca.pem\" }\n\
                 [brokers.q]\nkind = \"amqp\"\nurl = \"amqps://rabbit\"\ntls = { ca_file = \"Cargo.toml\" }\n"
            ),
            [
                "gateway.toml:4:19: CA file `no-ca.pem` does not exist",
                "gateway.toml:8:19: no PEM certificate found in `Cargo.toml`",
            ]
        );
    }
}
