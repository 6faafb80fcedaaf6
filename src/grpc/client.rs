//! The HTTP/2 client towards gRPC upstreams: prior-knowledge h2c or h2 over TLS, one
//! multiplexed connection per target (address, TLS name and TLS client settings) shared by every route and config
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
#[derive(Debug)]
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

/// How one attempt failed.
enum SendError {
    /// The upstream never processed the stream: safe to send again.
    Unprocessed(String),
    /// Anything else.
    Call(CallError),
}

use SendError::Unprocessed;

impl SendError {
    fn classify(e: h2::Error) -> Self {
        let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM) && e.is_remote();
        // A stream failing with the connection's GOAWAY was above its last stream id: streams
        // at or below it are completed by the server before it closes.
        let above_goaway = e.is_go_away() && e.is_remote();
        if refused || above_goaway {
            Unprocessed(e.to_string())
        } else {
            SendError::Call(CallError::Stream(e.to_string()))
        }
    }

    fn into_call_error(self) -> CallError {
        match self {
            Unprocessed(e) => CallError::Stream(e),
            SendError::Call(e) => e,
        }
    }
}

/// A gRPC call's request to the upstream: `POST uri` with `content-type: application/grpc`,
/// `te: trailers` and, given a deadline, `grpc-timeout`. Metadata is the caller's to add.
pub fn grpc_request(
    uri: http::Uri,
    timeout: Option<Duration>,
    payload: Bytes,
) -> Option<Request<Bytes>> {
    let mut builder = Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(t) = timeout {
        builder = builder.header(
            super::metadata::GRPC_TIMEOUT,
            super::metadata::format_timeout(t),
        );
    }
    builder.body(payload).ok()
}

/// A connection's identity: the address, and the TLS server name and client settings if any (the
/// same address may serve several names, and be reached with or without a client certificate).
type Key = (SocketAddr, Option<(String, u64)>);

fn key(target: &Target) -> Key {
    let tls = target
        .tls
        .as_ref()
        .map(|t| (t.server_name.to_str().into_owned(), t.identity));
    (target.addr, tls)
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
        remake: &(dyn Fn() -> Option<Request<Bytes>> + Sync),
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, CallError> {
        let cached = self.cached(&key(target));
        // Connecting is boxed: inlined, its TCP, TLS and h2 handshake futures made every call's
        // future ~7 KB, moved (and so copied) with it at each await level above.
        let sender = match cached {
            Some(s) => s,
            None => Box::pin(self.connect(target, connect_timeout)).await?,
        };
        match self.send_once(sender, target, req, connect_timeout).await {
            // The upstream did not process the stream (RFC 9113 §8.7): refused, or above the
            // last stream id of its GOAWAY — nginx sends one every 1,000 requests of a
            // connection. Such a call is safe to repeat once, on a fresh connection. h2
            // consumes the request, so `remake` builds it again, on this rare path only.
            Err(Unprocessed(e)) => {
                let Some(again) = remake() else {
                    return Err(CallError::Stream(e));
                };
                let fresh = Box::pin(self.connect(target, connect_timeout)).await?;
                match self.send_once(fresh, target, again, connect_timeout).await {
                    Err(Unprocessed(e2)) => {
                        Err(CallError::Stream(format!("{e2} (retried after: {e})")))
                    }
                    other => other.map_err(SendError::into_call_error),
                }
            }
            other => other.map_err(SendError::into_call_error),
        }
    }

    /// One attempt on `sender`'s connection (a new one if it died between calls).
    async fn send_once(
        &self,
        sender: Sender,
        target: &Target,
        req: Request<Bytes>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut send =
            match sender.send.ready().await {
                Ok(s) => s,
                Err(_) => {
                    // The pooled connection died between calls: one fresh connection, no more.
                    let sender = Box::pin(self.connect(target, connect_timeout))
                        .await
                        .map_err(SendError::Call)?;
                    sender.send.ready().await.map_err(|e| {
                        SendError::Call(CallError::Connect(target.addr, e.to_string()))
                    })?
                }
            };
        let (head, payload) = req.into_parts();
        let end = payload.is_empty();
        let (response, mut stream) = send
            .send_request(Request::from_parts(head, ()), end)
            .map_err(SendError::classify)?;
        if !end {
            // h2 buffers what the flow-control window does not yet allow and sends it as the
            // window opens.
            stream
                .send_data(payload, true)
                .map_err(SendError::classify)?;
        }
        let response = response.await.map_err(SendError::classify)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// An h2c server that resets its first stream with `first` and answers the others 200.
    async fn server(first: h2::Reason) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let streams = Arc::new(AtomicUsize::new(0));
        let seen = streams.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                            respond.send_reset(first);
                            continue;
                        }
                        let ok = Response::builder().status(200).body(()).expect("response");
                        let _ = respond.send_response(ok, true);
                    }
                });
            }
        });
        (addr, streams)
    }

    fn request(addr: SocketAddr) -> Request<Bytes> {
        let uri = format!("http://{addr}/greeter.v1.Greeter/SayHello")
            .parse()
            .expect("uri");
        grpc_request(uri, None, Bytes::from_static(b"\0\0\0\0\0")).expect("request")
    }

    /// Sends one call to a server that resets its first stream with `first`; the outcome and
    /// how many streams the server saw.
    async fn call_reset_with(
        first: h2::Reason,
    ) -> (Result<Response<UpstreamBody>, CallError>, usize) {
        let (addr, streams) = server(first).await;
        let pool = Pool::default();
        let target = Target::h2c(addr);
        let remake = || Some(request(addr));
        let outcome = pool
            .send(&target, request(addr), &remake, Duration::from_secs(5))
            .await;
        (outcome, streams.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_refused_stream_is_sent_again_once() {
        let (outcome, streams) = call_reset_with(h2::Reason::REFUSED_STREAM).await;
        let resp = outcome.expect("answered on the second try");
        assert_eq!(resp.status(), 200);
        assert_eq!(streams, 2);
    }

    #[tokio::test]
    async fn a_stream_reset_for_another_reason_is_not_repeated() {
        // The upstream may have acted on the call: sending it again could run it twice.
        let (outcome, streams) = call_reset_with(h2::Reason::INTERNAL_ERROR).await;
        let err = outcome.expect_err("the reset is the answer");
        assert!(matches!(err, CallError::Stream(_)), "{err}");
        assert_eq!(streams, 1);
    }
}
