//! Request-reply routes against real brokers (tansu for Kafka, rabbitmq-server, nats-server):
//! a responder in the test, an independent client of each broker, answers the requests
//! tollgate sends, and what the HTTP client gets back is checked byte for byte: status (from
//! the reply's `http-status` header), headers and body; concurrent requests each get their own
//! reply; a request nobody answers gets 504, a subject nobody listens on 503, a malformed reply
//! status 502, a broker that is down 503; `Prefer: respond-async` answers 202 and the reply is
//! polled for.
//!
//! Nothing waits on the clock: a responder that never answers is one that holds the request by
//! design (its route's 300 ms timeout decides nothing else), the routes that are answered wait
//! 30 s, and the hang bounds only catch hangs.

#[path = "common/brokers.rs"]
mod brokers;
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brokers::{metric, unique, wait_broker, Kafka, Nats, RabbitMq, HANG};
use common::{client, expect_error, Gateway};
use futures_util::StreamExt;

/// What every responder of these tests answers, from the request's headers and body: the
/// status the request asks for (`x-want-status`, sent as `http-status`), its content type, the
/// tenant and request id it saw, and `reply to BODY`.
fn answer_to(headers: &[(String, Vec<u8>)], body: &[u8]) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut out = Vec::new();
    if let Some(s) = get("x-want-status") {
        out.push(("http-status".to_owned(), s));
    }
    if let Some(t) = get("content-type") {
        out.push(("content-type".to_owned(), t));
    }
    if let Some(t) = get("x-tenant") {
        out.push(("x-tenant-seen".to_owned(), t));
    }
    if let Some(id) = get("x-request-id") {
        out.push(("x-request-id-seen".to_owned(), id));
    }
    out.push(("x-responder".to_owned(), b"test".to_vec()));
    let mut reply = b"reply to ".to_vec();
    reply.extend_from_slice(body);
    (out, reply)
}

/// Sends `POST path` with `body`, a JSON content type and `x-tenant: acme`.
async fn ask(gw: &Gateway, path: &str, body: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("x-tenant", "acme")
        .body(body.to_owned());
    for (n, v) in extra {
        req = req.header(*n, *v);
    }
    tokio::time::timeout(HANG, req.send())
        .await
        .expect("answered, not hung")
        .expect("request")
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Checks the answer of `ask(.., body, [x-want-status: status])` through any responder.
async fn expect_reply(resp: reqwest::Response, status: u16, body: &str) {
    assert_eq!(resp.status().as_u16(), status, "{body}");
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert_eq!(header(&resp, "x-tenant-seen"), Some("acme"));
    assert_eq!(header(&resp, "x-responder"), Some("test"));
    assert!(
        header(&resp, "x-request-id-seen").is_some_and(|id| !id.is_empty()),
        "{:?}",
        resp.headers()
    );
    // Correlation and transport headers are the gateway's, not the client's.
    for name in ["http-status", "correlation-id", "reply-to"] {
        assert_eq!(header(&resp, name), None, "{name}");
    }
    let got = resp.text().await.expect("body");
    assert_eq!(got, format!("reply to {body}"));
}

/// 20 requests at once, each its own body: each answer is its own request's reply.
async fn each_gets_its_own_reply(gw: &Gateway, path: &str) {
    let asks = (0..20).map(|i| async move {
        let body = format!("{{\"n\":{i}}}");
        let resp = ask(gw, path, &body, &[]).await;
        expect_reply(resp, 200, &body).await;
    });
    futures_util::future::join_all(asks).await;
}

// ---------------------------------------------------------------------------------------------
// NATS

/// Answers every request on `subject` with [`answer_to`], until the test ends.
async fn nats_responder(nats: &Nats, subject: &str) {
    let client = nats.connect().await;
    let mut sub = client
        .subscribe(subject.to_owned())
        .await
        .expect("subscribe");
    client.flush().await.expect("flush the subscription");
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(reply) = m.reply else { continue };
            let headers: Vec<(String, Vec<u8>)> = m
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .flat_map(|(n, vs)| {
                    vs.iter()
                        .map(move |v| (n.to_string(), v.as_str().as_bytes().to_vec()))
                })
                .collect();
            let (out, body) = answer_to(&headers, &m.payload);
            let mut h = async_nats::HeaderMap::new();
            for (n, v) in out {
                h.append(n.as_str(), String::from_utf8_lossy(&v).as_ref());
            }
            let _ = client.publish_with_headers(reply, h, body.into()).await;
        }
    });
}

#[tokio::test]
async fn nats_requests_are_answered_by_their_replies() {
    let nats = Nats::shared().await;
    let prefix = unique("quotes");
    nats_responder(nats, &format!("{prefix}.*")).await;
    // Subscribed, never answering: its requests time out by design.
    let silent = nats.subscribe(&format!("{prefix}-silent")).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.rpc]
kind = "nats"
servers = ["{url}"]

[routes.quote]
template = "/quotes/{{id}}"
[routes.quote.request_reply]
broker = "rpc"
subject = "{prefix}.{{id}}"
headers = ["x-tenant", "x-want-status"]
timeout = "30s"

[routes.silent]
exact = "/silent"
[routes.silent.request_reply]
broker = "rpc"
subject = "{prefix}-silent"
timeout = "300ms"

[routes.nobody]
exact = "/nobody"
[routes.nobody.request_reply]
broker = "rpc"
subject = "{nobody}"
"#,
        url = nats.url(),
        nobody = unique("nobody"),
    ))
    .await;
    wait_broker(&gw, "rpc", "up").await;

    let resp = ask(
        &gw,
        "/quotes/7",
        r#"{"qty":3}"#,
        &[("x-want-status", "201")],
    )
    .await;
    expect_reply(resp, 201, r#"{"qty":3}"#).await;
    let resp = ask(&gw, "/quotes/7", "{}", &[]).await;
    expect_reply(resp, 200, "{}").await;
    each_gets_its_own_reply(&gw, "/quotes/8").await;

    let resp = ask(&gw, "/quotes/7", "{}", &[("x-want-status", "abc")]).await;
    let err = expect_error(resp, 502, "bad_reply").await;
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("http-status")),
        "{err}"
    );
    let resp = ask(&gw, "/quotes/7", "{}", &[("x-want-status", "700")]).await;
    expect_error(resp, 502, "bad_reply").await;

    let resp = ask(&gw, "/silent", "{}", &[]).await;
    expect_error(resp, 504, "reply_timeout").await;
    // Its reply, late, is dropped: counted, kept by nobody.
    let mut silent = silent;
    let held = tokio::time::timeout(HANG, silent.next())
        .await
        .expect("the request reached the silent responder")
        .expect("a request");
    let late = nats.connect().await;
    late.publish(held.reply.expect("reply subject"), "too late".into())
        .await
        .expect("late reply");
    late.flush().await.expect("flush");
    let unmatched = "tollgate_replies_unmatched_total{broker=\"rpc\"}";
    let deadline = tokio::time::Instant::now() + HANG;
    while metric(&gw, unmatched).await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late reply never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = ask(&gw, "/nobody", "{}", &[]).await;
    assert_eq!(header(&resp, "retry-after"), Some("1"));
    expect_error(resp, 503, "no_responder").await;

    let replied =
        "tollgate_request_reply_total{broker=\"rpc\",outcome=\"replied\",route=\"quote\"}";
    assert_eq!(metric(&gw, replied).await, Some(22.0));
    let timeouts =
        "tollgate_request_reply_total{broker=\"rpc\",outcome=\"reply_timeout\",route=\"silent\"}";
    assert_eq!(metric(&gw, timeouts).await, Some(1.0));
}

#[tokio::test]
async fn a_request_may_be_answered_asynchronously_and_polled_for() {
    let nats = Nats::shared().await;
    let subject = unique("slow");
    // The responder answers a request only when the test says so.
    let client_ = nats.connect().await;
    let mut sub = client_.subscribe(subject.clone()).await.expect("subscribe");
    client_.flush().await.expect("flush");
    let gw = Gateway::start(&format!(
        r#"
[brokers.rpc]
kind = "nats"
servers = ["{url}"]

[routes.slow]
exact = "/slow"
[routes.slow.request_reply]
broker = "rpc"
subject = "{subject}"
timeout = "60s"
headers = ["x-tenant"]
respond_async = true
async_ttl = "10m"
"#,
        url = nats.url(),
    ))
    .await;
    wait_broker(&gw, "rpc", "up").await;

    let resp = ask(&gw, "/slow", "later", &[("prefer", "respond-async")]).await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(header(&resp, "preference-applied"), Some("respond-async"));
    let location = header(&resp, "location").expect("location").to_owned();
    assert!(location.starts_with("/slow?reply_id="), "{location}");
    let receipt: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(receipt["location"], location.as_str());

    // The request is held by the responder: the reply is pending.
    let request = tokio::time::timeout(HANG, sub.next())
        .await
        .expect("the request reached the responder")
        .expect("a request");
    let poll = || async {
        tokio::time::timeout(HANG, client().get(gw.url(&location)).send())
            .await
            .expect("answered")
            .expect("poll")
    };
    let pending = poll().await;
    assert_eq!(pending.status().as_u16(), 202);
    assert_eq!(header(&pending, "location"), Some(location.as_str()));

    let mut h = async_nats::HeaderMap::new();
    h.insert("http-status", "201");
    h.insert("content-type", "text/plain");
    client_
        .publish_with_headers(request.reply.expect("reply subject"), h, "done".into())
        .await
        .expect("reply");
    client_.flush().await.expect("flush");
    // The reply travels through the broker to the gateway: poll until it is there.
    let deadline = tokio::time::Instant::now() + HANG;
    let done = loop {
        let resp = poll().await;
        if resp.status().as_u16() != 202 {
            break resp;
        }
        assert!(tokio::time::Instant::now() < deadline, "never replied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done.status().as_u16(), 201);
    assert_eq!(header(&done, "content-type"), Some("text/plain"));
    assert_eq!(done.text().await.expect("body"), "done");
    // Kept for the TTL: asked again, answered again.
    let again = poll().await;
    assert_eq!(again.status().as_u16(), 201);

    let unknown = client()
        .get(gw.url("/slow?reply_id=0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .expect("poll");
    expect_error(unknown, 404, "reply_not_found").await;
    let bare = client().get(gw.url("/slow")).send().await.expect("get");
    expect_error(bare, 400, "bad_request").await;
    // Without the preference, the same route answers synchronously.
    let sync = ask(&gw, "/slow", "now", &[]);
    let request = async {
        let m = tokio::time::timeout(HANG, sub.next())
            .await
            .expect("the request reached the responder")
            .expect("a request");
        client_
            .publish(m.reply.expect("reply subject"), "right away".into())
            .await
            .expect("reply");
    };
    let (resp, ()) = tokio::join!(sync, request);
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.expect("body"), "right away");
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ

/// Declares `queue` and answers every request in it with [`answer_to`], to its `reply_to`
/// with its `correlation_id`, until the test ends.
async fn amqp_responder(rabbit: &RabbitMq, queue: &str) {
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    let conn = rabbit.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare the request queue");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(d)) = consumer.next().await {
            let props = &d.properties;
            let Some(reply_to) = props.reply_to().clone() else {
                continue;
            };
            let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
            if let Some(t) = props.content_type() {
                headers.push(("content-type".into(), t.as_str().as_bytes().to_vec()));
            }
            for (n, v) in props.headers().iter().flat_map(|t| t.inner()) {
                if let AMQPValue::LongString(s) = v {
                    headers.push((n.as_str().to_owned(), s.as_bytes().to_vec()));
                }
            }
            let (out, body) = answer_to(&headers, &d.data);
            let mut table = FieldTable::default();
            let mut reply_props = lapin::BasicProperties::default();
            if let Some(c) = props.correlation_id().clone() {
                reply_props = reply_props.with_correlation_id(c);
            }
            for (n, v) in out {
                if n == "content-type" {
                    reply_props = reply_props
                        .with_content_type(ShortString::from(String::from_utf8_lossy(&v).as_ref()));
                } else if n == "http-status" {
                    // Written as a number, as an AMQP responder would.
                    let s = String::from_utf8_lossy(&v).parse::<i32>();
                    let value = match s {
                        Ok(n) => AMQPValue::LongInt(n),
                        Err(_) => AMQPValue::LongString(LongString::from(v)),
                    };
                    table.insert(ShortString::from(n.as_str()), value);
                } else {
                    table.insert(
                        ShortString::from(n.as_str()),
                        AMQPValue::LongString(LongString::from(v)),
                    );
                }
            }
            let _ = ch
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &body,
                    reply_props.with_headers(table),
                )
                .await;
        }
    });
}

#[tokio::test]
async fn amqp_requests_are_answered_through_direct_reply_to() {
    let rabbit = RabbitMq::shared().await;
    let queue = unique("quotes");
    amqp_responder(rabbit, &queue).await;
    // A queue nobody consumes (reached through the default exchange by its name): its
    // requests are routed, confirmed, and never answered.
    let silent = rabbit.bind_queue("amq.direct", &unique("silent-key")).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.rpc]
kind = "amqp"
url = "{url}"

[routes.quote]
exact = "/quote"
[routes.quote.request_reply]
broker = "rpc"
routing_key = "{queue}"
headers = ["x-tenant", "x-want-status"]
timeout = "30s"

[routes.silent]
exact = "/silent"
[routes.silent.request_reply]
broker = "rpc"
routing_key = "{silent}"
timeout = "300ms"

[routes.nowhere]
exact = "/nowhere"
[routes.nowhere.request_reply]
broker = "rpc"
exchange = "amq.direct"
routing_key = "{nowhere}"

[routes.no-exchange]
exact = "/no-exchange"
[routes.no-exchange.request_reply]
broker = "rpc"
exchange = "{missing}"
routing_key = "x"
"#,
        url = rabbit.url(),
        nowhere = unique("nowhere"),
        missing = unique("missing"),
    ))
    .await;
    wait_broker(&gw, "rpc", "up").await;

    let resp = ask(&gw, "/quote", r#"{"qty":3}"#, &[("x-want-status", "202")]).await;
    expect_reply(resp, 202, r#"{"qty":3}"#).await;
    each_gets_its_own_reply(&gw, "/quote").await;
    let resp = ask(&gw, "/quote", "{}", &[("x-want-status", "99")]).await;
    expect_error(resp, 502, "bad_reply").await;

    let resp = ask(&gw, "/silent", "{}", &[]).await;
    expect_error(resp, 504, "reply_timeout").await;
    let resp = ask(&gw, "/nowhere", "{}", &[]).await;
    expect_error(resp, 502, "unroutable").await;
    // An unroutable request leaves the channel usable.
    let resp = ask(&gw, "/quote", "{}", &[]).await;
    expect_reply(resp, 200, "{}").await;
    // A missing exchange closes the channel; the next request gets a new one.
    let resp = ask(&gw, "/no-exchange", "{}", &[]).await;
    expect_error(resp, 502, "unknown_destination").await;
    let resp = ask(&gw, "/quote", "{}", &[]).await;
    expect_reply(resp, 200, "{}").await;
}

// ---------------------------------------------------------------------------------------------
// Kafka

/// Answers every request on `topic` (read from its beginning) with [`answer_to`] on the
/// request's `reply-to` topic with its `correlation-id`, until the returned flag is set.
fn kafka_responder(kafka: &Kafka, topic: &str) -> Arc<AtomicBool> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};
    let stop = Arc::new(AtomicBool::new(false));
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", unique("responder"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("responder consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    let producer: BaseProducer = kafka.client_config().create().expect("responder producer");
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let headers: Vec<(String, Vec<u8>)> = m
                .headers()
                .iter()
                .flat_map(|hs| hs.iter())
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect();
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            };
            let (Some(reply_to), Some(id)) = (get("reply-to"), get("correlation-id")) else {
                continue;
            };
            let (out, body) = answer_to(&headers, m.payload().unwrap_or_default());
            let mut reply_headers = OwnedHeaders::new().insert(Header {
                key: "correlation-id",
                value: Some(id.as_bytes()),
            });
            for (n, v) in &out {
                reply_headers = reply_headers.insert(Header {
                    key: n.as_str(),
                    value: Some(v.as_slice()),
                });
            }
            let record = BaseRecord::<(), _>::to(&reply_to)
                .payload(&body)
                .headers(reply_headers);
            if producer.send(record).is_ok() {
                producer.poll(Duration::ZERO);
            }
            let _ = producer.flush(Duration::from_secs(10));
        }
    });
    stop
}

#[tokio::test]
async fn kafka_requests_are_answered_on_the_reply_topic() {
    let kafka = Kafka::shared().await;
    let (requests, replies, silent) = (unique("requests"), unique("replies"), unique("silent"));
    kafka.create_topic(&requests, 1).await;
    kafka.create_topic(&replies, 2).await;
    kafka.create_topic(&silent, 1).await;
    let stop = kafka_responder(kafka, &requests);
    let gw = Gateway::start(&format!(
        r#"
[brokers.rpc]
kind = "kafka"
bootstrap = ["{addr}"]

[routes.quote]
template = "/quotes/{{id}}"
[routes.quote.request_reply]
broker = "rpc"
topic = "{requests}"
key = "{{id}}"
reply_topic = "{replies}"
headers = ["x-tenant", "x-want-status"]
timeout = "30s"

[routes.silent]
exact = "/silent"
[routes.silent.request_reply]
broker = "rpc"
topic = "{silent}"
reply_topic = "{replies}"
timeout = "300ms"

[routes.no-reply-topic]
exact = "/no-reply-topic"
[routes.no-reply-topic.request_reply]
broker = "rpc"
topic = "{requests}"
reply_topic = "{missing}"
"#,
        addr = kafka.address(),
        missing = unique("missing"),
    ))
    .await;
    wait_broker(&gw, "rpc", "up").await;

    let resp = ask(
        &gw,
        "/quotes/A-1",
        r#"{"qty":3}"#,
        &[("x-want-status", "201")],
    )
    .await;
    expect_reply(resp, 201, r#"{"qty":3}"#).await;
    each_gets_its_own_reply(&gw, "/quotes/A-2").await;
    let resp = ask(&gw, "/quotes/A-3", "{}", &[("x-want-status", "")]).await;
    expect_error(resp, 502, "bad_reply").await;
    let resp = ask(&gw, "/silent", "{}", &[]).await;
    expect_error(resp, 504, "reply_timeout").await;
    let resp = ask(&gw, "/no-reply-topic", "{}", &[]).await;
    expect_error(resp, 502, "unknown_destination").await;
    stop.store(true, Ordering::Relaxed);

    // Every request carried its correlation id and reply topic, and the route's key.
    let records = kafka.read(&requests, 22).await;
    for r in &records {
        assert_eq!(r.key.as_deref().map(|k| &k[..2]), Some(&b"A-"[..]));
        let reply_to = r.headers.iter().find(|(n, _)| n == "reply-to");
        assert_eq!(
            reply_to.and_then(|(_, v)| v.as_deref()),
            Some(replies.as_bytes())
        );
        assert!(r.headers.iter().any(|(n, _)| n == "correlation-id"));
    }
}

// ---------------------------------------------------------------------------------------------
// Brokers down

#[tokio::test]
async fn brokers_that_are_down_refuse_requests_at_once() {
    let closed = common::closed_addr();
    let gw = Gateway::start(&format!(
        r#"
[brokers.nats]
kind = "nats"
servers = ["nats://{closed}"]
connect_timeout = "1s"
required_for_readiness = false

[brokers.rabbit]
kind = "amqp"
url = "amqp://guest:guest@{closed}/%2f"
connect_timeout = "1s"
required_for_readiness = false

[brokers.kafka]
kind = "kafka"
bootstrap = ["{closed}"]
connect_timeout = "1s"
required_for_readiness = false

[routes.n]
exact = "/n"
[routes.n.request_reply]
broker = "nats"
subject = "s"
respond_async = true

[routes.a]
exact = "/a"
[routes.a.request_reply]
broker = "rabbit"
routing_key = "q"

[routes.k]
exact = "/k"
[routes.k.request_reply]
broker = "kafka"
topic = "t"
reply_topic = "r"
"#
    ))
    .await;
    for (broker, path) in [("nats", "/n"), ("rabbit", "/a"), ("kafka", "/k")] {
        wait_broker(&gw, broker, "down").await;
        let resp = ask(&gw, path, "{}", &[]).await;
        assert_eq!(header(&resp, "retry-after"), Some("1"));
        expect_error(resp, 503, "broker_unavailable").await;
    }
    // Asked to answer later, a broker known to be down is said at once too.
    let resp = ask(&gw, "/n", "{}", &[("prefer", "respond-async")]).await;
    expect_error(resp, 503, "broker_unavailable").await;
}

#[tokio::test]
async fn a_nats_server_that_goes_down_gets_503_and_answers_again_when_back() {
    let mut nats = Nats::start().await;
    let subject = unique("back");
    nats_responder(&nats, &subject).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.rpc]
kind = "nats"
servers = ["{url}"]
connect_timeout = "1s"

[routes.q]
exact = "/q"
[routes.q.request_reply]
broker = "rpc"
subject = "{subject}"
headers = ["x-tenant"]
timeout = "30s"
"#,
        url = nats.url(),
    ))
    .await;
    wait_broker(&gw, "rpc", "up").await;
    expect_reply(ask(&gw, "/q", "before", &[]).await, 200, "before").await;

    nats.stop();
    wait_broker(&gw, "rpc", "down").await;
    let resp = ask(&gw, "/q", "{}", &[]).await;
    expect_error(resp, 503, "broker_unavailable").await;

    nats.restart().await;
    nats_responder(&nats, &subject).await;
    wait_broker(&gw, "rpc", "up").await;
    // The gateway's inbox subscription came back with its connection.
    expect_reply(ask(&gw, "/q", "after", &[]).await, 200, "after").await;
}

#[tokio::test]
async fn a_rabbitmq_that_goes_down_gets_503_and_answers_again_when_back() {
    let mut rabbit = RabbitMq::start().await;
    let queue = unique("back");
    amqp_responder(&rabbit, &queue).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.rpc]
kind = "amqp"
url = "{url}"
connect_timeout = "2s"

[routes.q]
exact = "/q"
[routes.q.request_reply]
broker = "rpc"
routing_key = "{queue}"
headers = ["x-tenant"]
timeout = "30s"
"#,
        url = rabbit.url(),
    ))
    .await;
    wait_broker(&gw, "rpc", "up").await;
    expect_reply(ask(&gw, "/q", "before", &[]).await, 200, "before").await;

    rabbit.stop();
    wait_broker(&gw, "rpc", "down").await;
    let resp = ask(&gw, "/q", "{}", &[]).await;
    expect_error(resp, 503, "broker_unavailable").await;

    rabbit.restart().await;
    amqp_responder(&rabbit, &queue).await;
    wait_broker(&gw, "rpc", "up").await;
    // A new connection, and on it a new channel consuming direct reply-to.
    expect_reply(ask(&gw, "/q", "after", &[]).await, 200, "after").await;
}

#[tokio::test]
async fn requests_hold_the_brokers_max_in_flight_and_one_more_is_refused_at_once() {
    let nats = Nats::shared().await;
    let subject = unique("held");
    // Subscribed, never answering: the first request holds the one place until its timeout.
    let _held = nats.subscribe(&subject).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.rpc]
kind = "nats"
servers = ["{url}"]
max_in_flight = 1

[routes.q]
exact = "/q"
[routes.q.request_reply]
broker = "rpc"
subject = "{subject}"
timeout = "60s"
respond_async = true
"#,
        url = nats.url(),
    ))
    .await;
    wait_broker(&gw, "rpc", "up").await;
    // Answered 202 once its place was taken.
    let first = ask(&gw, "/q", "{}", &[("prefer", "respond-async")]).await;
    assert_eq!(first.status().as_u16(), 202);
    let resp = ask(&gw, "/q", "{}", &[]).await;
    assert_eq!(header(&resp, "retry-after"), Some("1"));
    expect_error(resp, 503, "broker_busy").await;
    let resp = ask(&gw, "/q", "{}", &[("prefer", "respond-async")]).await;
    expect_error(resp, 503, "broker_busy").await;
}
