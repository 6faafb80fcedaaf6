//! Slow clients: the request head deadline, the wait between body pieces, the whole-request
//! deadline, and a client that stalls its body being the client's fault — a 408 that is never
//! retried nor counted against the upstream, so it cannot get a healthy target ejected.
//!
//! The deadlines here are short (hundreds of milliseconds) so the tests finish quickly; nothing
//! asserts how long anything took, only what the client got.

mod common;

use std::time::Duration;

use common::{Gateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the client gets until the gateway closes the connection (10 s at most).
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the gateway closes the connection in time");
    out
}

/// Status line and JSON body of the one response in `raw`.
fn parse(raw: &[u8]) -> (u16, String, serde_json::Value) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let status = head[9..12].parse().expect("status");
    let json = serde_json::from_str(body).unwrap_or_default();
    (status, head.to_ascii_lowercase(), json)
}

fn one_route(up: std::net::SocketAddr, server: &str, upstream_extra: &str) -> String {
    format!(
        r#"
[server]
{server}

[upstreams.svc]
targets = ["{up}"]
{upstream_extra}

[routes.all]
prefix = "/"
upstream = "svc"
"#
    )
}

#[tokio::test]
async fn a_head_trickled_past_its_deadline_gets_408_and_the_connection_closes() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&one_route(
        up.addr,
        "request_header_timeout = \"500ms\"",
        "",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("write");
    // One byte at a time, well within any per-read timeout, until the gateway stops reading.
    let (mut r, mut w) = s.into_split();
    let trickle = tokio::spawn(async move {
        for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .iter()
            .cycle()
        {
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut raw))
        .await
        .expect("closed in time")
        .ok();
    trickle.abort();
    let (status, head, body) = parse(&raw);
    assert_eq!(status, 408, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body["error"]["code"], "client_timeout", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("request_header_timeout")),
        "{body}"
    );
    assert_eq!(up.requests(), 0, "the upstream never saw the request");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_head_deadline() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&one_route(
        up.addr,
        "request_header_timeout = \"300ms\"",
        "",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let raw = read_to_close(&mut s).await;
    assert!(raw.is_empty(), "nothing was asked, nothing is answered");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_not_cut_by_the_head_deadline() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&one_route(
        up.addr,
        "request_header_timeout = \"200ms\"",
        "",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    for path in ["/one", "/two"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let (status, body) = common::read_raw_response(&mut s).await.expect("response");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["path"], path);
        // Longer than the head deadline: idling between requests is keep-alive, not a slow
        // head; the deadline of the next head starts with its first byte.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn many_slow_heads_do_not_stop_other_clients() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&one_route(up.addr, "", "")).await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.expect("write");
        slow.push(s);
    }
    let resp = common::client()
        .get(gw.url("/fast"))
        .send()
        .await
        .expect("a normal request is served");
    assert_eq!(resp.status(), 200);
    drop(slow);
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_client_timeout() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&one_route(up.addr, "client_body_timeout = \"300ms\"", "")).await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let (status, head, body) = parse(&read_to_close(&mut s).await);
    assert_eq!(status, 408, "{head}");
    assert_eq!(body["error"]["code"], "client_timeout", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("client_body_timeout")),
        "{body}"
    );
}

#[tokio::test]
async fn a_body_trickled_past_the_request_timeout_is_cut() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&one_route(
        up.addr,
        "request_timeout = \"700ms\"\nclient_body_timeout = \"30s\"",
        "",
    ))
    .await;
    let s = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    w.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        .await
        .expect("write");
    // A byte every 50 ms never lets the 30 s wait between pieces run out.
    let trickle = tokio::spawn(async move {
        loop {
            if w.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut raw))
        .await
        .expect("cut in time")
        .ok();
    trickle.abort();
    let (status, head, body) = parse(&raw);
    assert_eq!(status, 408, "{head}");
    assert_eq!(body["error"]["code"], "client_timeout", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("request_timeout")),
        "{body}"
    );
}

#[tokio::test]
async fn a_listener_can_override_the_server_defaults() {
    let up = Upstream::echo("svc").await;
    let strict = common::free_port();
    let gw = Gateway::start(&format!(
        r#"
[[listeners]]
name = "strict"
address = "127.0.0.1:{strict}"
request_header_timeout = "300ms"
{}
"#,
        one_route(up.addr, "request_header_timeout = \"1h\"", "")
    ))
    .await;
    // The strict listener cuts a half-sent head...
    let mut s = TcpStream::connect(("127.0.0.1", strict))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let (status, _, _) = parse(&read_to_close(&mut s).await);
    assert_eq!(status, 408);
    // ...while the harness's listener, on the server default of an hour, still waits: its
    // half-sent head is completed later and served.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET /late HTTP/1.1\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(b"Host: t\r\n\r\n").await.expect("write");
    let (status, _) = common::read_raw_response(&mut s).await.expect("response");
    assert_eq!(status, 200);
}

/// Six clients that send a head promising a body and then stall, against an upstream whose
/// read timeout runs out first (it waits for the body): before, each was a 504 counted against
/// the target, and the sixth ejected it.
#[tokio::test]
async fn a_client_stalling_its_body_never_counts_against_the_upstream() {
    let up = Upstream::echo("svc").await;
    // The default client_body_timeout (30 s) is far longer than the upstream's read timeout.
    let gw = Gateway::start(&one_route(
        up.addr,
        "",
        "read_timeout = \"300ms\"\noutlier_detection = { consecutive_failures = 2 }\n\
         retry = { attempts = 3, on = [\"connect_failure\", \"reset\", \"timeout\"] }",
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        let gw_addr = gw.addr;
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(gw_addr).await.expect("connect");
            s.write_all(b"PUT /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
                .await
                .expect("write");
            parse(&read_to_close(&mut s).await)
        }));
    }
    for c in clients {
        let (status, head, body) = c.await.expect("client");
        assert_eq!(status, 408, "{head}");
        assert_eq!(body["error"]["code"], "client_timeout", "{body}");
    }
    // Each stalled request reached the upstream once: never retried elsewhere.
    assert_eq!(up.requests(), 6);
    let ups: serde_json::Value = common::client()
        .get(format!("http://{}/upstreams", gw.admin))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let target = &ups["upstreams"][0]["targets"][0];
    assert_eq!(target["consecutive_failures"], 0, "{ups}");
    assert_eq!(target["total_failures"], 0, "{ups}");
    assert_eq!(target["times_ejected"], 0, "{ups}");
    assert_eq!(target["available"], true, "{ups}");
    let resp = common::client()
        .get(gw.url("/after"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "the target still takes traffic");
    // Metrics count them as the client errors they are.
    let metrics = common::client()
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("tollgate_requests_total")
                && l.contains("method=\"PUT\"")
                && l.contains("status_class=\"4xx\"")
        })
        .unwrap_or_default();
    assert!(line.ends_with(" 6"), "{line}\n{metrics}");
}

/// TLS connections speaking HTTP/1.1 go through the same connection loop: the head deadline
/// holds for them too.
#[tokio::test]
async fn tls_http1_heads_have_the_same_deadline() {
    use std::sync::Arc;
    let up = Upstream::echo("svc").await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem())
        .expect("write key");
    let tls_port = common::free_port();
    let gw = Gateway::start_in(
        dir,
        &format!(
            r#"
[[listeners]]
name = "tls"
address = "127.0.0.1:{tls_port}"
tls = {{ cert_file = "cert.pem", key_file = "key.pem" }}
{}"#,
            one_route(up.addr, "request_header_timeout = \"400ms\"", "")
        ),
    )
    .await;
    common::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connect = |config: Arc<rustls::ClientConfig>| async move {
        let tcp = TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("handshake")
    };
    let config = Arc::new(config);
    // A whole request is served...
    let mut tls = connect(config.clone()).await;
    tls.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw))
        .await
        .expect("answered")
        .ok();
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // ...a half-sent one is cut at the deadline.
    let mut tls = connect(config).await;
    tls.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw))
        .await
        .expect("cut in time")
        .ok();
    let (status, _, body) = parse(&raw);
    assert_eq!(status, 408);
    assert_eq!(body["error"]["code"], "client_timeout", "{body}");
    let _ = gw;
}

/// Over HTTP/2 the body of a stalled stream is not timed by pingora; the upstream's read timeout
/// runs out instead, and that too is the client's fault while the body is incomplete.
#[tokio::test]
async fn an_http2_client_stalling_its_body_gets_408_and_the_target_no_blame() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&one_route(
        up.addr,
        "",
        "read_timeout = \"300ms\"\noutlier_detection = { consecutive_failures = 1 }",
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::post("http://t/stall")
        .header("content-length", "100")
        .body(())
        .expect("request");
    let (resp, mut body) = send.send_request(req, false).expect("send");
    body.send_data(bytes::Bytes::from_static(b"0123456789"), false)
        .expect("part of the body");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("answered in time")
        .expect("response");
    assert_eq!(resp.status(), 408);
    let mut data = resp.into_body();
    let mut raw = Vec::new();
    while let Some(chunk) = data.data().await {
        raw.extend_from_slice(&chunk.expect("chunk"));
    }
    let v: serde_json::Value = serde_json::from_slice(&raw).expect("json");
    assert_eq!(v["error"]["code"], "client_timeout", "{v}");
    let ups: serde_json::Value = common::client()
        .get(format!("http://{}/upstreams", gw.admin))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let target = &ups["upstreams"][0]["targets"][0];
    assert_eq!(target["total_failures"], 0, "{ups}");
    assert_eq!(target["available"], true, "{ups}");
}

/// A reload that changes a listener's address (which needs a restart) leaves the bound socket
/// with that listener's own limits, not the server's.
#[tokio::test]
async fn a_listener_keeps_its_limits_while_its_new_address_waits_for_a_restart() {
    let up = Upstream::echo("svc").await;
    let (strict, moved) = (common::free_port(), common::free_port());
    let config = |port: u16| {
        format!(
            r#"
[[listeners]]
name = "strict"
address = "127.0.0.1:{port}"
request_header_timeout = "300ms"
{}
"#,
            one_route(up.addr, "request_header_timeout = \"1h\"", "")
        )
    };
    let gw = Gateway::start(&config(strict)).await;
    gw.write_config(&config(moved));
    let answer: serde_json::Value = common::client()
        .post(format!("http://{}/reload", gw.admin))
        .send()
        .await
        .expect("reload")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["reloaded"], true, "{answer}");
    assert!(
        answer["pending_restart"]
            .as_array()
            .is_some_and(|p| p.iter().any(|k| k == "listeners.strict.address")),
        "{answer}"
    );
    // Still bound where it started, and still strict: a half-sent head is cut (with the
    // server's hour it would hang past the 10 s guard).
    let mut s = TcpStream::connect(("127.0.0.1", strict))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let (status, _, body) = parse(&read_to_close(&mut s).await);
    assert_eq!(status, 408, "{body}");
}
