//! `[routes.NAME.request_reply]`: a route that sends its request body to a broker and answers
//! with the correlated reply. Its destination, headers and body limit are read as a publish
//! route's are (src/config/validate/publish.rs); what is its own: the Kafka reply topic, the
//! reply timeout and the asynchronous form (`Prefer: respond-async`).

use std::sync::Arc;
use std::time::Duration;

use super::super::spanned::Spanned;
use http::Method;

use super::super::file;
use super::super::model::{AsyncReplies, BrokerConfig, BrokerKind, RequestReplyConfig};
use super::routes::Targets;
use super::template;
use super::Validator;

/// How long a reply is waited for unless the route says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an asynchronous reply is kept for polling unless the route says otherwise.
const DEFAULT_ASYNC_TTL: Duration = Duration::from_secs(300);
/// Asynchronous replies kept at once per route unless it says otherwise.
const DEFAULT_ASYNC_MAX_REPLIES: usize = 10_000;

impl Validator<'_, '_> {
    /// The request-reply config of route `route`, whose path template has `params`; `None`
    /// when it is wrong (and reported).
    pub(super) fn request_reply(
        &mut self,
        route: &str,
        r: &file::RouteSection,
        t: &Spanned<file::RequestReplySection>,
        params: &[Arc<str>],
        targets: &Targets<'_>,
    ) -> Option<RequestReplyConfig> {
        self.upstream_keys_without_upstream(route, r, "a request_reply route");
        let s = t.get_ref();
        let (broker, b) = self.broker_ref(route, &s.broker, targets)?;
        let keys = s.destination_keys();
        self.foreign_destination_keys(route, &keys, b);
        let destination =
            self.destination(route, t.span(), &keys, b, params, "sending requests to");
        let reply_topic = self.reply_topic(route, t, b);
        let headers = self.publish_headers(route, &s.headers);
        let max_body_bytes = self.max_body_bytes(route, s.max_body_bytes.as_ref(), b);
        let timeout = self.nonzero_duration(s.timeout.as_ref(), DEFAULT_TIMEOUT, || {
            format!("route `{route}`: request_reply `timeout` must be greater than 0")
        });
        let respond_async = self.async_replies(route, s);
        let get_is_request = r.methods.as_ref().is_some_and(|ms| {
            ms.get_ref()
                .iter()
                .any(|m| m.get_ref().eq_ignore_ascii_case("GET"))
        });
        Some(RequestReplyConfig {
            broker,
            broker_name: b.name.clone(),
            destination: destination?,
            reply_topic: reply_topic.ok()?,
            headers,
            max_body_bytes,
            timeout,
            respond_async,
            get_is_request,
        })
    }

    /// `reply_topic`: required for Kafka (a literal topic: its consumer is made once), refused
    /// for the other kinds. `Err` when wrong (and reported).
    fn reply_topic(
        &mut self,
        route: &str,
        t: &Spanned<file::RequestReplySection>,
        b: &BrokerConfig,
    ) -> Result<Option<String>, ()> {
        let value = &t.get_ref().reply_topic;
        match (&b.kind, value) {
            (BrokerKind::Kafka(_), None) => {
                self.c.at(
                    t.span(),
                    format!(
                        "route `{route}`: sending requests to kafka broker `{}` needs \
                         `reply_topic` (the topic responders answer on)",
                        b.name
                    ),
                );
                Err(())
            }
            (BrokerKind::Kafka(_), Some(v)) => {
                let checked = template::parse(v.get_ref(), &[]).and_then(|parsed| {
                    if parsed
                        .parts
                        .iter()
                        .any(|p| !matches!(p, super::super::model::TemplatePart::Literal(_)))
                    {
                        return Err("is one topic for every request (the gateway consumes it \
                                    from start-up), so it has no placeholders"
                            .to_owned());
                    }
                    template::kafka_topic(&parsed)
                });
                match checked {
                    Ok(()) => Ok(Some(v.get_ref().clone())),
                    Err(m) => {
                        self.c.at(
                            v.span(),
                            format!("route `{route}`: reply_topic `{}`: {m}", v.get_ref()),
                        );
                        Err(())
                    }
                }
            }
            (_, Some(v)) => {
                self.c.at(
                    v.span(),
                    format!(
                        "route `{route}`: `reply_topic` applies to kafka brokers, and broker `{}` \
                         is {} (its replies come back to the gateway's own {})",
                        b.name,
                        b.kind.as_str(),
                        match b.kind {
                            BrokerKind::Amqp(_) => "direct reply-to",
                            _ => "inbox",
                        }
                    ),
                );
                Err(())
            }
            (_, None) => Ok(None),
        }
    }

    /// The methods of a request-reply route: POST unless it lists others, and GET too when
    /// replies may be polled for.
    pub(super) fn request_reply_methods(
        listed: Option<Vec<Method>>,
        t: &RequestReplyConfig,
    ) -> Vec<Method> {
        let mut methods = listed.unwrap_or_else(|| vec![Method::POST]);
        if t.respond_async.is_some() && !methods.contains(&Method::GET) {
            methods.push(Method::GET);
        }
        methods
    }

    /// `respond_async` (false), `async_ttl` ("5m") and `async_max_replies` (10000).
    fn async_replies(
        &mut self,
        route: &str,
        s: &file::RequestReplySection,
    ) -> Option<AsyncReplies> {
        let on = s.respond_async.as_ref().is_some_and(|b| *b.get_ref());
        let ttl = self.nonzero_duration(s.async_ttl.as_ref(), DEFAULT_ASYNC_TTL, || {
            format!("route `{route}`: `async_ttl` must be greater than 0")
        });
        let max_replies = match &s.async_max_replies {
            Some(n) if *n.get_ref() == 0 => {
                self.c.at(
                    n.span(),
                    format!("route `{route}`: `async_max_replies` must be at least 1"),
                );
                DEFAULT_ASYNC_MAX_REPLIES
            }
            Some(n) => usize::try_from(*n.get_ref()).unwrap_or(usize::MAX),
            None => DEFAULT_ASYNC_MAX_REPLIES,
        };
        if !on {
            let keys = [
                ("async_ttl", s.async_ttl.as_ref().map(Spanned::span)),
                (
                    "async_max_replies",
                    s.async_max_replies.as_ref().map(Spanned::span),
                ),
            ];
            for (key, span) in keys {
                if let Some(span) = span {
                    self.c.at(
                        span,
                        format!(
                            "route `{route}`: `{key}` applies with `respond_async = true` only"
                        ),
                    );
                }
            }
            return None;
        }
        Some(AsyncReplies { ttl, max_replies })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, HeaderName, Method};

    use super::super::super::model::{
        AsyncReplies, Destination, RequestReplyConfig, Template, TemplatePart,
    };
    use super::super::testing::{errors, valid};

    /// Brokers `k` (Kafka, 512 KiB messages), `q` (AMQP) and `n` (NATS), indexed in name
    /// order (k, n, q), on lines 1 to 10; `routes` start on line 11.
    fn with_brokers(routes: &str) -> String {
        format!(
            "[brokers.k]\nkind = \"kafka\"\nbootstrap = [\"k:9092\"]\nmessage_max_bytes = \"512KiB\"\n\
             [brokers.q]\nkind = \"amqp\"\nurl = \"amqp://rabbit\"\n\
             [brokers.n]\nkind = \"nats\"\nservers = [\"nats://n\"]\n{routes}"
        )
    }

    fn literal(s: &str) -> Template {
        Template {
            source: s.into(),
            parts: vec![TemplatePart::Literal(s.into())],
        }
    }

    #[test]
    fn defaults_and_every_key_reach_the_model() {
        let built = valid(&with_brokers(
            "[routes.a]\ntemplate = \"/quotes/{id}\"\n\
             [routes.a.request_reply]\nbroker = \"n\"\nsubject = \"quotes.{id}\"\n\
             [routes.b]\nexact = \"/b\"\nmethods = [\"POST\", \"get\"]\n\
             [routes.b.request_reply]\nbroker = \"k\"\ntopic = \"rpc\"\nkey = \"{header.x-k}\"\n\
             reply_topic = \"rpc.replies\"\nheaders = [\"X-Tenant\", \"content-type\"]\n\
             max_body_bytes = \"4KiB\"\ntimeout = \"300ms\"\nrespond_async = true\n\
             async_ttl = \"1m\"\nasync_max_replies = 7\n\
             [routes.c]\nexact = \"/c\"\n\
             [routes.c.request_reply]\nbroker = \"q\"\nrouting_key = \"rpc\"\nrespond_async = true\n",
        ));
        let [a, b, c] = &built.config.routes[..] else {
            panic!("three routes");
        };
        assert_eq!(
            a.request_reply,
            Some(RequestReplyConfig {
                broker: 1,
                broker_name: "n".into(),
                destination: Destination::Nats {
                    subject: Template {
                        source: "quotes.{id}".into(),
                        parts: vec![
                            TemplatePart::Literal("quotes.".into()),
                            TemplatePart::Param(0)
                        ],
                    }
                },
                reply_topic: None,
                headers: Vec::new(),
                max_body_bytes: 1 << 20,
                timeout: Duration::from_secs(5),
                respond_async: None,
                get_is_request: false,
            })
        );
        assert_eq!((a.upstream, a.publish.as_ref()), (None, None));
        let b = b.request_reply.as_ref().expect("request_reply");
        assert_eq!(b.reply_topic.as_deref(), Some("rpc.replies"));
        assert_eq!(b.headers, [HeaderName::from_static("x-tenant")]);
        assert_eq!(b.max_body_bytes, 4 << 10);
        assert_eq!(b.timeout, Duration::from_millis(300));
        assert_eq!(
            b.respond_async,
            Some(AsyncReplies {
                ttl: Duration::from_secs(60),
                max_replies: 7
            })
        );
        assert!(b.get_is_request);
        let c = c.request_reply.as_ref().expect("request_reply");
        assert_eq!(
            c.destination,
            Destination::Amqp {
                exchange: Template {
                    source: String::new(),
                    parts: Vec::new()
                },
                routing_key: literal("rpc"),
            }
        );
        assert_eq!(
            c.respond_async,
            Some(AsyncReplies {
                ttl: Duration::from_secs(300),
                max_replies: 10_000
            })
        );
        assert!(!c.get_is_request);
        // POST by default; GET too when replies may be polled for.
        let table = &built.config.table;
        let headers = HeaderMap::new();
        let at =
            |m: Method, path: &str| table.match_request(&m, None, path, &headers).map(|m| m.id);
        assert_eq!(at(Method::POST, "/quotes/1"), Some(0));
        assert_eq!(at(Method::GET, "/quotes/1"), None);
        assert_eq!(at(Method::PUT, "/quotes/1"), None);
        assert_eq!(at(Method::GET, "/b"), Some(1));
        assert_eq!(at(Method::POST, "/c"), Some(2));
        assert_eq!(at(Method::GET, "/c"), Some(2));
    }

    #[test]
    fn destinations_and_the_reply_topic_follow_the_brokers_kind() {
        assert_eq!(
            errors(&with_brokers(
                "[routes.a]\nexact = \"/a\"\n[routes.a.request_reply]\nbroker = \"k\"\ntopic = \"a\"\n\
                 [routes.b]\nexact = \"/b\"\n[routes.b.request_reply]\nbroker = \"q\"\nrouting_key = \"b\"\nreply_topic = \"r\"\n\
                 [routes.c]\nexact = \"/c\"\n[routes.c.request_reply]\nbroker = \"n\"\ntopic = \"c\"\n\
                 [routes.d]\nexact = \"/d\"\n[routes.d.request_reply]\nbroker = \"k\"\ntopic = \"d\"\nreply_topic = \"r.{id}\"\n\
                 [routes.e]\ntemplate = \"/e/{id}\"\n[routes.e.request_reply]\nbroker = \"k\"\ntopic = \"e\"\nreply_topic = \"r/e\"\n\
                 [routes.f]\nexact = \"/f\"\n[routes.f.request_reply]\nbroker = \"nope\"\nsubject = \"f\"\n"
            )),
            [
                "gateway.toml:13:1: route `a`: sending requests to kafka broker `k` needs `reply_topic` (the topic responders answer on)",
                "gateway.toml:21:15: route `b`: `reply_topic` applies to kafka brokers, and broker `q` is amqp (its replies come back to the gateway's own direct reply-to)",
                "gateway.toml:24:1: route `c`: sending requests to nats broker `n` needs `subject`",
                "gateway.toml:26:9: route `c`: `topic` applies to kafka brokers, and broker `n` is nats",
                "gateway.toml:32:15: route `d`: reply_topic `r.{id}`: `{id}` is not a parameter: the route has no `template` path (such as \"/orders/{id}\"); a value a plugin set is written `{consumer}`, `{jwt.CLAIM}` or `{var.NAME}`",
                "gateway.toml:38:15: route `e`: reply_topic `r/e`: `/` cannot be in a Kafka topic (letters, digits, `.`, `_` and `-` only)",
                "gateway.toml:42:10: route `f`: broker `nope` is not defined",
            ]
        );
    }

    #[test]
    fn a_placeholder_in_the_reply_topic_is_refused() {
        assert_eq!(
            errors(&with_brokers(
                "[routes.a]\ntemplate = \"/a/{id}\"\n[routes.a.request_reply]\nbroker = \"k\"\n\
                 topic = \"a.{id}\"\nreply_topic = \"r.{header.x-r}\"\n"
            )),
            [
                "gateway.toml:16:15: route `a`: reply_topic `r.{header.x-r}`: is one topic for every request (the gateway consumes it from start-up), so it has no placeholders",
            ]
        );
    }

    #[test]
    fn timeout_async_keys_templates_and_targets_are_checked() {
        assert_eq!(
            errors(&with_brokers(
                "[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n\
                 [routes.a]\nexact = \"/a\"\nrewrite = \"/b\"\n[routes.a.request_reply]\nbroker = \"n\"\nsubject = \"a.>\"\n\
                 timeout = \"0s\"\nasync_ttl = \"1m\"\n\
                 [routes.b]\nexact = \"/b\"\n[routes.b.request_reply]\nbroker = \"n\"\nsubject = \"b\"\n\
                 respond_async = true\nasync_ttl = \"0s\"\nasync_max_replies = 0\nmax_body_bytes = 0\n\
                 [routes.c]\nexact = \"/c\"\nupstream = \"u\"\n[routes.c.request_reply]\nbroker = \"n\"\nsubject = \"c\"\n\
                 [routes.d]\nexact = \"/d\"\n[routes.d.publish]\nbroker = \"n\"\nsubject = \"d\"\n\
                 [routes.d.request_reply]\nbroker = \"n\"\nsubject = \"d\"\n\
                 [routes.e]\nexact = \"/e\"\n"
            )),
            [
                "gateway.toml:15:11: route `a`: `rewrite` does not apply to a request_reply route (it has no upstream)",
                "gateway.toml:18:11: route `a`: subject `a.>`: `>` is a wildcard; a message is published to one subject, so a subject to publish to has none",
                "gateway.toml:19:11: route `a`: request_reply `timeout` must be greater than 0",
                "gateway.toml:20:13: route `a`: `async_ttl` applies with `respond_async = true` only",
                "gateway.toml:27:13: route `b`: `async_ttl` must be greater than 0",
                "gateway.toml:28:21: route `b`: `async_max_replies` must be at least 1",
                "gateway.toml:29:18: route `b`: `max_body_bytes` must be greater than 0",
                "gateway.toml:33:1: route `c`: `upstream` and `request_reply` cannot both be set (a route has one of `upstream`, `publish`, `subscribe` and `request_reply`)",
                "gateway.toml:41:1: route `d`: `publish` and `request_reply` cannot both be set (a route has one of `upstream`, `publish`, `subscribe` and `request_reply`)",
                "gateway.toml:44:1: route `e` needs `upstream`, `publish`, `subscribe` or `request_reply`",
            ]
        );
    }
}
