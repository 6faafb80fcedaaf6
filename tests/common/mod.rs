//! Test harness: the real `tollgate` binary on ephemeral ports, and real hyper upstreams.
#![allow(dead_code)]

pub mod pki;

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A port that was free a moment ago, and never handed out before by this test process: the
/// kernel may give a port it just freed out again, and two listeners of one config on the same
/// port are a config error.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = StdListener::bind("127.0.0.1:0").expect("bind ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// An address nothing listens on: bound once, then closed.
pub fn closed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Waits until the admin API answers and the listener accepts; the logs if the process exits.
async fn wait_ready(
    child: &mut Child,
    admin: SocketAddr,
    addr: SocketAddr,
    stderr_path: &std::path::Path,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = client();
    let logs = || std::fs::read_to_string(stderr_path).unwrap_or_default();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("status {status}\n{}", logs()));
        }
        let admin_ok = client
            .get(format!("http://{admin}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if admin_ok && tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tollgate did not become ready:\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running gateway process; killed on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    stderr_path: PathBuf,
    header: String,
    path: PathBuf,
    upgrade_sock: PathBuf,
}

/// The config text: `header`, then `body` with an upgrade socket of the test's own (unless it
/// sets one), so that gateways of tests running side by side are not one another's instance.
fn own_upgrade_sock(header: &str, body: &str, sock: &std::path::Path) -> String {
    if body.contains("upgrade_sock") {
        return format!("{header}{body}\n");
    }
    let line = format!("upgrade_sock = \"{}\"\n", sock.display());
    match body.find("[server]\n") {
        Some(at) => {
            let after = at + "[server]\n".len();
            format!("{header}{}{line}{}\n", &body[..after], &body[after..])
        }
        None => format!("[server]\n{line}\n{header}{body}\n"),
    }
}

impl Gateway {
    /// Starts tollgate with `body` plus a generated h1+h2c listener and admin listener.
    pub async fn start(body: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, body).await
    }

    /// Like `start`, with the config written into `dir` (for tests that put cert files there).
    pub async fn start_in(dir: tempfile::TempDir, body: &str) -> Gateway {
        Self::start_opts(dir, body, "", &[]).await
    }

    /// The most general start: extra `[admin]` lines and environment variables.
    pub async fn start_opts(
        dir: tempfile::TempDir,
        body: &str,
        admin_extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        // A port free a moment ago can be taken by another test's server before the gateway
        // binds it; the gateway then refuses to start (`already in use`) and gets other ports.
        let mut attempts = 0;
        let mut dir = Some(dir);
        loop {
            attempts += 1;
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let header = format!(
                "[[listeners]]\nname = \"test\"\naddress = \"{addr}\"\nh2c = true\n\n\
                 [admin]\naddress = \"{admin}\"\n{admin_extra}\n\n[log]\nlevel = \"debug\"\n\n"
            );
            let dir_ref = dir
                .as_ref()
                .expect("the directory stays until the gateway starts");
            let path = dir_ref.path().join("gateway.toml");
            let upgrade_sock = dir_ref.path().join("upgrade.sock");
            std::fs::write(&path, own_upgrade_sock(&header, body, &upgrade_sock))
                .expect("write config");
            let stderr_path = dir_ref.path().join("stderr.log");
            let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
            // The config's `[log] level` decides, whatever the test's environment says.
            cmd.arg("-c")
                .arg(&path)
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(stderr);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn tollgate");
            match wait_ready(&mut child, admin, addr, &stderr_path).await {
                Ok(()) => {
                    return Gateway {
                        child,
                        addr,
                        admin,
                        dir: dir.take().expect("directory"),
                        stderr_path,
                        header,
                        path,
                        upgrade_sock,
                    }
                }
                Err(logs) if attempts < 5 && logs.contains("already in use") => continue,
                Err(logs) => panic!("tollgate exited:\n{logs}"),
            }
        }
    }

    /// Replaces the config file's body (the generated listener and admin stay).
    pub fn write_config(&self, body: &str) {
        let tmp = self.path.with_extension("toml.tmp");
        let text = own_upgrade_sock(&self.header, body, &self.upgrade_sock);
        std::fs::write(&tmp, text).expect("write config");
        // Rename, so a reload never reads a half-written file.
        std::fs::rename(&tmp, &self.path).expect("replace config");
    }

    /// The config file the gateway runs on.
    pub fn config_path(&self) -> &std::path::Path {
        &self.path
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`...) to the gateway.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit (up to `timeout`), returning whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// What the gateway logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `http://ADDR{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The admin `/metrics` text now.
    pub async fn metrics(&self) -> String {
        client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type Body = BoxBody<Bytes, hyper::Error>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// A real HTTP/1.1 + h2c server on an ephemeral port, counting connections and requests.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Serves `handler` for every request.
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), handler).await
    }

    /// Like `start`, on a given address (e.g. another loopback IP, same port).
    pub async fn start_on<F, Fut>(addr: SocketAddr, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            connections,
            requests,
            task,
        }
    }

    /// An upstream answering every request with a JSON description of it (see `describe`).
    pub async fn echo(name: &'static str) -> Upstream {
        Upstream::start(move |req| async move { describe(name, req).await }).await
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A JSON response describing the request: upstream name, method, path, query, version,
/// headers (lower-case names; repeated values joined by ", ") and body length.
pub async fn describe(name: &str, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let entry = headers
            .entry(k.as_str().to_string())
            .or_insert_with(|| serde_json::Value::String(String::new()));
        if let serde_json::Value::String(s) = entry {
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(&v);
        }
    }
    let json = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
    });
    json_response(200, &json)
}

pub fn json_response(status: u16, json: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(json.to_string()))
        .expect("response")
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A plain HTTP/1.1 client (no proxy from the environment).
pub fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// An h2c (prior knowledge) client.
pub fn h2c_client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Asserts the gateway's JSON error shape and returns the body.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body: serde_json::Value = resp.json().await.expect("json error body");
    assert_eq!(body["error"]["status"], status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["request_id"].as_str().is_some(), "{body}");
    body
}

/// A `redis-server` of the test's own on a free port; killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-prereqs.sh)");
        let redis = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    pub fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The text of `INFO section` (`commandstats`, `keyspace`, ...).
    pub fn info(&self, section: &str) -> String {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        write!(s, "*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len()).expect("write INFO");
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        reader.read_line(&mut head).expect("INFO reply");
        let len: usize = head
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("INFO: unexpected reply {head:?}"));
        let mut body = vec![0; len];
        reader.read_exact(&mut body).expect("INFO body");
        String::from_utf8_lossy(&body).into_owned()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS terminator in front of `backend` (ALPN h2, a self-signed certificate for `localhost`):
/// its address, and the certificate as DER (for a client's roots) and PEM (for a `ca_file`).
pub async fn tls_front(
    backend: SocketAddr,
) -> (
    SocketAddr,
    rustls::pki_types::CertificateDer<'static>,
    String,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let der = cert.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server config");
    server.alpn_protocols = vec![b"h2".to_vec()];
    let addr = terminate_tls(server, backend).await;
    (addr, der, cert.cert.pem())
}

/// Serves `server`'s TLS on an ephemeral port, each connection relayed in plaintext to
/// `backend`: its address.
pub async fn terminate_tls(server: rustls::ServerConfig, backend: SocketAddr) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// Reads one HTTP/1.x response off a raw socket: its status and body (by `Content-Length`, or to
/// the end of the stream without one). `None` when the peer closes before sending anything.
/// Bounded by a 10 s timeout, so a gateway that never answers fails the test instead of hanging.
pub async fn read_raw_response(s: &mut tokio::net::TcpStream) -> Option<(u16, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                assert!(buf.is_empty(), "connection closed mid-head: {buf:?}");
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head.get(9..12)?.parse().ok()?;
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let mut body = buf.split_off(head_end);
        loop {
            if length.is_some_and(|len| body.len() >= len) {
                break;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no response within 10 s")
}
