//! `Idempotency-Key` answers in Redis, shared by every instance that names the same server.
//!
//! A key is claimed with `SET k pending NX PX window`: the instance that sets it publishes, then
//! replaces `pending` with the answer (same expiry). A repeat elsewhere finds the answer and
//! replays it, or finds `pending` and waits for the answer. A publish that fails deletes the
//! key, so the client's retry publishes. Redis not answering refuses the request (503): a
//! client that sent a key asked not to get a duplicate.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::Mutex;
use tollgate_plugin_api::SecretUrl;

use super::{Answer, Claim, Pending, StoreUnavailable};
use crate::config::IdempotencyConfig;

const PENDING: &str = "pending";
/// How long one Redis command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a repeat looks again while the first request is still publishing.
const POLL: Duration = Duration::from_millis(20);

/// The keys of one route in Redis.
pub struct RedisKeys {
    client: redis::Client,
    server: String,
    config: IdempotencyConfig,
    conn: Mutex<Option<MultiplexedConnection>>,
}

/// The right to publish for a key kept in Redis; dropped unfinished, it frees the key.
pub struct RedisPending {
    keys: Arc<RedisKeys>,
    key: Option<String>,
}

/// The stored form of an answer.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    s: u16,
    f: String,
    b: String,
}

impl RedisKeys {
    pub(super) fn new(url: &SecretUrl, config: &IdempotencyConfig) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url.expose())?,
            server: url.redacted().to_owned(),
            config: config.clone(),
            conn: Mutex::new(None),
        })
    }

    pub(super) fn config(&self) -> &IdempotencyConfig {
        &self.config
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> StoreUnavailable {
        StoreUnavailable {
            server: self.server.clone(),
            reason: e.to_string(),
        }
    }

    /// The shared connection, dialled when there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, StoreUnavailable> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let settings = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&settings)
            .await
            .map_err(|e| self.unavailable(e))?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Runs one command; a failure drops the connection so that the next one dials again.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreUnavailable> {
        let mut c = self.connection().await?;
        match cmd.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                *self.conn.lock().await = None;
                Err(self.unavailable(e))
            }
        }
    }

    pub(super) async fn claim(
        self: &Arc<Self>,
        key: &str,
        wait: Duration,
    ) -> Result<Option<Claim>, StoreUnavailable> {
        let k = format!("tollgate:idempotency:{key}");
        let window = u64::try_from(self.config.window.as_millis()).unwrap_or(u64::MAX);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let set: Option<String> = self
                .run(
                    redis::cmd("SET")
                        .arg(&k)
                        .arg(PENDING)
                        .arg("NX")
                        .arg("PX")
                        .arg(window.max(1)),
                )
                .await?;
            if set.is_some() {
                return Ok(Some(Claim::Publish(Pending::Redis(RedisPending {
                    keys: self.clone(),
                    key: Some(k),
                }))));
            }
            let value: Option<String> = self.run(redis::cmd("GET").arg(&k)).await?;
            match value.as_deref() {
                // Expired or freed in between: claim again.
                None => continue,
                Some(PENDING) => {}
                Some(stored) => match parse(stored) {
                    Some(answer) => return Ok(Some(Claim::Replay(answer))),
                    None => return Err(self.unavailable("an unreadable answer is stored")),
                },
            }
            if tokio::time::Instant::now() + POLL > deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn parse(stored: &str) -> Option<Answer> {
    let s: Stored = serde_json::from_str(stored).ok()?;
    let mut fingerprint = [0u8; 32];
    hex::decode_to_slice(&s.f, &mut fingerprint).ok()?;
    Some(Answer {
        status: StatusCode::from_u16(s.s).ok()?,
        body: Bytes::from(s.b),
        fingerprint,
    })
}

impl RedisPending {
    pub(super) async fn finish(mut self, answer: Answer) {
        let Some(key) = self.key.take() else {
            return;
        };
        let stored = Stored {
            s: answer.status.as_u16(),
            f: hex::encode(answer.fingerprint),
            b: String::from_utf8_lossy(&answer.body).into_owned(),
        };
        let Ok(text) = serde_json::to_string(&stored) else {
            return;
        };
        let window = u64::try_from(self.keys.config.window.as_millis()).unwrap_or(u64::MAX);
        let set = redis::cmd("SET")
            .arg(&key)
            .arg(text)
            .arg("PX")
            .arg(window.max(1))
            .clone();
        if let Err(e) = self.keys.run::<()>(&set).await {
            // Published already: the answer stands; a repeat will publish again.
            tracing::warn!(error = %e, "Idempotency-Key answer not stored");
            let _ = self.keys.run::<()>(redis::cmd("DEL").arg(&key)).await;
        }
    }
}

impl Drop for RedisPending {
    fn drop(&mut self) {
        // Unfinished (the publish failed, or the request went away): the key is free again.
        if let Some(key) = self.key.take() {
            let keys = self.keys.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = keys.run::<()>(redis::cmd("DEL").arg(&key)).await;
                });
            }
        }
    }
}
