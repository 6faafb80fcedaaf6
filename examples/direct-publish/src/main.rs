//! Publishes N messages straight through the broker clients the gateway uses, with the gateway's
//! settings (Kafka: idempotent producer, `acks = all`, `linger.ms = 5`; NATS: JetStream publish
//! awaiting its ack), C at a time, with the two headers an untraced gateway publish carries. It
//! prints its own CPU time per acknowledged message: the baseline `benches/load/publish.py`
//! compares the gateway's CPU per message with.
//!
//!     direct-publish kafka 127.0.0.1:9092 TOPIC N C
//!     direct-publish nats nats://127.0.0.1:4222 SUBJECT N C

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, in clock ticks (100 per second on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

fn payload() -> Bytes {
    let mut body = format!("{{\"event\":\"bench\",\"pad\":\"{}\"}}", "x".repeat(220));
    body.truncate(256);
    Bytes::from(body)
}

async fn kafka(bootstrap: &str, topic: &str, n: usize, c: usize) -> Result<usize, String> {
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .set("message.max.bytes", "1048576")
        .create()
        .map_err(|e| e.to_string())?;
    let body = payload();
    let acked = stream::iter(0..n)
        .map(|i| {
            let (producer, body) = (&producer, &body);
            async move {
                let id = format!("direct-{i}");
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "content-type",
                        value: Some("application/json"),
                    })
                    .insert(Header {
                        key: "x-request-id",
                        value: Some(id.as_str()),
                    });
                let record: FutureRecord<'_, (), [u8]> =
                    FutureRecord::to(topic).payload(&body[..]).headers(headers);
                producer.send(record, Duration::from_secs(10)).await.is_ok()
            }
        })
        .buffer_unordered(c)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    Ok(acked)
}

async fn nats(url: &str, subject: &str, n: usize, c: usize) -> Result<usize, String> {
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let body = payload();
    let acked = stream::iter(0..n)
        .map(|i| {
            let (js, body) = (&js, body.clone());
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("content-type", "application/json");
                headers.insert("x-request-id", format!("direct-{i}").as_str());
                match js
                    .publish_with_headers(subject.to_owned(), headers, body)
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(c)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    Ok(acked)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: direct-publish kafka|nats ADDRESS DESTINATION N C";
    let (Some(kind), Some(addr), Some(dest), Some(n), Some(c)) = (
        args.get(1),
        args.get(2),
        args.get(3),
        args.get(4).and_then(|v| v.parse::<usize>().ok()),
        args.get(5).and_then(|v| v.parse::<usize>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let result = match kind.as_str() {
        "kafka" => kafka(addr, dest, n, c).await,
        "nats" => nats(addr, dest, n, c).await,
        _ => Err(usage.to_owned()),
    };
    let cpu = cpu_seconds() - cpu0;
    match result {
        Ok(acked) => println!(
            "{{\"acknowledged\":{acked},\"cpu_s\":{cpu:.3},\"wall_s\":{:.3},\"cpu_us_per_message\":{:.1}}}",
            t0.elapsed().as_secs_f64(),
            if acked > 0 { cpu / acked as f64 * 1e6 } else { 0.0 }
        ),
        Err(e) => {
            eprintln!("direct-publish: {e}");
            std::process::exit(1);
        }
    }
}
