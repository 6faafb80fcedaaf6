//! AMQP 0-9-1 (RabbitMQ) through `lapin`: one connection per broker with a channel in
//! publisher-confirm mode. Messages are published `mandatory` and persistent, so an answer
//! means the broker routed the message to at least one queue and took responsibility for it;
//! a message no queue takes comes back and is the client's 502 `unroutable`.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http::HeaderValue;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind};
use tokio::sync::{broadcast, Mutex};

use super::reply::{self, Answer, Reply, RequestError, Waiters};
use super::subscribe::{self, Consumer, Event, Item};
use super::{Backoff, Message, PublishError, Receipt, State, StateCell, Target};
use crate::config::{AmqpSettings, BrokerConfig, PublishMode};

/// Persistent messages survive a broker restart in durable queues.
const PERSISTENT: u8 = 2;

/// Why a connection (with its confirm-mode channel) was not made.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// The broker did not answer in `connect_timeout`.
    #[error("no connection within {}", humantime::format_duration(*.0))]
    Timeout(std::time::Duration),
    /// The client library's error.
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

pub(super) struct Amqp {
    url: String,
    /// The live connection and its confirm-mode channel, `None` while down.
    live: ArcSwapOption<Live>,
    /// Serialises reopening a channel the broker closed (an error on one publish closes it).
    reopen: Mutex<()>,
}

struct Live {
    connection: Arc<Connection>,
    channel: ArcSwapOption<Channel>,
    /// The channel requests are sent on, opened at the first request.
    rpc: ArcSwapOption<RpcChannel>,
}

/// RabbitMQ's direct reply-to: a reply published to this pseudo-queue goes straight to the
/// channel that consumes it and sent the request.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A confirm-mode channel consuming direct reply-to (no-ack, as RabbitMQ requires), shared by
/// every request of the broker, with the requests waiting on it. Not the publish channel: a
/// channel error (a missing exchange) closes a channel, and with it every reply still to come
/// on it; publishes must not share that fate, nor requests the publish channel's.
struct RpcChannel {
    channel: Arc<Channel>,
    waiters: Arc<Waiters>,
    task: tokio::task::AbortHandle,
}

impl Drop for RpcChannel {
    fn drop(&mut self) {
        self.task.abort();
        self.waiters.close();
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // lapin's I/O loop keeps a connection open (heartbeats and all) after its last handle is
        // gone: a broker removed or replaced by a reload closes its own.
        if self.connection.status().connected() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let connection = self.connection.clone();
                rt.spawn(async move {
                    let _ = connection
                        .close(200, "tollgate: broker removed".into())
                        .await;
                });
            }
        }
    }
}

impl Amqp {
    pub(super) fn new(broker: &BrokerConfig, a: &AmqpSettings) -> Self {
        let mut url = a.url.expose().to_owned();
        // amqp-uri takes the heartbeat from the query.
        if !url.contains("heartbeat=") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("heartbeat={}", a.heartbeat.as_secs()));
        }
        if !url.contains("connection_timeout=") {
            url.push_str(&format!(
                "&connection_timeout={}",
                broker.connect_timeout.as_millis()
            ));
        }
        Self {
            url,
            live: ArcSwapOption::empty(),
            reopen: Mutex::new(()),
        }
    }

    /// Connects, and connects again (with backoff) whenever the connection breaks.
    pub(super) async fn keep(&self, broker: &BrokerConfig, state: &StateCell) {
        let mut backoff = Backoff::new();
        loop {
            match self.connect(broker).await {
                Ok((live, mut events)) => {
                    let live = Arc::new(live);
                    self.live.store(Some(live.clone()));
                    state.set(&broker.name, State::Up);
                    backoff.reset();
                    let error = loop {
                        match events.next().await {
                            // A channel's error (a missing exchange closes the channel) leaves
                            // the connection up; the publish path opens a new channel.
                            Some(lapin::Event::Error(_))
                                if live.connection.status().connected() =>
                            {
                                continue
                            }
                            Some(lapin::Event::Error(e)) => break e.to_string(),
                            Some(_) => continue,
                            None => break "the connection closed".to_owned(),
                        }
                    };
                    self.live.store(None);
                    state.set(&broker.name, State::Down { error });
                }
                Err(e) => state.set(
                    &broker.name,
                    State::Down {
                        error: e.to_string(),
                    },
                ),
            }
            backoff.wait().await;
        }
    }

    async fn connect(
        &self,
        broker: &BrokerConfig,
    ) -> Result<(Live, BoxStream<'static, lapin::Event>), ConnectError> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("tollgate {}", broker.name)));
        let connect = Connection::connect(&self.url, props);
        let connection = tokio::time::timeout(broker.connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout(broker.connect_timeout))??;
        let events = connection.events_listener().boxed();
        let channel = confirm_channel(&connection).await?;
        let live = Live {
            connection: Arc::new(connection),
            channel: ArcSwapOption::from(Some(Arc::new(channel))),
            rpc: ArcSwapOption::empty(),
        };
        Ok((live, events))
    }

    /// The live connection.
    fn live(&self, broker: &BrokerConfig) -> Result<Arc<Live>, PublishError> {
        self.live
            .load_full()
            .ok_or_else(|| unavailable(broker, "not connected".to_owned()))
    }

    /// The confirm-mode channel, opened again if the broker closed it.
    async fn channel(&self, broker: &BrokerConfig) -> Result<Arc<Channel>, PublishError> {
        let live = self.live(broker)?;
        if let Some(ch) = live.channel.load_full().filter(|c| c.status().connected()) {
            return Ok(ch);
        }
        let _one = self.reopen.lock().await;
        if let Some(ch) = live.channel.load_full().filter(|c| c.status().connected()) {
            return Ok(ch);
        }
        let ch = Arc::new(
            confirm_channel(&live.connection)
                .await
                .map_err(|e| unavailable(broker, e.to_string()))?,
        );
        live.channel.store(Some(ch.clone()));
        Ok(ch)
    }

    pub(super) async fn publish(
        &self,
        broker: &BrokerConfig,
        message: Message,
        mode: PublishMode,
    ) -> Result<Receipt, PublishError> {
        let (exchange, routing_key) = amqp_target(broker, &message)?;
        let props = properties(&message);
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let started = Instant::now();
        let failed = |e: lapin::Error| error(broker, exchange, &e, message.target_from_request);
        let publish = |channel: Arc<Channel>| {
            let props = props.clone();
            let payload = &message.payload;
            async move {
                channel
                    .basic_publish(
                        ShortString::from(exchange.as_str()),
                        ShortString::from(routing_key.as_str()),
                        options,
                        payload,
                        props,
                    )
                    .await
            }
        };
        let confirm = match publish(self.channel(broker).await?).await {
            // Another publish's error closed the channel under this one: once more on a new
            // channel (nothing was sent on the closed one).
            Err(e) if matches!(e.kind(), ErrorKind::InvalidChannelState(..)) => {
                publish(self.channel(broker).await?).await
            }
            other => other,
        }
        .map_err(failed)?;
        if mode == PublishMode::FireAndForget {
            return Ok(Receipt::Unconfirmed {
                acknowledged: false,
            });
        }
        let confirmation = confirm.await.map_err(failed)?;
        super::observe_ack(broker, started);
        confirmed(broker, exchange, routing_key, confirmation)
    }

    /// The channel requests go on, opened (consuming direct reply-to) if there is none or the
    /// broker closed it.
    async fn rpc_channel(&self, broker: &BrokerConfig) -> Result<Arc<RpcChannel>, PublishError> {
        let live = self.live(broker)?;
        let usable =
            |rpc: &Arc<RpcChannel>| rpc.channel.status().connected() && !rpc.task.is_finished();
        if let Some(rpc) = live.rpc.load_full().filter(usable) {
            return Ok(rpc);
        }
        let _one = self.reopen.lock().await;
        if let Some(rpc) = live.rpc.load_full().filter(usable) {
            return Ok(rpc);
        }
        let channel = confirm_channel(&live.connection)
            .await
            .map_err(|e| unavailable(broker, e.to_string()))?;
        // Consuming before the first request is published: RabbitMQ refuses a request with
        // direct reply-to from a channel that does not consume it.
        let mut consumer = channel
            .basic_consume(
                ShortString::from(DIRECT_REPLY_TO),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(broker, e.to_string()))?;
        let waiters = Waiters::new();
        let (tokens, name) = (waiters.clone(), broker.name.clone());
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Some(id) = delivery.properties.correlation_id().clone() else {
                    reply::unmatched(&name);
                    continue;
                };
                let reply = Reply {
                    headers: reply_headers(&delivery.properties),
                    payload: Bytes::from(delivery.data),
                };
                if !tokens.answer(id.as_str(), Answer::Reply(reply)) {
                    reply::unmatched(&name);
                }
            }
            // The channel closed: no reply comes to its requests any more.
            tokens.close();
        });
        let rpc = Arc::new(RpcChannel {
            channel: Arc::new(channel),
            waiters,
            task: task.abort_handle(),
        });
        live.rpc.store(Some(rpc.clone()));
        Ok(rpc)
    }

    /// Publishes a request (mandatory, confirmed, `reply_to` direct reply-to, `correlation_id`
    /// its own) and waits until `deadline` for the reply.
    pub(super) async fn request(
        &self,
        broker: &BrokerConfig,
        message: Message,
        deadline: tokio::time::Instant,
        timeout: std::time::Duration,
    ) -> Result<Reply, RequestError> {
        let (exchange, routing_key) = amqp_target(broker, &message)?;
        let props = properties(&message).with_reply_to(ShortString::from(DIRECT_REPLY_TO));
        let failed = |e: lapin::Error| error(broker, exchange, &e, message.target_from_request);
        let publish = |rpc: Arc<RpcChannel>| {
            let waiting = rpc.waiters.register(reply::correlation_id());
            let props = props
                .clone()
                .with_correlation_id(ShortString::from(waiting.id()));
            let payload = &message.payload;
            async move {
                let confirm = rpc
                    .channel
                    .basic_publish(
                        ShortString::from(exchange.as_str()),
                        ShortString::from(routing_key.as_str()),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        payload,
                        props,
                    )
                    .await;
                (waiting, confirm)
            }
        };
        let (waiting, confirm) = match publish(self.rpc_channel(broker).await?).await {
            // Another request's error closed the channel under this one: once more on a new
            // channel (nothing was sent on the closed one).
            (_, Err(e)) if matches!(e.kind(), ErrorKind::InvalidChannelState(..)) => {
                publish(self.rpc_channel(broker).await?).await
            }
            other => other,
        };
        let confirm = confirm.map_err(failed)?;
        let send = async {
            let confirmation = confirm.await.map_err(failed)?;
            confirmed(broker, exchange, routing_key, confirmation).map(|_| ())
        };
        reply::exchange(broker, waiting, send, deadline, timeout, routing_key).await
    }
}

/// The exchange and routing key of an AMQP message.
fn amqp_target<'m>(
    broker: &BrokerConfig,
    message: &'m Message,
) -> Result<(&'m String, &'m String), PublishError> {
    match &message.target {
        Target::Amqp {
            exchange,
            routing_key,
        } => Ok((exchange, routing_key)),
        _ => Err(PublishError::Rejected {
            broker: broker.name.clone(),
            reason: "not an AMQP destination".to_owned(),
        }),
    }
}

fn unavailable(broker: &BrokerConfig, reason: String) -> PublishError {
    PublishError::Unavailable {
        broker: broker.name.clone(),
        reason,
    }
}

/// What the broker's confirmation of a mandatory message means.
fn confirmed(
    broker: &BrokerConfig,
    exchange: &str,
    routing_key: &str,
    confirmation: Confirmation,
) -> Result<Receipt, PublishError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(Receipt::Amqp {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Err(PublishError::Unroutable {
            broker: broker.name.clone(),
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::Nack(None) => Err(PublishError::Rejected {
            broker: broker.name.clone(),
            reason: "the broker did not take the message (nack)".to_owned(),
        }),
        Confirmation::NotRequested => Err(PublishError::Rejected {
            broker: broker.name.clone(),
            reason: "the channel is not in confirm mode".to_owned(),
        }),
    }
}

/// A reply's headers: its content type and encoding properties, then its header table, each
/// value as text (numbers and booleans written out; nested tables and arrays left out).
fn reply_headers(props: &BasicProperties) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Some(t) = props.content_type() {
        out.push(("content-type".to_owned(), t.as_str().as_bytes().to_vec()));
    }
    if let Some(e) = props.content_encoding() {
        out.push((
            "content-encoding".to_owned(),
            e.as_str().as_bytes().to_vec(),
        ));
    }
    for (name, value) in props.headers().iter().flat_map(|t| t.inner()) {
        let text = match value {
            AMQPValue::LongString(v) => v.as_bytes().to_vec(),
            AMQPValue::ShortString(v) => v.as_str().as_bytes().to_vec(),
            AMQPValue::ByteArray(v) => v.as_slice().to_vec(),
            AMQPValue::Boolean(v) => v.to_string().into_bytes(),
            AMQPValue::ShortShortInt(v) => v.to_string().into_bytes(),
            AMQPValue::ShortShortUInt(v) => v.to_string().into_bytes(),
            AMQPValue::ShortInt(v) => v.to_string().into_bytes(),
            AMQPValue::ShortUInt(v) => v.to_string().into_bytes(),
            AMQPValue::LongInt(v) => v.to_string().into_bytes(),
            AMQPValue::LongUInt(v) => v.to_string().into_bytes(),
            AMQPValue::LongLongInt(v) => v.to_string().into_bytes(),
            AMQPValue::Timestamp(v) => v.to_string().into_bytes(),
            AMQPValue::Float(v) => v.to_string().into_bytes(),
            AMQPValue::Double(v) => v.to_string().into_bytes(),
            _ => continue,
        };
        out.push((name.as_str().to_owned(), text));
    }
    out
}

async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Persistent, with the request's content type and id and the copied headers.
///
/// AMQP short strings (property values, header names) hold at most 255 bytes: a longer
/// content type is left to the `content-type` header, and a longer header name is left out
/// (lapin panics on a longer one, and a client must not be able to cause that).
fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut props = BasicProperties::default().with_delivery_mode(PERSISTENT);
    let short = |v: &HeaderValue| {
        v.to_str()
            .ok()
            .filter(|v| v.len() <= SHORT_STRING_MAX)
            .map(ShortString::from)
    };
    let mut values: Vec<(&str, Vec<u8>)> = Vec::with_capacity(message.headers.len());
    for (name, value) in &message.headers {
        match name.as_str() {
            "content-type" => {
                if let Some(v) = short(value) {
                    props = props.with_content_type(v);
                }
            }
            "x-request-id" => {
                if let Some(v) = short(value) {
                    props = props.with_message_id(v);
                }
            }
            _ => {}
        }
        if name.as_str().len() > SHORT_STRING_MAX {
            continue;
        }
        // A table holds one value per name: repeated headers are joined as HTTP joins them.
        match values.iter_mut().find(|(n, _)| *n == name.as_str()) {
            Some((_, joined)) => {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(value.as_bytes());
            }
            None => values.push((name.as_str(), value.as_bytes().to_vec())),
        }
    }
    for (name, value) in values {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    props.with_headers(headers)
}

impl Amqp {
    /// A channel of the subscriber's own: an error on it (a missing exchange or queue closes
    /// the channel) touches no other subscriber, and closing it ends its consumer.
    async fn subscriber_channel(&self, broker: &BrokerConfig) -> Result<Channel, PublishError> {
        self.live(broker)?
            .connection
            .create_channel()
            .await
            .map_err(|e| error(broker, "", &e, false))
    }

    /// A server-named exclusive queue bound to `exchange` with `routing_key`, consumed
    /// without acknowledgements: the queue is the client's, and goes with its channel.
    pub(super) async fn consume_binding(
        &self,
        broker: &BrokerConfig,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Consumer, PublishError> {
        let channel = self.subscriber_channel(broker).await?;
        let queue = channel
            .queue_declare(
                ShortString::from(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| error(broker, "", &e, false))?;
        let name = queue.name().clone();
        channel
            .queue_bind(
                name.clone(),
                ShortString::from(exchange),
                ShortString::from(routing_key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| error(broker, exchange, &e, false))?;
        let consumer = channel
            .basic_consume(
                name,
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| error(broker, exchange, &e, false))?;
        Ok(Consumer::Amqp(Box::new(Consuming {
            channel: Closing(channel),
            consumer,
            acks: false,
        })))
    }

    /// A named queue, shared with its other consumers: at most `buffer` messages are
    /// unacknowledged at once, each acknowledged once written to the client (one the client
    /// never got goes back to the queue when the subscriber leaves).
    pub(super) async fn consume_queue(
        &self,
        broker: &BrokerConfig,
        queue: &str,
        buffer: usize,
    ) -> Result<Consumer, PublishError> {
        let channel = self.subscriber_channel(broker).await?;
        let missing = |e: lapin::Error| match error(broker, queue, &e, false) {
            PublishError::NoDestination {
                broker,
                name,
                from_request,
                ..
            } => PublishError::NoDestination {
                broker,
                what: "queue",
                name,
                from_request,
            },
            other => other,
        };
        channel
            .basic_qos(
                u16::try_from(buffer).unwrap_or(u16::MAX),
                BasicQosOptions::default(),
            )
            .await
            .map_err(missing)?;
        let consumer = channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(missing)?;
        Ok(Consumer::Amqp(Box::new(Consuming {
            channel: Closing(channel),
            consumer,
            acks: true,
        })))
    }
}

/// A channel closed when the subscriber's source stops: lapin keeps a channel (and its
/// consumer, and the broker its exclusive queue) open after its last handle is gone.
struct Closing(Channel);

impl Drop for Closing {
    fn drop(&mut self) {
        if self.0.status().connected() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let channel = self.0.clone();
                rt.spawn(async move {
                    let _ = channel.close(200, "tollgate: subscriber left".into()).await;
                });
            }
        }
    }
}

/// A subscriber's consumer.
pub(super) struct Consuming {
    channel: Closing,
    consumer: lapin::Consumer,
    acks: bool,
}

impl Consuming {
    pub(super) async fn run(mut self, ring: &broadcast::Sender<Item>) -> String {
        let _channel = &self.channel;
        loop {
            let delivery = match self.consumer.next().await {
                Some(Ok(d)) => d,
                Some(Err(e)) => return e.to_string(),
                None => return "the broker cancelled the consumer".to_owned(),
            };
            let headers = delivery
                .properties
                .headers()
                .as_ref()
                .map(|t| {
                    t.inner()
                        .iter()
                        .filter_map(|(name, value)| {
                            let value = match value {
                                AMQPValue::LongString(v) => Bytes::copy_from_slice(v.as_bytes()),
                                AMQPValue::ShortString(v) => {
                                    Bytes::copy_from_slice(v.as_str().as_bytes())
                                }
                                _ => return None,
                            };
                            Some((name.as_str().to_ascii_lowercase(), value))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut headers: Vec<(String, Bytes)> = headers;
            if let Some(ct) = delivery.properties.content_type() {
                headers.push((
                    "content-type".to_owned(),
                    Bytes::copy_from_slice(ct.as_str().as_bytes()),
                ));
            }
            subscribe::deliver(
                ring,
                Event {
                    id: None,
                    key: None,
                    headers,
                    payload: Bytes::from(delivery.data),
                    ack: self.acks.then_some(delivery.acker),
                },
            );
        }
    }
}

/// The longest AMQP short string.
const SHORT_STRING_MAX: usize = 255;

/// What an AMQP error means for the client: a missing exchange closes the channel with
/// NOT_FOUND; errors of the connection mean the broker is unavailable.
fn error(
    broker: &BrokerConfig,
    exchange: &str,
    e: &lapin::Error,
    from_request: bool,
) -> PublishError {
    if let ErrorKind::ProtocolError(amqp) = e.kind() {
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) {
            return PublishError::NoDestination {
                broker: broker.name.clone(),
                what: "exchange",
                name: exchange.to_owned(),
                from_request,
            };
        }
        if e.is_amqp_soft_error() {
            return PublishError::Rejected {
                broker: broker.name.clone(),
                reason: e.to_string(),
            };
        }
    }
    PublishError::Unavailable {
        broker: broker.name.clone(),
        reason: e.to_string(),
    }
}
