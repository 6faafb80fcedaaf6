//! Publish routes against real brokers (tansu for Kafka, rabbitmq-server, nats-server): every
//! byte, key and header of what tollgate published is read back by an independent client, and
//! each failure a client can meet (a missing value, a body over the limit, an unroutable or
//! unknown destination, a broker that is down, then back, one that is too slow) gets its answer.

#[path = "common/brokers.rs"]
mod brokers;
mod common;

use std::time::Duration;

use brokers::{metric, unique, wait_broker, Kafka, Nats, RabbitMq, HANG};
use common::{client, expect_error, Gateway};

fn header<'a>(headers: &'a [(String, Option<Vec<u8>>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

#[tokio::test]
async fn kafka_publish_answers_after_the_ack_with_where_the_record_went() {
    let kafka = Kafka::shared().await;
    let topic = unique("orders");
    kafka.create_topic(&topic, 3).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.events]
kind = "kafka"
bootstrap = ["{addr}"]

[routes.orders]
template = "/orders/{{id}}/events"
[routes.orders.publish]
broker = "events"
topic = "{topic}"
key = "{{id}}"
headers = ["x-tenant"]
"#,
        addr = kafka.address()
    ))
    .await;
    wait_broker(&gw, "events", "up").await;
    let body = br#"{"event":"created","total":42.5}"#;
    let resp = client()
        .post(gw.url("/orders/A-17/events"))
        .header("content-type", "application/json")
        .header("x-tenant", "acme")
        .header("x-not-copied", "no")
        .body(&body[..])
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 202);
    let receipt: serde_json::Value = resp.json().await.expect("receipt");
    assert_eq!(receipt["broker"], "events");
    assert_eq!(receipt["topic"], topic.as_str());
    let request_id = receipt["request_id"]
        .as_str()
        .expect("request id")
        .to_owned();

    let records = kafka.read(&topic, 1).await;
    let r = &records[0];
    assert_eq!(r.payload.as_deref(), Some(&body[..]));
    assert_eq!(r.key.as_deref(), Some(&b"A-17"[..]));
    assert_eq!(receipt["partition"], r.partition);
    assert_eq!(receipt["offset"], r.offset);
    assert_eq!(
        header(&r.headers, "content-type"),
        Some(&b"application/json"[..])
    );
    assert_eq!(
        header(&r.headers, "x-request-id"),
        Some(request_id.as_bytes())
    );
    assert_eq!(header(&r.headers, "x-tenant"), Some(&b"acme"[..]));
    assert_eq!(header(&r.headers, "x-not-copied"), None);
    assert_eq!(
        metric(
            &gw,
            "tollgate_messages_published_total{broker=\"events\",route=\"orders\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn kafka_bad_inputs_get_their_answers_and_publish_nothing() {
    let kafka = Kafka::shared().await;
    let topic = unique("bad");
    kafka.create_topic(&topic, 1).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.events]
kind = "kafka"
bootstrap = ["{addr}"]

[routes.tenant]
exact = "/tenant"
[routes.tenant.publish]
broker = "events"
topic = "{topic}"
key = "{{header.x-tenant}}"
max_body_bytes = "16B"

[routes.missing-topic]
exact = "/missing"
[routes.missing-topic.publish]
broker = "events"
topic = "{missing}"

[routes.chosen]
template = "/to/{{t}}"
[routes.chosen.publish]
broker = "events"
topic = "{{t}}"
"#,
        addr = kafka.address(),
        missing = unique("missing"),
    ))
    .await;
    wait_broker(&gw, "events", "up").await;
    let resp = client()
        .post(gw.url("/tenant"))
        .body("{}")
        .send()
        .await
        .expect("no tenant");
    let err = expect_error(resp, 400, "missing_value").await;
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("header `x-tenant`")),
        "{err}"
    );
    let resp = client()
        .post(gw.url("/tenant"))
        .header("x-tenant", "acme")
        .body("x".repeat(17))
        .send()
        .await
        .expect("too large");
    expect_error(resp, 413, "body_too_large").await;
    let resp = client().get(gw.url("/tenant")).send().await.expect("get");
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let resp = client()
        .post(gw.url("/missing"))
        .body("{}")
        .send()
        .await
        .expect("missing topic");
    expect_error(resp, 502, "unknown_destination").await;
    let resp = client()
        .post(gw.url(&format!("/to/{}", unique("nope"))))
        .body("{}")
        .send()
        .await
        .expect("client-chosen missing topic");
    expect_error(resp, 404, "unknown_destination").await;
    // Only then the one good message: the bad ones left nothing on the topic before it.
    let resp = client()
        .post(gw.url("/tenant"))
        .header("x-tenant", "acme")
        .body("ok")
        .send()
        .await
        .expect("good");
    assert_eq!(resp.status().as_u16(), 202);
    let records = kafka.read(&topic, 1).await;
    assert_eq!(records[0].offset, 0, "{records:?}");
    assert_eq!(records[0].payload.as_deref(), Some(&b"ok"[..]));
}

#[tokio::test]
async fn amqp_publish_is_confirmed_and_an_unroutable_message_is_a_502() {
    let rabbit = RabbitMq::shared().await;
    let exchange = unique("orders");
    rabbit
        .declare_exchange(&exchange, lapin::ExchangeKind::Topic)
        .await;
    let queue = rabbit.bind_queue(&exchange, "orders.*").await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.rabbit]
kind = "amqp"
url = "{url}"

[routes.orders]
template = "/orders/{{id}}"
[routes.orders.publish]
broker = "rabbit"
exchange = "{exchange}"
routing_key = "orders.{{id}}"
headers = ["x-tenant"]

[routes.nowhere]
exact = "/nowhere"
[routes.nowhere.publish]
broker = "rabbit"
exchange = "{exchange}"
routing_key = "nobody.listens"

[routes.no-exchange]
exact = "/no-exchange"
[routes.no-exchange.publish]
broker = "rabbit"
exchange = "{missing}"
routing_key = "x"
"#,
        url = rabbit.url(),
        missing = unique("missing"),
    ))
    .await;
    wait_broker(&gw, "rabbit", "up").await;
    let resp = client()
        .post(gw.url("/orders/7"))
        .header("content-type", "application/json")
        .header("x-tenant", "acme")
        .body(r#"{"n":7}"#)
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 202);
    let receipt: serde_json::Value = resp.json().await.expect("receipt");
    assert_eq!(receipt["exchange"], exchange.as_str());
    assert_eq!(receipt["routing_key"], "orders.7");
    let messages = rabbit.get(&queue, 1).await;
    let m = &messages[0];
    assert_eq!(m.data, br#"{"n":7}"#);
    assert_eq!(m.routing_key, "orders.7");
    assert_eq!(
        m.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        m.properties.message_id().as_ref().map(|s| s.as_str()),
        receipt["request_id"].as_str()
    );
    assert_eq!(m.properties.delivery_mode(), &Some(2));
    let tenant = m
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-tenant").cloned());
    assert_eq!(
        tenant,
        Some(lapin::types::AMQPValue::LongString("acme".into()))
    );

    let resp = client()
        .post(gw.url("/nowhere"))
        .body("lost?")
        .send()
        .await
        .expect("unroutable");
    expect_error(resp, 502, "unroutable").await;
    let resp = client()
        .post(gw.url("/no-exchange"))
        .body("x")
        .send()
        .await
        .expect("no exchange");
    expect_error(resp, 502, "unknown_destination").await;
    // The broker closed the channel over the missing exchange; the next publish gets a new one.
    // Its content type is longer than an AMQP short string and its x-tenant comes twice.
    let long_type = format!("text/{}", "a".repeat(300));
    let resp = client()
        .post(gw.url("/orders/8"))
        .header("content-type", &long_type)
        .header("x-tenant", "one")
        .header("x-tenant", "two")
        .body("again")
        .send()
        .await
        .expect("publish after a channel error");
    assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text().await);
    let m = &rabbit.get(&queue, 1).await[0];
    assert_eq!(m.data, b"again");
    assert_eq!(m.properties.content_type(), &None);
    let table = m.properties.headers().clone().unwrap_or_default();
    assert_eq!(
        table.inner().get("content-type"),
        Some(&lapin::types::AMQPValue::LongString(
            long_type.as_str().into()
        ))
    );
    assert_eq!(
        table.inner().get("x-tenant"),
        Some(&lapin::types::AMQPValue::LongString("one, two".into()))
    );
}

#[tokio::test]
async fn nats_jetstream_publish_answers_with_the_stream_sequence() {
    let nats = Nats::shared().await;
    let stream = unique("EVENTS");
    let prefix = unique("events");
    nats.create_stream(&stream, &[&format!("{prefix}.>")]).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.nats]
kind = "nats"
servers = ["{url}"]

[routes.events]
template = "/events/{{kind}}"
[routes.events.publish]
broker = "nats"
subject = "{prefix}.{{kind}}"
headers = ["x-tag", "nats-expected-stream"]

[routes.no-stream]
exact = "/no-stream"
[routes.no-stream.publish]
broker = "nats"
subject = "{nostream}.x"
"#,
        url = nats.url(),
        nostream = unique("nostream"),
    ))
    .await;
    wait_broker(&gw, "nats", "up").await;
    let resp = client()
        .post(gw.url("/events/signup"))
        .header("content-type", "text/plain")
        .header("x-tag", "a")
        .header("x-tag", "b")
        .header("idempotency-key", "signup-1")
        .header("nats-expected-stream", &stream)
        .body("hello")
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 202);
    let receipt: serde_json::Value = resp.json().await.expect("receipt");
    assert_eq!(receipt["stream"], stream.as_str());
    assert_eq!(receipt["sequence"], 1);
    assert_eq!(receipt["subject"], format!("{prefix}.signup"));
    let stored = nats.read_stream(&stream, 1).await;
    assert_eq!(&stored[0].payload[..], b"hello");
    let headers = stored[0].headers.as_ref().expect("headers");
    assert_eq!(
        headers.get("x-request-id").map(|v| v.as_str()),
        receipt["request_id"].as_str()
    );
    assert_eq!(
        headers.get("content-type").map(|v| v.as_str()),
        Some("text/plain")
    );
    let tags: Vec<&str> = headers.get_all("x-tag").map(|v| v.as_str()).collect();
    assert_eq!(tags, ["a", "b"]);
    // The key is JetStream's de-duplication id, and copied JetStream headers keep their case
    // (the stream checked Nats-Expected-Stream: the publish went through).
    let msg_id = headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert_eq!(msg_id.len(), 64, "{msg_id}");
    assert!(msg_id.bytes().all(|b| b.is_ascii_hexdigit()), "{msg_id}");
    assert_eq!(
        headers.get("Nats-Expected-Stream").map(|v| v.as_str()),
        Some(stream.as_str())
    );
    let resp = client()
        .post(gw.url("/no-stream"))
        .body("x")
        .send()
        .await
        .expect("no stream");
    expect_error(resp, 502, "unknown_destination").await;
    // A path parameter is one subject token: a `.` would address another subject, `*` is a
    // wildcard. (Escapes stay as written: `%2A` is the literal token `%2A`, not a wildcard.)
    for kind in ["signup.admin", "*", "a.*"] {
        let resp = client()
            .post(gw.url(&format!("/events/{kind}")))
            .body("x")
            .send()
            .await
            .expect("odd token");
        expect_error(resp, 400, "bad_destination").await;
    }
    assert_eq!(nats.read_stream(&stream, 1).await.len(), 1);
}

#[tokio::test]
async fn a_broker_that_goes_down_gets_503_with_retry_after_and_is_used_again_when_back() {
    let mut rabbit = RabbitMq::start().await;
    let exchange = unique("ex");
    rabbit
        .declare_exchange(&exchange, lapin::ExchangeKind::Fanout)
        .await;
    let queue = rabbit.bind_queue(&exchange, "").await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.rabbit]
kind = "amqp"
url = "{url}"
connect_timeout = "2s"
publish_timeout = "3s"

[routes.in]
exact = "/in"
[routes.in.publish]
broker = "rabbit"
exchange = "{exchange}"
routing_key = ""
"#,
        url = rabbit.url()
    ))
    .await;
    wait_broker(&gw, "rabbit", "up").await;
    let post = |body: &'static str| client().post(gw.url("/in")).body(body).send();
    assert_eq!(post("one").await.expect("one").status().as_u16(), 202);

    rabbit.stop();
    wait_broker(&gw, "rabbit", "down").await;
    let resp = tokio::time::timeout(HANG, post("two"))
        .await
        .expect("a down broker is answered, not waited on")
        .expect("two");
    assert_eq!(
        resp.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    expect_error(resp, 503, "broker_unavailable").await;
    let ready = client()
        .get(format!("http://{}/readyz", gw.admin))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    let ready: serde_json::Value = ready.json().await.expect("readyz json");
    assert_eq!(ready["brokers_down"], serde_json::json!(["rabbit"]));

    rabbit.restart().await;
    // A restarted RabbitMQ without a data directory of its own would have lost the exchange;
    // declared again, as an operator's definitions would be.
    rabbit
        .declare_exchange(&exchange, lapin::ExchangeKind::Fanout)
        .await;
    let queue_again = rabbit.bind_queue(&exchange, "").await;
    wait_broker(&gw, "rabbit", "up").await;
    assert_eq!(post("three").await.expect("three").status().as_u16(), 202);
    let got = rabbit.get(&queue_again, 1).await;
    assert_eq!(got[0].data, b"three");
    let _ = queue;
}

#[tokio::test]
async fn a_broker_that_hangs_holds_max_in_flight_and_the_next_message_is_refused_at_once() {
    let nats = Nats::start().await;
    let stream = unique("SLOW");
    let subject = unique("slow");
    nats.create_stream(&stream, &[&subject]).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.nats]
kind = "nats"
servers = ["{url}"]
max_in_flight = 1
publish_timeout = "60s"

[routes.slow]
exact = "/slow"
[routes.slow.publish]
broker = "nats"
subject = "{subject}"
"#,
        url = nats.url()
    ))
    .await;
    wait_broker(&gw, "nats", "up").await;
    nats.pause();
    let first = tokio::spawn(client().post(gw.url("/slow")).body("first").send());
    // The first message holds the only slot once /brokers counts it in flight.
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let b = wait_broker(&gw, "nats", "up").await;
        if b["in_flight"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = client()
        .post(gw.url("/slow"))
        .body("second")
        .send()
        .await
        .expect("second");
    assert_eq!(
        resp.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    expect_error(resp, 503, "broker_busy").await;
    nats.resume();
    let first = tokio::time::timeout(HANG, first)
        .await
        .expect("the first publish ends once the broker answers")
        .expect("task")
        .expect("first");
    assert_eq!(first.status().as_u16(), 202);
    let stored = nats.read_stream(&stream, 1).await;
    assert_eq!(&stored[0].payload[..], b"first");
}

#[tokio::test]
async fn a_message_over_the_brokers_own_limit_is_a_413() {
    // nats-server's max_payload is 1 MiB; the route takes a 1 MiB body, and its headers make
    // the message larger than the server takes.
    let nats = Nats::shared().await;
    let stream = unique("BIG");
    let subject = unique("big");
    nats.create_stream(&stream, &[&subject]).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.nats]
kind = "nats"
servers = ["{url}"]

[routes.big]
exact = "/big"
[routes.big.publish]
broker = "nats"
subject = "{subject}"
"#,
        url = nats.url()
    ))
    .await;
    wait_broker(&gw, "nats", "up").await;
    let resp = client()
        .post(gw.url("/big"))
        .body(vec![b'x'; 1 << 20])
        .send()
        .await
        .expect("big");
    expect_error(resp, 413, "body_too_large").await;
    let resp = client()
        .post(gw.url("/big"))
        .body(vec![b'x'; (1 << 20) + 1])
        .send()
        .await
        .expect("bigger than the route");
    expect_error(resp, 413, "body_too_large").await;
}

#[tokio::test]
async fn an_idempotency_key_publishes_once_and_a_reload_keeps_connection_and_keys() {
    let kafka = Kafka::shared().await;
    let topic = unique("idem");
    kafka.create_topic(&topic, 1).await;
    let config = |extra: &str| {
        format!(
            r#"
[brokers.events]
kind = "kafka"
bootstrap = ["{addr}"]

[routes.in]
exact = "/in"
[routes.in.publish]
broker = "events"
topic = "{topic}"
{extra}
"#,
            addr = kafka.address()
        )
    };
    let gw = Gateway::start(&config("")).await;
    let since = wait_broker(&gw, "events", "up").await["since"].clone();
    let post = |key: &'static str, body: &'static str| {
        client()
            .post(gw.url("/in"))
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let first = post("order-1", "one").await.expect("first");
    assert_eq!(first.status().as_u16(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: serde_json::Value = first.json().await.expect("receipt");

    // A reload that changes another route keeps the broker and the route's keys.
    gw.write_config(&(config("") + "\n[routes.other]\nexact = \"/other\"\n[routes.other.publish]\nbroker = \"events\"\ntopic = \"x\"\n"));
    let reloaded = client()
        .post(format!("http://{}/reload", gw.admin))
        .send()
        .await
        .expect("reload");
    assert_eq!(reloaded.status().as_u16(), 200);
    assert_eq!(wait_broker(&gw, "events", "up").await["since"], since);

    let again = post("order-1", "one").await.expect("again");
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let again: serde_json::Value = again.json().await.expect("receipt");
    assert_eq!(again, first);
    assert_eq!(
        metric(
            &gw,
            "tollgate_messages_deduplicated_total{broker=\"events\",route=\"in\"}"
        )
        .await,
        Some(1.0)
    );
    let other_body = post("order-1", "not one").await.expect("reused key");
    expect_error(other_body, 422, "idempotency_key_reused").await;
    let two_keys = client()
        .post(gw.url("/in"))
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body("x")
        .send()
        .await
        .expect("two keys");
    expect_error(two_keys, 400, "bad_idempotency_key").await;
    assert_eq!(
        metric(&gw, "tollgate_broker_up{broker=\"events\"}").await,
        Some(1.0)
    );
    let second = post("order-2", "two").await.expect("second key");
    assert_eq!(second.status().as_u16(), 202);
    let bad = client()
        .post(gw.url("/in"))
        .header("idempotency-key", "")
        .body("x")
        .send()
        .await
        .expect("empty key");
    expect_error(bad, 400, "bad_idempotency_key").await;
    // The repeat published nothing: the records are exactly these, in order.
    let third = post("order-3", "three").await.expect("third key");
    assert_eq!(third.status().as_u16(), 202);
    let records = kafka.read(&topic, 3).await;
    let payloads: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(
        payloads,
        [
            Some(b"one".to_vec()),
            Some(b"two".to_vec()),
            Some(b"three".to_vec())
        ],
        "{records:?}"
    );
}

#[tokio::test]
async fn brokers_unreachable_from_the_start_are_down_and_refuse_at_once() {
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

[brokers.kafka]
kind = "kafka"
bootstrap = ["{closed}"]
connect_timeout = "1s"

[routes.n]
exact = "/n"
[routes.n.publish]
broker = "nats"
subject = "s"

[routes.a]
exact = "/a"
[routes.a.publish]
broker = "rabbit"
routing_key = "q"

[routes.k]
exact = "/k"
[routes.k.publish]
broker = "kafka"
topic = "t"
"#
    ))
    .await;
    for (broker, path) in [("nats", "/n"), ("rabbit", "/a"), ("kafka", "/k")] {
        let b = wait_broker(&gw, broker, "down").await;
        assert!(b["error"].as_str().is_some_and(|e| !e.is_empty()), "{b}");
        let resp = tokio::time::timeout(HANG, client().post(gw.url(path)).body("x").send())
            .await
            .expect("answered, not hung")
            .expect("publish");
        expect_error(resp, 503, "broker_unavailable").await;
    }
    let ready = client()
        .get(format!("http://{}/readyz", gw.admin))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    let ready: serde_json::Value = ready.json().await.expect("json");
    // The NATS broker is not required for readiness.
    assert_eq!(
        ready["brokers_down"],
        serde_json::json!(["kafka", "rabbit"])
    );
}

#[tokio::test]
async fn a_kafka_cluster_that_goes_away_is_noticed_and_used_again_when_back() {
    let mut kafka = Kafka::start().await;
    let topic = unique("away");
    kafka.create_topic(&topic, 1).await;
    let gw = Gateway::start(&format!(
        r#"
[brokers.events]
kind = "kafka"
bootstrap = ["{addr}"]
connect_timeout = "2s"
publish_timeout = "3s"

[routes.in]
exact = "/in"
[routes.in.publish]
broker = "events"
topic = "{topic}"
"#,
        addr = kafka.address()
    ))
    .await;
    wait_broker(&gw, "events", "up").await;
    let post = |body: &'static str| client().post(gw.url("/in")).body(body).send();
    assert_eq!(post("before").await.expect("before").status().as_u16(), 202);
    kafka.stop();
    // Whether the keeper or a publish notices first, the client gets a 503, never a hang.
    let resp = tokio::time::timeout(HANG, post("while away"))
        .await
        .expect("answered, not hung")
        .expect("while away");
    expect_error(resp, 503, "broker_unavailable").await;
    wait_broker(&gw, "events", "down").await;
    kafka.restart().await;
    wait_broker(&gw, "events", "up").await;
    assert_eq!(post("after").await.expect("after").status().as_u16(), 202);
    let records = kafka.read(&topic, 2).await;
    let payloads: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(
        payloads,
        [Some(b"before".to_vec()), Some(b"after".to_vec())],
        "{records:?}"
    );
}

#[tokio::test]
async fn instances_sharing_a_redis_publish_a_key_once_between_them() {
    let redis = common::RedisServer::start();
    let nats = Nats::shared().await;
    let stream = unique("SHARED");
    let subject = unique("shared");
    nats.create_stream(&stream, &[&subject]).await;
    let config = format!(
        r#"
[brokers.nats]
kind = "nats"
servers = ["{url}"]

[routes.in]
exact = "/in"
[routes.in.publish]
broker = "nats"
subject = "{subject}"
idempotency_redis = "{redis}"
"#,
        url = nats.url(),
        redis = redis.url()
    );
    let a = Gateway::start(&config).await;
    let b = Gateway::start(&config).await;
    wait_broker(&a, "nats", "up").await;
    wait_broker(&b, "nats", "up").await;
    let post = |gw: &Gateway, key: &str, body: &'static str| {
        client()
            .post(gw.url("/in"))
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let first = post(&a, "pay-1", "one").await.expect("first");
    assert_eq!(first.status().as_u16(), 202);
    let first: serde_json::Value = first.json().await.expect("receipt");
    let again = post(&b, "pay-1", "one")
        .await
        .expect("on the other instance");
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(
        again.json::<serde_json::Value>().await.expect("receipt"),
        first
    );
    let reused = post(&b, "pay-1", "other").await.expect("reused");
    expect_error(reused, 422, "idempotency_key_reused").await;
    let next = post(&b, "pay-2", "two").await.expect("next key");
    let next: serde_json::Value = next.json().await.expect("receipt");
    // One message per key: the second key's message is the stream's second.
    assert_eq!(next["sequence"], 2, "{next}");

    // Without the store a keyed request is refused rather than risk a duplicate; an unkeyed
    // one is not the store's business.
    drop(redis);
    let resp = tokio::time::timeout(HANG, post(&a, "pay-3", "three"))
        .await
        .expect("answered, not hung")
        .expect("store down");
    assert_eq!(
        resp.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    expect_error(resp, 503, "idempotency_store_unavailable").await;
    let plain = client()
        .post(a.url("/in"))
        .body("no key")
        .send()
        .await
        .expect("unkeyed");
    assert_eq!(plain.status().as_u16(), 202);
}
