//! NATS through `async-nats`. With `jetstream = true` (the default) a publish waits for the
//! JetStream acknowledgement of the stream that stores the subject; without it, a publish is a
//! core NATS publish, at most once, which routes must say with `mode = "fire_and_forget"`.
//! The client reconnects by itself; its events drive the broker's state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::{Client, ConnectOptions, Event, HeaderMap};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use super::reply::{self, Answer, Reply, RequestError, Waiters};
use super::subscribe::{self, Consumer, Item};
use super::{Message, PublishError, Receipt, State, StateCell, Target};
use crate::config::{BrokerConfig, NatsSettings, PublishMode};

/// NATS matches header names case-sensitively, and JetStream's own (`Nats-Msg-Id`,
/// `Nats-Expected-Stream`, ...) are written in that case; HTTP names arrive lower-cased.
fn nats_name(name: &str) -> String {
    if !name.starts_with("nats-") {
        return name.to_owned();
    }
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

pub(super) struct Nats {
    settings: Option<NatsSettings>,
    live: ArcSwapOption<Live>,
}

struct Live {
    client: Client,
    jetstream: async_nats::jetstream::Context,
    /// Where replies to this gateway's requests come, subscribed at the first request (and
    /// again if its subscription ended).
    inbox: tokio::sync::Mutex<Option<Arc<Inbox>>>,
}

/// One wildcard subscription (`_INBOX.<unique>.*`) for the replies of every request, each
/// request's reply subject one token under it. (The client library's own request call keeps a
/// request's entry until its reply comes, so every request that timed out would stay in its
/// map: these entries go when the request stops waiting.)
struct Inbox {
    prefix: String,
    waiters: Arc<Waiters>,
    task: tokio::task::AbortHandle,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Nats {
    pub(super) fn new(settings: &NatsSettings) -> Self {
        Self {
            settings: Some(settings.clone()),
            live: ArcSwapOption::empty(),
        }
    }

    /// Makes the client (which then connects and reconnects by itself) and keeps it for as long
    /// as the broker is in use.
    pub(super) async fn keep(&self, broker: &BrokerConfig, state: &Arc<StateCell>) {
        let Some(n) = &self.settings else {
            return;
        };
        let servers_shown = n
            .servers
            .iter()
            .map(|s| s.redacted())
            .collect::<Vec<_>>()
            .join(", ");
        let options = options(broker, n, state, &servers_shown);
        let servers: Vec<String> = n.servers.iter().map(|s| s.expose().to_owned()).collect();
        match options.connect(servers).await {
            Ok(client) => {
                let jetstream = async_nats::jetstream::ContextBuilder::new()
                    .timeout(broker.publish_timeout)
                    .build(client.clone());
                self.live.store(Some(Arc::new(Live {
                    client: client.clone(),
                    jetstream,
                    inbox: tokio::sync::Mutex::new(None),
                })));
                // The client keeps trying without a word while no server answers: past the
                // connect timeout the broker is down, and publishes are refused at once.
                tokio::time::sleep(broker.connect_timeout).await;
                if client.connection_state() != async_nats::connection::State::Connected {
                    state.set(
                        &broker.name,
                        State::Down {
                            error: format!(
                                "no connection to {servers_shown} within {}",
                                humantime::format_duration(broker.connect_timeout)
                            ),
                        },
                    );
                }
                // The client lives with the broker: this task is aborted when the broker goes.
                std::future::pending::<()>().await;
            }
            Err(e) => state.set(
                &broker.name,
                State::Down {
                    error: e.to_string(),
                },
            ),
        }
    }

    pub(super) async fn publish(
        &self,
        broker: &BrokerConfig,
        message: Message,
        mode: PublishMode,
    ) -> Result<Receipt, PublishError> {
        let Target::Nats { subject } = &message.target else {
            return Err(PublishError::Rejected {
                broker: broker.name.clone(),
                reason: "not a NATS destination".to_owned(),
            });
        };
        let unavailable = |reason: String| PublishError::Unavailable {
            broker: broker.name.clone(),
            reason,
        };
        let Some(live) = self.live.load_full() else {
            return Err(unavailable("not connected".to_owned()));
        };
        let mut headers = headers(&message);
        if let Some(id) = &message.dedup_id {
            // JetStream drops a message whose id it saw within the stream's duplicate window:
            // a retry of a publish whose acknowledgement was lost is not stored twice.
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        let subject = subject.clone();
        let payload = message.payload;
        if mode == PublishMode::FireAndForget {
            live.client
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            return Ok(Receipt::Unconfirmed {
                acknowledged: false,
            });
        }
        let started = Instant::now();
        let failed = |e: async_nats::jetstream::context::PublishError| match e.kind() {
            PublishErrorKind::StreamNotFound => PublishError::NoDestination {
                broker: broker.name.clone(),
                what: "stream for subject",
                name: subject.clone(),
                from_request: message.target_from_request,
            },
            PublishErrorKind::MaxPayloadExceeded => PublishError::TooLarge(format!(
                "the message is larger than broker `{}` takes (its max_payload)",
                broker.name
            )),
            PublishErrorKind::TimedOut => PublishError::NoAck {
                broker: broker.name.clone(),
                after: broker.publish_timeout,
            },
            PublishErrorKind::BrokenPipe => unavailable(e.to_string()),
            _ => PublishError::Rejected {
                broker: broker.name.clone(),
                reason: e.to_string(),
            },
        };
        let ack = live
            .jetstream
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        super::observe_ack(broker, started);
        Ok(Receipt::Nats {
            subject: subject.clone(),
            stream: Some(ack.stream),
            sequence: Some(ack.sequence),
            duplicate: ack.duplicate,
        })
    }
}

/// The message's headers as NATS headers.
fn headers(message: &Message) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        // NATS headers are text; a value that is not is left out rather than mangled.
        if let Ok(v) = value.to_str() {
            headers.append(nats_name(name.as_str()).as_str(), v);
        }
    }
    headers
}

impl Nats {
    /// Sends a core NATS request (a message with a reply subject under the gateway's inbox) and
    /// waits until `deadline` for its reply. A subject nobody subscribes to is answered at once
    /// by the server ("no responders").
    pub(super) async fn request(
        &self,
        broker: &BrokerConfig,
        message: Message,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let Target::Nats { subject } = &message.target else {
            return Err(PublishError::Rejected {
                broker: broker.name.clone(),
                reason: "not a NATS destination".to_owned(),
            }
            .into());
        };
        let unavailable = |reason: String| PublishError::Unavailable {
            broker: broker.name.clone(),
            reason,
        };
        let Some(live) = self.live.load_full() else {
            return Err(unavailable("not connected".to_owned()).into());
        };
        let inbox = {
            let mut kept = live.inbox.lock().await;
            match kept.as_ref().filter(|i| !i.task.is_finished()) {
                Some(inbox) => inbox.clone(),
                None => {
                    let inbox = Arc::new(
                        Inbox::subscribe(&live.client, broker)
                            .await
                            .map_err(unavailable)?,
                    );
                    *kept = Some(inbox.clone());
                    inbox
                }
            }
        };
        let waiting = inbox.waiters.register(reply::correlation_id());
        let reply_to = format!("{}.{}", inbox.prefix, waiting.id());
        let headers = headers(&message);
        let send = async {
            live.client
                .publish_with_reply_and_headers(
                    subject.clone(),
                    reply_to,
                    headers,
                    message.payload.clone(),
                )
                .await
                .map_err(|e| match e.kind() {
                    async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                        PublishError::TooLarge(format!(
                            "the message is larger than broker `{}` takes (its max_payload)",
                            broker.name
                        ))
                    }
                    _ => unavailable(e.to_string()),
                })
        };
        reply::exchange(broker, waiting, send, deadline, timeout, subject).await
    }
}

impl Inbox {
    /// Subscribes to the gateway's reply subjects and hands every reply to its request. The
    /// client subscribes again by itself after a reconnection.
    async fn subscribe(client: &Client, broker: &BrokerConfig) -> Result<Inbox, String> {
        let prefix = client.new_inbox();
        let mut subscriber = client
            .subscribe(format!("{prefix}.*"))
            .await
            .map_err(|e| e.to_string())?;
        let waiters = Waiters::new();
        let (tokens, name) = (waiters.clone(), broker.name.clone());
        let start = prefix.len() + 1;
        let task = tokio::spawn(async move {
            while let Some(m) = subscriber.next().await {
                let Some(id) = m.subject.get(start..) else {
                    continue;
                };
                let answer = if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    Answer::NoResponders
                } else {
                    let headers = m
                        .headers
                        .iter()
                        .flat_map(|h| h.iter())
                        .flat_map(|(name, values)| {
                            values
                                .iter()
                                .map(move |v| (name.to_string(), v.as_str().as_bytes().to_vec()))
                        })
                        .collect();
                    Answer::Reply(Reply {
                        headers,
                        payload: m.payload,
                    })
                };
                if !tokens.answer(id, answer) {
                    reply::unmatched(&name);
                }
            }
            tokens.close();
        });
        Ok(Inbox {
            prefix,
            waiters,
            task: task.abort_handle(),
        })
    }
}

impl Nats {
    /// What feeds subscribers of `subject`, in place before this returns (a message published
    /// from then on, by any client, reaches it). With JetStream on and a stream that stores the
    /// subject: an ordered consumer of that stream from its next message, or from `resume` (a
    /// stream sequence the client had), whose events carry their sequence. Otherwise a core
    /// subscription, whose events carry nothing to resume from.
    pub(super) async fn consume(
        &self,
        broker: &BrokerConfig,
        subject: &str,
        resume: Option<u64>,
    ) -> Result<Consumer, PublishError> {
        let unavailable = |reason: String| PublishError::Unavailable {
            broker: broker.name.clone(),
            reason,
        };
        let Some(live) = self.live.load_full() else {
            return Err(unavailable("not connected".to_owned()));
        };
        let jetstream = self.settings.as_ref().is_some_and(|n| n.jetstream);
        if jetstream {
            if let Ok(stream) = live.jetstream.stream_by_subject(subject).await {
                return ordered(&live.jetstream, &stream, subject, resume)
                    .await
                    .map_err(|e| PublishError::Rejected {
                        broker: broker.name.clone(),
                        reason: format!("stream `{stream}`: {e}"),
                    });
            }
        }
        let subscriber = live
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        // The server has the subscription once it answered the PING flush sends after it.
        live.client
            .flush()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(Consumer::Nats(Consuming::Core(subscriber)))
    }
}

/// An ordered consumer of `stream` filtered on `subject`, made on the server before this
/// returns: from the stream's next message, or after sequence `resume`.
async fn ordered(
    jetstream: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
    resume: Option<u64>,
) -> Result<Consumer, String> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let deliver_policy = match resume {
        Some(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq.saturating_add(1),
        },
        None => DeliverPolicy::New,
    };
    let stream = jetstream
        .get_stream(stream)
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy,
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    Ok(Consumer::Nats(Consuming::Stream(Box::new(messages))))
}

/// The event id of a JetStream message: its stream sequence.
pub fn parse_event_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

/// What feeds a NATS subscriber's source.
pub(super) enum Consuming {
    /// A core subscription (unsubscribed when dropped).
    Core(async_nats::Subscriber),
    /// An ordered JetStream consumer.
    Stream(Box<async_nats::jetstream::consumer::pull::Ordered>),
}

impl Consuming {
    pub(super) async fn run(self, ring: &broadcast::Sender<Item>) -> String {
        match self {
            Consuming::Core(mut subscriber) => {
                while let Some(m) = subscriber.next().await {
                    subscribe::deliver(ring, event(None, &m.headers, m.payload));
                }
                "the subscription closed".to_owned()
            }
            Consuming::Stream(mut messages) => {
                while let Some(m) = messages.next().await {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => return e.to_string(),
                    };
                    let id = m.info().ok().map(|i| i.stream_sequence.to_string());
                    let (headers, payload) = (m.headers.clone(), m.payload.clone());
                    subscribe::deliver(ring, event(id, &headers, payload));
                }
                "the stream's consumer closed".to_owned()
            }
        }
    }
}

/// A subscriber's event of a NATS message.
fn event(id: Option<String>, headers: &Option<HeaderMap>, payload: Bytes) -> subscribe::Event {
    let headers = headers
        .as_ref()
        .map(|hs| {
            hs.iter()
                .flat_map(|(name, values)| {
                    let name = name.to_string().to_ascii_lowercase();
                    values
                        .iter()
                        .map(move |v| (name.clone(), Bytes::copy_from_slice(v.as_str().as_bytes())))
                })
                .collect()
        })
        .unwrap_or_default();
    subscribe::Event::new(id.map(Into::into), None, headers, payload)
}

/// The client's settings: timeouts, endless reconnection with backoff, credentials, TLS, and
/// its events driving the broker's state.
fn options(
    broker: &BrokerConfig,
    n: &NatsSettings,
    state: &Arc<StateCell>,
    servers_shown: &str,
) -> ConnectOptions {
    let events = state.clone();
    let name = broker.name.clone();
    // The client's errors name no server ("nats: IO error"): said with the servers meant.
    let servers_shown: Arc<str> = servers_shown.into();
    let mut options = ConnectOptions::new()
        .name(format!("tollgate {}", broker.name))
        .connection_timeout(broker.connect_timeout)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100u64 << attempts.min(6)).min(5_000))
        })
        .event_callback(move |event| {
            let (events, name, servers) = (events.clone(), name.clone(), servers_shown.clone());
            async move {
                match event {
                    Event::Connected => events.set(&name, State::Up),
                    Event::Disconnected | Event::Closed => events.set(
                        &name,
                        State::Down {
                            error: format!("{event} ({servers})"),
                        },
                    ),
                    Event::ClientError(e) => events.set(
                        &name,
                        State::Down {
                            error: format!("{e} ({servers})"),
                        },
                    ),
                    _ => {}
                }
            }
        });
    if let Some((user, password)) = &n.user {
        options = options.user_and_password(user.clone(), password.expose().clone());
    }
    if let Some(token) = &n.token {
        options = options.token(token.expose().clone());
    }
    if let Some(tls) = &broker.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
    }
    options
}
