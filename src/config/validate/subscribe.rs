//! `[routes.NAME.subscribe]`: a route that streams a broker's messages to each client as
//! Server-Sent Events. Its broker, its source (keys by the broker's kind), the filters filled
//! from the request, and how each subscriber is served (heartbeat, buffer, cap).

use std::sync::Arc;
use std::time::Duration;

use super::super::spanned::Spanned;
use http::HeaderName;

use super::super::file::{self, BrokerKind as Kind};
use super::super::model::{BrokerConfig, BrokerKind, Source, SubscribeConfig, Template};
use super::routes::Targets;
use super::template;
use super::Validator;

/// Silence after which a comment line is sent unless the route says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a client may take no bytes while an event waits for it, unless the route says
/// otherwise.
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages held for one client unless the route says otherwise.
const DEFAULT_BUFFER: usize = 256;
/// The most a route may hold per client: the buffer is allocated as messages arrive, but a
/// bound that large is no bound.
const MAX_BUFFER: u64 = 65_536;
/// Subscribers of one route at once unless it says otherwise.
const DEFAULT_MAX_SUBSCRIBERS: usize = 10_000;

impl Validator<'_, '_> {
    /// The subscribe config of route `route`, whose path template has `params`; `None` when
    /// it is wrong (and reported).
    pub(super) fn subscribe(
        &mut self,
        route: &str,
        r: &file::RouteSection,
        section: &Spanned<file::SubscribeSection>,
        params: &[Arc<str>],
        targets: &Targets<'_>,
    ) -> Option<SubscribeConfig> {
        self.upstream_keys_without_upstream(route, r, "a subscribe route");
        self.subscribe_methods(route, r);
        let s = section.get_ref();
        let (broker, b) = self.broker_ref(route, &s.broker, targets)?;
        self.foreign_keys(
            route,
            b,
            &[
                ("topic", Kind::Kafka, &s.topic),
                ("exchange", Kind::Amqp, &s.exchange),
                ("routing_key", Kind::Amqp, &s.routing_key),
                ("queue", Kind::Amqp, &s.queue),
                ("subject", Kind::Nats, &s.subject),
            ],
        );
        let source = self.source(route, section, b, params);
        let (filter_key, filter_headers) = self.subscribe_filter(route, s, b, params);
        let heartbeat = self.nonzero_duration(s.heartbeat.as_ref(), DEFAULT_HEARTBEAT, || {
            format!("route `{route}`: `heartbeat` must be longer than 0s")
        });
        let stall_timeout =
            self.nonzero_duration(s.stall_timeout.as_ref(), DEFAULT_STALL_TIMEOUT, || {
                format!("route `{route}`: `stall_timeout` must be longer than 0s")
            });
        let buffer = match &s.buffer {
            Some(n) if !(1..=MAX_BUFFER).contains(n.get_ref()) => {
                self.c.at(
                    n.span(),
                    format!(
                        "route `{route}`: `buffer` is messages held per client, 1 to {MAX_BUFFER}; got {}",
                        n.get_ref()
                    ),
                );
                DEFAULT_BUFFER
            }
            Some(n) => usize::try_from(*n.get_ref()).unwrap_or(DEFAULT_BUFFER),
            None => DEFAULT_BUFFER,
        };
        let max_subscribers = match &s.max_subscribers {
            Some(n) if *n.get_ref() == 0 => {
                self.c.at(
                    n.span(),
                    format!("route `{route}`: `max_subscribers` must be at least 1"),
                );
                DEFAULT_MAX_SUBSCRIBERS
            }
            Some(n) => usize::try_from(*n.get_ref()).unwrap_or(usize::MAX),
            None => DEFAULT_MAX_SUBSCRIBERS,
        };
        Some(SubscribeConfig {
            broker,
            broker_name: b.name.clone(),
            source: source?,
            filter_key: filter_key?,
            filter_headers: filter_headers?,
            heartbeat,
            stall_timeout,
            buffer,
            max_subscribers,
        })
    }

    /// A subscribe route answers GET; its stream has no request body.
    fn subscribe_methods(&mut self, route: &str, r: &file::RouteSection) {
        for m in r.methods.iter().flat_map(|ms| ms.get_ref()) {
            if !m.get_ref().eq_ignore_ascii_case("GET") {
                self.c.at(
                    m.span(),
                    format!(
                        "route `{route}`: a subscribe route takes GET only (leave `methods` out)"
                    ),
                );
            }
        }
    }

    /// Where messages come from, by the broker's kind.
    fn source(
        &mut self,
        route: &str,
        section: &Spanned<file::SubscribeSection>,
        b: &BrokerConfig,
        params: &[Arc<str>],
    ) -> Option<Source> {
        let s = section.get_ref();
        let needs = |this: &mut Self, what: &str| {
            this.c.at(
                section.span(),
                format!(
                    "route `{route}`: subscribing to {} broker `{}` needs {what}",
                    b.kind.as_str(),
                    b.name
                ),
            );
        };
        match &b.kind {
            BrokerKind::Kafka(_) => {
                if s.topic.is_none() {
                    needs(self, "`topic`");
                }
                let topic = self.template(
                    route,
                    "topic",
                    s.topic.as_ref(),
                    params,
                    template::kafka_topic,
                );
                Some(Source::Kafka { topic: topic? })
            }
            BrokerKind::Amqp(_) => match (&s.queue, &s.routing_key) {
                (Some(q), None) => {
                    if let Some(e) = &s.exchange {
                        self.c.at(
                            e.span(),
                            format!(
                                "route `{route}`: `exchange` binds a queue of the client's own; \
                                 with `queue` the named queue's own bindings apply"
                            ),
                        );
                    }
                    let queue =
                        self.template(route, "queue", Some(q), params, template::amqp_queue);
                    Some(Source::AmqpQueue { queue: queue? })
                }
                (None, Some(k)) => {
                    let Some(e) = &s.exchange else {
                        needs(self, "`exchange` with `routing_key` (or a `queue`)");
                        return None;
                    };
                    let exchange =
                        self.template(route, "exchange", Some(e), params, template::amqp_exchange);
                    if exchange.as_ref().is_some_and(|e| e.parts.is_empty()) {
                        self.c.at(
                            e.span(),
                            format!(
                                "route `{route}`: the default exchange cannot be bound; name an \
                                 exchange, or subscribe to a `queue`"
                            ),
                        );
                        return None;
                    }
                    let routing_key = self.template(
                        route,
                        "routing_key",
                        Some(k),
                        params,
                        template::amqp_routing_key,
                    );
                    Some(Source::AmqpBinding {
                        exchange: exchange?,
                        routing_key: routing_key?,
                    })
                }
                (Some(q), Some(_)) => {
                    self.c.at(
                        q.span(),
                        format!(
                            "route `{route}`: `queue` and `routing_key` cannot both be set (a \
                             named queue, or a queue of the client's own bound with `exchange` \
                             and `routing_key`)"
                        ),
                    );
                    None
                }
                (None, None) => {
                    needs(self, "`exchange` and `routing_key`, or `queue`");
                    None
                }
            },
            BrokerKind::Nats(_) => {
                if s.subject.is_none() {
                    needs(self, "`subject`");
                }
                let subject = self.template(
                    route,
                    "subject",
                    s.subject.as_ref(),
                    params,
                    template::nats_subscription,
                );
                Some(Source::Nats { subject: subject? })
            }
        }
    }

    /// `filter = { key = "...", headers = { NAME = "..." } }`. `Some` of each part when valid.
    #[allow(clippy::type_complexity)]
    fn subscribe_filter(
        &mut self,
        route: &str,
        s: &file::SubscribeSection,
        b: &BrokerConfig,
        params: &[Arc<str>],
    ) -> (
        Option<Option<Template>>,
        Option<Vec<(HeaderName, Template)>>,
    ) {
        let Some(f) = &s.filter else {
            return (Some(None), Some(Vec::new()));
        };
        if s.queue.is_some() {
            // A named queue's messages are shared work, each handed to one subscriber: one that
            // subscriber filtered out would be lost to the others.
            self.c.at(
                f.span(),
                format!(
                    "route `{route}`: `filter` does not apply to a `queue` (each of its messages \
                     goes to one subscriber, and one filtered out would be lost to the others); \
                     bind a queue of the client's own with `exchange` and `routing_key` instead"
                ),
            );
            return (None, None);
        }
        let f = f.get_ref();
        let key = match &f.key {
            Some(k) if !matches!(b.kind, BrokerKind::Kafka(_)) => {
                self.c.at(
                    k.span(),
                    format!(
                        "route `{route}`: `filter.key` applies to Kafka brokers (messages with \
                         keys), and broker `{}` is {}",
                        b.name,
                        b.kind.as_str()
                    ),
                );
                None
            }
            Some(k) => self
                .template(route, "filter.key", Some(k), params, |_| Ok(()))
                .map(Some),
            None => Some(None),
        };
        let mut headers = Some(Vec::new());
        for (name, value) in &f.headers {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                self.c.at(
                    value.span(),
                    format!("route `{route}`: `filter.headers`: invalid header name `{name}`"),
                );
                headers = None;
                continue;
            };
            match self.template(route, "filter.headers", Some(value), params, |_| Ok(())) {
                Some(t) => {
                    if let Some(h) = headers.as_mut() {
                        h.push((name, t));
                    }
                }
                None => headers = None,
            }
        }
        (key, headers)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderName;

    use super::super::super::model::{Source, Template, TemplatePart};
    use super::super::testing::{errors, valid};

    /// Brokers `k` (Kafka), `q` (AMQP) and `n` (NATS) on lines 1 to 9; routes from line 10.
    fn with_brokers(routes: &str) -> String {
        format!(
            "[brokers.k]\nkind = \"kafka\"\nbootstrap = [\"k:9092\"]\n\
             [brokers.q]\nkind = \"amqp\"\nurl = \"amqp://rabbit\"\n\
             [brokers.n]\nkind = \"nats\"\nservers = [\"nats://n\"]\n{routes}"
        )
    }

    #[test]
    fn a_subscribe_route_streams_from_each_kind_with_defaults() {
        let c = valid(&with_brokers(
            "[routes.k]\ntemplate = \"/k/{id}\"\n[routes.k.subscribe]\nbroker = \"k\"\ntopic = \"orders\"\nfilter = { key = \"{id}\", headers = { x-tenant = \"{header.x-tenant}\" } }\n\
             [routes.b]\nexact = \"/b\"\n[routes.b.subscribe]\nbroker = \"q\"\nexchange = \"events\"\nrouting_key = \"orders.#\"\nheartbeat = \"5s\"\nbuffer = 8\nmax_subscribers = 2\n\
             [routes.q]\nexact = \"/q\"\n[routes.q.subscribe]\nbroker = \"q\"\nqueue = \"work\"\n\
             [routes.n]\ntemplate = \"/n/{kind}\"\n[routes.n.subscribe]\nbroker = \"n\"\nsubject = \"events.{kind}.>\"\n",
        ));
        let route = |name: &str| {
            c.config
                .routes
                .iter()
                .find(|r| &*r.name == name)
                .and_then(|r| r.subscribe.clone())
                .expect("a subscribe route")
        };
        let k = route("k");
        assert_eq!(
            k.source,
            Source::Kafka {
                topic: Template {
                    source: "orders".into(),
                    parts: vec![TemplatePart::Literal("orders".into())]
                }
            }
        );
        assert_eq!(
            k.filter_key.map(|t| t.parts),
            Some(vec![TemplatePart::Param(0)])
        );
        assert_eq!(k.filter_headers[0].0, HeaderName::from_static("x-tenant"));
        assert_eq!(
            (k.heartbeat, k.buffer, k.max_subscribers),
            (Duration::from_secs(15), 256, 10_000)
        );
        let b = route("b");
        assert!(matches!(b.source, Source::AmqpBinding { .. }));
        assert_eq!(
            (b.heartbeat, b.buffer, b.max_subscribers),
            (Duration::from_secs(5), 8, 2)
        );
        assert!(matches!(route("q").source, Source::AmqpQueue { .. }));
        assert!(matches!(route("n").source, Source::Nats { .. }));
    }

    #[test]
    fn subscribe_mistakes_point_at_their_value() {
        assert_eq!(
            errors(&with_brokers(
                "[routes.a]\nexact = \"/a\"\nmethods = [\"POST\"]\n[routes.a.subscribe]\nbroker = \"n\"\nsubject = \"a.>.b\"\n\
                 [routes.b]\nexact = \"/b\"\n[routes.b.subscribe]\nbroker = \"q\"\nqueue = \"amq.x\"\nexchange = \"e\"\n\
                 [routes.c]\nexact = \"/c\"\n[routes.c.subscribe]\nbroker = \"k\"\nsubject = \"x\"\nheartbeat = \"0s\"\nbuffer = 0\nmax_subscribers = 0\n\
                 [routes.d]\nexact = \"/d\"\n[routes.d.subscribe]\nbroker = \"q\"\nexchange = \"\"\nrouting_key = \"k\"\n\
                 [routes.e]\nexact = \"/e\"\n[routes.e.subscribe]\nbroker = \"n\"\nsubject = \"x\"\nfilter = { key = \"{header.k}\" }\n\
                 [routes.f]\nexact = \"/f\"\nupstream = \"nope\"\n[routes.f.subscribe]\nbroker = \"n\"\nsubject = \"x\"\n\
                 [routes.g]\nexact = \"/g\"\n[routes.g.subscribe]\nbroker = \"q\"\nqueue = \"work\"\nfilter = { headers = { x-t = \"a\" } }\n"
            )),
            [
                "gateway.toml:12:12: route `a`: a subscribe route takes GET only (leave `methods` out)",
                "gateway.toml:15:11: route `a`: subject `a.>.b`: `>`: a wildcard is a whole token, `*` anywhere and `>` only last",
                "gateway.toml:20:9: route `b`: queue `amq.x`: names starting with `amq.` are the broker's own",
                "gateway.toml:21:12: route `b`: `exchange` binds a queue of the client's own; with `queue` the named queue's own bindings apply",
                "gateway.toml:24:1: route `c`: subscribing to kafka broker `k` needs `topic`",
                "gateway.toml:26:11: route `c`: `subject` applies to nats brokers, and broker `k` is kafka",
                "gateway.toml:27:13: route `c`: `heartbeat` must be longer than 0s",
                "gateway.toml:28:10: route `c`: `buffer` is messages held per client, 1 to 65536; got 0",
                "gateway.toml:29:19: route `c`: `max_subscribers` must be at least 1",
                "gateway.toml:34:12: route `d`: the default exchange cannot be bound; name an exchange, or subscribe to a `queue`",
                "gateway.toml:41:18: route `e`: `filter.key` applies to Kafka brokers (messages with keys), and broker `n` is nats",
                "gateway.toml:45:1: route `f`: `upstream` and `subscribe` cannot both be set (a route has one of `upstream`, `publish`, `subscribe` and `request_reply`)",
                "gateway.toml:53:10: route `g`: `filter` does not apply to a `queue` (each of its messages goes to one subscriber, and one filtered out would be lost to the others); bind a queue of the client's own with `exchange` and `routing_key` instead",
            ]
        );
    }
}
