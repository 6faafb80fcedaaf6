//! Active health-check probes: one check of one target, answering healthy or a `ProbeError`
//! whose text a person can act on. When to check, thresholds, and what a result does to a target
//! belong to `tasks` and `health`.
//!
//! Every probe opens a fresh connection on purpose: a pooled one would keep a target looking
//! healthy after it stopped accepting new connections, which is exactly what requests would hit.
//! Nothing is spawned and nothing outlives the call: the connection is driven inside the probe's
//! own future, so the overall timeout dropping that future closes the socket too.

mod error;
mod grpc;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// What a check does is config data, defined with the model.
pub use crate::config::ProbeKind;
pub use error::ProbeError;

/// Sent on every HTTP and gRPC probe so upstream logs can tell checks from traffic.
const USER_AGENT: &str = "tollgate-health-check";

/// Most of a response body a probe reads. Health endpoints answer with little; a probe pointed at
/// a large page must not buffer or wait for all of it.
const BODY_LIMIT: usize = 64 * 1024;

/// Runs one probe against `target` with an overall `timeout`. Ok(()) = healthy; Err = why not,
/// as a short reason ("status 503 not in 200-299", "connect refused", "timed out after 1s",
/// "grpc status NOT_SERVING", "grpc-status 12: unimplemented" ...).
/// HTTP checks of an upstream with `tls` go over TLS with `tls` (a TCP check stays a connect).
pub async fn probe(
    kind: &ProbeKind,
    target: SocketAddr,
    timeout: Duration,
    tls: Option<&ProbeTls>,
) -> Result<(), ProbeError> {
    let check = async {
        match kind {
            ProbeKind::Tcp => connect(target).await.map(drop),
            ProbeKind::Http {
                path,
                method,
                host,
                expected,
                h2c,
            } => {
                let check = HttpCheck {
                    path,
                    method,
                    host: host.as_deref(),
                    expected,
                };
                http_check(target, &check, *h2c, tls).await
            }
            ProbeKind::Grpc { service, authority } => {
                grpc::check(target, service, authority.as_deref()).await
            }
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or(Err(ProbeError::TimedOut(timeout)))
}

/// Opens the probe's own TCP connection.
async fn connect(target: SocketAddr) -> Result<TcpStream, ProbeError> {
    TcpStream::connect(target)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => ProbeError::ConnectRefused,
            _ => ProbeError::Connect(e),
        })
}

/// TLS towards a target: the upstream's `tls` settings (trust, verification, client
/// certificate) and the name to send and verify, as proxied requests use them.
#[derive(Clone)]
pub struct ProbeTls {
    /// The upstream's client config, with the ALPN of its protocol.
    pub config: std::sync::Arc<rustls::ClientConfig>,
    /// SNI and the name the certificate must match.
    pub server_name: rustls::pki_types::ServerName<'static>,
}

/// What an HTTP check asks and accepts.
struct HttpCheck<'a> {
    path: &'a str,
    method: &'a Method,
    host: Option<&'a str>,
    expected: &'a [(u16, u16)],
}

/// One HTTP request; healthy when the status is expected and the body (up to the limit) arrives.
/// Over TLS, HTTP/2 is spoken when the target chose it by ALPN.
async fn http_check(
    target: SocketAddr,
    check: &HttpCheck<'_>,
    h2c: bool,
    tls: Option<&ProbeTls>,
) -> Result<(), ProbeError> {
    let authority = check
        .host
        .map_or_else(|| target.to_string(), str::to_string);
    let expected = check.expected;
    let read = |response: Response<Incoming>| async move {
        let status = response.status().as_u16();
        if !status_expected(status, expected) {
            return Err(ProbeError::UnexpectedStatus {
                status,
                expected: expected.to_vec(),
            });
        }
        drain(response.into_body()).await
    };
    let tcp = connect(target).await?;
    match tls {
        None => {
            let request = build_request(
                check.method.clone(),
                check.path,
                &authority,
                h2c,
                Bytes::new(),
            )?;
            exchange_over(TokioIo::new(tcp), h2c, request, read).await
        }
        Some(tls) => {
            let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(ProbeError::Tls)?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let mut request = build_request(
                check.method.clone(),
                check.path,
                &authority,
                h2,
                Bytes::new(),
            )?;
            if h2 {
                // `:scheme` follows the URI's.
                let uri = format!("https://{authority}{}", check.path);
                *request.uri_mut() = uri.parse().map_err(|_| ProbeError::InvalidTarget {
                    authority: authority.clone(),
                    path: check.path.to_string(),
                })?;
            }
            exchange_over(TokioIo::new(stream), h2, request, read).await
        }
    }
}

/// Builds a probe request. HTTP/1.1 gets an origin-form URI and a `Host` header; HTTP/2 carries
/// the authority in the URI, which becomes `:authority` (h2 rejects a request without one).
fn build_request(
    method: Method,
    path: &str,
    authority: &str,
    h2: bool,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ProbeError> {
    let uri: Uri = if h2 {
        format!("http://{authority}{path}").parse()
    } else {
        path.parse()
    }
    .map_err(|_| ProbeError::InvalidTarget {
        authority: authority.to_string(),
        path: path.to_string(),
    })?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::USER_AGENT, USER_AGENT)
        .body(Full::new(body))
        .map_err(ProbeError::InvalidRequest)?;
    if !h2 {
        let host = HeaderValue::from_str(authority)
            .map_err(|_| ProbeError::InvalidHost(authority.to_string()))?;
        request.headers_mut().insert(header::HOST, host);
    }
    Ok(request)
}

/// Sends `request` over a fresh connection to `target` and returns what `read` makes of the
/// response. `read` runs while the connection is still being driven, so it can read the body.
async fn exchange<T, F, Fut>(
    target: SocketAddr,
    h2: bool,
    request: Request<Full<Bytes>>,
    read: F,
) -> Result<T, ProbeError>
where
    F: FnOnce(Response<Incoming>) -> Fut,
    Fut: Future<Output = Result<T, ProbeError>>,
{
    exchange_over(TokioIo::new(connect(target).await?), h2, request, read).await
}

/// [`exchange`] over a connection already made (plain or TLS).
async fn exchange_over<I, T, F, Fut>(
    io: TokioIo<I>,
    h2: bool,
    request: Request<Full<Bytes>>,
    read: F,
) -> Result<T, ProbeError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(Response<Incoming>) -> Fut,
    Fut: Future<Output = Result<T, ProbeError>>,
{
    let handshake_failed = |version| move |cause| ProbeError::Handshake { version, cause };
    if h2 {
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(handshake_failed("http/2"))?;
        drive(conn, async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(ProbeError::Request)?;
            read(response).await
        })
        .await
    } else {
        let (mut sender, conn) = http1::handshake(io)
            .await
            .map_err(handshake_failed("http/1.1"))?;
        drive(conn, async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(ProbeError::Request)?;
            read(response).await
        })
        .await
    }
}

/// Runs `exchange` while driving `conn`, the connection it talks over.
async fn drive<T>(
    conn: impl Future<Output = hyper::Result<()>>,
    exchange: impl Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    let mut exchange = pin!(exchange);
    tokio::select! {
        result = &mut exchange => result,
        // The connection can end first, e.g. a server that closes right after its response.
        // What was received is still readable, and a request cut short fails on its own, so
        // the exchange decides the result either way.
        _ = conn => exchange.await,
    }
}

/// Reads and drops up to `BODY_LIMIT` of a body, so the response is complete before the probe
/// closes the connection, without letting a large page cost more than that.
async fn drain(mut body: Incoming) -> Result<(), ProbeError> {
    let mut read = 0;
    while read < BODY_LIMIT {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(e)) => return Err(ProbeError::Body(e)),
        }
    }
    Ok(())
}

fn status_expected(status: u16, expected: &[(u16, u16)]) -> bool {
    expected
        .iter()
        .any(|&(low, high)| (low..=high).contains(&status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_are_inclusive() {
        let expected = [(200, 299), (404, 404)];
        assert!(status_expected(200, &expected));
        assert!(status_expected(299, &expected));
        assert!(status_expected(404, &expected));
        assert!(!status_expected(300, &expected));
        assert!(!status_expected(199, &expected));
        assert!(!status_expected(200, &[]));
    }

    #[test]
    fn http1_requests_carry_host_and_h2_requests_an_authority() {
        let r =
            build_request(Method::GET, "/healthz?x=1", "api.test", false, Bytes::new()).unwrap();
        assert_eq!(r.uri(), "/healthz?x=1");
        assert_eq!(r.headers()[header::HOST], "api.test");
        assert_eq!(r.headers()[header::USER_AGENT], USER_AGENT);
        let r =
            build_request(Method::GET, "/healthz", "api.test:8080", true, Bytes::new()).unwrap();
        assert_eq!(r.uri(), "http://api.test:8080/healthz");
        assert!(r.headers().get(header::HOST).is_none());
        assert!(matches!(
            build_request(Method::GET, "no slash", "h", false, Bytes::new()),
            Err(ProbeError::InvalidTarget { .. })
        ));
        assert!(build_request(Method::GET, "/", "bad host", true, Bytes::new()).is_err());
    }
}
