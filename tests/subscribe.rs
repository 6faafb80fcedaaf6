//! Subscribe routes against real brokers (tansu for Kafka, rabbitmq-server, nats-server): an
//! independent client produces, and what the gateway streams as Server-Sent Events is checked
//! byte for byte; resumption from `Last-Event-ID`, filters, the subscriber cap, a slow client
//! cut, a broker going down mid-stream and a client leaving (its consumer freed) each have a
//! test. Every wait is for an event, bounded only to catch a hang.

#[path = "common/brokers.rs"]
mod brokers;
mod common;

use std::time::Duration;

use brokers::{metric, unique, Kafka, Nats, RabbitMq, HANG};
use common::{expect_error, Gateway};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A client without a total timeout: a stream lasts as long as the test wants.
fn sse_client() -> reqwest::Client {
    common::install_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// One Server-Sent Event as a client parses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Sse {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// A subscriber's open stream.
struct Stream {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Stream {
    /// Opens `url` (with `last_event_id`) and waits for the stream's opening comment: from
    /// then on, a message the broker takes reaches it.
    async fn open(url: &str, last_event_id: Option<&str>) -> Stream {
        let mut req = sse_client().get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = tokio::time::timeout(HANG, req.send())
            .await
            .expect("subscribe hung")
            .expect("subscribe");
        assert_eq!(resp.status().as_u16(), 200, "subscribe {url}");
        assert_eq!(
            resp.headers()["content-type"].to_str().ok(),
            Some("text/event-stream")
        );
        let mut s = Stream {
            resp,
            buf: Vec::new(),
        };
        assert_eq!(s.block().await.as_deref(), Some(": subscribed"));
        s
    }

    /// The next block (up to a blank line), `None` when the stream ended.
    async fn block(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf[..at].to_vec()).expect("utf-8 stream");
                self.buf.drain(..at + 2);
                return Some(block);
            }
            match tokio::time::timeout(HANG, self.resp.chunk()).await {
                Err(_) => panic!("no event within {HANG:?}; have {:?}", self.buf),
                Ok(Ok(Some(c))) => self.buf.extend_from_slice(&c),
                Ok(_) => return None,
            }
        }
    }

    /// The next event, skipping comments (heartbeats); `None` when the stream ended.
    async fn event(&mut self) -> Option<Sse> {
        loop {
            let block = self.block().await?;
            let mut e = Sse::default();
            let mut data = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                match field {
                    "id" => e.id = Some(value.to_owned()),
                    "event" => e.event = Some(value.to_owned()),
                    "data" => data.push(value.to_owned()),
                    other => panic!("unexpected field {other:?} in {block:?}"),
                }
            }
            if data.is_empty() && e.id.is_none() && e.event.is_none() {
                continue;
            }
            e.data = data.join("\n");
            return Some(e);
        }
    }
}

/// Waits until the metric is `want`.
async fn wait_metric(gw: &Gateway, line_start: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let got = metric(gw, line_start).await;
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line_start} is {got:?}, not {want}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn produce(kafka: &Kafka, topic: &str, key: &str, payload: &[u8], tenant: &str) {
    use rdkafka::message::{Header, OwnedHeaders};
    let producer: FutureProducer = kafka.client_config().create().expect("producer");
    let headers = OwnedHeaders::new().insert(Header {
        key: "x-tenant",
        value: Some(tenant.as_bytes()),
    });
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(headers);
    producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}\n{}", kafka.logs()));
}

#[tokio::test]
async fn kafka_subscribers_get_filtered_events_and_resume_exactly_from_last_event_id() {
    let kafka = Kafka::shared().await;
    let topic = unique("sse-orders");
    kafka.create_topic(&topic, 2).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.events]
kind = "kafka"
bootstrap = ["{addr}"]

[routes.orders]
template = "/orders/{{id}}/events"
[routes.orders.subscribe]
broker = "events"
topic = "{topic}"
filter = {{ key = "{{id}}" }}

[routes.all]
template = "/tenants/{{tenant}}/events"
[routes.all.subscribe]
broker = "events"
topic = "{topic}"
filter = {{ headers = {{ x-tenant = "{{tenant}}" }} }}
"#,
        addr = kafka.address()
    ))
    .await;
    // A message sent before anyone subscribed is not streamed: a stream starts at the end.
    produce(kafka, &topic, "A-1", b"before", "acme").await;

    let mut a1 = Stream::open(&gw.url("/orders/A-1/events"), None).await;
    let mut acme = Stream::open(&gw.url("/tenants/acme/events"), None).await;
    produce(kafka, &topic, "B-2", b"{\"n\":1}", "globex").await;
    produce(kafka, &topic, "A-1", b"{\"n\":2}\nsecond line", "acme").await;
    produce(kafka, &topic, "A-1", &[0xff, 0xfe], "acme").await;

    let first = a1.event().await.expect("an event");
    assert_eq!(first.data, "{\"n\":2}\nsecond line");
    let id = first.id.clone().expect("Kafka events have ids");
    let second = a1.event().await.expect("an event");
    assert_eq!(second.event.as_deref(), Some("binary"));
    assert_eq!(second.data, "//4=");
    // The tenant route filters on a header instead: both acme messages, not globex's.
    assert_eq!(acme.event().await.map(|e| e.data), Some(first.data.clone()));
    assert_eq!(acme.event().await.map(|e| e.data), Some("//4=".to_owned()));
    drop(a1);

    // Resumed after the first event: exactly what came after it, nothing before, nothing twice.
    produce(kafka, &topic, "A-1", b"{\"n\":3}", "acme").await;
    let mut resumed = Stream::open(&gw.url("/orders/A-1/events"), Some(&id)).await;
    assert_eq!(
        resumed.event().await.map(|e| e.data),
        Some("//4=".to_owned())
    );
    assert_eq!(
        resumed.event().await.map(|e| e.data),
        Some("{\"n\":3}".to_owned())
    );
    drop(resumed);

    for bad in ["x", "0:-1", "0:1,0:2", "1:2:3", ""] {
        let resp = sse_client()
            .get(gw.url("/orders/A-1/events"))
            .header("last-event-id", bad)
            .send()
            .await
            .expect("subscribe");
        expect_error(resp, 400, "bad_last_event_id").await;
    }
    // A POST is not a subscribe route's (no route takes it).
    let resp = common::client()
        .post(gw.url("/orders/A-1/events"))
        .body("x")
        .send()
        .await
        .expect("post");
    expect_error(resp, 404, "route_not_found").await;
}

#[tokio::test]
async fn a_missing_kafka_topic_is_an_error_not_an_empty_stream() {
    let kafka = Kafka::shared().await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.events]
kind = "kafka"
bootstrap = ["{addr}"]

[routes.fixed]
exact = "/fixed"
[routes.fixed.subscribe]
broker = "events"
topic = "{missing}"

[routes.chosen]
template = "/topics/{{name}}"
[routes.chosen.subscribe]
broker = "events"
topic = "{{name}}"
"#,
        addr = kafka.address(),
        missing = unique("never-created"),
    ))
    .await;
    let resp = sse_client()
        .get(gw.url("/fixed"))
        .send()
        .await
        .expect("get");
    expect_error(resp, 502, "unknown_destination").await;
    let resp = sse_client()
        .get(gw.url(&format!("/topics/{}", unique("nope"))))
        .send()
        .await
        .expect("get");
    expect_error(resp, 404, "unknown_destination").await;
}

#[tokio::test]
async fn nats_subscribers_each_get_every_message_and_leaving_is_noticed_at_once() {
    let nats = Nats::shared().await;
    let prefix = unique("sse");
    let gw = Gateway::start(&format!(
        r#"
[brokers.bus]
kind = "nats"
servers = ["{url}"]

[routes.feed]
template = "/feed/{{kind}}"
[routes.feed.subscribe]
broker = "bus"
subject = "{prefix}.{{kind}}.>"
heartbeat = "1h"
"#,
        url = nats.url()
    ))
    .await;
    let client = nats.connect().await;
    let mut one = Stream::open(&gw.url("/feed/orders"), None).await;
    let mut two = Stream::open(&gw.url("/feed/orders"), None).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("x-tenant", "acme");
    client
        .publish_with_headers(format!("{prefix}.orders.eu.1"), headers, "hello".into())
        .await
        .expect("publish");
    client
        .publish(format!("{prefix}.users.eu.1"), "not yours".into())
        .await
        .expect("publish");
    client
        .publish(format!("{prefix}.orders.us"), "world".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    for s in [&mut one, &mut two] {
        assert_eq!(s.event().await.map(|e| e.data), Some("hello".to_owned()));
        assert_eq!(s.event().await.map(|e| e.data), Some("world".to_owned()));
    }
    let subscribers = "tollgate_subscribers{broker=\"bus\",route=\"feed\"}";
    wait_metric(&gw, subscribers, 2.0).await;
    // A value that would widen the subscription is refused, not used.
    let resp = sse_client()
        .get(gw.url("/feed/*"))
        .send()
        .await
        .expect("get");
    expect_error(resp, 400, "bad_destination").await;

    // Leaving is noticed at once, without a message or heartbeat to write.
    drop(one);
    wait_metric(&gw, subscribers, 1.0).await;
    drop(two);
    wait_metric(&gw, subscribers, 0.0).await;
    wait_metric(
        &gw,
        "tollgate_messages_delivered_total{broker=\"bus\",route=\"feed\"}",
        4.0,
    )
    .await;
}

#[tokio::test]
async fn amqp_binding_gives_each_client_its_own_queue_which_goes_with_it() {
    let rabbit = RabbitMq::shared().await;
    let exchange = unique("sse-ex");
    rabbit
        .declare_exchange(&exchange, lapin::ExchangeKind::Topic)
        .await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.rabbit]
kind = "amqp"
url = "{url}"

[routes.watch]
template = "/watch/{{region}}"
[routes.watch.subscribe]
broker = "rabbit"
exchange = "{exchange}"
routing_key = "orders.{{region}}.#"

[routes.send]
template = "/send/{{region}}"
[routes.send.publish]
broker = "rabbit"
exchange = "{exchange}"
routing_key = "orders.{{region}}.new"
headers = ["x-tenant"]
"#,
        url = rabbit.url()
    ))
    .await;
    let mut eu = Stream::open(&gw.url("/watch/eu"), None).await;
    let resp = common::client()
        .post(gw.url("/send/eu"))
        .header("content-type", "application/json")
        .header("x-tenant", "acme")
        .body("{\"total\":1}")
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 202, "{}", gw.logs());
    assert_eq!(
        eu.event().await.map(|e| e.data),
        Some("{\"total\":1}".to_owned())
    );
    // With its only subscriber gone, its queue is gone: nothing takes the next message.
    drop(eu);
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let resp = common::client()
            .post(gw.url("/send/eu"))
            .body("after")
            .send()
            .await
            .expect("publish");
        if resp.status().as_u16() == 502 {
            expect_error(resp, 502, "unroutable").await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client's queue outlived it\n{}",
            gw.logs()
        );
    }
}

#[tokio::test]
async fn a_named_amqp_queue_acknowledges_what_was_written_and_keeps_the_rest() {
    let rabbit = RabbitMq::shared().await;
    let exchange = unique("sse-work");
    rabbit
        .declare_exchange(&exchange, lapin::ExchangeKind::Direct)
        .await;
    let queue = rabbit.bind_queue(&exchange, "job").await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.rabbit]
kind = "amqp"
url = "{url}"

[routes.work]
exact = "/work"
[routes.work.subscribe]
broker = "rabbit"
queue = "{queue}"
buffer = 1

[routes.send]
exact = "/send"
[routes.send.publish]
broker = "rabbit"
exchange = "{exchange}"
routing_key = "job"
"#,
        url = rabbit.url()
    ))
    .await;
    for body in ["one", "two"] {
        let resp = common::client()
            .post(gw.url("/send"))
            .body(body)
            .send()
            .await
            .expect("publish");
        assert_eq!(resp.status().as_u16(), 202);
    }
    let mut worker = Stream::open(&gw.url("/work"), None).await;
    // With `buffer = 1` the broker hands over one message at a time: "two" comes only after
    // "one" was written and acknowledged.
    assert_eq!(worker.event().await.map(|e| e.data), Some("one".to_owned()));
    assert_eq!(worker.event().await.map(|e| e.data), Some("two".to_owned()));
    drop(worker);
    wait_metric(
        &gw,
        "tollgate_subscribers{broker=\"rabbit\",route=\"work\"}",
        0.0,
    )
    .await;
    // Without a subscriber the queue keeps what comes; what was written was acknowledged,
    // so it is not there again.
    let resp = common::client()
        .post(gw.url("/send"))
        .body("three")
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 202);
    let left = rabbit.get(&queue, 1).await;
    assert_eq!(left[0].data, b"three");
    assert!(!left[0].redelivered);

    let resp = sse_client().get(gw.url("/work")).send().await.expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    drop(resp);
    let missing = Gateway::start(&format!(
        "[brokers.rabbit]\nkind = \"amqp\"\nurl = \"{url}\"\n\
         [routes.work]\nexact = \"/work\"\n[routes.work.subscribe]\nbroker = \"rabbit\"\nqueue = \"{queue}\"\n",
        url = rabbit.url(),
        queue = unique("no-such-queue"),
    ))
    .await;
    let resp = sse_client()
        .get(missing.url("/work"))
        .send()
        .await
        .expect("get");
    expect_error(resp, 502, "unknown_destination").await;
}

#[tokio::test]
async fn a_route_takes_max_subscribers_and_a_slow_client_is_cut() {
    let nats = Nats::shared().await;
    let subject = unique("sse-slow");
    let gw = Gateway::start(&format!(
        r#"
[brokers.bus]
kind = "nats"
servers = ["{url}"]

[routes.feed]
exact = "/feed"
[routes.feed.subscribe]
broker = "bus"
subject = "{subject}"
buffer = 2
max_subscribers = 1
# Whichever comes first cuts it: falling two messages behind, or a write that waits (the
# client reads nothing).
stall_timeout = "2s"
"#,
        url = nats.url()
    ))
    .await;
    let mut slow = Stream::open(&gw.url("/feed"), None).await;
    let resp = sse_client().get(gw.url("/feed")).send().await.expect("get");
    let body = expect_error(resp, 503, "too_many_subscribers").await;
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("1 subscribers")));

    // More than any socket buffers hold, while the client reads nothing: the gateway's ring of
    // two fills and the client is cut rather than buffered for.
    let client = nats.connect().await;
    let payload = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    for _ in 0..400 {
        client
            .publish(subject.clone(), payload.clone())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    wait_metric(
        &gw,
        "tollgate_subscriptions_ended_total{broker=\"bus\",reason=\"slow_client\",route=\"feed\"}",
        1.0,
    )
    .await;
    let mut got = 0;
    while slow.event().await.is_some() {
        got += 1;
    }
    assert!(got < 400, "the slow client was not cut");
    // Its place is free again.
    wait_metric(
        &gw,
        "tollgate_subscribers{broker=\"bus\",route=\"feed\"}",
        0.0,
    )
    .await;
    Stream::open(&gw.url("/feed"), None).await;
}

#[tokio::test]
async fn a_broker_going_down_ends_the_stream_with_an_error_event_and_new_subscribers_get_503() {
    let mut nats = Nats::start().await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.bus]
kind = "nats"
servers = ["{url}"]
connect_timeout = "1s"

[routes.feed]
exact = "/feed"
[routes.feed.subscribe]
broker = "bus"
subject = "feed"
"#,
        url = nats.url()
    ))
    .await;
    let mut s = Stream::open(&gw.url("/feed"), None).await;
    nats.stop();
    let e = s.event().await.expect("an error event");
    assert_eq!(e.event.as_deref(), Some("error"));
    let body: serde_json::Value = serde_json::from_str(&e.data).expect("json error");
    assert_eq!(body["error"]["code"], "broker_unavailable");
    assert_eq!(body["error"]["status"], 503);
    assert!(body["error"]["request_id"].is_string());
    assert_eq!(s.event().await, None, "the stream ends after its error");
    let resp = sse_client().get(gw.url("/feed")).send().await.expect("get");
    let resp_status = resp.status().as_u16();
    expect_error(resp, 503, "broker_unavailable").await;
    assert_eq!(resp_status, 503);

    nats.restart().await;
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let resp = sse_client().get(gw.url("/feed")).send().await.expect("get");
        if resp.status().as_u16() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not served again after the broker came back\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn over_h2c_a_stream_has_heartbeats_and_a_client_resetting_it_is_noticed_at_once() {
    let nats = Nats::shared().await;
    let subject = unique("sse-h2");
    let gw = Gateway::start(&format!(
        r#"
[brokers.bus]
kind = "nats"
servers = ["{url}"]

[routes.feed]
exact = "/feed"
[routes.feed.subscribe]
broker = "bus"
subject = "{subject}"
heartbeat = "100ms"
"#,
        url = nats.url()
    ))
    .await;
    let resp = tokio::time::timeout(HANG, common::h2c_client().get(gw.url("/feed")).send())
        .await
        .expect("subscribe hung")
        .expect("subscribe");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status().as_u16(), 200);
    let mut s = Stream {
        resp,
        buf: Vec::new(),
    };
    assert_eq!(s.block().await.as_deref(), Some(": subscribed"));
    // Silence is broken by comments.
    assert_eq!(s.block().await.as_deref(), Some(": heartbeat"));
    let client = nats.connect().await;
    client
        .publish(subject.clone(), "over h2".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    assert_eq!(s.event().await.map(|e| e.data), Some("over h2".to_owned()));
    let subscribers = "tollgate_subscribers{broker=\"bus\",route=\"feed\"}";
    wait_metric(&gw, subscribers, 1.0).await;
    // Dropping the response resets the HTTP/2 stream; the connection stays open.
    drop(s);
    wait_metric(&gw, subscribers, 0.0).await;
}

#[tokio::test]
async fn a_subscribe_request_with_a_body_or_a_missing_value_is_refused_before_streaming() {
    let nats = Nats::shared().await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.bus]
kind = "nats"
servers = ["{url}"]

[routes.feed]
exact = "/feed"
[routes.feed.subscribe]
broker = "bus"
subject = "tenants.{{header.x-tenant}}"
"#,
        url = nats.url()
    ))
    .await;
    let resp = sse_client().get(gw.url("/feed")).send().await.expect("get");
    expect_error(resp, 400, "missing_value").await;
    let resp = sse_client()
        .get(gw.url("/feed"))
        .header("x-tenant", "acme.*")
        .send()
        .await
        .expect("get");
    expect_error(resp, 400, "bad_destination").await;
    let resp = sse_client()
        .get(gw.url("/feed"))
        .header("x-tenant", "acme")
        .body("a body")
        .send()
        .await
        .expect("get");
    expect_error(resp, 413, "body_too_large").await;
}

#[tokio::test]
async fn a_nats_subject_a_stream_stores_resumes_exactly_from_its_sequence() {
    let nats = Nats::shared().await;
    let stream = unique("SSE_RESUME");
    let subject = unique("sse-resume");
    nats.create_stream(&stream, &[&format!("{subject}.>")])
        .await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.bus]
kind = "nats"
servers = ["{url}"]

[routes.send]
template = "/send/{{kind}}"
[routes.send.publish]
broker = "bus"
subject = "{subject}.{{kind}}"

[routes.feed]
template = "/feed/{{kind}}"
[routes.feed.subscribe]
broker = "bus"
subject = "{subject}.{{kind}}"
"#,
        url = nats.url()
    ))
    .await;
    let send = |body: &'static str| {
        let url = gw.url("/send/orders");
        async move {
            let resp = common::client()
                .post(url)
                .body(body)
                .send()
                .await
                .expect("publish");
            assert_eq!(resp.status().as_u16(), 202);
        }
    };
    // Stored before anyone subscribed: a stream starts at what comes next.
    send("before").await;
    let mut s = Stream::open(&gw.url("/feed/orders"), None).await;
    send("one").await;
    send("two").await;
    let one = s.event().await.expect("an event");
    assert_eq!(one.data, "one");
    let id = one
        .id
        .expect("a stored message's event has its stream sequence");
    assert_eq!(s.event().await.map(|e| e.data), Some("two".to_owned()));
    drop(s);
    send("three").await;
    let mut resumed = Stream::open(&gw.url("/feed/orders"), Some(&id)).await;
    for want in ["two", "three"] {
        assert_eq!(resumed.event().await.map(|e| e.data), Some(want.to_owned()));
    }
    let resp = sse_client()
        .get(gw.url("/feed/orders"))
        .header("last-event-id", "0:12")
        .send()
        .await
        .expect("get");
    expect_error(resp, 400, "bad_last_event_id").await;
}

#[tokio::test]
async fn a_value_too_long_for_a_nats_subject_is_refused_and_the_broker_stays_up() {
    let nats = Nats::shared().await;
    let prefix = unique("sse-long");
    let gw = Gateway::start(&format!(
        r#"
[brokers.bus]
kind = "nats"
servers = ["{url}"]
jetstream = false

[routes.feed]
template = "/feed/{{kind}}"
[routes.feed.subscribe]
broker = "bus"
subject = "{prefix}.{{kind}}"

[routes.send]
template = "/send/{{kind}}"
[routes.send.publish]
broker = "bus"
subject = "{prefix}.{{kind}}"
mode = "fire_and_forget"
"#,
        url = nats.url()
    ))
    .await;
    let mut open = Stream::open(&gw.url("/feed/a"), None).await;
    // Longer than the server's protocol line: sent, it would close the connection every
    // request shares.
    let long = "k".repeat(5000);
    let resp = sse_client()
        .get(gw.url(&format!("/feed/{long}")))
        .send()
        .await
        .expect("get");
    expect_error(resp, 400, "bad_destination").await;
    let resp = common::client()
        .post(gw.url(&format!("/send/{long}")))
        .body("x")
        .send()
        .await
        .expect("post");
    expect_error(resp, 400, "bad_destination").await;
    let resp = common::client()
        .post(gw.url("/send/a"))
        .body("still here")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(
        open.event().await.map(|e| e.data),
        Some("still here".to_owned())
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_stall_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = Nats::shared().await;
    let subject = unique("sse-stall");
    let gw = Gateway::start(&format!(
        r#"
[brokers.bus]
kind = "nats"
servers = ["{url}"]

[routes.feed]
exact = "/feed"
[routes.feed.subscribe]
broker = "bus"
subject = "{subject}"
stall_timeout = "1s"
"#,
        url = nats.url()
    ))
    .await;
    let addr = gw
        .url("/")
        .replace("http://", "")
        .trim_end_matches('/')
        .to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    conn.write_all(b"GET /feed HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .expect("request");
    // Read up to the opening comment, then never again.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(": subscribed") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(HANG, conn.read(&mut buf))
            .await
            .expect("the stream opens")
            .expect("read");
        assert!(n > 0, "closed before the stream opened");
        seen.extend_from_slice(&buf[..n]);
    }
    // More than the socket buffers hold: writing blocks, and stays blocked.
    let client = nats.connect().await;
    let payload = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    for _ in 0..400 {
        client
            .publish(subject.clone(), payload.clone())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    wait_metric(
        &gw,
        "tollgate_subscriptions_ended_total{broker=\"bus\",reason=\"slow_client\",route=\"feed\"}",
        1.0,
    )
    .await;
    wait_metric(
        &gw,
        "tollgate_subscribers{broker=\"bus\",route=\"feed\"}",
        0.0,
    )
    .await;
    drop(conn);
}

#[tokio::test]
async fn shutting_down_ends_every_stream_at_once() {
    let nats = Nats::shared().await;
    let mut gw = Gateway::start(&format!(
        r#"
[server]
# Were streams waited for, the gateway would not exit within the test's patience.
graceful_shutdown_timeout = "1h"

[brokers.bus]
kind = "nats"
servers = ["{url}"]

[routes.feed]
exact = "/feed"
[routes.feed.subscribe]
broker = "bus"
subject = "{subject}"
"#,
        url = nats.url(),
        subject = unique("sse-shutdown"),
    ))
    .await;
    let mut s = Stream::open(&gw.url("/feed"), None).await;
    gw.signal("TERM");
    assert_eq!(
        s.block().await.as_deref(),
        Some(": the gateway is shutting down")
    );
    assert_eq!(s.block().await, None, "the stream ends after it");
    assert!(
        gw.wait_exit(HANG),
        "the gateway did not exit\n{}",
        gw.logs()
    );
}
