//! Kafka through librdkafka (`rdkafka`): an idempotent producer with `acks = all`, so a
//! message is acknowledged once every in-sync replica has it and a retry inside the client never
//! writes it twice. librdkafka keeps its own connections (and reconnects); the keeper asks for
//! the cluster's metadata to tell `/brokers` whether the cluster answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::broadcast;

use super::reply::{self, Answer, Reply, RequestError, Waiters};
use super::subscribe::{self, Consumer, Event, Item};
use super::{Backoff, Message, PublishError, Receipt, State, StateCell, Target};
use crate::config::{BrokerConfig, KafkaSettings, PublishMode};

/// How often the keeper asks a connected cluster for its metadata (and at once after a
/// publish failed).
const CHECK_EVERY: Duration = Duration::from_secs(2);

pub(super) struct Kafka {
    /// Replaced after an outage or a timed-out message: an idempotent producer whose messages
    /// timed out needs a new epoch, which not every Kafka-protocol broker grants (tansu 0.6
    /// fences the producer instead), and a fresh producer is correct on every broker.
    producer: ArcSwap<FutureProducer>,
    config: ClientConfig,
    /// The reply consumers' settings: the connection's, without the producer's.
    consumer_config: ClientConfig,
    /// One consumer per reply topic, made at its first request and kept with the broker.
    replies: tokio::sync::Mutex<HashMap<String, Arc<ReplyConsumer>>>,
    /// Wakes the keeper to check the cluster now: librdkafka reports a dead broker only
    /// through messages that time out.
    check_now: tokio::sync::Notify,
}

impl Kafka {
    /// The producer; librdkafka connects in the background from here on.
    pub(super) fn new(broker: &BrokerConfig, k: &KafkaSettings) -> Result<Self, KafkaError> {
        let connection = connection_config(broker, k);
        let mut c = connection.clone();
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", k.linger.as_millis().to_string())
            .set("compression.type", &k.compression)
            .set("message.max.bytes", k.message_max_bytes.to_string())
            // librdkafka gives a message up just before the gateway does, so that its
            // MessageTimedOut (which renews the producer) is seen, and a 503 is not followed by
            // the message arriving anyway.
            .set(
                "message.timeout.ms",
                (broker.publish_timeout - broker.publish_timeout / 10)
                    .as_millis()
                    .max(1)
                    .to_string(),
            )
            // A missing topic is an error within a second, not after librdkafka's 30 s wait
            // for it to appear (the gateway creates no topics).
            .set(
                "topic.metadata.propagation.max.ms",
                broker
                    .publish_timeout
                    .as_millis()
                    .clamp(1, 1000)
                    .to_string(),
            );
        let mut consumer_config = connection;
        // Partitions are assigned, not subscribed: the group id is required by the client but
        // no group is joined, and no offset is committed (replies are read from the end).
        consumer_config
            .set("group.id", format!("{}-replies", k.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        let producer = c.create()?;
        Ok(Self {
            producer: ArcSwap::from_pointee(producer),
            config: c,
            consumer_config,
            replies: tokio::sync::Mutex::new(HashMap::new()),
            check_now: tokio::sync::Notify::new(),
        })
    }

    /// A consumer of `topic` positioned at its end, or at `resume`'s offsets (clamped to what
    /// the partition still holds; a partition `resume` does not name is newer than the
    /// position, and is read from its start). Assigned, not subscribed: no consumer group, no
    /// commits, each subscriber's position is its own `Last-Event-ID`.
    pub(super) async fn consume(
        &self,
        broker: &BrokerConfig,
        topic: &str,
        resume: Option<Vec<(i32, i64)>>,
    ) -> Result<Consumer, PublishError> {
        let mut config = self.consumer_config.clone();
        config
            // What librdkafka prefetches per consumer: the gateway's own ring bounds a
            // subscriber, this bounds the consumer behind it.
            .set("queued.max.messages.kbytes", "1024")
            .set("fetch.wait.max.ms", "100");
        let consumer: StreamConsumer = config
            .create()
            .map_err(|e| error(broker, topic, &e, false))?;
        let consumer = Arc::new(consumer);
        let (c, t, wait) = (consumer.clone(), topic.to_owned(), broker.connect_timeout);
        // Metadata and watermarks are blocking calls of librdkafka.
        let assigned = tokio::task::spawn_blocking(move || assign(&c, &t, resume.as_deref(), wait))
            .await
            .map_err(|e| PublishError::Unavailable {
                broker: broker.name.clone(),
                reason: e.to_string(),
            })?;
        let positions = match assigned {
            Ok(positions) => positions,
            Err(Assign::NoTopic) => {
                return Err(PublishError::NoDestination {
                    broker: broker.name.clone(),
                    what: "topic",
                    name: topic.to_owned(),
                    from_request: false,
                })
            }
            Err(Assign::Kafka(e)) => return Err(error(broker, topic, &e, false)),
        };
        Ok(Consumer::Kafka(Consuming {
            consumer,
            positions,
        }))
    }

    /// A publish failed: the keeper checks the cluster at once.
    pub(super) fn suspect(&self) {
        self.check_now.notify_one();
    }

    /// A fresh producer in place of the current one (kept if librdkafka refuses).
    fn renew(&self, broker: &BrokerConfig) {
        match self.config.create::<FutureProducer>() {
            Ok(p) => {
                let old = self.producer.swap(Arc::new(p));
                // Dropping a producer flushes for up to 500 ms: not on a proxy worker. (A
                // publish still waiting on the old one keeps it until its answer.)
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn_blocking(move || drop(old));
                }
            }
            Err(e) => {
                tracing::warn!(broker = %broker.name, error = %e, "Kafka producer not renewed")
            }
        }
    }

    /// Tells `/brokers` whether the cluster answers, for as long as the broker is in use.
    pub(super) async fn keep(&self, broker: &BrokerConfig, state: &StateCell) {
        let mut backoff = Backoff::new();
        let mut was_down = false;
        loop {
            let producer = self.producer.load_full();
            let timeout = broker.connect_timeout;
            // librdkafka's metadata call blocks its thread.
            let asked = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(None, Timeout::After(timeout))
                    .map(|_| ())
            })
            .await;
            match asked {
                Ok(Ok(_)) => {
                    if was_down {
                        self.renew(broker);
                        was_down = false;
                    }
                    state.set(&broker.name, State::Up);
                    backoff.reset();
                    tokio::select! {
                        _ = tokio::time::sleep(CHECK_EVERY) => {}
                        _ = self.check_now.notified() => {}
                    }
                }
                Ok(Err(e)) => {
                    was_down = true;
                    state.set(
                        &broker.name,
                        State::Down {
                            error: e.to_string(),
                        },
                    );
                    backoff.wait().await;
                }
                Err(_) => backoff.wait().await,
            }
        }
    }

    pub(super) async fn publish(
        &self,
        broker: &BrokerConfig,
        message: Message,
        mode: PublishMode,
    ) -> Result<Receipt, PublishError> {
        let Target::Kafka { topic, key } = &message.target else {
            return Err(PublishError::Rejected {
                broker: broker.name.clone(),
                reason: "not a Kafka destination".to_owned(),
            });
        };
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name.as_str(),
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(topic)
            .payload(&message.payload[..])
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key.as_str());
        }
        let started = Instant::now();
        let producer = self.producer.load_full();
        let delivery = match producer.send_result(record) {
            Ok(delivery) => delivery,
            Err((e, _)) => return Err(error(broker, topic, &e, message.target_from_request)),
        };
        if mode == PublishMode::FireAndForget {
            // The delivery report still comes; nobody waits for it.
            drop(delivery);
            return Ok(Receipt::Unconfirmed {
                acknowledged: false,
            });
        }
        let outcome = delivery.await.map_err(|_| PublishError::Unavailable {
            broker: broker.name.clone(),
            reason: "the producer went away".to_owned(),
        })?;
        super::observe_ack(broker, started);
        match outcome {
            Ok(d) => Ok(Receipt::Kafka {
                topic: topic.clone(),
                partition: d.partition,
                offset: d.offset,
            }),
            Err((e, _)) => {
                if needs_new_producer(&e) {
                    self.renew(broker);
                }
                Err(error(broker, topic, &e, message.target_from_request))
            }
        }
    }
}

/// A positioned consumer of one topic.
pub(super) struct Consuming {
    consumer: Arc<StreamConsumer>,
    /// Per partition, the offset of the next message: what an event's id says.
    positions: Vec<(i32, i64)>,
}

impl Drop for Consuming {
    fn drop(&mut self) {
        // Closing a librdkafka consumer waits on its threads: not on a proxy worker.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let consumer = self.consumer.clone();
            rt.spawn_blocking(move || drop(consumer));
        }
    }
}

impl Consuming {
    pub(super) async fn run(mut self, ring: &broadcast::Sender<Item>) -> String {
        loop {
            let message = match self.consumer.recv().await {
                Ok(m) => m,
                // A consumer error (the topic deleted, the broker refusing the fetch) ends the
                // stream; a client resumes from its last event.
                Err(e) => return e.to_string(),
            };
            let (partition, offset) = (message.partition(), message.offset());
            match self.positions.iter_mut().find(|(p, _)| *p == partition) {
                Some(at) => at.1 = offset + 1,
                None => {
                    self.positions.push((partition, offset + 1));
                    self.positions.sort_unstable();
                }
            }
            let headers = message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_ascii_lowercase(),
                                Bytes::copy_from_slice(h.value.unwrap_or_default()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            subscribe::deliver(
                ring,
                Event {
                    id: Some(event_id(&self.positions).into()),
                    key: message.key().map(Bytes::copy_from_slice),
                    headers,
                    payload: message
                        .payload()
                        .map(Bytes::copy_from_slice)
                        .unwrap_or_default(),
                    ack: None,
                },
            );
        }
    }
}

/// An event id: every partition's next offset, `0:12,1:40`. Resuming from it skips exactly
/// what the client had, whichever partition the event came from.
fn event_id(positions: &[(i32, i64)]) -> String {
    let mut id = String::with_capacity(positions.len() * 8);
    for (i, (p, o)) in positions.iter().enumerate() {
        if i > 0 {
            id.push(',');
        }
        id.push_str(&format!("{p}:{o}"));
    }
    id
}

/// The positions of an event id (see [`event_id`]); `None` when it is not one.
pub fn parse_event_id(id: &str) -> Option<Vec<(i32, i64)>> {
    let mut out = Vec::new();
    for part in id.split(',') {
        let (p, o) = part.split_once(':')?;
        let (p, o) = (p.parse::<i32>().ok()?, o.parse::<i64>().ok()?);
        if p < 0 || o < 0 || out.iter().any(|(q, _)| *q == p) {
            return None;
        }
        out.push((p, o));
    }
    Some(out)
}

/// What producer and consumers share: the cluster, the client id, TLS and SASL, timeouts.
fn connection_config(broker: &BrokerConfig, k: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", k.bootstrap.join(","))
        .set("client.id", &k.client_id)
        .set(
            "socket.connection.setup.timeout.ms",
            broker.connect_timeout.as_millis().max(1000).to_string(),
        )
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        .set("log_level", "3");
    let tls = broker.tls.as_ref();
    let protocol = match (tls.is_some(), k.sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if let Some(tls) = tls {
        if let Some(ca) = &tls.ca_file {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        c.set(
            "enable.ssl.certificate.verification",
            tls.verify.to_string(),
        );
    }
    if let Some(sasl) = &k.sasl {
        c.set("sasl.mechanism", &sasl.mechanism)
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.expose());
    }
    c
}

/// The header a Kafka request carries its correlation id in, and its reply must carry back.
pub(super) const CORRELATION_ID: &str = "correlation-id";
/// The header a Kafka request names its reply topic in.
pub(super) const REPLY_TO: &str = "reply-to";

/// A reply topic's consumer: every partition assigned (no consumer group), read from where
/// each partition ended when it was made, each reply handed to the request waiting for it.
struct ReplyConsumer {
    waiters: Arc<Waiters>,
    task: tokio::task::AbortHandle,
}

impl Drop for ReplyConsumer {
    fn drop(&mut self) {
        self.task.abort();
        self.waiters.close();
    }
}

impl Kafka {
    /// The consumer of `topic`, made at its first request: positioned at the end of every
    /// partition before the request is sent, so that its reply cannot come before the
    /// consumer's start.
    async fn reply_consumer(
        &self,
        broker: &BrokerConfig,
        topic: &str,
    ) -> Result<Arc<ReplyConsumer>, PublishError> {
        let mut replies = self.replies.lock().await;
        if let Some(c) = replies.get(topic) {
            return Ok(c.clone());
        }
        let name = broker.name.clone();
        let consumer: StreamConsumer =
            self.consumer_config
                .create()
                .map_err(|e| PublishError::Rejected {
                    broker: name.clone(),
                    reason: format!("the reply consumer: {e}"),
                })?;
        let consumer = Arc::new(consumer);
        let (c, t, wait) = (consumer.clone(), topic.to_owned(), broker.connect_timeout);
        // Metadata and watermarks are blocking calls of librdkafka.
        let assigned = tokio::task::spawn_blocking(move || assign(&c, &t, None, wait).map(drop))
            .await
            .map_err(|e| PublishError::Unavailable {
                broker: name.clone(),
                reason: e.to_string(),
            })?;
        match assigned {
            Ok(()) => {}
            Err(Assign::NoTopic) => {
                return Err(PublishError::NoDestination {
                    broker: name,
                    what: "reply topic",
                    name: topic.to_owned(),
                    from_request: false,
                })
            }
            Err(Assign::Kafka(e)) => {
                return Err(PublishError::Unavailable {
                    broker: name,
                    reason: format!("reply topic `{topic}`: {e}"),
                })
            }
        }
        let waiters = Waiters::new();
        let tokens = waiters.clone();
        let task = tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        let mut id = None;
                        let mut headers = Vec::new();
                        for h in m.headers().iter().flat_map(|hs| hs.iter()) {
                            let value = h.value.unwrap_or_default();
                            if h.key == CORRELATION_ID {
                                id = std::str::from_utf8(value).ok().map(str::to_owned);
                            }
                            headers.push((h.key.to_owned(), value.to_vec()));
                        }
                        let reply = Reply {
                            headers,
                            payload: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                        };
                        let answered =
                            id.is_some_and(|id| tokens.answer(&id, Answer::Reply(reply)));
                        if !answered {
                            reply::unmatched(&name);
                        }
                    }
                    // librdkafka reconnects by itself; its errors here are reports.
                    Err(e) => {
                        tracing::debug!(broker = %name, error = %e, "Kafka reply consumer");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let c = Arc::new(ReplyConsumer {
            waiters,
            task: task.abort_handle(),
        });
        replies.insert(topic.to_owned(), c.clone());
        Ok(c)
    }

    /// Produces a request with its correlation id and reply topic in headers, acknowledged as
    /// a publish is, and waits until `deadline` for the reply on `reply_topic`.
    pub(super) async fn request(
        &self,
        broker: &BrokerConfig,
        mut message: Message,
        reply_topic: &str,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let consumer = self.reply_consumer(broker, reply_topic).await?;
        let waiting = consumer.waiters.register(reply::correlation_id());
        message
            .headers
            .retain(|(n, _)| n.as_str() != CORRELATION_ID && n.as_str() != REPLY_TO);
        for (name, value) in [(CORRELATION_ID, waiting.id()), (REPLY_TO, reply_topic)] {
            let value = http::HeaderValue::from_str(value).map_err(|e| PublishError::Rejected {
                broker: broker.name.clone(),
                reason: e.to_string(),
            })?;
            message
                .headers
                .push((http::HeaderName::from_static(name), value));
        }
        let topic = match &message.target {
            Target::Kafka { topic, .. } => topic.clone(),
            _ => String::new(),
        };
        let send = async {
            self.publish(broker, message, PublishMode::Confirmed)
                .await
                .map(|_| ())
        };
        reply::exchange(broker, waiting, send, deadline, timeout, &topic).await
    }
}

/// Why a reply consumer was not assigned its partitions.
enum Assign {
    NoTopic,
    Kafka(KafkaError),
}

/// Assigns every partition of `topic` to `consumer`: at its high watermark (the offset the next
/// record gets), or with `resume` at the offset it names, clamped to what the partition still
/// holds (a partition `resume` does not name is newer than it, and is read from its start).
/// Returns where each partition was assigned, by partition.
fn assign(
    consumer: &StreamConsumer,
    topic: &str,
    resume: Option<&[(i32, i64)]>,
    wait: Duration,
) -> Result<Vec<(i32, i64)>, Assign> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Timeout::After(wait))
        .map_err(Assign::Kafka)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Assign::NoTopic);
    }
    let mut assignment = TopicPartitionList::new();
    let mut positions = Vec::with_capacity(partitions.len());
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Timeout::After(wait))
            .map_err(Assign::Kafka)?;
        let at = match resume {
            None => high,
            Some(r) => r
                .iter()
                .find(|(rp, _)| *rp == p)
                .map_or(low, |(_, o)| (*o).clamp(low, high)),
        };
        assignment
            .add_partition_offset(topic, p, Offset::Offset(at))
            .map_err(Assign::Kafka)?;
        positions.push((p, at));
    }
    consumer.assign(&assignment).map_err(Assign::Kafka)?;
    positions.sort_unstable();
    Ok(positions)
}

/// Errors after which the idempotent producer's sequence state is unusable.
fn needs_new_producer(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::Fatal
        )
    )
}

/// What a Kafka error means for the client.
fn error(broker: &BrokerConfig, topic: &str, e: &KafkaError, from_request: bool) -> PublishError {
    let name: Arc<str> = broker.name.clone();
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
            PublishError::NoDestination {
                broker: name,
                what: "topic",
                name: topic.to_owned(),
                from_request,
            }
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            PublishError::TooLarge(format!("the message is larger than broker `{name}` takes"))
        }
        Some(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::QueueFull,
        ) => PublishError::Unavailable {
            broker: name,
            reason: e.to_string(),
        },
        _ => PublishError::Rejected {
            broker: name,
            reason: e.to_string(),
        },
    }
}
