//! Message brokers: one client per `[brokers.NAME]`, kept across reloads while its settings do
//! not change, with its connection state for `/brokers` and `/readyz`, and what publishing a
//! message means on each kind (src/broker/{kafka,amqp,nats}.rs).
//!
//! A [`Broker`] is made without I/O when a snapshot is built. Its connection is made (and
//! made again, with backoff, whenever it breaks) by a keeper task that `start` spawns on the
//! background runtime; the task ends when the last snapshot holding the broker lets it go.
//! Publishing is bounded twice: at most `max_in_flight` messages wait for acknowledgements
//! (one more gets 503 at once), and each waits at most `publish_timeout`.

mod amqp;
mod error;
pub mod idempotency;
mod kafka;
mod nats;
mod reply;
pub mod subscribe;
pub mod template;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde::Serialize;
use tokio::sync::Semaphore;

pub use error::{retry_after, PublishError};
pub use reply::{Reply, RequestError};

use crate::config::{BrokerConfig, BrokerKind, PublishMode};

/// Where one message goes, its templates filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Kafka topic and the message's key.
    Kafka {
        /// Topic.
        topic: String,
        /// Key.
        key: Option<String>,
    },
    /// An AMQP exchange and routing key.
    Amqp {
        /// Exchange (`""`: the default exchange).
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// A NATS subject.
    Nats {
        /// Subject.
        subject: String,
    },
}

/// A message to publish.
#[derive(Debug)]
pub struct Message {
    /// Where it goes.
    pub target: Target,
    /// Whether the request's values chose the destination (an unknown one is then the
    /// client's 404, not the gateway's 502).
    pub target_from_request: bool,
    /// Its headers: the request headers the route copies, with the request id and trace
    /// context.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The request body.
    pub payload: Bytes,
    /// An id the broker de-duplicates by, when the request has an `Idempotency-Key` (NATS
    /// JetStream's `Nats-Msg-Id`; Kafka and AMQP have no such id).
    pub dedup_id: Option<String>,
}

/// What the broker said of a published message: the JSON receipt of the answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Receipt {
    /// Kafka: where the record was written.
    Kafka {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset in the partition.
        offset: i64,
    },
    /// AMQP: confirmed by the broker (routed to at least one queue).
    Amqp {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// NATS: the JetStream stream and sequence, when acknowledged by a stream.
    Nats {
        /// Subject.
        subject: String,
        /// Stream that stored it.
        #[serde(skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
        /// Its sequence in the stream.
        #[serde(skip_serializing_if = "Option::is_none")]
        sequence: Option<u64>,
        /// Whether JetStream had it already (same `Nats-Msg-Id` in its window).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    /// Handed to the client library without waiting (`mode = "fire_and_forget"`).
    Unconfirmed {
        /// Always false: nothing was acknowledged.
        acknowledged: bool,
    },
}

/// A broker's connection, as `/brokers` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    /// Not connected yet.
    Connecting,
    /// Connected.
    Up,
    /// Not connected; the keeper tries again.
    Down {
        /// Why, as the client library said.
        error: String,
    },
}

/// A broker's state and when it last changed, watched by whoever waits for a change.
#[derive(Debug)]
struct StateCell(tokio::sync::watch::Sender<(State, SystemTime)>);

impl StateCell {
    fn new() -> Self {
        Self(tokio::sync::watch::Sender::new((
            State::Connecting,
            SystemTime::now(),
        )))
    }

    fn set(&self, name: &str, state: State) {
        self.0.send_if_modified(|cell| {
            if cell.0 == state {
                return false;
            }
            match &state {
                State::Up => tracing::info!(broker = name, "broker connected"),
                State::Down { error } => tracing::warn!(broker = name, %error, "broker down"),
                State::Connecting => {}
            }
            *cell = (state.clone(), SystemTime::now());
            true
        });
    }

    fn get(&self) -> (State, SystemTime) {
        self.0.borrow().clone()
    }
}

/// The client of one kind of broker.
enum Client {
    Kafka(kafka::Kafka),
    Amqp(amqp::Amqp),
    Nats(nats::Nats),
    /// The client library refused the settings: always down, saying why.
    Unusable(String),
}

/// One broker: its settings, client, state and in-flight bound.
pub struct Broker {
    config: Arc<BrokerConfig>,
    client: Arc<Client>,
    state: Arc<StateCell>,
    permits: Arc<Semaphore>,
    keeper: OnceLock<tokio::task::AbortHandle>,
    /// The consumers its subscribers share.
    sources: subscribe::Sources,
    /// Subscribers streaming now, per route (kept with the broker across reloads, so a
    /// route's cap holds through them).
    subscribers: std::sync::Mutex<HashMap<Arc<str>, Arc<AtomicUsize>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("name", &self.config.name)
            .field("kind", &self.config.kind.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.get() {
            keeper.abort();
        }
    }
}

impl Broker {
    /// A broker's client, made without I/O: nothing connects until [`Broker::start`].
    pub fn new(config: Arc<BrokerConfig>) -> Self {
        let client = match &config.kind {
            BrokerKind::Kafka(k) => match kafka::Kafka::new(&config, k) {
                Ok(k) => Client::Kafka(k),
                // Settings were validated; a client library that still refuses them leaves
                // this broker down, reported, rather than the whole config refused.
                Err(e) => Client::Unusable(e.to_string()),
            },
            BrokerKind::Amqp(a) => Client::Amqp(amqp::Amqp::new(&config, a)),
            BrokerKind::Nats(n) => Client::Nats(nats::Nats::new(n)),
        };
        Self {
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            client: Arc::new(client),
            state: Arc::new(StateCell::new()),
            keeper: OnceLock::new(),
            sources: subscribe::Sources::default(),
            subscribers: std::sync::Mutex::default(),
            config,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &Arc<BrokerConfig> {
        &self.config
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its connection state, and since when.
    pub fn state(&self) -> (State, SystemTime) {
        self.state.get()
    }

    /// Messages waiting for the broker's acknowledgement now.
    pub fn in_flight(&self) -> usize {
        self.config
            .max_in_flight
            .saturating_sub(self.permits.available_permits())
    }

    /// Whether it is connected.
    pub fn is_up(&self) -> bool {
        matches!(self.state.get().0, State::Up)
    }

    /// Spawns the keeper of its connection on the current runtime, once; a kept broker (same
    /// settings after a reload) keeps its keeper.
    pub fn start(&self) {
        self.keeper.get_or_init(|| {
            let (client, state, config) =
                (self.client.clone(), self.state.clone(), self.config.clone());
            let task = tokio::spawn(async move {
                match &*client {
                    Client::Kafka(k) => k.keep(&config, &state).await,
                    Client::Amqp(a) => a.keep(&config, &state).await,
                    Client::Nats(n) => n.keep(&config, &state).await,
                    Client::Unusable(error) => state.set(
                        &config.name,
                        State::Down {
                            error: error.clone(),
                        },
                    ),
                }
            });
            task.abort_handle()
        });
    }

    /// Ok when the broker is connected. A broker still making its first connection (just
    /// started or added by a reload) gets its connect timeout before it is refused.
    async fn usable(&self) -> Result<(), PublishError> {
        if matches!(self.state.get().0, State::Connecting) {
            let mut rx = self.state.0.subscribe();
            let connected = rx.wait_for(|(s, _)| !matches!(s, State::Connecting));
            let _ = tokio::time::timeout(self.config.connect_timeout, connected).await;
        }
        match self.state.get().0 {
            State::Down { error } => Err(PublishError::Unavailable {
                broker: self.config.name.clone(),
                reason: error,
            }),
            _ => Ok(()),
        }
    }

    /// A place among route `route`'s subscribers, if it has fewer than `max`; the place is
    /// given back when the slot is dropped.
    pub fn subscriber_slot(&self, route: &Arc<str>, max: usize) -> Option<SubscriberSlot> {
        let count = {
            let mut all = self
                .subscribers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.entry(route.clone()).or_default().clone()
        };
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(SubscriberSlot(count))
    }

    /// A place among the messages in flight, once the broker is up (one still making its first
    /// connection gets its connect timeout): publishes and requests alike.
    async fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PublishError> {
        self.usable().await?;
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| PublishError::Busy {
                broker: self.config.name.clone(),
                limit: self.config.max_in_flight,
            })
    }

    /// Publishes a message and, in `Confirmed` mode, waits for the broker's acknowledgement.
    pub async fn publish(
        &self,
        message: Message,
        mode: PublishMode,
    ) -> Result<Receipt, PublishError> {
        let name = &self.config.name;
        let _permit = self.admit().await?;
        let publish = async {
            match &*self.client {
                Client::Kafka(k) => k.publish(&self.config, message, mode).await,
                Client::Amqp(a) => a.publish(&self.config, message, mode).await,
                Client::Nats(n) => n.publish(&self.config, message, mode).await,
                Client::Unusable(error) => Err(PublishError::Unavailable {
                    broker: name.clone(),
                    reason: error.clone(),
                }),
            }
        };
        // The state is the keeper's to set: one failed publish says little about the
        // connection (an AMQP channel error, a Kafka message timeout); it may ask it to look.
        let result = match tokio::time::timeout(self.config.publish_timeout, publish).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::NoAck {
                broker: name.clone(),
                after: self.config.publish_timeout,
            }),
        };
        if let (
            Err(PublishError::NoAck { .. } | PublishError::Unavailable { .. }),
            Client::Kafka(k),
        ) = (&result, &*self.client)
        {
            k.suspect();
        }
        result
    }
}

/// A subscriber's place in its route's count (see [`Broker::subscriber_slot`]).
#[derive(Debug)]
pub struct SubscriberSlot(Arc<AtomicUsize>);

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Broker {
    /// Sends a request and waits up to `timeout` (from now) for its correlated reply: the
    /// request holds its place among the messages in flight until then. `reply_topic` is where
    /// a Kafka responder answers (the other kinds answer to the gateway's own address).
    pub async fn request(
        &self,
        message: Message,
        reply_topic: Option<&str>,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let admitted = self.admit_request().await?;
        self.request_admitted(admitted, message, reply_topic, deadline, timeout)
            .await
    }

    /// A request's place among the messages in flight (see [`Broker::request`]), taken before
    /// the request is sent: an asynchronous request is refused at once when the broker is down
    /// or busy.
    pub async fn admit_request(&self) -> Result<Admitted, PublishError> {
        let permit = self.admit().await?;
        Ok(Admitted { _permit: permit })
    }

    /// [`Broker::request`] with its place taken already; the reply is waited for until
    /// `deadline` (`timeout` after the request came).
    pub async fn request_admitted(
        &self,
        admitted: Admitted,
        message: Message,
        reply_topic: Option<&str>,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let _permit = admitted;
        let started = std::time::Instant::now();
        let config = &self.config;
        let exchange = async {
            match (&*self.client, reply_topic) {
                (Client::Kafka(k), Some(topic)) => {
                    k.request(config, message, topic, deadline, timeout).await
                }
                (Client::Amqp(a), _) => a.request(config, message, deadline, timeout).await,
                (Client::Nats(n), _) => n.request(config, message, deadline, timeout).await,
                (Client::Kafka(_), None) => Err(PublishError::Rejected {
                    broker: config.name.clone(),
                    reason: "a Kafka request needs a reply topic".to_owned(),
                }
                .into()),
                (Client::Unusable(error), _) => Err(PublishError::Unavailable {
                    broker: config.name.clone(),
                    reason: error.clone(),
                }
                .into()),
            }
        };
        // Each step has its own bound; this one makes sure that none is missed.
        let result = tokio::time::timeout_at(deadline + config.publish_timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(RequestError::Timeout {
                    broker: config.name.clone(),
                    after: timeout,
                })
            });
        match &result {
            Ok(_) => {
                if let Some(m) = crate::telemetry::metrics::metrics() {
                    m.brokers
                        .reply_duration
                        .with_label_values(&[&*config.name])
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            Err(RequestError::Publish(
                PublishError::NoAck { .. } | PublishError::Unavailable { .. },
            )) => {
                if let Client::Kafka(k) = &*self.client {
                    k.suspect();
                }
            }
            Err(_) => {}
        }
        result
    }
}

/// A request's place among a broker's messages in flight, held until its reply came or it
/// gave up.
#[derive(Debug)]
pub struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The brokers of a snapshot, by index as `GatewayConfig::brokers` has them.
#[derive(Debug, Default)]
pub struct Brokers(Vec<Arc<Broker>>);

impl Brokers {
    /// The brokers of a config; those whose settings equal one of `previous`'s are that broker
    /// (same connection, same state).
    pub fn build(configs: &[Arc<BrokerConfig>], previous: Option<&Brokers>) -> Self {
        let mut out = Vec::with_capacity(configs.len());
        for config in configs {
            let kept = previous
                .and_then(|p| p.0.iter().find(|b| *b.config == **config))
                .cloned();
            out.push(kept.unwrap_or_else(|| Arc::new(Broker::new(config.clone()))));
        }
        Brokers(out)
    }

    /// Broker `i`.
    pub fn get(&self, i: usize) -> Option<&Arc<Broker>> {
        self.0.get(i)
    }

    /// Every broker.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Broker>> {
        self.0.iter()
    }

    /// Starts every broker's keeper (kept brokers keep theirs).
    pub fn start(&self) {
        for b in &self.0 {
            b.start();
        }
    }

    /// The longest `connect_timeout` of the brokers (zero without brokers).
    pub fn longest_connect(&self) -> Duration {
        self.0
            .iter()
            .map(|b| b.config.connect_timeout)
            .max()
            .unwrap_or_default()
    }

    /// Waits until every broker that readiness requires is up or has failed once, at most
    /// `wait`. (A publish to a broker still connecting waits for it itself.)
    pub async fn settle(&self, wait: Duration) {
        let required = self.0.iter().filter(|b| b.config.required_for_readiness);
        let all = required.map(|b| {
            let mut rx = b.state.0.subscribe();
            async move {
                let _ = rx.wait_for(|(s, _)| !matches!(s, State::Connecting)).await;
            }
        });
        let _ = tokio::time::timeout(wait, futures_util::future::join_all(all)).await;
    }
}

/// Records how long an acknowledgement took.
fn observe_ack(broker: &BrokerConfig, started: std::time::Instant) {
    if let Some(m) = crate::telemetry::metrics::metrics() {
        m.brokers
            .publish_duration
            .with_label_values(&[&*broker.name])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Waits before the next connection attempt: 100 ms doubling to 5 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Self(Duration::from_millis(100))
    }

    pub(crate) fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}
