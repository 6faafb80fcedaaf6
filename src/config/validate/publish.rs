//! `[routes.NAME.publish]`: a route that publishes its request body to a broker instead of
//! calling an upstream. Its broker, its destination (templates whose keys depend on the
//! broker's kind), the headers copied into the message, its body limit, mode and status; and
//! what such a route cannot have, being without an upstream.

use std::ops::Range;
use std::sync::Arc;

use super::super::spanned::Spanned;
use http::{HeaderName, Method, StatusCode};

use super::super::file::{self, BrokerKind as Kind};
use super::super::model::{
    BrokerConfig, BrokerKind, Destination, IdempotencyConfig, PublishConfig, PublishMode, Template,
};
use super::super::values::ByteSize;

/// How long an `Idempotency-Key`'s answer is kept unless the route says otherwise.
const DEFAULT_IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);
/// Keys kept at once per route unless it says otherwise (~200 bytes each).
const DEFAULT_IDEMPOTENCY_MAX_KEYS: usize = 100_000;
use super::routes::Targets;
use super::template;
use super::Validator;

/// A body taken by a publish route unless it says otherwise (or its broker takes less).
const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Copied into every message by the runtime; listing them in `headers` adds nothing.
const ALWAYS_COPIED: [&str; 4] = ["content-type", "x-request-id", "traceparent", "tracestate"];

impl Validator<'_, '_> {
    /// The publish config of route `route`, whose path template has `params`; `None` when it
    /// is wrong (and reported).
    pub(super) fn publish(
        &mut self,
        route: &str,
        r: &file::RouteSection,
        p: &Spanned<file::PublishSection>,
        params: &[Arc<str>],
        targets: &Targets<'_>,
    ) -> Option<PublishConfig> {
        self.upstream_keys_without_upstream(route, r, "a publish route");
        self.publish_methods(route, r);
        let s = p.get_ref();
        let (broker, b) = self.broker_ref(route, &s.broker, targets)?;
        let keys = s.destination_keys();
        self.foreign_destination_keys(route, &keys, b);
        let destination = self.destination(route, p.span(), &keys, b, params, "publishing to");
        let headers = self.publish_headers(route, &s.headers);
        let max_body_bytes = self.max_body_bytes(route, s.max_body_bytes.as_ref(), b);
        let mode = self.publish_mode(route, s, b);
        let status = match &s.status {
            Some(st) => match StatusCode::from_u16(*st.get_ref()) {
                Ok(code) if code.is_success() => code,
                _ => {
                    self.c.at(
                        st.span(),
                        format!(
                            "route `{route}`: publish `status` must be 2xx (200 to 299), got {}",
                            st.get_ref()
                        ),
                    );
                    StatusCode::ACCEPTED
                }
            },
            None => StatusCode::ACCEPTED,
        };
        let idempotency = self.idempotency(route, s);
        Some(PublishConfig {
            broker,
            broker_name: b.name.clone(),
            destination: destination?,
            headers,
            max_body_bytes,
            mode,
            status,
            idempotency,
        })
    }

    /// The broker a route names, which must be defined: its index and settings.
    pub(super) fn broker_ref<'t>(
        &mut self,
        route: &str,
        name: &Spanned<String>,
        targets: &Targets<'t>,
    ) -> Option<(usize, &'t BrokerConfig)> {
        let Some(&i) = targets.broker_index.get(name.get_ref()) else {
            self.c.at(
                name.span(),
                format!(
                    "route `{route}`: broker `{}` is not defined",
                    name.get_ref()
                ),
            );
            return None;
        };
        Some((i, targets.brokers.get(i)?))
    }

    /// `idempotency_window` ("1h"; "0s" turns it off) and `idempotency_max_keys` (100000).
    fn idempotency(&mut self, route: &str, s: &file::PublishSection) -> Option<IdempotencyConfig> {
        let window = s
            .idempotency_window
            .as_ref()
            .map_or(DEFAULT_IDEMPOTENCY_WINDOW, |w| w.get_ref().0);
        let max_keys = match &s.idempotency_max_keys {
            Some(n) if *n.get_ref() == 0 => {
                self.c.at(
                    n.span(),
                    format!(
                        "route `{route}`: `idempotency_max_keys` must be at least 1 \
                         (turn keys off with `idempotency_window = \"0s\"`)"
                    ),
                );
                return None;
            }
            Some(n) => usize::try_from(*n.get_ref()).unwrap_or(usize::MAX),
            None => DEFAULT_IDEMPOTENCY_MAX_KEYS,
        };
        let redis = match &s.idempotency_redis {
            Some(url) => match redis::Client::open(url.get_ref().expose()) {
                Ok(_) => Some(url.get_ref().clone()),
                Err(e) => {
                    self.c.at(
                        url.span(),
                        format!(
                            "route `{route}`: `idempotency_redis` `{}` is not a Redis URL \
                             (redis://[USER:PASSWORD@]HOST[:PORT][/DB]): {e}",
                            url.get_ref().redacted()
                        ),
                    );
                    return None;
                }
            },
            None => None,
        };
        (!window.is_zero()).then_some(IdempotencyConfig {
            window,
            max_keys,
            redis,
        })
    }

    /// The methods of a publish route when it lists none.
    pub(super) fn publish_default_methods() -> Vec<Method> {
        vec![Method::POST, Method::PUT]
    }

    /// Keys about the upstream leg, which a route answered by a broker (`what`: "a publish
    /// route") does not have.
    pub(super) fn upstream_keys_without_upstream(
        &mut self,
        route: &str,
        r: &file::RouteSection,
        what: &str,
    ) {
        fn at<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
            v.as_ref().map(Spanned::span)
        }
        let keys = [
            ("grpc", at(&r.grpc)),
            ("rewrite", at(&r.rewrite)),
            (
                "strip_prefix",
                r.strip_prefix
                    .as_ref()
                    .filter(|s| *s.get_ref())
                    .map(Spanned::span),
            ),
            ("connect_timeout", at(&r.connect_timeout)),
            ("read_timeout", at(&r.read_timeout)),
            ("write_timeout", at(&r.write_timeout)),
            ("retry_non_idempotent", at(&r.retry_non_idempotent)),
        ];
        for (key, span) in keys {
            if let Some(span) = span {
                self.c.at(
                    span,
                    format!(
                        "route `{route}`: `{key}` does not apply to {what} (it has no upstream)"
                    ),
                );
            }
        }
    }

    /// GET and HEAD have no body to publish (reading from a broker is not a publish route's job).
    fn publish_methods(&mut self, route: &str, r: &file::RouteSection) {
        for m in r.methods.iter().flat_map(|ms| ms.get_ref()) {
            let upper = m.get_ref().to_ascii_uppercase();
            if upper == "GET" || upper == "HEAD" {
                self.c.at(
                    m.span(),
                    format!(
                        "route `{route}`: a publish route takes no {upper} (it publishes the \
                         request body; leave `methods` out for POST and PUT)"
                    ),
                );
            }
        }
    }

    /// Reports every destination key that belongs to another kind of broker.
    pub(super) fn foreign_destination_keys(
        &mut self,
        route: &str,
        s: &file::DestinationKeys<'_>,
        b: &BrokerConfig,
    ) {
        self.foreign_keys(
            route,
            b,
            &[
                ("topic", Kind::Kafka, s.topic),
                ("key", Kind::Kafka, s.key),
                ("exchange", Kind::Amqp, s.exchange),
                ("routing_key", Kind::Amqp, s.routing_key),
                ("subject", Kind::Nats, s.subject),
            ],
        );
    }

    /// Reports every key set in `keys` (name, the kind of broker it is for, value) that
    /// belongs to another kind of broker than `b`.
    pub(super) fn foreign_keys(
        &mut self,
        route: &str,
        b: &BrokerConfig,
        keys: &[(&str, Kind, &Option<Spanned<String>>)],
    ) {
        let kind = match b.kind {
            BrokerKind::Kafka(_) => Kind::Kafka,
            BrokerKind::Amqp(_) => Kind::Amqp,
            BrokerKind::Nats(_) => Kind::Nats,
        };
        for (key, owner, value) in keys {
            if let (Some(v), true) = (value, *owner != kind) {
                self.c.at(
                    v.span(),
                    format!(
                        "route `{route}`: `{key}` applies to {} brokers, and broker `{}` is {}",
                        owner.as_str(),
                        b.name,
                        kind.as_str()
                    ),
                );
            }
        }
    }

    /// Where messages go, by the broker's kind; a missing key is reported at `table` (the
    /// table's span), saying what the route is `doing` ("publishing to").
    pub(super) fn destination(
        &mut self,
        route: &str,
        table: Range<usize>,
        s: &file::DestinationKeys<'_>,
        b: &BrokerConfig,
        params: &[Arc<str>],
        doing: &str,
    ) -> Option<Destination> {
        let mut required = |key: &str, v: &Option<Spanned<String>>| {
            if v.is_none() {
                self.c.at(
                    table.clone(),
                    format!(
                        "route `{route}`: {doing} {} broker `{}` needs `{key}`",
                        b.kind.as_str(),
                        b.name
                    ),
                );
            }
        };
        match &b.kind {
            BrokerKind::Kafka(_) => {
                required("topic", s.topic);
                let topic = self.template(
                    route,
                    "topic",
                    s.topic.as_ref(),
                    params,
                    template::kafka_topic,
                );
                let key = match s.key {
                    Some(k) if k.get_ref().is_empty() => {
                        self.c.at(
                            k.span(),
                            format!("route `{route}`: `key` must not be empty (leave it out for no key)"),
                        );
                        None
                    }
                    k => self.template(route, "key", k.as_ref(), params, |_| Ok(())),
                };
                Some(Destination::Kafka { topic: topic?, key })
            }
            BrokerKind::Amqp(_) => {
                required("routing_key", s.routing_key);
                let exchange = match s.exchange {
                    None => Some(Template {
                        source: String::new(),
                        parts: Vec::new(),
                    }),
                    e => self.template(
                        route,
                        "exchange",
                        e.as_ref(),
                        params,
                        template::amqp_exchange,
                    ),
                };
                let routing_key = self.template(
                    route,
                    "routing_key",
                    s.routing_key.as_ref(),
                    params,
                    template::amqp_routing_key,
                );
                Some(Destination::Amqp {
                    exchange: exchange?,
                    routing_key: routing_key?,
                })
            }
            BrokerKind::Nats(_) => {
                required("subject", s.subject);
                let subject = self.template(
                    route,
                    "subject",
                    s.subject.as_ref(),
                    params,
                    template::nats_subject,
                );
                Some(Destination::Nats { subject: subject? })
            }
        }
    }

    /// One destination template, parsed and checked by `check`; errors point at its value.
    pub(super) fn template(
        &mut self,
        route: &str,
        key: &str,
        value: Option<&Spanned<String>>,
        params: &[Arc<str>],
        check: fn(&Template) -> Result<(), String>,
    ) -> Option<Template> {
        let value = value?;
        let source = value.get_ref();
        match template::parse(source, params).and_then(|t| check(&t).map(|()| t)) {
            Ok(t) => Some(t),
            Err(m) => {
                self.c.at(
                    value.span(),
                    format!("route `{route}`: {key} `{source}`: {m}"),
                );
                None
            }
        }
    }

    /// `headers`: request headers copied into the message, lower-cased, each once.
    pub(super) fn publish_headers(
        &mut self,
        route: &str,
        names: &[Spanned<String>],
    ) -> Vec<HeaderName> {
        let mut out: Vec<HeaderName> = Vec::new();
        for n in names {
            match HeaderName::from_bytes(n.get_ref().as_bytes()) {
                Ok(h) if ALWAYS_COPIED.contains(&h.as_str()) || out.contains(&h) => {}
                Ok(h) => out.push(h),
                Err(_) => self.c.at(
                    n.span(),
                    format!("route `{route}`: invalid header name `{}`", n.get_ref()),
                ),
            }
        }
        out
    }

    /// `max_body_bytes`: 1 MiB or the broker's message limit if smaller; never above it.
    pub(super) fn max_body_bytes(
        &mut self,
        route: &str,
        max: Option<&Spanned<ByteSize>>,
        b: &BrokerConfig,
    ) -> usize {
        // NATS servers announce their limit (`max_payload`) when the client connects.
        let limit = match &b.kind {
            BrokerKind::Kafka(k) => Some((k.message_max_bytes, "message_max_bytes")),
            BrokerKind::Amqp(a) => Some((a.max_message_bytes, "max_message_bytes")),
            BrokerKind::Nats(_) => None,
        };
        let Some(v) = max else {
            return limit.map_or(DEFAULT_MAX_BODY, |(l, _)| l.min(DEFAULT_MAX_BODY));
        };
        let n = usize::try_from(v.get_ref().as_u64()).unwrap_or(usize::MAX);
        if n == 0 {
            self.c.at(
                v.span(),
                format!("route `{route}`: `max_body_bytes` must be greater than 0"),
            );
        }
        if let Some((l, key)) = limit.filter(|(l, _)| n > *l) {
            self.c.at(
                v.span(),
                format!(
                    "route `{route}`: `max_body_bytes` ({n} bytes) is more than broker `{}` \
                     takes (`{key}` = {l} bytes)",
                    b.name
                ),
            );
        }
        n
    }

    /// `mode`: confirmed unless the route says otherwise; core NATS cannot confirm.
    fn publish_mode(
        &mut self,
        route: &str,
        s: &file::PublishSection,
        b: &BrokerConfig,
    ) -> PublishMode {
        let mode = match s.mode.as_ref().map(|m| *m.get_ref()) {
            None | Some(file::PublishMode::Confirmed) => PublishMode::Confirmed,
            Some(file::PublishMode::FireAndForget) => PublishMode::FireAndForget,
        };
        let core_nats = matches!(&b.kind, BrokerKind::Nats(n) if !n.jetstream);
        if core_nats && mode == PublishMode::Confirmed {
            let span = s.mode.as_ref().map_or(s.broker.span(), Spanned::span);
            self.c.at(
                span,
                format!(
                    "route `{route}`: broker `{}` has `jetstream = false`, and core NATS does not \
                     acknowledge messages, so a publish cannot be confirmed; set \
                     `mode = \"fire_and_forget\"` (or turn JetStream on)",
                    b.name
                ),
            );
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderName, Method, StatusCode};

    use super::super::super::model::{
        Destination, IdempotencyConfig, PublishConfig, PublishMode, Rewrite, Template, TemplatePart,
    };
    use super::super::testing::{errors, valid};

    /// Brokers `k` (Kafka, 512 KiB messages), `q` (AMQP), `n` (NATS with JetStream) and `core`
    /// (NATS without), on lines 1 to 14; `routes` start on line 15.
    fn with_brokers(routes: &str) -> String {
        format!(
            "[brokers.k]\nkind = \"kafka\"\nbootstrap = [\"k:9092\"]\nmessage_max_bytes = \"512KiB\"\n\
             [brokers.q]\nkind = \"amqp\"\nurl = \"amqp://rabbit\"\n\
             [brokers.n]\nkind = \"nats\"\nservers = [\"nats://n\"]\n\
             [brokers.core]\nkind = \"nats\"\nservers = [\"nats://n\"]\njetstream = false\n{routes}"
        )
    }

    fn template(source: &str, parts: Vec<TemplatePart>) -> Template {
        Template {
            source: source.into(),
            parts,
        }
    }

    fn literal(s: &str) -> Template {
        template(s, vec![TemplatePart::Literal(s.into())])
    }

    #[test]
    fn defaults_reach_the_model() {
        let built = valid(&with_brokers(
            "[routes.orders]\ntemplate = \"/orders/{id}\"\n\
             [routes.orders.publish]\nbroker = \"k\"\ntopic = \"orders\"\n\
             [routes.events]\nprefix = \"/events\"\n\
             [routes.events.publish]\nbroker = \"q\"\nrouting_key = \"events\"\n\
             [routes.ticks]\nexact = \"/ticks\"\n\
             [routes.ticks.publish]\nbroker = \"n\"\nsubject = \"ticks\"\n",
        ));
        let [events, orders, ticks] = &built.config.routes[..] else {
            panic!("three routes");
        };
        for r in [events, orders, ticks] {
            assert_eq!(r.upstream, None, "{}", r.name);
            assert_eq!(&*r.upstream_name, "");
            assert_eq!(r.rewrite, Rewrite::None);
        }
        // Brokers are indexed in name order: core, k, n, q.
        assert_eq!(
            orders.publish,
            Some(PublishConfig {
                broker: 1,
                broker_name: "k".into(),
                destination: Destination::Kafka {
                    topic: literal("orders"),
                    key: None,
                },
                headers: Vec::new(),
                // 1 MiB, but the broker takes 512 KiB.
                max_body_bytes: 512 << 10,
                mode: PublishMode::Confirmed,
                status: StatusCode::ACCEPTED,
                idempotency: Some(IdempotencyConfig {
                    window: std::time::Duration::from_secs(3600),
                    max_keys: 100_000,
                    redis: None,
                }),
            })
        );
        let events = events.publish.as_ref().expect("publish");
        assert_eq!((events.broker, &*events.broker_name), (3, "q"));
        assert_eq!(
            events.destination,
            Destination::Amqp {
                exchange: template("", Vec::new()),
                routing_key: literal("events"),
            }
        );
        assert_eq!(events.max_body_bytes, 1 << 20);
        let ticks = ticks.publish.as_ref().expect("publish");
        assert_eq!(
            ticks.destination,
            Destination::Nats {
                subject: literal("ticks")
            }
        );
        assert_eq!(ticks.max_body_bytes, 1 << 20);
        // Without `methods`, a publish route takes POST and PUT.
        let table = &built.config.table;
        let headers = HeaderMap::new();
        let at = |m: Method| {
            table
                .match_request(&m, None, "/orders/7", &headers)
                .map(|m| m.id)
        };
        assert_eq!(at(Method::POST), Some(1));
        assert_eq!(at(Method::PUT), Some(1));
        assert_eq!(at(Method::GET), None);
        assert_eq!(at(Method::PATCH), None);
    }

    #[test]
    fn idempotency_keys_can_be_turned_off_but_not_bounded_to_nothing() {
        let route = |extra: &str| {
            with_brokers(&format!(
                "[routes.a]\nexact = \"/a\"\n[routes.a.publish]\nbroker = \"k\"\ntopic = \"t\"\n{extra}"
            ))
        };
        let built = valid(&route("idempotency_window = \"0s\"\n"));
        let publish = built.config.routes[0].publish.as_ref().expect("publish");
        assert_eq!(publish.idempotency, None);
        let errs = errors(&route("idempotency_max_keys = 0\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("`idempotency_max_keys` must be at least 1"),
            "{errs:?}"
        );
        let errs = errors(&route("idempotency_redis = \"http://u:secret@r:6379\"\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("is not a Redis URL"), "{errs:?}");
        assert!(!errs[0].contains("secret"), "{errs:?}");
        let built = valid(&route("idempotency_redis = \"redis://127.0.0.1:6379/2\"\n"));
        let publish = built.config.routes[0].publish.as_ref().expect("publish");
        let redis = publish.idempotency.as_ref().and_then(|i| i.redis.as_ref());
        assert_eq!(redis.map(|r| r.expose()), Some("redis://127.0.0.1:6379/2"));
    }

    #[test]
    fn every_key_of_every_kind_reaches_the_model() {
        let built = valid(&with_brokers(
            "[routes.a]\ntemplate = \"/tenants/{tenant}/orders/{id}\"\nmethods = [\"post\", \"PATCH\"]\n\
             [routes.a.publish]\nbroker = \"k\"\ntopic = \"orders.{tenant}\"\nkey = \"{id}\"\n\
             headers = [\"X-Tenant\", \"x-tenant\", \"Content-Type\", \"idempotency-key\"]\n\
             max_body_bytes = \"64KiB\"\nmode = \"fire_and_forget\"\nstatus = 200\n\
             idempotency_window = \"10m\"\nidempotency_max_keys = 50\n\
             [routes.b]\ntemplate = \"/orders/{id}\"\n\
             [routes.b.publish]\nbroker = \"q\"\nexchange = \"orders\"\nrouting_key = \"{header.x-region}.{jwt.sub}\"\n\
             max_body_bytes = \"4MiB\"\nstatus = 204\n\
             [routes.c]\nexact = \"/ticks\"\n\
             [routes.c.publish]\nbroker = \"core\"\nsubject = \"ticks.{consumer}\"\nmode = \"fire_and_forget\"\n",
        ));
        let [a, b, c] = &built.config.routes[..] else {
            panic!("three routes");
        };
        let a = a.publish.as_ref().expect("publish");
        assert_eq!(
            a.destination,
            Destination::Kafka {
                topic: template(
                    "orders.{tenant}",
                    vec![
                        TemplatePart::Literal("orders.".into()),
                        TemplatePart::Param(0)
                    ]
                ),
                key: Some(template("{id}", vec![TemplatePart::Param(1)])),
            }
        );
        // Lower-cased, once each; content-type is copied anyway.
        assert_eq!(
            a.headers,
            [
                HeaderName::from_static("x-tenant"),
                HeaderName::from_static("idempotency-key")
            ]
        );
        assert_eq!(a.max_body_bytes, 64 << 10);
        assert_eq!(a.mode, PublishMode::FireAndForget);
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.idempotency,
            Some(IdempotencyConfig {
                window: std::time::Duration::from_secs(600),
                max_keys: 50,
                redis: None,
            })
        );
        let table = &built.config.table;
        let headers = HeaderMap::new();
        let at = |m: Method| {
            table
                .match_request(&m, None, "/tenants/t/orders/7", &headers)
                .map(|m| m.id)
        };
        assert_eq!((at(Method::PATCH), at(Method::PUT)), (Some(0), None));
        let b = b.publish.as_ref().expect("publish");
        assert_eq!(
            b.destination,
            Destination::Amqp {
                exchange: literal("orders"),
                routing_key: template(
                    "{header.x-region}.{jwt.sub}",
                    vec![
                        TemplatePart::Header(HeaderName::from_static("x-region")),
                        TemplatePart::Literal(".".into()),
                        TemplatePart::Var("jwt.sub".into()),
                    ]
                ),
            }
        );
        assert_eq!(
            (b.max_body_bytes, b.status),
            (4 << 20, StatusCode::NO_CONTENT)
        );
        let c = c.publish.as_ref().expect("publish");
        assert_eq!((c.broker, c.mode), (0, PublishMode::FireAndForget));
    }

    /// Publishing is the handler; the route's plugins (authentication, rate limits) still run.
    #[test]
    fn publish_routes_keep_their_plugins() {
        let built = valid(&with_brokers(
            "[plugins.request-id]\n\
             [routes.r]\nexact = \"/orders\"\n\
             [routes.r.publish]\nbroker = \"n\"\nsubject = \"orders\"\n\
             [routes.r.plugins.body-limit]\nmax_bytes = 1024\n",
        ));
        let names: Vec<&str> = built.instances.routes[0]
            .plugins
            .iter()
            .map(|p| &*p.name)
            .collect();
        assert_eq!(names, ["request-id", "body-limit"]);
    }

    #[test]
    fn a_route_has_an_upstream_or_publishes_and_the_broker_must_exist() {
        assert_eq!(
            errors(&with_brokers(
                "[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n\
                 [routes.a]\nexact = \"/a\"\nupstream = \"u\"\n[routes.a.publish]\nbroker = \"n\"\nsubject = \"a\"\n\
                 [routes.b]\nexact = \"/b\"\n\
                 [routes.c]\nexact = \"/c\"\n[routes.c.publish]\nbroker = \"kafka\"\ntopic = \"c\"\n"
            )),
            [
                "gateway.toml:20:1: route `a`: `upstream` and `publish` cannot both be set (a route has one of `upstream`, `publish`, `subscribe` and `request_reply`)",
                "gateway.toml:23:1: route `b` needs `upstream`, `publish`, `subscribe` or `request_reply`",
                "gateway.toml:28:10: route `c`: broker `kafka` is not defined",
            ]
        );
    }

    #[test]
    fn keys_of_the_upstream_leg_are_refused() {
        assert_eq!(
            errors(&with_brokers(
                "[routes.a]\nprefix = \"/a\"\nstrip_prefix = true\nrewrite = \"/b\"\n\
                 connect_timeout = \"1s\"\nread_timeout = \"1s\"\nwrite_timeout = \"1s\"\n\
                 retry_non_idempotent = true\ngrpc = { reflection = true }\n\
                 [routes.a.publish]\nbroker = \"n\"\nsubject = \"a\"\n\
                 [routes.b]\nprefix = \"/b\"\nstrip_prefix = false\n\
                 [routes.b.publish]\nbroker = \"n\"\nsubject = \"b\"\n"
            )),
            [
                "gateway.toml:17:16: route `a`: `strip_prefix` does not apply to a publish route (it has no upstream)",
                "gateway.toml:18:11: route `a`: `rewrite` does not apply to a publish route (it has no upstream)",
                "gateway.toml:19:19: route `a`: `connect_timeout` does not apply to a publish route (it has no upstream)",
                "gateway.toml:20:16: route `a`: `read_timeout` does not apply to a publish route (it has no upstream)",
                "gateway.toml:21:17: route `a`: `write_timeout` does not apply to a publish route (it has no upstream)",
                "gateway.toml:22:24: route `a`: `retry_non_idempotent` does not apply to a publish route (it has no upstream)",
                "gateway.toml:23:8: route `a`: `grpc` does not apply to a publish route (it has no upstream)",
            ]
        );
    }

    #[test]
    fn get_and_head_are_refused() {
        assert_eq!(
            errors(&with_brokers(
                "[routes.a]\nexact = \"/a\"\nmethods = [\"POST\", \"get\", \"HEAD\"]\n\
                 [routes.a.publish]\nbroker = \"n\"\nsubject = \"a\"\n"
            )),
            [
                "gateway.toml:17:20: route `a`: a publish route takes no GET (it publishes the request body; leave `methods` out for POST and PUT)",
                "gateway.toml:17:27: route `a`: a publish route takes no HEAD (it publishes the request body; leave `methods` out for POST and PUT)",
            ]
        );
    }

    #[test]
    fn destinations_follow_the_brokers_kind() {
        assert_eq!(
            errors(&with_brokers(
                "[routes.a]\nexact = \"/a\"\n[routes.a.publish]\nbroker = \"k\"\nsubject = \"a\"\n\
                 [routes.b]\nexact = \"/b\"\n[routes.b.publish]\nbroker = \"q\"\nexchange = \"x\"\ntopic = \"b\"\n\
                 [routes.c]\nexact = \"/c\"\n[routes.c.publish]\nbroker = \"n\"\nrouting_key = \"c\"\nkey = \"c\"\n"
            )),
            [
                "gateway.toml:17:1: route `a`: publishing to kafka broker `k` needs `topic`",
                "gateway.toml:19:11: route `a`: `subject` applies to nats brokers, and broker `k` is kafka",
                "gateway.toml:22:1: route `b`: publishing to amqp broker `q` needs `routing_key`",
                "gateway.toml:25:9: route `b`: `topic` applies to kafka brokers, and broker `q` is amqp",
                "gateway.toml:28:1: route `c`: publishing to nats broker `n` needs `subject`",
                "gateway.toml:30:15: route `c`: `routing_key` applies to amqp brokers, and broker `n` is nats",
                "gateway.toml:31:7: route `c`: `key` applies to kafka brokers, and broker `n` is nats",
            ]
        );
    }

    #[test]
    fn templates_are_reported_at_their_value_saying_what_is_wrong() {
        assert_eq!(
            errors(&with_brokers(
                "[routes.a]\ntemplate = \"/orders/{id}\"\n[routes.a.publish]\nbroker = \"k\"\n\
                 topic = \"orders.{ordr}\"\nkey = \"{id\"\n\
                 [routes.b]\nexact = \"/b\"\n[routes.b.publish]\nbroker = \"k\"\ntopic = \"orders/{id}\"\nkey = \"\"\n\
                 [routes.c]\nexact = \"/c\"\n[routes.c.publish]\nbroker = \"n\"\nsubject = \"orders.>\"\n\
                 [routes.d]\nexact = \"/d\"\n[routes.d.publish]\nbroker = \"n\"\nsubject = \"orders..{header.x-id}\"\n\
                 [routes.e]\nexact = \"/e\"\n[routes.e.publish]\nbroker = \"q\"\nexchange = \"ex}\"\nrouting_key = \"{}\"\n"
            )),
            [
                "gateway.toml:19:9: route `a`: topic `orders.{ordr}`: `{ordr}` is not a parameter of the route's template (it has `id`); a value a plugin set is written `{consumer}`, `{jwt.CLAIM}` or `{var.NAME}`",
                "gateway.toml:20:7: route `a`: key `{id`: unclosed `{`",
                "gateway.toml:25:9: route `b`: topic `orders/{id}`: `{id}` is not a parameter: the route has no `template` path (such as \"/orders/{id}\"); a value a plugin set is written `{consumer}`, `{jwt.CLAIM}` or `{var.NAME}`",
                "gateway.toml:26:7: route `b`: `key` must not be empty (leave it out for no key)",
                "gateway.toml:31:11: route `c`: subject `orders.>`: `>` is a wildcard; a message is published to one subject, so a subject to publish to has none",
                "gateway.toml:36:11: route `d`: subject `orders..{header.x-id}`: a NATS subject has no empty token (no `..`, and no `.` at its start or end)",
                "gateway.toml:41:12: route `e`: exchange `ex}`: unmatched `}` (braces cannot be literal text)",
                "gateway.toml:42:15: route `e`: routing_key `{}`: empty `{}`: write a parameter such as `{id}`, `{header.NAME}` or `{jwt.CLAIM}`",
            ]
        );
    }

    #[test]
    fn body_limit_status_headers_and_mode_are_checked() {
        assert_eq!(
            errors(&with_brokers(
                "[routes.a]\nexact = \"/a\"\n[routes.a.publish]\nbroker = \"k\"\ntopic = \"a\"\n\
                 max_body_bytes = \"1MiB\"\nstatus = 302\nheaders = [\"x tenant\"]\n\
                 [routes.b]\nexact = \"/b\"\n[routes.b.publish]\nbroker = \"q\"\nrouting_key = \"b\"\n\
                 max_body_bytes = 0\nstatus = 99\n\
                 [routes.c]\nexact = \"/c\"\n[routes.c.publish]\nbroker = \"core\"\nsubject = \"c\"\n\
                 [routes.d]\nexact = \"/d\"\n[routes.d.publish]\nbroker = \"core\"\nsubject = \"d\"\nmode = \"confirmed\"\n"
            )),
            [
                "gateway.toml:20:18: route `a`: `max_body_bytes` (1048576 bytes) is more than broker `k` takes (`message_max_bytes` = 524288 bytes)",
                "gateway.toml:21:10: route `a`: publish `status` must be 2xx (200 to 299), got 302",
                "gateway.toml:22:12: route `a`: invalid header name `x tenant`",
                "gateway.toml:28:18: route `b`: `max_body_bytes` must be greater than 0",
                "gateway.toml:29:10: route `b`: publish `status` must be 2xx (200 to 299), got 99",
                "gateway.toml:33:10: route `c`: broker `core` has `jetstream = false`, and core NATS does not acknowledge messages, so a publish cannot be confirmed; set `mode = \"fire_and_forget\"` (or turn JetStream on)",
                "gateway.toml:40:8: route `d`: broker `core` has `jetstream = false`, and core NATS does not acknowledge messages, so a publish cannot be confirmed; set `mode = \"fire_and_forget\"` (or turn JetStream on)",
            ]
        );
    }

    #[test]
    fn an_unknown_publish_key_or_mode_is_named() {
        assert_eq!(
            errors(&with_brokers(
                "[routes.a]\nexact = \"/a\"\n[routes.a.publish]\nbroker = \"n\"\nsubject = \"a\"\nmode = \"async\"\n\
                 [routes.b]\nexact = \"/b\"\n[routes.b.publish]\nbroker = \"n\"\nsubjet = \"b\"\n"
            )),
            [
                "gateway.toml:20:8: unknown variant `async`, expected `confirmed` or `fire_and_forget`",
                "gateway.toml:25:1: unknown field `subjet`, expected one of `broker`, `topic`, `key`, `exchange`, `routing_key`, `subject`, `headers`, `max_body_bytes`, `mode`, `status`, `idempotency_window`, `idempotency_max_keys`, `idempotency_redis`",
            ]
        );
    }
}
