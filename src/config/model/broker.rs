//! Message brokers (`[brokers.NAME]`) and the routes that publish to them
//! (`[routes.NAME.publish]`), as the gateway runs them.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use tollgate_plugin_api::{Secret, SecretUrl};

/// A broker the gateway keeps a connection to.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// Its name in gateway.toml.
    pub name: Arc<str>,
    /// The kind of broker and its client's settings.
    pub kind: BrokerKind,
    /// Longest wait for a connection (and for each reconnection attempt).
    pub connect_timeout: Duration,
    /// Longest wait for the broker's acknowledgement of one message; past it the client gets
    /// 503 `broker_unavailable`.
    pub publish_timeout: Duration,
    /// Messages waiting for an acknowledgement at once, over every route; one more gets 503
    /// (backpressure: memory stays bounded while the broker is slow).
    pub max_in_flight: usize,
    /// Whether this broker being down makes `/readyz` answer 503.
    pub required_for_readiness: bool,
    /// TLS to the broker.
    pub tls: Option<BrokerTls>,
}

/// The kind of broker, with what only its client has.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerKind {
    /// Apache Kafka (or a Kafka-protocol broker).
    Kafka(KafkaSettings),
    /// RabbitMQ or another AMQP 0-9-1 broker.
    Amqp(AmqpSettings),
    /// NATS (with JetStream for acknowledged publishing).
    Nats(NatsSettings),
}

impl BrokerKind {
    /// `"kafka"`, `"amqp"` or `"nats"`, as in gateway.toml (and `messaging.system`).
    pub fn as_str(&self) -> &'static str {
        match self {
            BrokerKind::Kafka(_) => "kafka",
            BrokerKind::Amqp(_) => "amqp",
            BrokerKind::Nats(_) => "nats",
        }
    }
}

/// A Kafka producer's settings. The producer is always idempotent with `acks = all`.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port`.
    pub bootstrap: Vec<String>,
    /// `client.id`.
    pub client_id: String,
    /// `linger.ms`: how long the producer waits to batch messages.
    pub linger: Duration,
    /// `compression.type`: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: String,
    /// Largest message the broker takes (`message.max.bytes`); a bigger body gets 413.
    pub message_max_bytes: usize,
    /// SASL credentials.
    pub sasl: Option<KafkaSasl>,
}

/// SASL for Kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    /// User name.
    pub username: String,
    /// Password, never shown.
    pub password: Secret<String>,
}

/// An AMQP 0-9-1 connection's settings. Publishing always uses publisher confirms.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpSettings {
    /// `amqp://` or `amqps://` URL with the vhost; its password is a secret.
    pub url: SecretUrl,
    /// Heartbeat interval the gateway asks for.
    pub heartbeat: Duration,
    /// Largest message the gateway sends (RabbitMQ's default `max_message_size` is 128 MiB);
    /// a bigger body gets 413.
    pub max_message_bytes: usize,
}

/// A NATS connection's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSettings {
    /// Server URLs (`nats://host:port`; user info in them is secret).
    pub servers: Vec<SecretUrl>,
    /// User and password, when the server wants them.
    pub user: Option<(String, Secret<String>)>,
    /// Token, when the server wants one.
    pub token: Option<Secret<String>>,
    /// Whether publishes wait for a JetStream acknowledgement (a stream must cover the
    /// subject). Without it a publish is a core NATS publish flushed to the server, and the
    /// route must say so with `mode = "fire_and_forget"`.
    pub jetstream: bool,
}

/// TLS to a broker.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerTls {
    /// CA certificates (PEM file) to verify the broker with; the system's roots otherwise.
    pub ca_file: Option<std::path::PathBuf>,
    /// Whether the broker's certificate is verified (default true).
    pub verify: bool,
}

/// A route that publishes its request body to a broker (`[routes.NAME.publish]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishConfig {
    /// Index into `GatewayConfig::brokers`.
    pub broker: usize,
    /// The broker's name.
    pub broker_name: Arc<str>,
    /// Where the message goes.
    pub destination: Destination,
    /// Request headers copied into the message's headers, besides those always copied
    /// (`content-type`, `x-request-id`, `traceparent`, `tracestate`).
    pub headers: Vec<HeaderName>,
    /// Largest request body taken; more gets 413.
    pub max_body_bytes: usize,
    /// Whether the answer waits for the broker's acknowledgement.
    pub mode: PublishMode,
    /// Status of the answer (default 202).
    pub status: StatusCode,
    /// How requests with the same `Idempotency-Key` are answered; `None` when turned off.
    pub idempotency: Option<IdempotencyConfig>,
}

/// A route that sends its request body to a broker and answers with the reply
/// (`[routes.NAME.request_reply]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestReplyConfig {
    /// Index into `GatewayConfig::brokers`.
    pub broker: usize,
    /// The broker's name.
    pub broker_name: Arc<str>,
    /// Where requests go.
    pub destination: Destination,
    /// Kafka: the topic replies come back on (one consumer per broker and topic); `None` for
    /// the other kinds, whose replies come back to the gateway's own address (AMQP direct
    /// reply-to, a NATS inbox).
    pub reply_topic: Option<String>,
    /// Request headers copied into the message, besides those always copied.
    pub headers: Vec<HeaderName>,
    /// Largest request body taken; more gets 413.
    pub max_body_bytes: usize,
    /// Longest wait for the reply, from when the request is sent; past it 504.
    pub timeout: Duration,
    /// `Prefer: respond-async`; `None` when the route does not offer it.
    pub respond_async: Option<AsyncReplies>,
    /// Whether GET requests are requests (the route lists GET in `methods`); otherwise a GET
    /// only polls for an asynchronous reply.
    pub get_is_request: bool,
}

/// How a request-reply route keeps the replies of `Prefer: respond-async` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncReplies {
    /// How long a reply (or its timeout) is kept for polling once it is known.
    pub ttl: Duration,
    /// Most replies kept (or awaited) at once for the route; the oldest is forgotten first.
    pub max_replies: usize,
}

/// `Idempotency-Key` on a publish route: a repeated key within the window gets the first
/// answer again and publishes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long an answer is kept for its key.
    pub window: Duration,
    /// Most keys kept at once in this process; the oldest answers are forgotten first.
    pub max_keys: usize,
    /// The Redis that keeps the answers instead, shared by every instance that names it.
    pub redis: Option<SecretUrl>,
}

/// Where a published message goes, by kind of broker; every part is a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    /// A Kafka topic, with an optional message key (partitioning by its hash).
    Kafka {
        /// Topic.
        topic: Template,
        /// Message key.
        key: Option<Template>,
    },
    /// An AMQP exchange (`""` is the default exchange) and routing key. Messages are
    /// published `mandatory`: one that no queue takes is an error.
    Amqp {
        /// Exchange.
        exchange: Template,
        /// Routing key.
        routing_key: Template,
    },
    /// A NATS subject.
    Nats {
        /// Subject.
        subject: Template,
    },
}

/// A route that streams a broker's messages to each client as Server-Sent Events
/// (`[routes.NAME.subscribe]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeConfig {
    /// Index into `GatewayConfig::brokers`.
    pub broker: usize,
    /// The broker's name.
    pub broker_name: Arc<str>,
    /// Where the messages come from.
    pub source: Source,
    /// Only messages whose key (Kafka) equals this, filled from the request.
    pub filter_key: Option<Template>,
    /// Only messages with these headers equal to these values, filled from the request.
    pub filter_headers: Vec<(HeaderName, Template)>,
    /// A comment line is sent after this much silence, so proxies keep the stream open and a
    /// gone client is noticed.
    pub heartbeat: Duration,
    /// A client that takes no bytes of its stream for this long, while an event waits to be
    /// written to it, is cut.
    pub stall_timeout: Duration,
    /// Messages held for one client; a client that falls this far behind is cut.
    pub buffer: usize,
    /// Clients streaming from this route at once (per instance); one more gets 503.
    pub max_subscribers: usize,
}

/// Where a subscribe route's messages come from; every name is a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A Kafka topic, from its end or from the client's `Last-Event-ID`.
    Kafka {
        /// Topic.
        topic: Template,
    },
    /// A queue of the client's own (server-named, exclusive) bound to an exchange.
    AmqpBinding {
        /// Exchange.
        exchange: Template,
        /// Binding key (may hold `*` and `#` on a topic exchange).
        routing_key: Template,
    },
    /// A named queue its subscribers share, each message acknowledged once it was written to
    /// a client.
    AmqpQueue {
        /// Queue.
        queue: Template,
    },
    /// A NATS subject (may hold wildcards).
    Nats {
        /// Subject.
        subject: Template,
    },
}

/// Whether a publish waits for the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    /// 2xx only after the broker acknowledged the message (Kafka ack from all in-sync
    /// replicas, AMQP publisher confirm, JetStream ack).
    Confirmed,
    /// 2xx once the message is handed to the client library: it may be lost. Named so in
    /// gateway.toml (`mode = "fire_and_forget"`).
    FireAndForget,
}

/// A string with placeholders filled per request: `{name}` (a path parameter of the route's
/// template), `{header.NAME}` (a request header), `{jwt.CLAIM}` / `{consumer}` / any other
/// `{var}` (a value a plugin set, e.g. jwt-auth's claims).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As written, for errors and `/config`.
    pub source: String,
    /// The pieces.
    pub parts: Vec<TemplatePart>,
}

/// A piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Copied as is.
    Literal(String),
    /// The value of the route's path parameter with this index.
    Param(usize),
    /// The value of a request header (the first one).
    Header(HeaderName),
    /// A plugin's value (`ctx.vars`), e.g. `jwt.sub` or `consumer`.
    Var(String),
}
