//! The downstream connection loop: what an HTTP/1.x connection holds while it waits, and how
//! long a client may take to send a request head.
//!
//! pingora's own loop starts a request's proxy future (a ~12 KB box) and its 4 KiB header buffer
//! before the request's first byte arrives, so every idle keep-alive connection keeps both for as
//! long as the client waits. Here a connection waits for a request's first bytes with nothing but
//! the socket, reads the rest of the head under the listener's `request_header_timeout` (checked
//! by src/proxy/head.rs), then hands the bytes to pingora as the start of the request (its
//! "pipelined prefix", parsed before any read), so the read count per request is unchanged.
//!
//! The first bytes also decide h2c: pingora waited for 24 bytes (the preface's length) first,
//! which a shorter HTTP/1.0 request never sends. HTTP/2 connections (h2c, or TLS with ALPN h2)
//! are pingora's loop.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncWriteExt, ReadBuf};

use super::head::{self, HeadCheck, Refusal};
use super::respond::{self, ErrorWire};
use super::tls::TlsEndpoints;
use super::{log, Gateway};
use crate::config::{ClientLimits, GatewayConfig, Listener};
use crate::snapshot::Snapshot;

/// How long a keep-alive connection may sit idle; pingora's default, kept.
const KEEPALIVE_SECS: u64 = 60;
/// Size of the first read of a request: pingora's initial header buffer.
const FIRST_READ: usize = 4096;
/// Room for the request line and framing beyond the configured header-bytes limit, so that the
/// pipeline, not this loop, answers requests just over the limits with its precise 414 / 431.
const HEAD_SLACK: usize = 1024;
/// Longest wait for a client to take an error answer before the connection is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the connection loop knows of a request that pingora does not: when its head began to
/// arrive (a total `request_timeout` counts from the first byte) and its listener's limits.
/// Handed to the request pipeline through pingora's per-connection user context.
#[derive(Debug, Clone, Copy)]
pub struct FromConnection {
    /// When the request's first byte arrived (the accept, for a connection's first request).
    pub started: Instant,
    /// The client limits of the listener the connection came in on.
    pub limits: ClientLimits,
}

/// The listeners as they were bound at start: a connection's local address says which one it
/// came in on. Bindings outlive reloads (a new address needs a restart), so a listener is found
/// here and its current limits then by name in the live config.
#[derive(Debug)]
pub struct BoundListeners(Vec<(SocketAddr, Arc<str>, ClientLimits)>);

impl BoundListeners {
    /// The listeners of the config the process started with.
    pub fn new(listeners: &[Listener]) -> Self {
        Self(
            listeners
                .iter()
                .map(|l| (l.address, Arc::from(l.name.as_str()), l.client))
                .collect(),
        )
    }

    /// The limits now of the listener that accepted a connection on `local`: the one bound to
    /// that address, else to the unspecified address (`0.0.0.0`, `[::]`) on its port. A listener
    /// renamed by a reload (which needs a restart to take effect) keeps the limits it started
    /// with; an unknown one gets the server's.
    pub fn limits(&self, config: &GatewayConfig, local: Option<SocketAddr>) -> ClientLimits {
        let bound = local.and_then(|local| {
            self.0.iter().find(|(a, ..)| *a == local).or_else(|| {
                self.0
                    .iter()
                    .find(|(a, ..)| a.port() == local.port() && a.ip().is_unspecified())
            })
        });
        let Some((_, name, started_with)) = bound else {
            return config.server.client;
        };
        config
            .listeners
            .iter()
            .find(|l| *l.name == **name)
            .map_or(*started_with, |l| l.client)
    }
}

/// The listening services' app: pingora's proxy, with tollgate's HTTP/1.x connection loop.
pub struct Front {
    proxy: Arc<HttpProxy<Gateway>>,
    h2c: bool,
    snapshot: Arc<ArcSwap<Snapshot>>,
    listeners: Arc<BoundListeners>,
    tls: TlsEndpoints,
}

impl Front {
    /// The app of a group of listeners, reading their limits from the live snapshot.
    pub fn new(
        proxy: HttpProxy<Gateway>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        listeners: Arc<BoundListeners>,
    ) -> Self {
        let h2c = proxy.server_options.as_ref().is_some_and(|o| o.h2c);
        Front {
            proxy: Arc::new(proxy),
            h2c,
            snapshot,
            listeners,
            tls: TlsEndpoints::default(),
        }
    }

    /// The TLS listeners among this app's, whose connections it handshakes (src/proxy/tls.rs).
    pub fn with_tls(mut self, tls: TlsEndpoints) -> Self {
        self.tls = tls;
        self
    }

    /// The limits of the listener at `local` now (a reload may change them), and the largest
    /// head accepted.
    fn limits(&self, local: Option<SocketAddr>) -> (ClientLimits, usize) {
        let snap = self.snapshot.load();
        let limits = self.listeners.limits(&snap.config, local);
        let server = &snap.config.server;
        let max_head = server
            .max_request_header_bytes
            .saturating_add(server.max_uri_bytes)
            .saturating_add(HEAD_SLACK);
        (limits, max_head)
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !self.tls.is_empty() {
            let local = stream
                .get_socket_digest()
                .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
            if let Some(endpoint) = self.tls.find(local) {
                stream = endpoint.handshake(stream).await?;
            }
        }
        let tls = stream.get_ssl_digest().is_some();
        if tls && matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        let accepted = Instant::now();
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let (mut limits, mut max_head) = self.limits(local);
        let mut shutdown = shutdown.clone();
        // A connection accepted before shutdown began gets its first request served, even when
        // the bytes arrive after: its client has done nothing wrong. Its head deadline runs
        // from the accept, so a connection that never sends a byte is closed at it too.
        let mut deadline = accepted + limits.request_header_timeout;
        let mut head = next_request(&mut stream, Wait::Until(deadline)).await?;
        if !tls && self.h2c && maybe_h2c_preface(&head) {
            // Given back to the socket, the bytes reach pingora's loop, which peeks for the whole
            // preface and serves HTTP/2. Plaintext listeners only make L4 streams.
            let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
            l4.rewind(&head);
            return ServerApp::process_new(&self.proxy, l4, &shutdown).await;
        }

        let limit = self
            .proxy
            .server_options
            .as_ref()
            .and_then(|o| o.keepalive_request_limit);
        let mut settings = None;
        let mut first = true;
        let mut started = accepted;
        loop {
            let read = complete_head(
                &mut stream,
                &mut head,
                deadline,
                limits.request_header_timeout,
                max_head,
            );
            match read.await {
                Read::Whole => {}
                Read::Closed => return None,
                Read::Refused(refusal) => {
                    self.refuse(&mut stream, refusal, started).await;
                    return None;
                }
            }
            let mut session = ServerSession::new_http1(stream);
            if first {
                first = false;
                session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_SECS));
                session.set_keepalive_reuses_remaining(limit);
            } else if let Some(settings) = settings.take() {
                HttpPersistentSettings::apply_to_session(settings, &mut session);
            }
            // Only a whole-request deadline needs the head's start from here; without one, the
            // pipeline finds the listener's limits itself and no box is made per request.
            if limits.request_timeout.is_some() {
                let from = FromConnection { started, limits };
                session.set_connection_user_context(Some(Box::new(from)));
            }
            // tollgate never enables pingora's pipelining, so the settings carry no prefix of
            // their own that this one would have to follow.
            session.set_pipelined_prefix(head);
            (stream, settings) = self
                .proxy
                .process_new_http(session, &shutdown)
                .await?
                .consume();
            head = next_request(&mut stream, Wait::Idle(&mut shutdown)).await?;
            started = Instant::now();
            (limits, max_head) = self.limits(local);
            deadline = started + limits.request_header_timeout;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

impl Front {
    /// Answers a refused head in the shape its client reads, logs and counts it, and leaves
    /// the connection to be closed: after a bad head nothing on it can be trusted.
    async fn refuse(&self, stream: &mut Stream, r: Refusal, started: Instant) {
        let request_id = r
            .request_id
            .clone()
            .unwrap_or_else(tollgate_plugin_api::generate_request_id);
        let wire = r
            .content_type
            .as_deref()
            .map_or(ErrorWire::Json, ErrorWire::of_content_type);
        let rendered = respond::render(&r.error, wire, &request_id);
        // A HEAD request gets the headers only, as everywhere else.
        let head_only = r.method == "HEAD";
        let out = refusal_bytes(&rendered, head_only);
        let write = async {
            stream.write_all(&out).await?;
            stream.flush().await
        };
        let written = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
        let status = r.error.status().as_u16();
        let sent = if matches!(written, Ok(Ok(()))) {
            status
        } else {
            0
        };
        let elapsed = started.elapsed();
        let method = http::Method::from_bytes(r.method.as_bytes()).unwrap_or(http::Method::GET);
        log::count_unrouted(&method, status, elapsed);
        tracing::debug!(request_id = %request_id, status, code = r.error.code(),
            message = %r.error, "request head refused");
        if crate::telemetry::access_log::enabled() {
            let body_sent = if sent == 0 || head_only {
                0
            } else {
                rendered.body.len() as u64
            };
            self.log_refusal(stream, &r, &request_id, (sent, body_sent), elapsed);
        }
    }

    /// The access log line of a refused head; `sent` is the status and body bytes the client
    /// got (status 0 when the answer could not be written).
    fn log_refusal(
        &self,
        stream: &Stream,
        r: &Refusal,
        request_id: &str,
        sent: (u16, u64),
        elapsed: Duration,
    ) {
        let snap = self.snapshot.load();
        let (path, query) = match r.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (r.target.as_str(), None),
        };
        let client_ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned())
            .and_then(|a| a.as_inet().map(|a| a.ip()));
        log::access_log(
            &snap.config.access_log.fields,
            &log::Entry {
                request_id,
                trace_id: None,
                client_ip,
                method: &r.method,
                host: None,
                path,
                query,
                protocol: "HTTP/1.1",
                route: "",
                upstream: "",
                target: None,
                status: sent.0,
                bytes_sent: sent.1,
                bytes_received: 0,
                duration: elapsed,
                upstream_time: Duration::ZERO,
                attempts: 0,
                error: Some(r.error.code()),
            },
        );
    }
}

/// A refusal as HTTP/1.1 bytes, closing the connection.
fn refusal_bytes(rendered: &respond::Rendered, head_only: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + rendered.body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            rendered.status.as_str(),
            rendered.status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &rendered.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            rendered.body.len()
        )
        .as_bytes(),
    );
    if !head_only {
        out.extend_from_slice(&rendered.body);
    }
    out
}

/// Whether a connection's first bytes may be the HTTP/2 preface: all of it, or the start of it
/// when the first read was shorter. Anything else is HTTP/1 — also requests shorter than the
/// preface, which pingora's 24-byte peek would wait on.
fn maybe_h2c_preface(head: &[u8]) -> bool {
    let n = head.len().min(H2_PREFACE.len());
    head[..n] == H2_PREFACE[..n]
}

/// How long to wait for a request's first bytes.
enum Wait<'a> {
    /// The first request of a connection: until its head deadline.
    Until(Instant),
    /// An idle keep-alive connection: the keep-alive time, or until the server shuts down.
    Idle(&'a mut ShutdownWatch),
}

/// Waits for a request's first bytes and returns them; `None` when the client closes, the wait
/// runs out or, for an idle keep-alive connection, the server shuts down — the cases where
/// pingora's loop closes the connection too. Bytes already there win over shutdown.
async fn next_request(stream: &mut Stream, wait: Wait<'_>) -> Option<BytesMut> {
    let read = poll_fn(|cx| poll_read_new(stream, cx));
    match wait {
        Wait::Until(deadline) => tokio::time::timeout_at(deadline.into(), read).await.ok()?,
        Wait::Idle(shutdown) => {
            let read = tokio::time::timeout(Duration::from_secs(KEEPALIVE_SECS), read);
            tokio::select! {
                biased;
                head = read => head.ok()?,
                _ = shutdown.changed() => None,
            }
        }
    }
}

/// How reading a head ended.
enum Read {
    /// The head is whole in the buffer: pingora takes it from here.
    Whole,
    /// The client went away mid-head.
    Closed,
    /// The head is refused (late, too large, malformed).
    Refused(Refusal),
}

/// Reads until `head` holds a whole request head, by `deadline` and within `max` bytes.
async fn complete_head(
    stream: &mut Stream,
    head: &mut BytesMut,
    deadline: Instant,
    timeout: Duration,
    max: usize,
) -> Read {
    loop {
        match head::check(head) {
            HeadCheck::Complete => return Read::Whole,
            HeadCheck::Refused(r) => return Read::Refused(r),
            HeadCheck::Partial => {}
        }
        if head.len() > max {
            return Read::Refused(head::too_large(max));
        }
        let more = tokio::time::timeout_at(
            deadline.into(),
            poll_fn(|cx| poll_read_more(stream, head, cx)),
        );
        match more.await {
            Ok(true) => {}
            Ok(false) => return Read::Closed,
            Err(_) => return Read::Refused(head::header_timeout(timeout, head)),
        }
    }
}

fn poll_read_new(stream: &mut Stream, cx: &mut Context<'_>) -> Poll<Option<BytesMut>> {
    // On the stack only for the length of one poll: the waiting connection holds no buffer.
    let mut buf = [MaybeUninit::<u8>::uninit(); FIRST_READ];
    let mut read = ReadBuf::uninit(&mut buf);
    match Pin::new(&mut **stream).poll_read(cx, &mut read) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(())) if !read.filled().is_empty() => {
            let mut head = BytesMut::with_capacity(FIRST_READ);
            head.extend_from_slice(read.filled());
            Poll::Ready(Some(head))
        }
        // End of stream or a read error before a request started: the client is gone.
        Poll::Ready(_) => Poll::Ready(None),
    }
}

/// Appends what the socket has to `head`; `false` when the client closed or failed.
fn poll_read_more(stream: &mut Stream, head: &mut BytesMut, cx: &mut Context<'_>) -> Poll<bool> {
    let mut buf = [MaybeUninit::<u8>::uninit(); FIRST_READ];
    let mut read = ReadBuf::uninit(&mut buf);
    match Pin::new(&mut **stream).poll_read(cx, &mut read) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(())) if !read.filled().is_empty() => {
            head.extend_from_slice(read.filled());
            Poll::Ready(true)
        }
        Poll::Ready(_) => Poll::Ready(false),
    }
}
