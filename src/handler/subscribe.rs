//! The subscribe handler: a route with `[routes.NAME.subscribe]` answers `GET` with a stream of
//! Server-Sent Events, one per broker message that passes the route's filters. The route's
//! plugins (auth, limits) run before, as on any route.
//!
//! The stream opens with a comment once the consumer is positioned, so a message the broker
//! takes after the client saw the first bytes reaches it. Silence is broken by a comment every
//! `heartbeat`. A client that falls `buffer` messages behind is cut; the broker going away
//! ends the stream with an `error` event; the client leaving frees its place and, when it was
//! the last of its source, the consumer, at once (the pipeline watches the connection while it
//! streams).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Response};

use super::message::{kafka_topic_name, nats_subject_name, short_string};
use super::{HandlerRequest, ServeHandler, StallTimeout};
use crate::broker::subscribe::{self as sub, Event, Feed, Next, Subscription};
use crate::broker::template::{self, from_request, render};
use crate::broker::{Broker, PublishError, SubscriberSlot};
use crate::config::{Source, SubscribeConfig};
use crate::error::GatewayError;
use crate::grpc::ResponseBody;
use crate::telemetry::trace::MessagingSpan;

/// Serves a subscribe route.
pub struct SubscribeHandler {
    route: Arc<str>,
    config: SubscribeConfig,
    broker: Arc<Broker>,
    /// Whether the request's values choose the source (an unknown one is then the client's
    /// 404): known from the templates once.
    source_from_request: bool,
}

impl SubscribeHandler {
    /// The handler of a route streaming from `broker`.
    pub fn new(route: Arc<str>, config: SubscribeConfig, broker: Arc<Broker>) -> Self {
        let source_from_request = match &config.source {
            Source::Kafka { topic } => from_request(topic),
            Source::AmqpBinding {
                exchange,
                routing_key,
            } => from_request(exchange) || from_request(routing_key),
            Source::AmqpQueue { queue } => from_request(queue),
            Source::Nats { subject } => from_request(subject),
        };
        Self {
            route,
            config,
            broker,
            source_from_request,
        }
    }

    /// Where the client's messages come from, its templates filled from the request.
    fn subscription(&self, req: &HandlerRequest<'_>) -> Result<Subscription, GatewayError> {
        let fill = |t, check| render(t, req.ctx, &req.head.headers, check);
        Ok(match &self.config.source {
            Source::Kafka { topic } => Subscription::Kafka {
                topic: kafka_topic_name(fill(topic, template::kafka_topic)?, topic)?,
                resume: last_event_id(
                    req,
                    sub::parse_kafka_event_id,
                    "PARTITION:OFFSET, comma-separated",
                )?,
            },
            Source::AmqpBinding {
                exchange,
                routing_key,
            } => Subscription::AmqpBinding {
                exchange: short_string(fill(exchange, template::amqp_name)?, exchange)?,
                routing_key: short_string(fill(routing_key, template::amqp_key)?, routing_key)?,
            },
            Source::AmqpQueue { queue } => Subscription::AmqpQueue {
                queue: short_string(fill(queue, template::amqp_key)?, queue)?,
            },
            Source::Nats { subject } => Subscription::Nats {
                subject: nats_subject_name(fill(subject, template::nats_token)?, subject)?,
                resume: last_event_id(req, sub::parse_nats_event_id, "a stream sequence")?,
            },
        })
    }

    /// The route's filters, filled from the request.
    fn filter(&self, req: &HandlerRequest<'_>) -> Result<Filter, GatewayError> {
        let fill = |t| render(t, req.ctx, &req.head.headers, template::any_value);
        Ok(Filter {
            key: self.config.filter_key.as_ref().map(fill).transpose()?,
            headers: self
                .config
                .filter_headers
                .iter()
                .map(|(name, t)| Ok((name.as_str().to_owned(), fill(t)?)))
                .collect::<Result<_, GatewayError>>()?,
        })
    }
}

/// `Last-Event-ID`, read by `parse` (events' ids look like `form`): where to resume from.
fn last_event_id<T>(
    req: &HandlerRequest<'_>,
    parse: fn(&str) -> Option<T>,
    form: &str,
) -> Result<Option<T>, GatewayError> {
    let Some(v) = req.head.headers.get("last-event-id") else {
        return Ok(None);
    };
    let id = v.to_str().ok().filter(|s| !s.is_empty());
    match id.and_then(parse) {
        Some(at) => Ok(Some(at)),
        None => Err(GatewayError::BadLastEventId(format!(
            "Last-Event-ID `{}` is not an id of this stream's events ({form})",
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(64)
                .collect::<String>()
                .escape_debug()
        ))),
    }
}

/// Which messages a subscriber gets.
struct Filter {
    key: Option<String>,
    headers: Vec<(String, String)>,
}

impl Filter {
    fn passes(&self, e: &Event) -> bool {
        if let Some(key) = &self.key {
            if e.key.as_deref() != Some(key.as_bytes()) {
                return false;
            }
        }
        self.headers.iter().all(|(name, want)| {
            e.headers
                .iter()
                .any(|(n, v)| n == name && v.as_ref() == want.as_bytes())
        })
    }
}

#[async_trait]
impl ServeHandler for SubscribeHandler {
    fn takes(&self, _head: &http::request::Parts) -> bool {
        true
    }

    fn max_body_bytes(&self) -> usize {
        0
    }

    async fn serve(&self, req: HandlerRequest<'_>) -> Result<Response<ResponseBody>, GatewayError> {
        if !req.body.is_empty() {
            return Err(GatewayError::BodyTooLarge(format!(
                "route `{}` streams messages and takes no request body",
                self.route
            )));
        }
        let Some(slot) = self
            .broker
            .subscriber_slot(&self.route, self.config.max_subscribers)
        else {
            return Err(GatewayError::TooManySubscribers {
                route: self.route.clone(),
                limit: self.config.max_subscribers,
            });
        };
        let subscription = self.subscription(&req)?;
        let (system, destination) = match &subscription {
            Subscription::Kafka { topic, .. } => ("kafka", topic.clone()),
            Subscription::AmqpBinding { exchange, .. } => ("rabbitmq", exchange.clone()),
            Subscription::AmqpQueue { queue } => ("rabbitmq", queue.clone()),
            Subscription::Nats { subject, .. } => ("nats", subject.clone()),
        };
        let filter = self.filter(&req)?;
        let feed = self
            .broker
            .subscribe(subscription, self.config.buffer)
            .await
            .map_err(|mut e| {
                if let PublishError::NoDestination { from_request, .. } = &mut e {
                    *from_request = self.source_from_request;
                }
                e
            })?;
        let stalled = Arc::new(AtomicBool::new(false));
        let stream = Stream {
            feed,
            stalled: stalled.clone(),
            closing: CLOSING.subscribe(),
            filter,
            heartbeat: self.config.heartbeat,
            delivered: None,
            system,
            destination,
            state: Phase::Opening,
            count: Count::new(&self.route, self.broker.name()),
            request_id: req.ctx.request_id.to_string(),
            _slot: slot,
        };
        let body = futures_util::stream::unfold(stream, Stream::next);
        let mut resp = Response::new(crate::grpc::body::streamed(body));
        resp.extensions_mut().insert(StallTimeout {
            after: self.config.stall_timeout,
            stalled,
        });
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // nginx in front would otherwise hold events back until its buffer fills.
        h.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
        Ok(resp)
    }
}

/// Where a stream is.
enum Phase {
    /// Nothing sent yet.
    Opening,
    /// Sending events.
    Streaming,
    /// The last chunk was sent.
    Done,
}

/// One subscriber's stream, as the response body pulls it.
struct Stream {
    feed: Feed,
    /// Set by the pipeline when it cut the stream because the client took no bytes.
    stalled: Arc<AtomicBool>,
    /// Turns true when the gateway shuts down.
    closing: tokio::sync::watch::Receiver<bool>,
    filter: Filter,
    heartbeat: std::time::Duration,
    /// The last event handed to the pipeline, acknowledged (and its span ended) once the
    /// pipeline asks for the next chunk (it asks after it wrote the last one to the client).
    delivered: Option<(Arc<Event>, Option<MessagingSpan>)>,
    /// `messaging.system` and the destination, for receive spans.
    system: &'static str,
    destination: String,
    state: Phase,
    count: Count,
    request_id: String,
    /// The subscriber's place in the route's count, given back with the stream.
    _slot: SubscriberSlot,
}

type Chunk = Result<Bytes, std::io::Error>;

impl Stream {
    async fn next(mut self) -> Option<(Chunk, Self)> {
        if let Some((e, span)) = self.delivered.take() {
            e.acknowledge().await;
            if let Some(span) = span {
                span.finish(None, None);
            }
        }
        match self.state {
            Phase::Done => return None,
            Phase::Opening => {
                self.state = Phase::Streaming;
                return Some((Ok(Bytes::from_static(b": subscribed\n\n")), self));
            }
            Phase::Streaming => {}
        }
        // Measured from the last chunk written, so that messages filtered out do not put the
        // heartbeat off.
        let due = tokio::time::Instant::now() + self.heartbeat;
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(due, self.feed.next()) => Some(next),
                _ = self.closing.wait_for(|closing| *closing) => None,
            };
            let Some(next) = next else {
                // Ended, not cut: the client's EventSource reconnects, to an instance that is
                // not going away.
                self.state = Phase::Done;
                let bye = Bytes::from_static(b": the gateway is shutting down\n\n");
                return Some((Ok(bye), self));
            };
            let chunk = match next {
                Err(_) => Ok(Bytes::from_static(b": heartbeat\n\n")),
                Ok(Next::Event(e)) => {
                    if !self.filter.passes(&e) {
                        // Not this subscriber's: the broker still wants it acknowledged.
                        e.acknowledge().await;
                        continue;
                    }
                    self.count.delivered();
                    let chunk = event(&e);
                    let span = MessagingSpan::receive(&e.headers, self.system, &self.destination);
                    self.delivered = Some((e, span));
                    Ok(chunk)
                }
                Ok(Next::Lagged(n)) => {
                    self.count.ended("slow_client");
                    self.state = Phase::Done;
                    Err(std::io::Error::other(format!(
                        "the subscriber fell {n} messages behind its buffer and was cut"
                    )))
                }
                Ok(Next::Ended(why)) => {
                    self.count.ended("broker_unavailable");
                    self.state = Phase::Done;
                    Ok(error_event(&why, &self.request_id))
                }
            };
            return Some((chunk, self));
        }
    }
}

/// An event: its id (where the broker has positions) and its payload as `data` lines; a
/// payload that is not UTF-8 goes as base64 in an event of type `binary`.
fn event(e: &Event) -> Bytes {
    let mut out = BytesMut::with_capacity(e.payload.len() + 64);
    if let Some(id) = &e.id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    match std::str::from_utf8(&e.payload) {
        Ok(text) => data_lines(&mut out, text),
        Err(_) => {
            out.put_slice(b"event: binary\n");
            let encoded = base64::engine::general_purpose::STANDARD.encode(&e.payload);
            data_lines(&mut out, &encoded);
        }
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// `data:` lines of `text`: one per line, as SSE has it (a client joins them with `\n`).
fn data_lines(out: &mut BytesMut, text: &str) {
    // SSE ends a line at CR, LF or CRLF alike.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    for line in text.split('\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.stalled.load(Ordering::Acquire) {
            self.count.ended("slow_client");
        }
    }
}

/// Set when the gateway shuts down: every stream ends at once rather than hold the shutdown
/// for its grace period.
static CLOSING: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(false));

/// Ends every subscriber's stream (the gateway is shutting down).
pub fn close_streams() {
    CLOSING.send_replace(true);
}

/// The last event of a stream whose source stopped: the gateway's error body, as a request
/// made now would get it.
fn error_event(why: &str, request_id: &str) -> Bytes {
    let body = serde_json::json!({ "error": {
        "status": 503,
        "code": "broker_unavailable",
        "message": why,
        "request_id": request_id,
    }});
    Bytes::from(format!("event: error\ndata: {body}\n\n"))
}

/// A subscriber in the metrics: counted while it streams. The series are looked up once per
/// stream, not once per event.
struct Count {
    subscribers: Option<prometheus::IntGauge>,
    delivered: Option<prometheus::IntCounter>,
    labels: [Arc<str>; 2],
}

impl Count {
    fn new(route: &Arc<str>, broker: &str) -> Self {
        let labels = [route.clone(), Arc::from(broker)];
        let m = crate::telemetry::metrics::metrics();
        let series = [&*labels[0], &*labels[1]];
        let subscribers = m.map(|m| m.brokers.subscribers.with_label_values(&series));
        let delivered = m.map(|m| m.brokers.delivered.with_label_values(&series));
        if let Some(g) = &subscribers {
            g.inc();
        }
        Self {
            subscribers,
            delivered,
            labels,
        }
    }

    fn delivered(&self) {
        if let Some(c) = &self.delivered {
            c.inc();
        }
    }

    fn ended(&self, reason: &str) {
        if let Some(m) = crate::telemetry::metrics::metrics() {
            m.brokers
                .streams_ended
                .with_label_values(&[&*self.labels[0], &*self.labels[1], reason])
                .inc();
        }
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        if let Some(g) = &self.subscribers {
            g.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(payload: &[u8], id: Option<&str>) -> Event {
        Event::new(
            id.map(Arc::from),
            None,
            Vec::new(),
            Bytes::copy_from_slice(payload),
        )
    }

    #[test]
    fn events_are_data_lines_with_their_id() {
        assert_eq!(
            event(&ev(b"{\"a\":1}", Some("0:5,1:2"))),
            Bytes::from_static(b"id: 0:5,1:2\ndata: {\"a\":1}\n\n")
        );
        assert_eq!(
            event(&ev(b"one\ntwo\r\nthree", None)),
            Bytes::from_static(b"data: one\ndata: two\ndata: three\n\n")
        );
        assert_eq!(event(&ev(b"", None)), Bytes::from_static(b"data: \n\n"));
        assert_eq!(
            event(&ev(&[0xff, 0x00], None)),
            Bytes::from_static(b"event: binary\ndata: /wA=\n\n")
        );
    }
}
