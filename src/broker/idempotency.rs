//! `Idempotency-Key` on publish routes: the first request with a key publishes and its answer
//! is kept for the route's window; a repeat within the window gets that answer again and
//! publishes nothing. A repeat that arrives while the first is still waiting for the broker
//! waits for its answer. Only answers that published are kept: after a 503 the client's retry
//! publishes.
//!
//! Kept in the process (bounded: at most `max_keys` answers, the oldest forgotten first), or in
//! a Redis that every instance names (`idempotency_redis`), so that instances agree.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::watch;

use crate::config::IdempotencyConfig;

mod redis_keys;

/// The answers of one route's keys: in this process, or in a shared Redis.
pub enum Keys {
    /// In this process.
    Local(Arc<Store>),
    /// In Redis.
    Redis(Arc<redis_keys::RedisKeys>),
}

/// What a request with a key is to do.
pub enum Claim {
    /// Publish, then [`Pending::finish`] with the answer (dropping it frees the key).
    Publish(Pending),
    /// Answer this again.
    Replay(Answer),
}

/// The right to publish for a key.
pub enum Pending {
    /// Kept in this process.
    Local(LocalPending),
    /// Kept in Redis.
    Redis(redis_keys::RedisPending),
}

/// The shared store could not be asked: the request is refused rather than risk a duplicate.
#[derive(Debug, thiserror::Error)]
#[error("the Idempotency-Key store (Redis at {server}) did not answer: {reason}")]
pub struct StoreUnavailable {
    server: String,
    reason: String,
}

impl Keys {
    /// The store of a route's settings.
    pub fn new(config: &IdempotencyConfig) -> Self {
        match &config.redis {
            Some(url) => match redis_keys::RedisKeys::new(url, config) {
                Ok(k) => Keys::Redis(Arc::new(k)),
                // Checked when the config was loaded; a URL the client still refuses keeps
                // the keys in this process rather than losing them.
                Err(_) => Keys::Local(Store::new(config.clone())),
            },
            None => Keys::Local(Store::new(config.clone())),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &IdempotencyConfig {
        match self {
            Keys::Local(s) => &s.config,
            Keys::Redis(r) => r.config(),
        }
    }

    /// Claims `key` (a digest naming route, consumer and key): the first request publishes; a
    /// repeat gets the kept answer, or waits (at most `wait`) for the first to finish.
    /// `Ok(None)` when that wait ran out.
    pub async fn claim(
        &self,
        key: &str,
        wait: Duration,
    ) -> Result<Option<Claim>, StoreUnavailable> {
        match self {
            Keys::Local(s) => Ok(s.claim(key, wait).await.map(|c| match c {
                LocalClaim::Publish(p) => Claim::Publish(Pending::Local(p)),
                LocalClaim::Replay(a) => Claim::Replay(a),
            })),
            Keys::Redis(r) => r.claim(key, wait).await,
        }
    }
}

impl Pending {
    /// Keeps `answer` for the key.
    pub async fn finish(self, answer: Answer) {
        match self {
            Pending::Local(p) => p.finish(answer),
            Pending::Redis(p) => p.finish(answer).await,
        }
    }
}

/// A kept answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its JSON body.
    pub body: Bytes,
    /// What the request was (a digest of its method, path and body): a repeat of the key with
    /// another request is a client's mistake, not a repeat.
    pub fingerprint: [u8; 32],
}

enum Entry {
    /// The first request is publishing; waiters watch for its end.
    Pending(watch::Receiver<bool>),
    /// Its answer, until `until`.
    Done { answer: Answer, until: Instant },
}

/// The answers of one route, in this process.
pub struct Store {
    config: IdempotencyConfig,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Done keys in the order they were kept: the front expires (or is evicted) first.
    order: VecDeque<(Instant, String)>,
}

/// What a request with a key is to do, by the local store.
enum LocalClaim {
    /// Publish, then finish with the answer (dropping it forgets the key).
    Publish(LocalPending),
    /// Answer this again.
    Replay(Answer),
}

/// The right to publish for a key; the key is released if this is dropped unfinished.
pub struct LocalPending {
    store: Arc<Store>,
    key: Option<String>,
    done: watch::Sender<bool>,
}

impl Store {
    /// An empty store with the route's settings.
    fn new(config: IdempotencyConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Claims `key`: the first request gets to publish; a repeat gets the kept answer, or waits
    /// (at most `wait`) for the first to finish. `None` when the wait ran out.
    async fn claim(self: &Arc<Self>, key: &str, wait: Duration) -> Option<LocalClaim> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut pending = match self.try_claim(key) {
                Ok(claim) => return Some(claim),
                Err(rx) => rx,
            };
            let ended = pending.wait_for(|done| *done);
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return None;
            }
        }
    }

    fn try_claim(self: &Arc<Self>, key: &str) -> Result<LocalClaim, watch::Receiver<bool>> {
        let Ok(mut inner) = self.inner.lock() else {
            // A poisoned store only loses deduplication, never the publish.
            let (done, _) = watch::channel(false);
            return Ok(LocalClaim::Publish(LocalPending {
                store: self.clone(),
                key: None,
                done,
            }));
        };
        let now = Instant::now();
        inner.expire(now);
        match inner.entries.get(key) {
            Some(Entry::Done { answer, until }) if *until > now => {
                return Ok(LocalClaim::Replay(answer.clone()));
            }
            Some(Entry::Pending(rx)) if !*rx.borrow() => return Err(rx.clone()),
            _ => {}
        }
        let (done, rx) = watch::channel(false);
        inner.entries.insert(key.to_owned(), Entry::Pending(rx));
        Ok(LocalClaim::Publish(LocalPending {
            store: self.clone(),
            key: Some(key.to_owned()),
            done,
        }))
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.order.front() {
            if *until > now {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                if matches!(self.entries.get(&key), Some(Entry::Done { until, .. }) if *until <= now)
                {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

impl LocalPending {
    /// Keeps `answer` for the key and wakes the requests waiting for it.
    fn finish(mut self, answer: Answer) {
        if let Some(key) = self.key.take() {
            if let Ok(mut inner) = self.store.inner.lock() {
                let until = Instant::now() + self.store.config.window;
                inner
                    .entries
                    .insert(key.clone(), Entry::Done { answer, until });
                inner.order.push_back((until, key));
                while inner.order.len() > self.store.config.max_keys {
                    if let Some((_, oldest)) = inner.order.pop_front() {
                        inner.entries.remove(&oldest);
                    }
                }
            }
        }
        let _ = self.done.send(true);
    }
}

impl Drop for LocalPending {
    fn drop(&mut self) {
        // Unfinished (the publish failed, or the request went away): the key is free again.
        if let Some(key) = self.key.take() {
            if let Ok(mut inner) = self.store.inner.lock() {
                if matches!(inner.entries.get(&key), Some(Entry::Pending(_))) {
                    inner.entries.remove(&key);
                }
            }
        }
        let _ = self.done.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_keys: usize) -> Arc<Store> {
        Store::new(IdempotencyConfig {
            window: Duration::from_secs(3600),
            max_keys,
            redis: None,
        })
    }

    fn answer(body: &'static str) -> Answer {
        Answer {
            status: StatusCode::ACCEPTED,
            body: Bytes::from_static(body.as_bytes()),
            fingerprint: [0; 32],
        }
    }

    async fn claim(s: &Arc<Store>, key: &str) -> LocalClaim {
        s.claim(key, Duration::from_secs(30))
            .await
            .expect("no wait runs out here")
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_answer_and_a_failure_frees_the_key() {
        let s = store(10);
        let LocalClaim::Publish(p) = claim(&s, "k").await else {
            panic!("first claim publishes");
        };
        p.finish(answer("one"));
        let LocalClaim::Replay(a) = claim(&s, "k").await else {
            panic!("repeat replays");
        };
        assert_eq!(a, answer("one"));
        let LocalClaim::Publish(p) = claim(&s, "other").await else {
            panic!("another key publishes");
        };
        drop(p);
        assert!(matches!(claim(&s, "other").await, LocalClaim::Publish(_)));
    }

    #[tokio::test]
    async fn a_repeat_during_the_first_waits_for_its_answer() {
        let s = store(10);
        let LocalClaim::Publish(p) = claim(&s, "k").await else {
            panic!("first claim publishes");
        };
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { claim(&s2, "k").await });
        // The waiter is parked on the first's watch before the answer is kept, or finds the
        // answer kept: both end in the replay.
        p.finish(answer("first"));
        let LocalClaim::Replay(a) = waiter.await.expect("waiter") else {
            panic!("the waiter replays");
        };
        assert_eq!(a, answer("first"));
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_says_so() {
        let s = store(10);
        let LocalClaim::Publish(_p) = claim(&s, "k").await else {
            panic!("first claim publishes");
        };
        assert!(s.claim("k", Duration::ZERO).await.is_none());
    }

    #[tokio::test]
    async fn the_oldest_answers_go_first_past_max_keys() {
        let s = store(2);
        for k in ["a", "b", "c"] {
            let LocalClaim::Publish(p) = claim(&s, k).await else {
                panic!("new key publishes");
            };
            p.finish(answer("x"));
        }
        assert!(matches!(claim(&s, "a").await, LocalClaim::Publish(_)));
        assert!(matches!(claim(&s, "c").await, LocalClaim::Replay(_)));
    }

    #[tokio::test]
    async fn an_expired_answer_is_forgotten() {
        let s = Store::new(IdempotencyConfig {
            window: Duration::ZERO,
            max_keys: 10,
            redis: None,
        });
        let LocalClaim::Publish(p) = claim(&s, "k").await else {
            panic!("first claim publishes");
        };
        p.finish(answer("x"));
        assert!(matches!(claim(&s, "k").await, LocalClaim::Publish(_)));
    }
}
