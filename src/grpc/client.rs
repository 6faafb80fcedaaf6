//! The HTTP/2 client towards gRPC upstreams: prior-knowledge h2c or h2 over TLS, one
//! multiplexed connection per target (address and TLS name) shared by every route and config
//! snapshot of the process, re-opened when the upstream closes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

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

type Sender = SendRequest<Full<Bytes>>;

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
        req: Request<Full<Bytes>>,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, CallError> {
        let cached = self.cached(&key(target));
        // Connecting is boxed: inlined, its TCP, TLS and h2 handshake futures made every call's
        // future ~7 KB, moved (and so copied) with it at each await level above.
        let mut sender = match cached {
            Some(s) => s,
            None => Box::pin(self.connect(target, connect_timeout)).await?,
        };
        if sender.ready().await.is_err() {
            // The pooled connection died between calls: one fresh connection, no more.
            sender = Box::pin(self.connect(target, connect_timeout)).await?;
            sender
                .ready()
                .await
                .map_err(|e| CallError::Connect(target.addr, e.to_string()))?;
        }
        sender
            .send_request(req)
            .await
            .map_err(|e| CallError::Stream(e.to_string()))
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
            let builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            let Some(tls) = &target.tls else {
                let (sender, conn) = builder
                    .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
                    .await
                    .map_err(|e| failed(&e))?;
                tokio::spawn(async move {
                    // Ends when the upstream closes the connection or every sender is dropped.
                    let _ = conn.await;
                });
                return Ok(sender);
            };
            let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(|e| failed(&format!("TLS handshake: {e}")))?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(failed(&"the upstream did not agree to HTTP/2 (ALPN h2)"));
            }
            let (sender, conn) = builder
                .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| failed(&e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(sender)
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
