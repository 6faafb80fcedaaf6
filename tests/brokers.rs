//! The broker harness (tests/common/brokers.rs) and the client crates the gateway uses, against
//! the real brokers: tansu for Kafka, rabbitmq-server, nats-server. What each client surfaces
//! here (an idempotent producer's delivery, a publisher confirm, a returned message, a JetStream
//! ack, a refused connection) is what the gateway's broker routes build on.

#[path = "common/brokers.rs"]
mod brokers;
mod common;

use std::time::Duration;

use brokers::{unique, AmqpMessage, Kafka, KafkaRecord, Nats, RabbitMq};
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, ExchangeKind};
use rdkafka::message::{Header, OwnedHeaders, Timestamp};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Bounds every operation that could hang; generous, never reached by a passing test.
const HANG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Kafka

fn idempotent_producer(kafka: &Kafka, message_timeout_ms: &str) -> FutureProducer {
    kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", message_timeout_ms)
        .create()
        .expect("create an idempotent producer")
}

/// One record with a value only; a hang fails the test.
async fn send(producer: &FutureProducer, topic: &str, payload: &str) -> OwnedDeliveryResult {
    let record = FutureRecord::<str, str>::to(topic).payload(payload);
    tokio::time::timeout(HANG, producer.send(record, Duration::from_secs(1)))
        .await
        .expect("the send hung")
}

#[tokio::test]
async fn kafka_idempotent_producer_round_trips_key_payload_headers_and_timestamp() {
    let kafka = Kafka::shared().await;
    let topic = unique("smoke");
    kafka.create_topic(&topic, 3).await;
    let producer = idempotent_producer(kafka, "30000");

    // Header values as bytes: one binary, one empty, one absent (null), and a repeated key.
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "x-request-id",
            value: Some("req-1"),
        })
        .insert(Header {
            key: "bin",
            value: Some(&[0u8, 0xff, b'\r', b'\n'][..]),
        })
        .insert(Header {
            key: "empty",
            value: Some(""),
        })
        .insert(Header::<&[u8]> {
            key: "null",
            value: None,
        })
        .insert(Header {
            key: "x-request-id",
            value: Some("req-2"),
        });
    let payload = b"{\"order\":42,\"bytes\":\"\x00\xfe\"}";
    let delivery = tokio::time::timeout(
        HANG,
        producer.send(
            FutureRecord::to(&topic)
                .key("order-42")
                .payload(&payload[..])
                .headers(headers)
                .timestamp(1_700_000_000_123),
            Duration::from_secs(5),
        ),
    )
    .await
    .expect("the send hung")
    .unwrap_or_else(|(e, _)| panic!("send to {topic}: {e}\n{}", kafka.logs()));
    assert!((0..3).contains(&delivery.partition), "{delivery:?}");
    assert_eq!(delivery.offset, 0, "first record of its partition");

    let records = kafka.read(&topic, 1).await;
    assert_eq!(
        records,
        vec![KafkaRecord {
            partition: delivery.partition,
            offset: 0,
            key: Some(b"order-42".to_vec()),
            payload: Some(payload.to_vec()),
            headers: vec![
                ("x-request-id".into(), Some(b"req-1".to_vec())),
                ("bin".into(), Some(vec![0, 0xff, b'\r', b'\n'])),
                ("empty".into(), Some(vec![])),
                ("null".into(), None),
                ("x-request-id".into(), Some(b"req-2".to_vec())),
            ],
            timestamp: Timestamp::CreateTime(1_700_000_000_123),
        }]
    );
}

#[tokio::test]
async fn kafka_send_to_a_stopped_broker_fails_within_the_message_timeout_then_recovers() {
    let mut kafka = Kafka::start().await;
    let topic = unique("down");
    kafka.create_topic(&topic, 1).await;
    let producer = idempotent_producer(&kafka, "3000");
    let before = send(&producer, &topic, "before")
        .await
        .expect("send while up");
    assert_eq!((before.partition, before.offset), (0, 0));

    kafka.stop();
    // Nothing listens: the record waits in the producer's queue until message.timeout.ms.
    let (err, message) = send(&producer, &topic, "while down")
        .await
        .expect_err("a send to a stopped broker fails");
    assert_eq!(
        err,
        rdkafka::error::KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::MessageTimedOut
        )
    );
    assert_eq!(
        rdkafka::Message::payload(&message),
        Some(&b"while down"[..])
    );
    // A new client cannot even fetch metadata.
    let probe: rdkafka::consumer::BaseConsumer =
        kafka.client_config().create().expect("create a consumer");
    let metadata = tokio::task::spawn_blocking(move || {
        rdkafka::consumer::Consumer::fetch_metadata(&probe, None, Duration::from_secs(2))
            .map(|_| ())
    })
    .await
    .expect("metadata task");
    assert!(metadata.is_err(), "metadata from a stopped broker");

    // Back on the same port with its state: the topic and its record are there. A new producer
    // sends: after a message timeout librdkafka bumps an idempotent producer's epoch (KIP-360),
    // which tansu 0.6 does not support (InitProducerId with a known producer id is an error), and
    // tansu then refuses every send of the old producer as PRODUCER_FENCED, where a real Kafka
    // would let it go on.
    kafka.restart().await;
    let producer = idempotent_producer(&kafka, "30000");
    let after = send(&producer, &topic, "after")
        .await
        .expect("send after restart");
    assert_eq!((after.partition, after.offset), (0, 1));
    let payloads: Vec<Option<Vec<u8>>> = kafka
        .read(&topic, 2)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(
        payloads,
        [Some(b"before".to_vec()), Some(b"after".to_vec())]
    );
}

// ---------------------------------------------------------------------------------------------
// AMQP

fn amqp_headers() -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-request-id"),
        AMQPValue::LongString(LongString::from("req-1")),
    );
    headers.insert(
        ShortString::from("bin"),
        AMQPValue::LongString(LongString::from(vec![0u8, 0xff, b'\r', b'\n'])),
    );
    headers.insert(ShortString::from("attempt"), AMQPValue::LongLongInt(3));
    headers
}

async fn confirming_channel(rabbit: &RabbitMq) -> (lapin::Connection, lapin::Channel) {
    let conn = rabbit.connect().await;
    let channel = conn.create_channel().await.expect("open a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (conn, channel)
}

/// Publishes with `mandatory` and waits for the broker's confirm.
async fn publish_mandatory(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> lapin::Result<Confirmation> {
    let publish = async {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await?
            .await
    };
    tokio::time::timeout(HANG, publish)
        .await
        .expect("the publish hung")
}

#[tokio::test]
async fn amqp_confirmed_mandatory_publish_is_acked_and_read_back_with_its_properties() {
    let rabbit = RabbitMq::shared().await;
    let exchange = unique("smoke-x");
    rabbit
        .declare_exchange(&exchange, ExchangeKind::Topic)
        .await;
    let queue = rabbit.bind_queue(&exchange, "orders.*").await;
    let (_conn, channel) = confirming_channel(rabbit).await;

    let payload = b"{\"order\":42}\x00\xff";
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id("msg-1".into())
        .with_headers(amqp_headers());
    let confirmation = publish_mandatory(
        &channel,
        &exchange,
        "orders.created",
        payload,
        properties.clone(),
    )
    .await
    .expect("publish");
    // Routed and confirmed: an Ack with no returned message.
    assert_eq!(confirmation, Confirmation::Ack(None));

    let messages = rabbit.get(&queue, 1).await;
    assert_eq!(
        messages,
        vec![AmqpMessage {
            exchange: exchange.clone(),
            routing_key: "orders.created".into(),
            redelivered: false,
            properties,
            data: payload.to_vec(),
        }]
    );
}

#[tokio::test]
async fn amqp_unroutable_mandatory_publish_is_returned_and_a_missing_exchange_closes_the_channel() {
    let rabbit = RabbitMq::shared().await;
    let exchange = unique("unbound-x");
    rabbit
        .declare_exchange(&exchange, ExchangeKind::Direct)
        .await;
    let (_conn, channel) = confirming_channel(rabbit).await;

    let properties = BasicProperties::default().with_headers(amqp_headers());
    let confirmation =
        publish_mandatory(&channel, &exchange, "nowhere", b"lost", properties.clone())
            .await
            .expect("publish");
    // No queue is bound: RabbitMQ sends basic.return (312 NO_ROUTE) and then basic.ack, and lapin
    // hands the returned message over inside the Ack. This is what the gateway answers with 502
    // `unroutable`.
    let Confirmation::Ack(Some(returned)) = confirmation else {
        panic!("expected an Ack carrying the returned message, got {confirmation:?}");
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), exchange);
    assert_eq!(returned.delivery.routing_key.as_str(), "nowhere");
    assert_eq!(returned.delivery.data, b"lost");
    assert_eq!(returned.delivery.properties, properties);

    // A publish to an exchange that does not exist is a channel error (404 NOT_FOUND): the
    // broker closes the channel, and the confirm fails with it.
    let missing = unique("missing-x");
    let err = publish_mandatory(&channel, &missing, "k", b"x", BasicProperties::default())
        .await
        .expect_err("publish to a missing exchange");
    let text = err.to_string();
    assert!(text.contains("NOT_FOUND"), "{text}");
    assert!(text.contains(&missing), "{text}");
    assert!(!channel.status().connected(), "the channel is closed");
}

#[tokio::test]
async fn amqp_stopped_broker_fails_publishes_and_connects_fast_then_recovers() {
    let mut rabbit = RabbitMq::start().await;
    let exchange = unique("down-x");
    rabbit
        .declare_exchange(&exchange, ExchangeKind::Fanout)
        .await;
    let queue = rabbit.bind_queue(&exchange, "").await;
    let (_conn, channel) = confirming_channel(&rabbit).await;
    let up = publish_mandatory(&channel, &exchange, "", b"up", BasicProperties::default())
        .await
        .expect("publish while up");
    assert_eq!(up, Confirmation::Ack(None));

    rabbit.stop();
    // The connection that was open notices the closed socket; a publish on it fails, whether
    // before it is written (the channel is already marked closed) or while its confirm waits.
    let err = publish_mandatory(&channel, &exchange, "", b"down", BasicProperties::default())
        .await
        .expect_err("publish after the broker died");
    eprintln!("publish on a dead connection: {err}");
    // A new connection is refused outright.
    let refused = tokio::time::timeout(
        HANG,
        lapin::Connection::connect(&rabbit.url(), lapin::ConnectionProperties::default()),
    )
    .await
    .expect("the connect hung");
    let err = refused.expect_err("connect to a stopped broker");
    eprintln!("connect to a stopped broker: {err}");
    assert!(
        matches!(err.kind(), lapin::ErrorKind::IOError(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{err:?}"
    );

    // Back on the same ports and database: the exchange, queue and binding were not durable,
    // so they are declared again.
    rabbit.restart().await;
    rabbit
        .declare_exchange(&exchange, ExchangeKind::Fanout)
        .await;
    let queue_after = rabbit.bind_queue(&exchange, "").await;
    let (_conn, channel) = confirming_channel(&rabbit).await;
    let after = publish_mandatory(
        &channel,
        &exchange,
        "",
        b"after",
        BasicProperties::default(),
    )
    .await
    .expect("publish after restart");
    assert_eq!(after, Confirmation::Ack(None));
    assert_eq!(rabbit.get(&queue_after, 1).await[0].data, b"after");
    assert_ne!(queue, queue_after);
}

// ---------------------------------------------------------------------------------------------
// NATS

#[tokio::test]
async fn nats_jetstream_publish_is_acked_with_its_sequence_and_stored_with_headers() {
    let nats = Nats::shared().await;
    let stream = unique("SMOKE");
    let subject = format!("{stream}.orders");
    nats.create_stream(&stream, &[&format!("{stream}.>")]).await;
    let js = async_nats::jetstream::new(nats.connect().await);

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Request-Id", "req-1");
    headers.append("Multi", "one");
    headers.append("Multi", "two");
    // The server drops a second message with the same id (within its duplicate window).
    headers.insert("Nats-Msg-Id", "order-42");
    let publish = |headers: async_nats::HeaderMap, payload: &'static [u8]| {
        let js = js.clone();
        let subject = subject.clone();
        async move {
            let ack = js
                .publish_with_headers(subject, headers, payload.into())
                .await
                .expect("JetStream publish")
                .await
                .expect("JetStream ack");
            ack
        }
    };
    let first = tokio::time::timeout(HANG, publish(headers.clone(), b"order 42\x00"))
        .await
        .expect("the publish hung");
    assert_eq!(first.stream, stream);
    assert_eq!(first.sequence, 1);
    assert!(!first.duplicate);
    let again = tokio::time::timeout(HANG, publish(headers.clone(), b"order 42\x00"))
        .await
        .expect("the publish hung");
    assert_eq!((again.sequence, again.duplicate), (1, true));
    let mut other = async_nats::HeaderMap::new();
    other.insert("Nats-Msg-Id", "order-43");
    let second = tokio::time::timeout(HANG, publish(other, b"order 43"))
        .await
        .expect("the publish hung");
    assert_eq!((second.sequence, second.duplicate), (2, false));

    let stored = nats.read_stream(&stream, 2).await;
    assert_eq!(stored[0].subject.as_str(), subject);
    assert_eq!(&stored[0].payload[..], b"order 42\x00");
    let got = stored[0].headers.as_ref().expect("headers");
    assert_eq!(got.get("X-Request-Id").map(|v| v.as_str()), Some("req-1"));
    let multi: Vec<&str> = got.get_all("Multi").map(|v| v.as_str()).collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(got.get("Nats-Msg-Id").map(|v| v.as_str()), Some("order-42"));
    assert_eq!(&stored[1].payload[..], b"order 43");
    assert_eq!(stored[1].info().expect("JetStream info").stream_sequence, 2);
}

#[tokio::test]
async fn nats_core_subscriber_receives_the_message_with_its_headers() {
    let nats = Nats::shared().await;
    let subject = format!("{}.events", unique("core"));
    let mut sub = nats.subscribe(&subject).await;
    let publisher = nats.connect().await;

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Request-Id", "req-1");
    headers.append("Multi", "one");
    headers.append("Multi", "two");
    publisher
        .publish_with_headers(
            subject.clone(),
            headers,
            b"hello \x00\xff".as_slice().into(),
        )
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");

    let message = tokio::time::timeout(HANG, sub.next())
        .await
        .expect("no message arrived")
        .expect("the subscription ended");
    assert_eq!(message.subject.as_str(), subject);
    assert_eq!(&message.payload[..], b"hello \x00\xff");
    assert_eq!(message.reply, None);
    let got = message.headers.expect("headers");
    assert_eq!(got.get("X-Request-Id").map(|v| v.as_str()), Some("req-1"));
    let multi: Vec<&str> = got.get_all("Multi").map(|v| v.as_str()).collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(got.iter().count(), 2, "{got:?}");
}

#[tokio::test]
async fn nats_stopped_server_fails_connects_and_jetstream_publishes_fast_then_recovers() {
    let mut nats = Nats::start().await;
    let stream = unique("DOWN");
    let subject = format!("{stream}.x");
    nats.create_stream(&stream, &[&subject]).await;
    let js = async_nats::jetstream::new(nats.connect().await);
    let up = js
        .publish(subject.clone(), "up".into())
        .await
        .expect("publish while up")
        .await
        .expect("ack while up");
    assert_eq!(up.sequence, 1);

    nats.stop();
    // A new connection is refused outright (async-nats does not retry a first connect unless
    // asked to).
    let refused = tokio::time::timeout(HANG, async_nats::connect(nats.url()))
        .await
        .expect("the connect hung");
    let err = refused.expect_err("connect to a stopped server");
    eprintln!("connect to a stopped server: {err}");
    assert_eq!(err.kind(), async_nats::ConnectErrorKind::Io);
    // The old client reconnects in the background; a JetStream publish waits for its ack no
    // longer than the context's timeout (5 s by default).
    let failed = tokio::time::timeout(HANG, async {
        js.publish(subject.clone(), "down".into()).await?.await
    })
    .await
    .expect("the publish hung");
    let err = failed.expect_err("JetStream publish while the server is down");
    eprintln!("JetStream publish while down: {err}");

    // Back on the same port and store directory: the stream and its first message survived.
    // (The old client may deliver its buffered "down" once it has reconnected, so the new
    // message's sequence is 2 or 3; the stream's last message is it either way.)
    nats.restart().await;
    let js = async_nats::jetstream::new(nats.connect().await);
    let after = tokio::time::timeout(HANG, async {
        js.publish(subject.clone(), "after".into()).await?.await
    })
    .await
    .expect("the publish hung")
    .expect("publish after restart");
    let stored = nats.read_stream(&stream, after.sequence as usize).await;
    assert_eq!(&stored[0].payload[..], b"up");
    let last = stored.last().expect("messages");
    assert_eq!(&last.payload[..], b"after");
    assert_eq!(last.info().expect("info").stream_sequence, after.sequence);
}
