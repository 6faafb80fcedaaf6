//! Every response the gateway makes itself has one JSON shape; failures are fast, never hangs.

mod common;

use std::time::Duration;

use common::{client, closed_addr, expect_error, Gateway, Upstream};

fn route_to(targets: &str, upstream_extra: &str) -> String {
    format!(
        r#"
[upstreams.svc]
targets = [{targets}]
{upstream_extra}

[routes.api]
prefix = "/api"
upstream = "svc"
"#
    )
}

#[tokio::test]
async fn unrouted_request_is_404_without_contacting_an_upstream() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&route_to(&format!("\"{}\"", up.addr), "")).await;
    let resp = client()
        .get(gw.url("/nothing/here"))
        .send()
        .await
        .expect("request");
    let body = expect_error(resp, 404, "route_not_found").await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("/nothing/here"));
    assert_eq!(up.requests(), 0);
    assert_eq!(up.connections(), 0);
}

#[tokio::test]
async fn refused_connection_is_502_and_logged_with_route_and_upstream() {
    let gw = Gateway::start(&route_to(&format!("\"{}\"", closed_addr()), "")).await;
    let resp = client()
        .get(gw.url("/api/x"))
        .send()
        .await
        .expect("request");
    expect_error(resp, 502, "upstream_unreachable").await;
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("request failed") && l.contains("api") && l.contains("svc")),
        "{logs}"
    );
}

#[tokio::test]
async fn failed_target_is_skipped_and_the_request_retried_on_another() {
    let up = Upstream::echo("svc").await;
    let targets = format!("\"{}\", \"{}\"", closed_addr(), up.addr);
    let gw = Gateway::start(&route_to(&targets, "")).await;
    let c = client();
    for _ in 0..6 {
        let resp = c.get(gw.url("/api/x")).send().await.expect("request");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(up.requests(), 6);
}

#[tokio::test]
async fn no_available_target_is_503() {
    let gw = Gateway::start(&route_to(
        &format!("\"{}\"", closed_addr()),
        "panic_mode = false\noutlier_detection = { consecutive_failures = 1, base_ejection_time = \"60s\" }",
    ))
    .await;
    let c = client();
    let resp = c.get(gw.url("/api/x")).send().await.expect("request");
    expect_error(resp, 502, "upstream_unreachable").await;
    // The only target is ejected and panic mode is off: nothing left to try.
    let resp = c.get(gw.url("/api/x")).send().await.expect("request");
    expect_error(resp, 503, "no_healthy_target").await;
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let up = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        common::json_response(200, &serde_json::json!({}))
    })
    .await;
    let gw = Gateway::start(&route_to(
        &format!("\"{}\"", up.addr),
        "read_timeout = \"300ms\"",
    ))
    .await;
    let resp = tokio::time::timeout(
        Duration::from_secs(15),
        client().get(gw.url("/api/slow")).send(),
    )
    .await
    .expect("a timeout must not hang")
    .expect("request");
    expect_error(resp, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn upstream_that_resets_is_502() {
    // Accepts, reads the request, then closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let gw = Gateway::start(&route_to(&format!("\"{addr}\""), "")).await;
    let resp = client()
        .get(gw.url("/api/x"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["status"], 502);
}

#[tokio::test]
async fn oversize_headers_and_uri_are_431_and_414() {
    let up = Upstream::echo("svc").await;
    let cfg = format!(
        "[server]\nmax_request_header_bytes = \"4KiB\"\nmax_uri_bytes = 1024\n{}",
        route_to(&format!("\"{}\"", up.addr), "")
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    let resp = c
        .get(gw.url("/api/x"))
        .header("x-big", "a".repeat(8 * 1024))
        .send()
        .await
        .expect("request");
    expect_error(resp, 431, "headers_too_large").await;
    let resp = c
        .get(gw.url(&format!("/api/{}", "b".repeat(2048))))
        .send()
        .await
        .expect("request");
    expect_error(resp, 414, "uri_too_long").await;
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn oversize_body_is_413() {
    let up = Upstream::echo("svc").await;
    let cfg = format!(
        "{}\n[routes.api.plugins.body-limit]\nmax_bytes = \"1KiB\"\n",
        route_to(&format!("\"{}\"", up.addr), "")
    );
    let gw = Gateway::start(&cfg).await;
    let c = client();
    // Declared length over the limit: refused before the upstream is contacted.
    let resp = c
        .post(gw.url("/api/upload"))
        .body(vec![1u8; 4096])
        .send()
        .await
        .expect("request");
    expect_error(resp, 413, "body_too_large").await;
    assert_eq!(up.requests(), 0);
    // Chunked, no declared length: counted as it streams.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..8)
        .map(|_| Ok(bytes::Bytes::from(vec![2u8; 512])))
        .collect();
    let resp = c
        .post(gw.url("/api/upload"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 413);
    // Under the limit passes.
    let resp = c
        .post(gw.url("/api/upload"))
        .body(vec![1u8; 512])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn malformed_requests_get_4xx_json() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&route_to(&format!("\"{}\"", up.addr), "")).await;
    let raw = raw_close(gw.addr, "GET /api/%ZZ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("\"bad_path\""), "{raw}");
    let raw = raw_close(gw.addr, "GET /api/a%00b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    // Garbage instead of HTTP: the connection is answered or closed, never hung.
    let raw = raw_send(
        gw.addr,
        "\x16\x03\x01 this is not an http request at all\r\n\r\n",
    )
    .await;
    assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 4"), "{raw}");
    assert_eq!(up.requests(), 0);
}

async fn raw_close(addr: std::net::SocketAddr, req: &str) -> String {
    raw_send(
        addr,
        &req.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"),
    )
    .await
}

async fn raw_send(addr: std::net::SocketAddr, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the gateway left a malformed request hanging");
    String::from_utf8_lossy(&out).into_owned()
}
