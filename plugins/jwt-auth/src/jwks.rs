//! A remote JWKS (`jwks_url`): fetched before the route serves, refreshed on the schedule its
//! `Cache-Control` asks for (within bounds), refetched when a token names an unknown `kid`.
//!
//! Every fetch runs under one lock, so fetches never overlap: requests that meet an unknown `kid`
//! while a fetch is under way wait for it and look again instead of fetching themselves
//! (single-flight). A fetch caused by an unknown `kid` happens at most once per
//! `jwks_refetch_interval`, so tokens with forged `kid`s cannot make the gateway hammer the
//! identity provider. A failed fetch keeps the last good key set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::Algorithm;
use tokio::sync::{watch, Mutex};

use tollgate_plugin_api::{error_chain, IoSpan, RequestContext};

use crate::keys::{parse_jwks, KeySet};

/// Largest JWKS document accepted; real ones are a few KiB.
pub(crate) const MAX_JWKS_BYTES: usize = 1 << 20;

/// The shortest wait before retrying a failed fetch; doubles up to `min_refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// How a remote JWKS is fetched and refreshed.
#[derive(Debug, Clone)]
pub(crate) struct JwksSettings {
    pub url: reqwest::Url,
    /// Shown in logs and errors: the issuer, or the URL.
    pub label: String,
    /// The provider's algorithms; keys are pinned to them.
    pub algorithms: Vec<Algorithm>,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub refetch_interval: Duration,
    pub timeout: Duration,
}

/// What a request that met an unknown `kid` should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refetch {
    /// A newer key set is in place: look the `kid` up again.
    LookAgain,
    /// The set was refetched too recently to fetch again for this token.
    TooSoon,
    /// The fetch failed (already logged).
    Failed,
}

/// When the next scheduled fetch is due.
#[derive(Debug)]
struct Schedule {
    due: Instant,
    failures: u32,
}

/// A remote JWKS and its current key set.
pub(crate) struct RemoteJwks {
    settings: JwksSettings,
    current: ArcSwap<KeySet>,
    /// Held for the whole of every fetch; holds when the last unknown-`kid` fetch started.
    gate: Arc<Mutex<Option<Instant>>>,
    schedule: StdMutex<Schedule>,
    client: OnceLock<reqwest::Client>,
    /// Fetch attempts so far (for logs and tests).
    attempts: AtomicU64,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.settings.url.as_str())
            .field("generation", &self.current.load().generation)
            .finish()
    }
}

impl RemoteJwks {
    /// A JWKS with no keys yet; nothing is fetched until `refresh`.
    pub fn new(settings: JwksSettings) -> Self {
        Self {
            settings,
            current: ArcSwap::from_pointee(KeySet::default()),
            gate: Arc::new(Mutex::new(None)),
            schedule: StdMutex::new(Schedule {
                due: Instant::now(),
                failures: 0,
            }),
            client: OnceLock::new(),
            attempts: AtomicU64::new(0),
        }
    }

    /// The current key set (empty with generation 0 until the first fetch succeeds).
    pub fn keys(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// The generation of the current key set, without taking a reference to it.
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// The issuer or URL, for messages.
    pub fn label(&self) -> &str {
        &self.settings.label
    }

    /// How long a client should wait before retrying when no keys are available.
    pub fn retry_after(&self) -> Duration {
        self.settings.refetch_interval
    }

    /// Fetches the set now (waiting for a fetch under way to finish first).
    pub async fn refresh(&self) -> Result<(), String> {
        let _gate = self.gate.lock().await;
        self.fetch(self.span(None)).await
    }

    /// The client span of one fetch: in the trace of the request that caused it, or a trace of
    /// its own for scheduled refreshes.
    fn span(&self, ctx: Option<&RequestContext>) -> IoSpan {
        let url = &self.settings.url;
        let mut span = IoSpan::start(ctx, "GET", || {
            vec![
                ("http.request.method", "GET".to_owned()),
                ("url.full", url.to_string()),
                (
                    "server.address",
                    url.host_str().unwrap_or_default().to_owned(),
                ),
                ("tollgate.plugin", "jwt-auth".to_owned()),
            ]
        });
        if let Some(port) = url.port_or_known_default() {
            span.int("server.port", i64::from(port));
        }
        span
    }

    /// Called when a token names a `kid` missing from the set of generation `seen`.
    pub async fn refetch_for_unknown_kid(
        self: &Arc<Self>,
        seen: u64,
        ctx: Option<&RequestContext>,
    ) -> Refetch {
        let mut gate = self.gate.clone().lock_owned().await;
        // Someone fetched while this request waited for the lock: its result is the answer.
        if self.current.load().generation != seen {
            return Refetch::LookAgain;
        }
        if gate.is_some_and(|last| last.elapsed() < self.settings.refetch_interval) {
            return Refetch::TooSoon;
        }
        *gate = Some(Instant::now());
        // The fetch runs as its own task holding the lock, so a client that gives up mid-fetch
        // neither aborts it nor lets a second fetch start beside it.
        let this = self.clone();
        let span = self.span(ctx);
        let fetch = tokio::spawn(async move {
            let result = this.fetch(span).await;
            drop(gate);
            result
        });
        match fetch.await {
            Ok(Ok(())) => Refetch::LookAgain,
            _ => Refetch::Failed,
        }
    }

    /// Refreshes the set whenever it is due, until `stop` turns true or its sender is gone.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let due = self.lock_schedule().due;
            let wait = due.saturating_duration_since(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
            // An unknown-`kid` fetch may have moved the schedule while this task slept.
            if self.lock_schedule().due > Instant::now() {
                continue;
            }
            // Failures are logged by `fetch` and rescheduled with a backoff.
            let _ = self.refresh().await;
        }
    }

    fn lock_schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        // The schedule is two plain values: one left by a panicking holder is still usable.
        self.schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One fetch; the caller holds the gate. On success the new set replaces the old and the
    /// next fetch is scheduled by the response's `max-age`; on failure the old set stays and a
    /// retry is scheduled with a backoff.
    async fn fetch(&self, mut span: IoSpan) -> Result<(), String> {
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let result = self.download().await.and_then(|(body, max_age)| {
            let (keys, skipped) = parse_jwks(&body, &self.settings.algorithms)?;
            Ok((keys, skipped, max_age))
        });
        let now = Instant::now();
        match result {
            Ok((keys, skipped, max_age)) => {
                for why in &skipped {
                    tracing::warn!(jwks = %self.settings.url, "JWKS key ignored: {why}");
                }
                let generation = self.current.load().generation + 1;
                let count = keys.len();
                self.current.store(Arc::new(KeySet {
                    keys,
                    generation,
                    ignore_kid: false,
                }));
                let next = refresh_interval(max_age, &self.settings);
                *self.lock_schedule() = Schedule {
                    due: now + next,
                    failures: 0,
                };
                tracing::info!(jwks = %self.settings.url, keys = count, attempt,
                    next_refresh_secs = next.as_secs(), "JWKS loaded");
                span.int("tollgate.jwks.keys", count as i64);
                Ok(())
            }
            Err(e) => {
                let mut schedule = self.lock_schedule();
                schedule.failures = schedule.failures.saturating_add(1);
                let backoff = retry_backoff(schedule.failures, self.settings.min_refresh);
                schedule.due = now + backoff;
                let kept = self.current.load().keys.len();
                tracing::warn!(jwks = %self.settings.url, attempt, keys_kept = kept,
                    retry_in_ms = backoff.as_millis() as u64,
                    "JWKS fetch failed: {e}");
                span.error("jwks_fetch_failed", &e);
                Err(e)
            }
        }
    }

    /// GETs the document: bounded in time (the client's timeout) and size.
    async fn download(&self) -> Result<(Vec<u8>, Option<Duration>), String> {
        let client = self.client()?;
        let url = &self.settings.url;
        let mut resp = client
            .get(url.clone())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!(
                "GET {url}: the body is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        let max_age = max_age(resp.headers());
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "GET {url}: the body is larger than {MAX_JWKS_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let client = http_client(&self.settings)?;
        Ok(self.client.get_or_init(|| client))
    }
}

/// The HTTP client of one JWKS: whole-request timeout, no pooled connections (fetches are rare
/// and may run on different runtimes, and a pooled connection belongs to the runtime that made
/// it), at most 3 redirects, and never from `https` down to `http`.
fn http_client(settings: &JwksSettings) -> Result<reqwest::Client, String> {
    // reqwest built without a crypto provider panics when none is installed; the binary installs
    // aws-lc-rs (the gateway's one provider) at startup, and this covers embedders and tests
    // that do not.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::limited(3))
        .https_only(settings.url.scheme() == "https")
        .user_agent(concat!("tollgate-jwt-auth/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {}", error_chain(&e)))
}

/// `max-age` of a response's `Cache-Control`; `no-cache`/`no-store` count as 0.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|directive| {
            let directive = directive.trim().to_ascii_lowercase();
            if directive == "no-cache" || directive == "no-store" {
                return Some(Duration::ZERO);
            }
            directive
                .strip_prefix("max-age=")
                .and_then(|n| n.trim_matches('"').parse::<u64>().ok())
                .map(Duration::from_secs)
        })
}

/// The wait before the next scheduled fetch: the server's `max-age` (or `max_refresh` without
/// one) within `[min_refresh, max_refresh]`.
fn refresh_interval(max_age: Option<Duration>, s: &JwksSettings) -> Duration {
    max_age
        .unwrap_or(s.max_refresh)
        .clamp(s.min_refresh, s.max_refresh)
}

/// 1 s, 2 s, 4 s, ... after consecutive failures, at most `cap`.
fn retry_backoff(failures: u32, cap: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn settings(url: &str) -> JwksSettings {
        JwksSettings {
            url: url.parse().unwrap(),
            label: "test".into(),
            algorithms: vec![Algorithm::RS256],
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            refetch_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn max_age_is_read_and_clamped() {
        let s = settings("http://127.0.0.1/");
        let mut h = http::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        assert_eq!(refresh_interval(None, &s), s.max_refresh);
        h.insert(
            "cache-control",
            "public, max-age=300, must-revalidate".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(300)));
        assert_eq!(refresh_interval(max_age(&h), &s), Duration::from_secs(300));
        h.insert("cache-control", "Max-Age=5".parse().unwrap());
        assert_eq!(refresh_interval(max_age(&h), &s), s.min_refresh);
        h.insert("cache-control", "max-age=999999".parse().unwrap());
        assert_eq!(refresh_interval(max_age(&h), &s), s.max_refresh);
        h.insert("cache-control", "no-store".parse().unwrap());
        assert_eq!(refresh_interval(max_age(&h), &s), s.min_refresh);
        h.insert("cache-control", "max-age=abc".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }

    #[test]
    fn retries_back_off_up_to_the_minimum_refresh() {
        let cap = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=8).map(|n| retry_backoff(n, cap).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_backoff(u32::MAX, cap), cap);
    }

    /// A one-route HTTP/1.1 server answering every request with `body()`; counts requests.
    async fn serve(
        status: u16,
        body: impl Fn() -> String + Send + Sync + 'static,
        delay: Duration,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let body = Arc::new(body);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let b = body();
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         cache-control: max-age=120\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{b}",
                        b.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}/jwks.json"), hits)
    }

    fn rsa_jwks(kid: &str) -> String {
        let pem = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/jwt/rsa1.pub.pem"),
        )
        .unwrap();
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(&pem).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_decoding_key(&key, None).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::json!({ "keys": [jwk] }).to_string()
    }

    #[tokio::test]
    async fn a_fetch_loads_keys_and_schedules_by_max_age() {
        let (url, hits) = serve(200, || rsa_jwks("k1"), Duration::ZERO).await;
        let jwks = RemoteJwks::new(settings(&url));
        jwks.refresh().await.unwrap();
        let set = jwks.keys();
        assert_eq!(set.generation, 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("k1"));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let due = jwks.lock_schedule().due;
        let wait = due.saturating_duration_since(Instant::now());
        assert!(
            wait > Duration::from_secs(110) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn concurrent_unknown_kids_cause_one_fetch_per_interval() {
        let (url, hits) = serve(200, || rsa_jwks("k1"), Duration::from_millis(200)).await;
        let jwks = Arc::new(RemoteJwks::new(settings(&url)));
        jwks.refresh().await.unwrap();
        let seen = jwks.keys().generation;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let j = jwks.clone();
                tokio::spawn(async move { j.refetch_for_unknown_kid(seen, None).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "the first fetch plus one refetch"
        );
        assert!(
            outcomes.iter().all(|o| *o == Refetch::LookAgain),
            "{outcomes:?}"
        );
        // The set changed, but the next unknown kid within the interval fetches nothing.
        let seen = jwks.keys().generation;
        assert_eq!(
            jwks.refetch_for_unknown_kid(seen, None).await,
            Refetch::TooSoon
        );
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_fetch_keeps_the_last_good_keys() {
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = healthy.clone();
        let (url, _) = serve(
            200,
            move || {
                if flag.load(Ordering::SeqCst) {
                    rsa_jwks("k1")
                } else {
                    "<html>down</html>".into()
                }
            },
            Duration::ZERO,
        )
        .await;
        let jwks = RemoteJwks::new(settings(&url));
        jwks.refresh().await.unwrap();
        healthy.store(false, Ordering::SeqCst);
        let e = jwks.refresh().await.unwrap_err();
        assert!(e.contains("not a JWKS"), "{e}");
        assert_eq!(jwks.keys().generation, 1);
        assert_eq!(jwks.keys().keys.len(), 1);
        assert_eq!(jwks.lock_schedule().failures, 1);
    }

    #[tokio::test]
    async fn errors_statuses_and_oversize_bodies_are_failures() {
        let (url, _) = serve(500, || "{}".into(), Duration::ZERO).await;
        let e = RemoteJwks::new(settings(&url)).refresh().await.unwrap_err();
        assert!(e.contains("status 500"), "{e}");
        let (url, _) = serve(200, || "x".repeat(MAX_JWKS_BYTES + 1), Duration::ZERO).await;
        let e = RemoteJwks::new(settings(&url)).refresh().await.unwrap_err();
        assert!(e.contains("larger than"), "{e}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        assert!(RemoteJwks::new(settings(&url)).refresh().await.is_err());
        // A server that takes a minute: the 200 ms timeout ends the fetch long before.
        let (url, _) = serve(200, || rsa_jwks("k1"), Duration::from_secs(60)).await;
        let mut slow = settings(&url);
        slow.timeout = Duration::from_millis(200);
        let started = Instant::now();
        assert!(RemoteJwks::new(slow).refresh().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_background_loop_refreshes_when_due_and_stops_on_request() {
        let (url, hits) = serve(200, || rsa_jwks("k1"), Duration::ZERO).await;
        let mut s = settings(&url);
        s.min_refresh = Duration::from_millis(100);
        s.max_refresh = Duration::from_millis(100);
        let jwks = Arc::new(RemoteJwks::new(s));
        let (stop_tx, stop_rx) = watch::channel(false);
        let j = jwks.clone();
        let task = tokio::spawn(async move { j.run(stop_rx).await });
        // Every 100 ms: three fetches come, however long the machine takes to get there.
        let deadline = Instant::now() + Duration::from_secs(30);
        while hits.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the loop stopped refreshing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
        assert!(jwks.keys().generation >= 3);
        // Stopped: no fetch after it returned.
        let n = hits.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            hits.load(Ordering::SeqCst),
            n,
            "fetched after the loop stopped"
        );
    }
}
