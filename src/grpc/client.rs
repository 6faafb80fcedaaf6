//! The HTTP/2 client towards gRPC upstreams: prior-knowledge h2c or h2 over TLS, one
//! multiplexed connection per target (address and TLS name) shared by every route and config
//! snapshot of the process, re-opened when the upstream closes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};

use super::target::Target;

/// Why a call could not reach the upstream.
#[derive(Debug)]
pub enum CallError {
    /// Connecting took longer than the connect timeout.
    ConnectTimeout(SocketAddr),
    /// TCP connect or the HTTP/2 handshake failed.
    Connect(SocketAddr, String),
    /// The HTTP/2 stream failed (reset, connection lost).
    Stream(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ConnectTimeout(a) => write!(f, "timed out connecting to upstream {a}"),
            Self::Connect(a, e) => write!(f, "could not connect to upstream {a}: {e}"),
            Self::Stream(e) => write!(f, "upstream HTTP/2 stream failed: {e}"),
        }
    }
}

/// A multiplexed connection: its request handle and whether its connection task has ended.
#[derive(Clone)]
struct Sender {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Sender {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

// The h2 crate directly, not hyper's client: hyper spawns a task per request (and one more to
// pipe the body), so each call paid two task spawns and their cross-task wake-ups. Here the
// request's own task drives its stream.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// The body of an upstream response: the h2 stream's data, then its trailers. Flow-control
/// capacity is released as data is handed on.
pub struct UpstreamBody {
    recv: h2::RecvStream,
    data_done: bool,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => self.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A connection's identity: the address, and the TLS server name if any (the same address may
/// serve several names).
type Key = (SocketAddr, Option<String>);

fn key(target: &Target) -> Key {
    let name = target
        .tls
        .as_ref()
        .map(|t| t.server_name.to_str().into_owned());
    (target.addr, name)
}

/// Connections by target.
#[derive(Default)]
pub struct Pool {
    conns: Mutex<HashMap<Key, Sender>>,
}

/// The process-wide pool: connections outlive config reloads.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

impl Pool {
    /// Sends `req` to `target`, connecting (or reconnecting once) as needed.
    pub async fn send(
        &self,
        target: &Target,
        req: Request<Bytes>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, CallError> {
        let cached = self.cached(&key(target));
        // Connecting is boxed: inlined, its TCP, TLS and h2 handshake futures made every call's
        // future ~7 KB, moved (and so copied) with it at each await level above.
        let sender = match cached {
            Some(s) => s,
            None => Box::pin(self.connect(target, connect_timeout)).await?,
        };
        let mut send = match sender.send.ready().await {
            Ok(s) => s,
            Err(_) => {
                // The pooled connection died between calls: one fresh connection, no more.
                let sender = Box::pin(self.connect(target, connect_timeout)).await?;
                sender
                    .send
                    .ready()
                    .await
                    .map_err(|e| CallError::Connect(target.addr, e.to_string()))?
            }
        };
        let (head, payload) = req.into_parts();
        let end = payload.is_empty();
        let (response, mut stream) = send
            .send_request(Request::from_parts(head, ()), end)
            .map_err(|e| CallError::Stream(e.to_string()))?;
        if !end {
            // h2 buffers what the flow-control window does not yet allow and sends it as the
            // window opens.
            stream
                .send_data(payload, true)
                .map_err(|e| CallError::Stream(e.to_string()))?;
        }
        let response = response
            .await
            .map_err(|e| CallError::Stream(e.to_string()))?;
        Ok(response.map(|recv| UpstreamBody {
            recv,
            data_done: false,
        }))
    }

    fn cached(&self, key: &Key) -> Option<Sender> {
        let conns = self.conns.lock().ok()?;
        conns.get(key).filter(|s| !s.is_closed()).cloned()
    }

    async fn connect(&self, target: &Target, timeout: Duration) -> Result<Sender, CallError> {
        let addr = target.addr;
        let failed = |e: &dyn std::fmt::Display| CallError::Connect(addr, e.to_string());
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| failed(&e))?;
            let _ = tcp.set_nodelay(true);
            let mut builder = h2::client::Builder::new();
            builder
                .enable_push(false)
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW);
            let closed = Arc::new(AtomicBool::new(false));
            let done = closed.clone();
            let Some(tls) = &target.tls else {
                let (send, conn) = builder.handshake(tcp).await.map_err(|e| failed(&e))?;
                tokio::spawn(async move {
                    // Ends when the upstream closes the connection or every sender is dropped.
                    let _ = conn.await;
                    done.store(true, Ordering::Release);
                });
                return Ok(Sender { send, closed });
            };
            let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(|e| failed(&format!("TLS handshake: {e}")))?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(failed(&"the upstream did not agree to HTTP/2 (ALPN h2)"));
            }
            let (send, conn) = builder.handshake(stream).await.map_err(|e| failed(&e))?;
            tokio::spawn(async move {
                let _ = conn.await;
                done.store(true, Ordering::Release);
            });
            Ok(Sender { send, closed })
        };
        let sender = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| CallError::ConnectTimeout(addr))??;
        if let Ok(mut conns) = self.conns.lock() {
            conns.retain(|_, s| !s.is_closed());
            conns.insert(key(target), sender.clone());
        }
        Ok(sender)
    }
}
