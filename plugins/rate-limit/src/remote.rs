//! Shared limits through Redis: the GCRA of `gcra.lua`, run atomically on the server with the
//! server's clock, over one multiplexed connection that is dialled lazily and replaced after
//! failures.
//!
//! Every request waits at most `timeout` for Redis, whatever Redis does (refuses connections,
//! accepts them and never answers, answers slowly). After a failure the connection is dropped
//! and Redis is not tried again for `retry_interval`: meanwhile requests get the `on_error`
//! answer at once instead of each waiting out the timeout.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};
use tokio::sync::watch;

use crate::local::Verdict;

/// The script, also sent whole by EVAL when the server does not know its SHA-1.
const GCRA_LUA: &str = include_str!("gcra.lua");

/// Why a request could not be decided by Redis.
#[derive(Debug)]
pub enum RemoteError {
    /// No connection: Redis failed recently, or could not be reached within the timeout.
    Unavailable,
    /// Redis did not answer within the timeout.
    Timeout,
    /// Redis answered with an error, or the connection broke.
    Redis(RedisError),
    /// The script's reply had an unexpected shape.
    BadReply(String),
}

impl RemoteError {
    /// A short class for a span's `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            RemoteError::Unavailable => "unavailable",
            RemoteError::Timeout => "timeout",
            RemoteError::Redis(_) => "redis_error",
            RemoteError::BadReply(_) => "bad_reply",
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Unavailable => f.write_str("no connection to Redis"),
            RemoteError::Timeout => f.write_str("Redis did not answer in time"),
            RemoteError::Redis(e) => write!(f, "Redis error: {e}"),
            RemoteError::BadReply(r) => write!(f, "unexpected reply from the GCRA script: {r}"),
        }
    }
}

/// One limit of a request, as the script takes it.
#[derive(Debug, Clone)]
pub struct RemoteLimit {
    /// The full Redis key of the bucket.
    pub key: Vec<u8>,
    /// Emission interval in microseconds.
    pub interval_micros: f64,
    /// Burst (>= 1).
    pub burst: u32,
}

/// What Redis decided for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteOutcome {
    /// Whether every limit admitted the request (and was charged).
    pub allowed: bool,
    /// Per limit, in the order given.
    pub verdicts: Vec<Verdict>,
}

/// Connection settings of the shared backend.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Longest wait of a request for Redis, dialling included.
    pub timeout: Duration,
    /// Longest a dial may take (in the background of requests).
    pub connect_timeout: Duration,
    /// After a failure, how long Redis is left alone.
    pub retry_interval: Duration,
}

#[derive(Debug)]
enum LinkState {
    /// Never dialled.
    Idle,
    /// A dial is in flight.
    Dialing,
    /// Connected; `id` tells connections apart so that a late failure report of an old one does
    /// not drop its replacement.
    Up {
        conn: MultiplexedConnection,
        id: u64,
    },
    /// Failed; not to be dialled again before `until`.
    Down { until: Instant },
}

/// The connection to Redis, shared by all requests of one plugin instance.
///
/// A `MultiplexedConnection` pipelines every concurrent request over one socket, which for short
/// scripts does better than a pool of sockets; its driver task lives on the runtime that dialled
/// (the gateway's background runtime, or a proxy worker's if a request got there first), both of
/// which live as long as the process.
pub struct RedisLink {
    client: redis::Client,
    settings: LinkSettings,
    script_sha: String,
    state: Mutex<LinkState>,
    /// Bumped when a dial ends, so that requests waiting for it wake up.
    dialled: watch::Sender<u64>,
    next_id: AtomicU64,
    /// Whether a failure was already logged at warn level since Redis last worked.
    reported_down: AtomicBool,
}

impl fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLink")
            .field(
                "server",
                &self.client.get_connection_info().addr().to_string(),
            )
            .field("settings", &self.settings)
            .finish()
    }
}

/// Parses a Redis URL without touching the network.
pub fn parse_url(url: &str) -> Result<redis::Client, String> {
    let hint = "write redis://[USER:PASSWORD@]HOST[:PORT][/DB] or redis+unix:///PATH";
    // Messages quote the URL without its password: they end up in `tollgate check` output.
    let shown = crate::config::secret_redis_url(url);
    if url.starts_with("rediss://") {
        return Err(format!(
            "Redis URL `{shown}`: TLS (rediss://) is not supported by this build; {hint}"
        ));
    }
    if !["redis://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        return Err(format!(
            "invalid Redis URL `{shown}`: it must start with redis:// or redis+unix://; {hint}"
        ));
    }
    redis::Client::open(url).map_err(|e| {
        let why = e.detail().unwrap_or("not a valid URL");
        format!("invalid Redis URL `{shown}`: {why}; {hint}")
    })
}

impl RedisLink {
    /// A link that has not dialled yet (building a plugin never waits on the network).
    pub fn new(client: redis::Client, settings: LinkSettings) -> Self {
        let (dialled, _) = watch::channel(0);
        RedisLink {
            client,
            settings,
            script_sha: redis::Script::new(GCRA_LUA).get_hash().to_owned(),
            state: Mutex::new(LinkState::Idle),
            dialled,
            next_id: AtomicU64::new(1),
            reported_down: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        // The state is replaced whole under the lock, never left half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the first dial now rather than on the first request (the background task calls
    /// this when the config goes live); does nothing once the link has been used.
    pub fn warm_up(self: &Arc<Self>) {
        let mut st = self.state();
        if matches!(*st, LinkState::Idle) {
            *st = LinkState::Dialing;
            drop(st);
            self.spawn_dial();
        }
    }

    /// A connection, waiting for a dial until `deadline` at most.
    async fn connection(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Option<(MultiplexedConnection, u64)> {
        // Subscribed before looking, so a dial ending in between is not missed.
        let mut dialled = self.dialled.subscribe();
        {
            let mut st = self.state();
            match &*st {
                LinkState::Up { conn, id } => return Some((conn.clone(), *id)),
                LinkState::Down { until } if Instant::now() < *until => return None,
                LinkState::Dialing => {}
                LinkState::Idle | LinkState::Down { .. } => {
                    *st = LinkState::Dialing;
                    drop(st);
                    self.spawn_dial();
                }
            }
        }
        tokio::time::timeout_at(deadline, dialled.changed())
            .await
            .ok()?
            .ok()?;
        match &*self.state() {
            LinkState::Up { conn, id } => Some((conn.clone(), *id)),
            _ => None,
        }
    }

    /// Dials on a task of its own, so that a request giving up on its deadline does not cancel
    /// the dial for the others.
    fn spawn_dial(self: &Arc<Self>) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(self.clone().dial());
            }
            // Unreachable from the gateway (requests and background tasks run on tokio); the
            // waiters are woken rather than left to their deadline.
            Err(_) => {
                self.set_down();
                self.dialled.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    async fn dial(self: Arc<Self>) {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.timeout));
        let result = tokio::time::timeout(
            self.settings.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match result {
            Ok(Ok(conn)) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                *self.state() = LinkState::Up { conn, id };
                if self.reported_down.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = ?self, "rate-limit: connected to Redis again");
                } else {
                    tracing::debug!(redis = ?self, "rate-limit: connected to Redis");
                }
            }
            Ok(Err(e)) => self.report_failure(&format!("cannot connect: {e}")),
            Err(_) => self.report_failure("cannot connect: timed out"),
        }
        self.dialled.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn set_down(&self) {
        *self.state() = LinkState::Down {
            until: Instant::now() + self.settings.retry_interval,
        };
    }

    fn report_failure(&self, what: &str) {
        self.set_down();
        if !self.reported_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(redis = ?self, error = what,
                "rate-limit: Redis unavailable; applying on_error until it is back");
        } else {
            tracing::debug!(redis = ?self, error = what, "rate-limit: Redis still unavailable");
        }
    }

    /// Drops connection `id` after it failed (unless it was replaced already).
    fn fail(&self, id: u64, what: &str) {
        let current = matches!(&*self.state(), LinkState::Up { id: cur, .. } if *cur == id);
        if current {
            self.report_failure(what);
        }
    }

    /// Where the server is, for spans: `(server.address, server.port)`.
    pub fn server(&self) -> (String, Option<u16>) {
        match self.client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), Some(*port)),
            other => (other.to_string(), None),
        }
    }

    /// Runs the GCRA of `limits` for one request.
    pub async fn check(
        self: &Arc<Self>,
        limits: &[RemoteLimit],
    ) -> Result<RemoteOutcome, RemoteError> {
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let (mut conn, id) = self
            .connection(deadline)
            .await
            .ok_or(RemoteError::Unavailable)?;
        let reply = match tokio::time::timeout_at(deadline, self.eval(&mut conn, limits)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                // A broken socket needs a new connection; a script or server error (OOM,
                // read-only replica) does not, but still leaves this request undecided.
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                {
                    self.fail(id, &e.to_string());
                }
                return Err(RemoteError::Redis(e));
            }
            Err(_) => {
                // A hung server: left alone for `retry_interval` so other requests do not queue
                // behind it.
                self.fail(id, "no answer within the timeout");
                return Err(RemoteError::Timeout);
            }
        };
        parse_reply(&reply, limits)
    }

    async fn eval(
        &self,
        conn: &mut MultiplexedConnection,
        limits: &[RemoteLimit],
    ) -> Result<Vec<i64>, RedisError> {
        let invoke = |verb: &str, script: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(script).arg(limits.len());
            for l in limits {
                cmd.arg(l.key.as_slice());
            }
            for l in limits {
                // Display of f64 is the shortest text that parses back to the same value.
                cmd.arg(l.interval_micros.to_string()).arg(l.burst);
            }
            cmd
        };
        match invoke("EVALSHA", &self.script_sha)
            .query_async::<Vec<i64>>(conn)
            .await
        {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // The server's script cache is empty (restart, failover, SCRIPT FLUSH): EVAL
                // sends the source once, which also caches it for the next EVALSHA.
                invoke("EVAL", GCRA_LUA).query_async::<Vec<i64>>(conn).await
            }
            other => other,
        }
    }
}

/// Reads the script's reply: `[admitted, retry_us, (remaining, next_unit_us) per limit]`.
fn parse_reply(reply: &[i64], limits: &[RemoteLimit]) -> Result<RemoteOutcome, RemoteError> {
    if reply.len() != 2 + 2 * limits.len() {
        return Err(RemoteError::BadReply(format!(
            "{} values for {} limits",
            reply.len(),
            limits.len()
        )));
    }
    let allowed = reply[0] == 1;
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let verdicts = reply[2..]
        .chunks_exact(2)
        .map(|pair| {
            let remaining = u64::try_from(pair[0]).unwrap_or(0);
            Verdict {
                // In a refused request the limits that would have admitted it still have units.
                allowed: allowed || remaining > 0,
                remaining,
                refill_in: micros(pair[1]),
            }
        })
        .collect();
    Ok(RemoteOutcome { allowed, verdicts })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};

    /// A throwaway `redis-server` on a free port; killed on drop.
    pub(crate) struct TestRedis {
        child: Child,
        pub port: u16,
    }

    impl TestRedis {
        pub(crate) fn start() -> TestRedis {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (scripts/install-prereqs.sh)");
            let redis = TestRedis { child, port };
            // A hang catcher: a loaded machine may take a few seconds to start a process.
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if redis.ping() {
                    return redis;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("redis-server on port {port} did not answer PING");
        }

        pub(crate) fn ping(&self) -> bool {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
                return false;
            };
            let mut buf = [0u8; 7];
            s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
        }

        pub(crate) fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The timeout for a live Redis: far above any answer on a loaded machine, so that only
    /// the tests of failures see one.
    const LIVE: u64 = 30_000;

    fn link(url: &str, timeout_ms: u64) -> Arc<RedisLink> {
        Arc::new(RedisLink::new(
            parse_url(url).unwrap(),
            LinkSettings {
                timeout: Duration::from_millis(timeout_ms),
                connect_timeout: Duration::from_millis(500),
                retry_interval: Duration::from_millis(200),
            },
        ))
    }

    fn limit(key: &str, rate: &str, burst: u32) -> RemoteLimit {
        RemoteLimit {
            key: key.as_bytes().to_vec(),
            interval_micros: rate.parse::<crate::rate::Rate>().unwrap().interval_micros(),
            burst,
        }
    }

    #[test]
    fn malformed_urls_are_rejected() {
        for (bad, why) in [
            ("localhost:6379", "must start with redis://"),
            ("http://x", "must start with redis://"),
            ("redis//x", "must start with redis://"),
            ("redis://:99999999", "invalid Redis URL"),
            ("redis://h:port", "invalid Redis URL"),
            ("redis://h/db", "invalid Redis URL"),
            ("rediss://h", "TLS (rediss://) is not supported"),
        ] {
            let err = parse_url(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains("write redis://"), "{bad}: {err}");
        }
        parse_url("redis://127.0.0.1:6379/0").unwrap();
        parse_url("redis://user:secret@cache.internal:6380/2").unwrap();
        parse_url("redis+unix:///run/redis.sock").unwrap();
        let err = parse_url("rediss://user:s3cret@cache:6380/0").unwrap_err();
        assert!(
            err.contains("`rediss://user:<redacted>@cache:6380/0`"),
            "{err}"
        );
        let err = parse_url("redis://user:s3cret@cache:port").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn replies_are_read_per_limit() {
        let limits = [limit("a", "1/s", 2), limit("b", "1/s", 2)];
        let out = parse_reply(&[0, 500_000, 0, 500_000, 1, 1_000_000], &limits).unwrap();
        assert!(!out.allowed);
        assert_eq!(
            out.verdicts,
            [
                Verdict {
                    allowed: false,
                    remaining: 0,
                    refill_in: Duration::from_millis(500)
                },
                Verdict {
                    allowed: true,
                    remaining: 1,
                    refill_in: Duration::from_secs(1)
                },
            ]
        );
        assert!(parse_reply(&[1, 0, 3], &limits).is_err());
    }

    #[tokio::test]
    async fn lua_gcra_admits_the_burst_then_refuses_and_charges_nothing_for_refusals() {
        let redis = TestRedis::start();
        let link = link(&redis.url(), LIVE);
        // 1/min: no refill during the test, so every count is exact.
        let l = [limit("t:burst", "1/min", 5)];
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let out = link.check(&l).await.unwrap();
            assert!(out.allowed);
            remaining.push(out.verdicts[0].remaining);
            // The unit taken first comes back one interval after it was taken.
            let t = out.verdicts[0].refill_in;
            assert!(
                t > Duration::from_secs(59) && t <= Duration::from_secs(60),
                "{t:?}"
            );
        }
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        for _ in 0..3 {
            let out = link.check(&l).await.unwrap();
            assert!(!out.allowed);
            assert_eq!(out.verdicts[0].remaining, 0);
            let t = out.verdicts[0].refill_in;
            assert!(
                t > Duration::from_secs(59) && t <= Duration::from_secs(60),
                "{t:?}"
            );
        }
    }

    #[tokio::test]
    async fn lua_gcra_is_all_or_nothing_across_limits() {
        let redis = TestRedis::start();
        let link = link(&redis.url(), LIVE);
        let wide = limit("t:wide", "1/min", 10);
        let narrow = limit("t:narrow", "1/min", 2);
        let both = [wide.clone(), narrow];
        assert!(link.check(&both).await.unwrap().allowed);
        assert!(link.check(&both).await.unwrap().allowed);
        let refused = link.check(&both).await.unwrap();
        assert!(!refused.allowed);
        assert!(refused.verdicts[0].allowed && !refused.verdicts[1].allowed);
        assert_eq!(
            refused.verdicts[0].remaining, 8,
            "the refusal took nothing from `wide`"
        );
        // `wide` alone still has its 8 units.
        let out = link.check(std::slice::from_ref(&wide)).await.unwrap();
        assert_eq!(out.verdicts[0].remaining, 7);
    }

    #[tokio::test]
    async fn lua_gcra_refills_at_the_rate_and_keys_expire_when_full() {
        let redis = TestRedis::start();
        let link = link(&redis.url(), LIVE);
        // Burst 1 at 20/s: a request is admitted exactly when 50 ms have passed since the last
        // admission, by Redis's clock. The test knows that moment only to within a request's
        // sending and answer, so it asserts what those prove.
        let l = [limit("t:refill", "20/s", 1)];
        let sent = Instant::now();
        assert!(link.check(&l).await.unwrap().allowed);
        let answered = Instant::now();
        let again = link.check(&l).await.unwrap();
        if sent.elapsed() < Duration::from_millis(50) {
            assert!(!again.allowed, "within one interval of the admission");
        }
        tokio::time::sleep_until((answered + Duration::from_millis(50)).into()).await;
        assert!(link.check(&l).await.unwrap().allowed, "one unit per 50 ms");

        let client = parse_url(&redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // The key lives until the bucket is full again: one interval after one admission.
        let slow = [limit("t:ttl", "1/min", 2)];
        assert!(link.check(&slow).await.unwrap().allowed);
        let ttl: i64 = redis::cmd("PTTL")
            .arg("t:ttl")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=60_000).contains(&ttl), "ttl {ttl} ms");
        // A bucket full again 1 ms after its admission: gone once that has passed.
        let fast = [limit("t:expire", "1000/s", 1)];
        assert!(link.check(&fast).await.unwrap().allowed);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let exists: i64 = redis::cmd("EXISTS")
            .arg("t:expire")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0, "an idle key expires");
    }

    #[tokio::test]
    async fn script_cache_loss_falls_back_to_eval() {
        let redis = TestRedis::start();
        let link = link(&redis.url(), LIVE);
        let l = [limit("t:flush", "1/min", 3)];
        assert_eq!(link.check(&l).await.unwrap().verdicts[0].remaining, 2);
        let client = parse_url(&redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(link.check(&l).await.unwrap().verdicts[0].remaining, 1);
        assert_eq!(link.check(&l).await.unwrap().verdicts[0].remaining, 0);
    }

    #[tokio::test]
    async fn unreachable_redis_fails_fast_and_is_left_alone_for_a_while() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let link = link(&format!("redis://127.0.0.1:{port}"), 300);
        let l = [limit("k", "1/s", 1)];
        let started = Instant::now();
        assert!(link.check(&l).await.is_err());
        // Refused connection: known at once, and remembered.
        assert!(matches!(
            link.check(&l).await,
            Err(RemoteError::Unavailable)
        ));
        // A refused connection is known at once; the bound only catches a hang.
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_hung_redis_costs_at_most_the_timeout() {
        // A listener that accepts and never answers, like a stopped server.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let link = link(&format!("redis://127.0.0.1:{port}"), 200);
        let l = [limit("k", "1/s", 1)];
        for _ in 0..3 {
            let started = Instant::now();
            assert!(link.check(&l).await.is_err());
            // The listener never answers: without the 200 ms timeout this would wait forever.
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
        }
        drop(silent);
    }
}
