//! The request target, Host and framing at the edge (RFC 9110 / RFC 9112): encoded slashes by
//! the listener's `escaped_slashes` rule, raw backslashes and control characters refused,
//! absolute-form targets routed by their authority and sent upstream in origin form, Host
//! headers that are missing or malformed refused, repeated equal `Content-Length`s forwarded
//! as one, disagreeing ones and unknown transfer codings refused. Every refusal is the JSON
//! error shape.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{Gateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that records each request head exactly as it arrived on the wire and answers
/// 200 with an empty body (reading a `Content-Length` body first).
struct WireUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WireUpstream {
    async fn start() -> WireUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (n, v) = l.split_once(':')?;
                                n.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < end + 4 + length {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..end + 4 + length);
                        seen.lock().expect("lock").push(head);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        WireUpstream { addr, heads, task }
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("the upstream got a request")
    }
}

impl Drop for WireUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `request` on a new connection; the response status and JSON body.
async fn raw(gw: &Gateway, addr: Option<SocketAddr>, request: &[u8]) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr.unwrap_or(gw.addr))
        .await
        .expect("connect");
    s.write_all(request).await.expect("write");
    let (status, body) = common::read_raw_response(&mut s).await.expect("a response");
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

fn assert_error(got: (u16, serde_json::Value), status: u16, code: &str) {
    let (s, body) = got;
    assert_eq!(s, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["status"], status, "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
}

fn routes(admin: SocketAddr, public: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[upstreams.admin]
targets = ["{admin}"]

[upstreams.public]
targets = ["{public}"]

[routes.admin]
prefix = "/admin"
upstream = "admin"

[routes.public]
prefix = "/"
upstream = "public"
{extra}
"#
    )
}

#[tokio::test]
async fn encoded_slashes_follow_the_listeners_rule() {
    let admin = Upstream::echo("admin").await;
    let public = Upstream::echo("public").await;
    let (decode, keep) = (common::free_port(), common::free_port());
    let gw = Gateway::start(&format!(
        r#"
[[listeners]]
name = "decode"
address = "127.0.0.1:{decode}"
escaped_slashes = "decode"

[[listeners]]
name = "keep"
address = "127.0.0.1:{keep}"
escaped_slashes = "keep"
{}"#,
        routes(admin.addr, public.addr, "")
    ))
    .await;
    let c = common::client();
    // Default: refused, so `/admin%2Fsecret` can never pass the `/admin` rule unseen.
    for path in ["/admin%2Fsecret", "/x/..%2Fadmin", "/admin%5Csecret"] {
        let resp = c.get(gw.url(path)).send().await.expect("request");
        common::expect_error(resp, 400, "bad_path").await;
    }
    // decode: routed (and forwarded) as the decoded path.
    let v: serde_json::Value = c
        .get(format!("http://127.0.0.1:{decode}/admin%2Fsecret"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (v["upstream"].as_str(), v["path"].as_str()),
        (Some("admin"), Some("/admin/secret"))
    );
    // keep: one segment, which the `/admin` prefix does not match; forwarded as written.
    let v: serde_json::Value = c
        .get(format!("http://127.0.0.1:{keep}/admin%2Fsecret"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (v["upstream"].as_str(), v["path"].as_str()),
        (Some("public"), Some("/admin%2Fsecret"))
    );
}

#[tokio::test]
async fn raw_backslashes_spaces_and_controls_in_the_target_are_bad_paths() {
    let admin = Upstream::echo("admin").await;
    let public = Upstream::echo("public").await;
    let gw = Gateway::start(&routes(admin.addr, public.addr, "")).await;
    for request in [
        &b"GET /api/..\\admin/x HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET /a\\b HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a\tb HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        assert_error(raw(&gw, None, request).await, 400, "bad_path");
    }
    assert_eq!(admin.requests() + public.requests(), 0);
    // Bytes a URI cannot hold, and targets that are not paths, get the JSON shape too (pingora
    // answered the first with an empty 400, and routed the second as `/` while forwarding it
    // as written).
    for request in [
        &b"GET /a<b HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET /a?q=\"x\" HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET x/admin HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET t:80/../admin HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        assert_error(raw(&gw, None, request).await, 400, "bad_path");
    }
    assert_eq!(admin.requests() + public.requests(), 0);
    // Bytes the URI parser takes are forwarded as sent.
    let (status, v) = raw(&gw, None, b"GET /q?x={1} HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status, 200, "{v}");
    // A HEAD request refused before routing gets the headers only.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"HEAD /a\tb HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut raw_answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_end(&mut raw_answer),
    )
    .await
    .expect("closed in time")
    .expect("read");
    let text = String::from_utf8_lossy(&raw_answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after the head: {text}");
}

#[tokio::test]
async fn absolute_form_targets_route_by_their_authority_and_go_upstream_in_origin_form() {
    let wire = WireUpstream::start().await;
    let other = Upstream::echo("other").await;
    let gw = Gateway::start(&format!(
        r#"
[upstreams.wire]
targets = ["{}"]

[upstreams.other]
targets = ["{}"]

[routes.abs]
host = "abs.example"
prefix = "/"
upstream = "wire"

[routes.other]
prefix = "/"
upstream = "other"
"#,
        wire.addr, other.addr
    ))
    .await;
    let (status, _) = raw(
        &gw,
        None,
        b"GET http://abs.example/api/abs?q=1 HTTP/1.1\r\nHost: abs.example\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let head = wire.last_head();
    assert!(head.starts_with("GET /api/abs?q=1 HTTP/1.1\r\n"), "{head}");
    // HTTP/1.0 may leave Host out: the target's authority routes it, and goes upstream as Host.
    let (status, _) = raw(&gw, None, b"GET http://abs.example/v10 HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);
    let head = wire.last_head();
    assert!(head.starts_with("GET /v10 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nhost: abs.example"),
        "{head}"
    );
    // HTTP/1.1 needs Host, also with an absolute-form target.
    assert_error(
        raw(&gw, None, b"GET http://abs.example/x HTTP/1.1\r\n\r\n").await,
        400,
        "bad_host",
    );
    // A Host that contradicts the target is refused, in the JSON shape.
    assert_error(
        raw(
            &gw,
            None,
            b"GET http://abs.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        )
        .await,
        400,
        "bad_host",
    );
    assert_eq!(other.requests(), 0);
}

#[tokio::test]
async fn missing_empty_repeated_and_malformed_hosts_are_bad_hosts() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&format!(
        "[upstreams.svc]\ntargets = [\"{}\"]\n[routes.all]\nprefix = \"/\"\nupstream = \"svc\"\n",
        up.addr
    ))
    .await;
    for request in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    ] {
        assert_error(raw(&gw, None, request).await, 400, "bad_host");
    }
    assert_eq!(up.requests(), 0);
    // HTTP/1.0 needs no Host; the upstream, spoken to in HTTP/1.1, gets the target's address.
    let (status, body) = raw(&gw, None, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(body["headers"]["host"], up.addr.to_string(), "{body}");
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
    ] {
        assert_error(raw(&gw, None, request).await, 400, "bad_host");
    }
}

#[tokio::test]
async fn content_lengths_are_forwarded_as_one_and_unknown_codings_refused() {
    let wire = WireUpstream::start().await;
    let gw = Gateway::start(&format!(
        "[upstreams.svc]\ntargets = [\"{}\"]\n[routes.all]\nprefix = \"/\"\nupstream = \"svc\"\n",
        wire.addr
    ))
    .await;
    for request in [
        &b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
        b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let (status, _) = raw(&gw, None, request).await;
        assert_eq!(status, 200);
        let head = wire.last_head().to_ascii_lowercase();
        let lengths: Vec<&str> = head
            .lines()
            .filter(|l| l.starts_with("content-length:"))
            .collect();
        assert_eq!(lengths, vec!["content-length: 5"], "{head}");
    }
    for request in [
        &b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n"[..],
        b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!",
        b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ] {
        assert_error(raw(&gw, None, request).await, 400, "bad_content_length");
    }
    for request in [
        &b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
        b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ] {
        assert_error(
            raw(&gw, None, request).await,
            501,
            "unsupported_transfer_encoding",
        );
    }
}
