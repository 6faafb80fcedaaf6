//! Streaming a broker's messages to subscribers (the `subscribe` handler's source).
//!
//! A [`Feed`] is one subscriber's view of a *source*: a Kafka consumer, an AMQP consumer or a
//! NATS subscription, run by a task that puts each message into a bounded broadcast ring.
//! Sources that every subscriber of a destination can share — a Kafka topic read from its end,
//! a NATS subject — are shared: one consumer per destination and instance however many clients
//! stream it, so a subscriber costs a ring cursor, not a consumer. Sources that are a client's
//! own by nature — an AMQP queue per client, a named queue with acknowledgements, a Kafka topic
//! resumed from the client's `Last-Event-ID` — are not.
//!
//! The ring is the bound: a subscriber that falls more than its length behind is told so
//! ([`Next::Lagged`]) and cut, and memory does not grow with a slow client. The source ends —
//! and every feed of it is told why ([`Next::Ended`]) — when the broker goes down or the
//! consumer fails; it is stopped the moment its last feed is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::broadcast;

pub use super::kafka::parse_event_id as parse_kafka_event_id;
pub use super::nats::parse_event_id as parse_nats_event_id;
use super::{Broker, Client, PublishError, State};

/// One message as subscribers get it.
#[derive(Debug)]
pub struct Event {
    /// The position to resume after it (`Last-Event-ID`), where the broker has positions.
    pub id: Option<Arc<str>>,
    /// Its key (Kafka).
    pub key: Option<Bytes>,
    /// Its headers, names lower-cased.
    pub headers: Vec<(String, Bytes)>,
    /// Its payload.
    pub payload: Bytes,
    /// Acknowledges it to the broker (a named AMQP queue), once written to a client.
    pub(super) ack: Option<lapin::Acker>,
}

impl Event {
    /// An event the broker needs no acknowledgement of.
    pub fn new(
        id: Option<Arc<str>>,
        key: Option<Bytes>,
        headers: Vec<(String, Bytes)>,
        payload: Bytes,
    ) -> Self {
        Self {
            id,
            key,
            headers,
            payload,
            ack: None,
        }
    }

    /// Tells the broker the message was delivered; a no-op where the broker does not ask.
    pub async fn acknowledge(&self) {
        if let Some(acker) = &self.ack {
            // A failed ack means the channel is gone, and the broker redelivers the message
            // to another consumer: nothing to do here.
            let _ = acker.ack(lapin::options::BasicAckOptions::default()).await;
        }
    }
}

/// What the source task puts in the ring.
#[derive(Debug, Clone)]
pub(super) enum Item {
    Message(Arc<Event>),
    /// The source stopped; why.
    Ended(Arc<str>),
}

/// What a feed yields.
#[derive(Debug)]
pub enum Next {
    /// The next message.
    Event(Arc<Event>),
    /// The subscriber fell this many messages behind and missed them.
    Lagged(u64),
    /// The source stopped (broker down, consumer failed); why.
    Ended(String),
}

/// Where a subscriber's messages come from, its names filled from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// A Kafka topic, from its end or from positions (partition, next offset) of a
    /// `Last-Event-ID`.
    Kafka {
        /// Topic.
        topic: String,
        /// Where to resume, per partition.
        resume: Option<Vec<(i32, i64)>>,
    },
    /// A server-named exclusive queue bound to an exchange.
    AmqpBinding {
        /// Exchange.
        exchange: String,
        /// Binding key.
        routing_key: String,
    },
    /// A named queue, shared with its other consumers, with acknowledgements.
    AmqpQueue {
        /// Queue.
        queue: String,
    },
    /// A NATS subject, from now or (when a JetStream stream stores it) after a stream
    /// sequence of a `Last-Event-ID`.
    Nats {
        /// Subject.
        subject: String,
        /// The stream sequence the client had.
        resume: Option<u64>,
    },
}

impl Subscription {
    /// The key under which the source is shared, `None` for a source of the client's own.
    fn shared_key(&self, buffer: usize) -> Option<String> {
        match self {
            Subscription::Kafka {
                topic,
                resume: None,
            } => Some(format!("kafka {topic} {buffer}")),
            Subscription::Nats {
                subject,
                resume: None,
            } => Some(format!("nats {subject} {buffer}")),
            _ => None,
        }
    }
}

/// A running source: its ring, and the task that fills it (stopped when this is dropped).
pub(super) struct Source {
    ring: broadcast::Sender<Item>,
    task: tokio::task::AbortHandle,
    /// Set by the task before it sends `Ended`: a feed that joins a source finds out whether
    /// it would still hear of the end.
    ended: Arc<AtomicBool>,
}

impl Source {
    /// A feed of this source, unless it has ended (a feed that joined after the end would
    /// wait for messages that never come).
    fn feed(self: &Arc<Self>) -> Option<Feed> {
        let rx = self.ring.subscribe();
        // Subscribed first: if the end was not yet flagged, its `Ended` is sent after this
        // feed joined, and reaches it.
        (!self.ended.load(AtomicOrdering::SeqCst)).then(|| Feed {
            rx,
            _source: self.clone(),
        })
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The shared sources of a broker, by destination; an entry is dead once its last feed went.
#[derive(Default)]
pub(super) struct Sources(tokio::sync::Mutex<HashMap<String, Weak<Source>>>);

/// One subscriber's stream of messages.
pub struct Feed {
    rx: broadcast::Receiver<Item>,
    /// Keeps the source running for as long as the feed lives.
    _source: Arc<Source>,
}

impl Feed {
    /// The next message, or why there is none.
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Ok(Item::Message(event)) => Next::Event(event),
            Ok(Item::Ended(why)) => Next::Ended(why.to_string()),
            Err(broadcast::error::RecvError::Lagged(n)) => Next::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => Next::Ended("the source stopped".into()),
        }
    }
}

impl Broker {
    /// A feed of `subscription`'s messages, at most `buffer` behind; fails at once when the
    /// broker is down or the destination does not exist.
    pub async fn subscribe(
        &self,
        subscription: Subscription,
        buffer: usize,
    ) -> Result<Feed, PublishError> {
        self.usable().await?;
        let Some(key) = subscription.shared_key(buffer) else {
            let source = self.start_source(subscription, buffer).await?;
            return Ok(Feed {
                rx: source.ring.subscribe(),
                _source: source,
            });
        };
        // Held while a source starts, so that two first subscribers make one consumer.
        let mut shared = self.sources.0.lock().await;
        if let Some(feed) = shared
            .get(&key)
            .and_then(Weak::upgrade)
            .and_then(|s| s.feed())
        {
            return Ok(feed);
        }
        let source = self.start_source(subscription, buffer).await?;
        shared.retain(|_, s| s.strong_count() > 0);
        shared.insert(key, Arc::downgrade(&source));
        Ok(Feed {
            rx: source.ring.subscribe(),
            _source: source,
        })
    }

    /// Starts a source: the consumer is positioned (its queue bound, its subscription
    /// registered) before this returns, so a message sent afterwards reaches its feeds.
    async fn start_source(
        &self,
        subscription: Subscription,
        buffer: usize,
    ) -> Result<Arc<Source>, PublishError> {
        let (ring, _) = broadcast::channel(buffer.max(1));
        let config = self.config.clone();
        let run = match (&*self.client, subscription) {
            (Client::Kafka(k), Subscription::Kafka { topic, resume }) => {
                k.consume(&config, &topic, resume).await?
            }
            (
                Client::Amqp(a),
                Subscription::AmqpBinding {
                    exchange,
                    routing_key,
                },
            ) => a.consume_binding(&config, &exchange, &routing_key).await?,
            (Client::Amqp(a), Subscription::AmqpQueue { queue }) => {
                a.consume_queue(&config, &queue, buffer).await?
            }
            (Client::Nats(n), Subscription::Nats { subject, resume }) => {
                n.consume(&config, &subject, resume).await?
            }
            (Client::Unusable(error), _) => {
                return Err(PublishError::Unavailable {
                    broker: config.name.clone(),
                    reason: error.clone(),
                })
            }
            _ => {
                return Err(PublishError::Rejected {
                    broker: config.name.clone(),
                    reason: "the route's source is not of the broker's kind".to_owned(),
                })
            }
        };
        let tx = ring.clone();
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        let mut state = self.state.0.subscribe();
        let name = config.name.clone();
        let task = tokio::spawn(async move {
            // The broker going down ends every stream of it: its clients reconnect (and, on
            // Kafka, resume from their last event) once it is back, rather than wait on a
            // consumer that may never deliver again.
            let down = async {
                let _ = state
                    .wait_for(|(s, _)| matches!(s, State::Down { .. }))
                    .await;
                format!("broker `{name}` is unavailable")
            };
            let why = tokio::select! {
                why = run.run(&tx) => format!("broker `{name}` ended the stream: {why}"),
                why = down => why,
            };
            flag.store(true, AtomicOrdering::SeqCst);
            let _ = tx.send(Item::Ended(why.into()));
        });
        Ok(Arc::new(Source {
            ring,
            task: task.abort_handle(),
            ended,
        }))
    }
}

/// A positioned consumer, ready to run.
pub(super) enum Consumer {
    Kafka(super::kafka::Consuming),
    Amqp(Box<super::amqp::Consuming>),
    Nats(super::nats::Consuming),
}

impl Consumer {
    /// Puts each message into the ring until the consumer fails; returns why it stopped.
    async fn run(self, ring: &broadcast::Sender<Item>) -> String {
        match self {
            Consumer::Kafka(c) => c.run(ring).await,
            Consumer::Amqp(c) => c.run(ring).await,
            Consumer::Nats(c) => c.run(ring).await,
        }
    }
}

/// Puts a message into the ring; with no feed left there is nobody to tell (the source is
/// about to be stopped).
pub(super) fn deliver(ring: &broadcast::Sender<Item>, event: Event) {
    let _ = ring.send(Item::Message(Arc::new(event)));
}
