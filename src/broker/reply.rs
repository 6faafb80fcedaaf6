//! Request-reply: what a reply is, why a request got none, and the correlation of replies to
//! the requests that wait for them.
//!
//! Each kind of broker receives every reply meant for this gateway at one place made once (a
//! NATS inbox subscription, an AMQP direct reply-to consumer, a Kafka reply topic's consumer)
//! and hands it to the request waiting under its correlation id in a [`Waiters`] map. A request
//! registers before it is sent (a reply may come before the broker's acknowledgement) and its
//! entry goes when it stops waiting, answered or not: a late reply finds nobody and is dropped,
//! and the map never holds more entries than requests in flight, which the broker's
//! `max_in_flight` bounds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use super::PublishError;

/// A reply as it came back: its headers (names as the broker had them, in order, repeated
/// names kept) and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Headers (AMQP: the message's `content_type` property as `content-type`, then its header
    /// table).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Payload.
    pub payload: Bytes,
}

/// Why a request got no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// The request was not sent (or not acknowledged): as a publish would have failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// No reply within the route's timeout.
    #[error("no reply from broker `{broker}` within {}", humantime::format_duration(*after))]
    Timeout {
        /// The broker's name.
        broker: Arc<str>,
        /// The route's timeout.
        after: Duration,
    },
    /// NATS: nobody subscribes to the subject, said by the server at once.
    #[error("nothing on broker `{broker}` answers requests on `{subject}`")]
    NoResponder {
        /// The broker's name.
        broker: Arc<str>,
        /// The request's subject.
        subject: String,
    },
}

impl RequestError {
    /// The stable code of the error body (and of the metrics).
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Publish(e) => e.code(),
            RequestError::Timeout { .. } => "reply_timeout",
            RequestError::NoResponder { .. } => "no_responder",
        }
    }
}

/// What reaches a waiting request.
#[derive(Debug)]
pub(super) enum Answer {
    /// Its reply.
    Reply(Reply),
    /// NATS: the server's "no responders" status in place of a reply.
    NoResponders,
}

/// The requests waiting for replies at one place, by correlation id.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    map: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    waiting: HashMap<String, tokio::sync::oneshot::Sender<Answer>>,
    /// No reply can come here any more (its channel or subscription ended): a request that
    /// registers gets `None` at once.
    closed: bool,
}

impl Waiters {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table is consistent after every statement: a panic elsewhere leaves it usable.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the reply correlated by `id` (unique: a random 128-bit id).
    pub(super) fn register(self: &Arc<Self>, id: String) -> Waiting {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut table = self.table();
        if !table.closed {
            table.waiting.insert(id.clone(), tx);
        }
        Waiting {
            id,
            waiters: self.clone(),
            rx,
        }
    }

    /// Hands `answer` to the request waiting under `id`; `false` when none waits (a late
    /// reply, or one meant for another gateway sharing the reply topic).
    pub(super) fn answer(&self, id: &str, answer: Answer) -> bool {
        let waiting = self.table().waiting.remove(id);
        match waiting {
            Some(tx) => tx.send(answer).is_ok(),
            None => false,
        }
    }

    /// No reply comes here any more: every waiting request learns it now.
    pub(super) fn close(&self) {
        let mut table = self.table();
        table.closed = true;
        table.waiting.clear();
    }

    /// Requests waiting now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table().waiting.len()
    }
}

/// One request's wait; dropping it (answered, timed out or cancelled) removes its entry.
#[derive(Debug)]
pub(super) struct Waiting {
    id: String,
    waiters: Arc<Waiters>,
    rx: tokio::sync::oneshot::Receiver<Answer>,
}

impl Waiting {
    /// The correlation id.
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// The answer; `None` when the place replies come to closed first.
    pub(super) async fn answer(&mut self) -> Option<Answer> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiters.table().waiting.remove(&self.id);
    }
}

/// A correlation id no other request of any gateway is likely to have: 128 random bits, hex.
pub(super) fn correlation_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Sends a request (`send`: its publish, bounded by `publish_timeout` as a publish is) and
/// waits for its answer until `deadline`.
pub(super) async fn exchange(
    broker: &crate::config::BrokerConfig,
    mut waiting: Waiting,
    send: impl std::future::Future<Output = Result<(), PublishError>>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    subject: &str,
) -> Result<Reply, RequestError> {
    match tokio::time::timeout(broker.publish_timeout, send).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(PublishError::NoAck {
                broker: broker.name.clone(),
                after: broker.publish_timeout,
            }
            .into())
        }
    }
    match tokio::time::timeout_at(deadline, waiting.answer()).await {
        Ok(Some(Answer::Reply(r))) => Ok(r),
        Ok(Some(Answer::NoResponders)) => Err(RequestError::NoResponder {
            broker: broker.name.clone(),
            subject: subject.to_owned(),
        }),
        Ok(None) => Err(PublishError::Unavailable {
            broker: broker.name.clone(),
            reason: "the connection replies come back on closed".to_owned(),
        }
        .into()),
        Err(_) => Err(RequestError::Timeout {
            broker: broker.name.clone(),
            after: timeout,
        }),
    }
}

/// Counts a reply that nobody waited for.
pub(super) fn unmatched(broker: &str) {
    if let Some(m) = crate::telemetry::metrics::metrics() {
        m.brokers
            .replies_unmatched
            .with_label_values(&[broker])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: &'static str) -> Answer {
        Answer::Reply(Reply {
            headers: Vec::new(),
            payload: Bytes::from_static(body.as_bytes()),
        })
    }

    #[tokio::test]
    async fn a_reply_reaches_its_own_request_and_a_late_one_nobody() {
        let w = Waiters::new();
        let mut a = w.register("a".into());
        let mut b = w.register("b".into());
        assert_eq!(w.len(), 2);
        assert!(w.answer("b", reply("for b")));
        assert!(w.answer("a", reply("for a")));
        assert!(matches!(a.answer().await, Some(Answer::Reply(r)) if r.payload == "for a"));
        assert!(matches!(b.answer().await, Some(Answer::Reply(r)) if r.payload == "for b"));
        assert!(!w.answer("a", reply("again")), "answered once");
        assert_eq!(w.len(), 0);
    }

    #[tokio::test]
    async fn a_request_that_stops_waiting_leaves_nothing_behind() {
        let w = Waiters::new();
        let waiting = w.register(correlation_id());
        let id = waiting.id().to_owned();
        drop(waiting);
        assert_eq!(w.len(), 0);
        assert!(!w.answer(&id, reply("late")));
    }

    #[tokio::test]
    async fn closing_answers_every_waiting_request_and_refuses_new_ones() {
        let w = Waiters::new();
        let mut before = w.register("a".into());
        w.close();
        assert!(before.answer().await.is_none());
        let mut after = w.register("b".into());
        assert!(after.answer().await.is_none());
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn correlation_ids_differ() {
        let (a, b) = (correlation_id(), correlation_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
