//! The downstream connection loop: what a plaintext HTTP/1.1 connection holds while it waits.
//!
//! pingora's own loop starts a request's proxy future (a ~12 KB box) and its 4 KiB header buffer
//! before the request's first byte arrives, so every idle keep-alive connection keeps both for as
//! long as the client waits. Here a connection waits for a request's first bytes with nothing but
//! the socket, then hands those bytes to pingora as the start of the request (its "pipelined
//! prefix", parsed before any read), so the read count per request is unchanged.
//!
//! The first bytes also decide h2c: pingora waited for 24 bytes (the preface's length) first,
//! which a shorter HTTP/1.0 request never sends. TLS and HTTP/2 connections are pingora's loop.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::ReadBuf;

use super::Gateway;

/// How long a keep-alive connection may sit idle; pingora's default, kept.
const KEEPALIVE_SECS: u64 = 60;
/// Size of the first read of a request: pingora's initial header buffer.
const FIRST_READ: usize = 4096;
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The listening service's app: pingora's proxy, with tollgate's HTTP/1.1 keep-alive loop.
pub struct Front {
    proxy: Arc<HttpProxy<Gateway>>,
    h2c: bool,
}

impl Front {
    pub fn new(proxy: HttpProxy<Gateway>) -> Self {
        let h2c = proxy.server_options.as_ref().is_some_and(|o| o.h2c);
        Front {
            proxy: Arc::new(proxy),
            h2c,
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if stream.get_ssl_digest().is_some() {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        let mut shutdown = shutdown.clone();
        // A connection accepted before shutdown began gets its first request served, even when
        // the bytes arrive after: its client has done nothing wrong.
        let mut head = next_request(&mut stream, None).await?;
        if self.h2c && maybe_h2c_preface(&head) {
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
        loop {
            let mut session = ServerSession::new_http1(stream);
            if first {
                first = false;
                session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_SECS));
                session.set_keepalive_reuses_remaining(limit);
            } else if let Some(settings) = settings.take() {
                HttpPersistentSettings::apply_to_session(settings, &mut session);
            }
            // tollgate never enables pingora's pipelining, so the settings carry no prefix of
            // their own that this one would have to follow.
            session.set_pipelined_prefix(head);
            (stream, settings) = self
                .proxy
                .process_new_http(session, &shutdown)
                .await?
                .consume();
            head = next_request(&mut stream, Some(&mut shutdown)).await?;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// Whether a connection's first bytes may be the HTTP/2 preface: all of it, or the start of it
/// when the first read was shorter. Anything else is HTTP/1 — also requests shorter than the
/// preface, which pingora's 24-byte peek would wait on.
fn maybe_h2c_preface(head: &[u8]) -> bool {
    let n = head.len().min(H2_PREFACE.len());
    head[..n] == H2_PREFACE[..n]
}

/// Waits for a request's first bytes and returns them; `None` when the client closes, the
/// keep-alive time runs out or, for an idle keep-alive connection (`shutdown` given), the server
/// shuts down — the cases where pingora's loop closes the connection too. Bytes already there
/// win over shutdown.
async fn next_request(
    stream: &mut Stream,
    shutdown: Option<&mut ShutdownWatch>,
) -> Option<BytesMut> {
    let read = tokio::time::timeout(
        Duration::from_secs(KEEPALIVE_SECS),
        poll_fn(|cx| poll_first_read(stream, cx)),
    );
    let Some(shutdown) = shutdown else {
        return read.await.ok()?;
    };
    tokio::select! {
        biased;
        head = read => head.ok()?,
        _ = shutdown.changed() => None,
    }
}

fn poll_first_read(stream: &mut Stream, cx: &mut Context<'_>) -> Poll<Option<BytesMut>> {
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
