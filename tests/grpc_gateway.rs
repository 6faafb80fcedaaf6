//! HTTP/JSON → gRPC transcoding and gRPC-Web through the real gateway, against the test tonic
//! service of tests/grpc_transcode.rs (included as a module, so its engine tests also run here).

#[path = "grpc_transcode.rs"]
#[allow(dead_code)]
mod engine;

// The engine's module already loads the shared harness; one copy per test binary.
use engine::common;
use engine::{
    book_request, descriptor_set, start_upstream, to_json, web_frame, web_frames, Reflection, PKG,
    SERVICE,
};

fn gateway_config(upstream: std::net::SocketAddr, grpc: &str) -> String {
    format!(
        r#"
[upstreams.test]
targets = ["{upstream}"]
protocol = "h2c"

[routes.api]
prefix = "/v1"
upstream = "test"

[routes.api.grpc]
{grpc}
"#
    )
}

/// The gateway with the test service's schema compiled from its `.proto` file.
async fn proto_gateway(upstream: std::net::SocketAddr) -> common::Gateway {
    common::Gateway::start(&gateway_config(
        upstream,
        &format!(
            "protos = [\"tollgate/test/v1/test.proto\"]\ninclude_paths = [\"{}/proto\"]",
            env!("CARGO_MANIFEST_DIR")
        ),
    ))
    .await
}

#[tokio::test]
async fn json_requests_are_transcoded_through_the_gateway() {
    let up = start_upstream(Reflection::None).await;
    let gw = proto_gateway(up.addr).await;
    let c = common::client();
    let resp = c
        .get(gw.url("/v1/shelves/s1/books/b2"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    // HTTP/1.1 framing: a length, so the connection stays usable (not delimited by closing it).
    assert!(
        resp.headers().contains_key("content-length"),
        "{:?}",
        resp.headers()
    );
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["pages"], "9007199254740993", "{v}");
    // Over h2c too: a unary answer ends with its one DATA frame, a stream after its last.
    let h2 = common::h2c_client();
    let resp = h2
        .get(gw.url("/v1/shelves/s1/books/b2"))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["pages"], "9007199254740993", "{v}");
    let resp = h2
        .get(gw.url("/v1/shelves/s/books?count=2"))
        .send()
        .await
        .expect("h2c stream");
    assert_eq!(
        resp.text().await.expect("stream body"),
        "[{\"name\":\"s/0\"},{\"name\":\"s/1\",\"pages\":\"1\"}]"
    );
    // No binding for the path: 404 JSON from the engine; malformed JSON: 400 naming the problem.
    let resp = c
        .get(gw.url("/v1/nothing/here"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404);
    let resp = c
        .post(gw.url("/v1/echo/x"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert!(resp.status().is_client_error(), "{}", resp.status());
}

/// The upstream gets the gateway's request id once: the client's when sane, else a new one.
#[tokio::test]
async fn transcoded_calls_carry_the_gateways_request_id_once() {
    let up = start_upstream(Reflection::None).await;
    let gw = proto_gateway(up.addr).await;
    let c = common::client();
    let seen = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.expect("json");
        v["seen"]["x-request-id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let sane = c
        .get(gw.url("/v1/metadata"))
        .header("x-request-id", "rid-7")
        .send()
        .await
        .expect("request");
    assert_eq!(seen(sane).await, "rid-7");
    let insane = c
        .get(gw.url("/v1/metadata"))
        .header("x-request-id", "has space")
        .send()
        .await
        .expect("request");
    let id = seen(insane).await;
    assert!(id.len() == 36 && !id.contains(' '), "{id}");
    let none = c.get(gw.url("/v1/metadata")).send().await.expect("request");
    assert_eq!(seen(none).await.len(), 36);
}

#[tokio::test]
async fn schema_by_reflection_is_loaded_before_the_route_serves() {
    let up = start_upstream(Reflection::V1).await;
    let gw = common::Gateway::start(&gateway_config(up.addr, "reflection = true")).await;
    let resp = common::client()
        .get(gw.url("/v1/shelves/s1/books/b2"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
}

/// Bidirectional streaming through plain gRPC passthrough: the reflection service answers each
/// request message on the same stream, so replies interleave with requests.
#[tokio::test]
async fn bidirectional_streams_pass_through() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let up = start_upstream(Reflection::V1).await;
    let gw = common::Gateway::start(&format!(
        r#"
[upstreams.test]
targets = ["{}"]
protocol = "h2c"

[routes.reflection]
prefix = "/grpc.reflection.v1.ServerReflection"
upstream = "test"
"#,
        up.addr
    ))
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut replies = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        tx.send(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        })
        .await
        .unwrap();
        // The reply to this message arrives before the next one is sent: really streamed.
        let reply = tokio::time::timeout(std::time::Duration::from_secs(10), replies.message())
            .await
            .expect("a reply per request, not at the end")
            .unwrap()
            .expect("reply");
        assert!(
            format!("{reply:?}").contains("tollgate.test.v1"),
            "{reply:?}"
        );
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

#[tokio::test]
async fn transcoding_reaches_an_h2_upstream_over_tls() {
    let up = start_upstream(Reflection::V1).await;
    let (front, _, pem) = common::tls_front(up.addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), pem).expect("ca");
    let upstream = |name: &str, tls: &str| {
        format!(
            r#"
[upstreams.{name}]
targets = ["{front}"]
protocol = "h2"
tls = {tls}
"#
        )
    };
    let cfg = format!(
        r#"
{}
{}
[routes.api]
prefix = "/v1"
upstream = "tls"
[routes.api.grpc]
reflection = true

[routes.wrong]
host = "wrong.test"
prefix = "/v1"
upstream = "wrong_name"
[routes.wrong.grpc]
protos = ["tollgate/test/v1/test.proto"]
include_paths = ["{}/proto"]
"#,
        upstream("tls", r#"{ ca_file = "ca.pem", sni = "localhost" }"#),
        upstream(
            "wrong_name",
            r#"{ ca_file = "ca.pem", sni = "other.example" }"#
        ),
        env!("CARGO_MANIFEST_DIR")
    );
    // The schema comes by reflection over TLS before the route serves.
    let gw = common::Gateway::start_in(dir, &cfg).await;
    let c = common::client();
    let resp = c
        .get(gw.url("/v1/shelves/s1/books/b2"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["name"], "shelves/s1/books/b2", "{v}");

    // A certificate that does not match the server name: a fast 502 naming TLS, never a call.
    let resp = c
        .get(gw.url("/v1/shelves/s1/books/b2"))
        .header("host", "wrong.test")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 502);
    let body = resp.text().await.expect("body");
    assert!(body.contains("TLS"), "{body}");
}

#[tokio::test]
async fn reflection_and_transcoding_present_the_client_certificate_to_an_mtls_upstream() {
    use common::pki::{mtls_front, Pki};

    let up = start_upstream(Reflection::V1).await;
    let pki = Pki::new();
    let server = pki.issue("grpc-upstream", 1, None);
    let client = pki.issue("tollgate-client", 2, None);
    let front = mtls_front(up.addr, &pki, &server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).expect("ca");
    std::fs::write(dir.path().join("client.pem"), &client.cert_pem).expect("cert");
    std::fs::write(dir.path().join("client.key"), &client.key_pem).expect("key");
    let cfg = format!(
        r#"
[upstreams.mtls]
targets = ["{front}"]
protocol = "h2"
tls = {{ ca_file = "ca.pem", sni = "localhost", client_cert_file = "client.pem", client_key_file = "client.key" }}

[upstreams.no-cert]
targets = ["{front}"]
protocol = "h2"
tls = {{ ca_file = "ca.pem", sni = "localhost" }}

[routes.api]
prefix = "/v1"
upstream = "mtls"
[routes.api.grpc]
reflection = true

[routes.no-cert]
host = "no-cert.test"
prefix = "/v1"
upstream = "no-cert"
[routes.no-cert.grpc]
protos = ["tollgate/test/v1/test.proto"]
include_paths = ["{}/proto"]
"#,
        env!("CARGO_MANIFEST_DIR")
    );
    // The schema comes by reflection over mutual TLS before the route serves.
    let gw = common::Gateway::start_in(dir, &cfg).await;
    let c = common::client();
    let resp = c
        .get(gw.url("/v1/shelves/s1/books/b2"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["name"], "shelves/s1/books/b2", "{v}");

    // Without the certificate the upstream's TLS refuses the connection: a 502, not a hang.
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        c.get(gw.url("/v1/shelves/s1/books/b2"))
            .header("host", "no-cert.test")
            .send(),
    )
    .await
    .expect("answered in time")
    .expect("request");
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 502, "{body}");
}

#[tokio::test]
async fn grpc_web_browsers_reach_the_grpc_server_through_the_gateway() {
    use base64::Engine as _;
    use prost_reflect::{DescriptorPool, DynamicMessage};

    let up = start_upstream(Reflection::None).await;
    let pool = DescriptorPool::decode(descriptor_set().as_slice()).expect("descriptors");
    let cfg = format!(
        r#"
[upstreams.test]
targets = ["{}"]
protocol = "h2c"

[routes.web]
prefix = "/{SERVICE}"
upstream = "test"
[routes.web.grpc]
protos = ["tollgate/test/v1/test.proto"]
include_paths = ["{}/proto"]
[routes.web.plugins.cors]
allow_origins = ["https://app.example"]
allow_methods = ["POST"]
"#,
        up.addr,
        env!("CARGO_MANIFEST_DIR")
    );
    let gw = common::Gateway::start(&cfg).await;
    let c = common::client();
    let url = gw.url(&format!("/{SERVICE}/GetBook"));

    // The browser's preflight is answered by cors before anything reaches the engine.
    let resp = c
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-grpc-web")
        .send()
        .await
        .expect("preflight");
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    // Binary gRPC-Web: the reply message, then the trailers in the final frame.
    let resp = c
        .post(&url)
        .header("origin", "https://app.example")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(web_frame(0, &book_request(&pool, "b")))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc-web+proto");
    assert!(resp.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii")
        .contains("grpc-status"));
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let body = resp.bytes().await.expect("body");
    let (msgs, trailers) = web_frames(&body);
    assert_eq!(msgs.len(), 1, "{trailers}");
    let book = DynamicMessage::decode(
        pool.get_message_by_name(&format!("{PKG}.Book"))
            .expect("Book"),
        msgs[0].as_slice(),
    )
    .expect("decode");
    assert_eq!(to_json(&book)["title"], "Title of b");
    assert!(trailers.contains("grpc-status: 0"), "{trailers}");

    // Text gRPC-Web: base64 both ways.
    let b64 = base64::engine::general_purpose::STANDARD;
    let resp = c
        .post(&url)
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .body(b64.encode(web_frame(0, &book_request(&pool, "t"))))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("application/grpc-web-text"));
    let text = resp.text().await.expect("body");
    // Each frame may be padded on its own: decode the concatenation chunk by chunk.
    let mut raw = Vec::new();
    for chunk in text
        .split_inclusive('=')
        .filter(|c| !c.trim_matches('=').is_empty())
    {
        raw.extend(b64.decode(chunk.trim()).expect("base64"));
    }
    let (msgs, trailers) = web_frames(&raw);
    assert_eq!(msgs.len(), 1, "{trailers}");
    assert!(trailers.contains("grpc-status: 0"), "{trailers}");

    // A malformed frame (length past the end): a gRPC-Web error in the trailers, not a hang.
    let resp = c
        .post(&url)
        .header("content-type", "application/grpc-web+proto")
        .body(vec![0u8, 0, 0, 0, 99, 1, 2])
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let body = resp.bytes().await.expect("body");
    let (_, trailers) = web_frames(&body);
    assert!(
        status.is_client_error() || trailers.contains("grpc-status: "),
        "{status} {trailers}"
    );
    assert!(!trailers.contains("grpc-status: 0"), "{trailers}");
}

// ---- transcoded routes pick and retry targets like proxied ones (upstream::Attempt) ----

/// A TCP front to `backend` counting the connections it accepts: which target the gateway's
/// calls go to (it keeps one HTTP/2 connection per target).
async fn counted_front(
    backend: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, count)
}

fn two_target_config(
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    upstream_extra: &str,
) -> String {
    format!(
        r#"
[upstreams.test]
targets = ["{a}", "{b}"]
protocol = "h2c"
{upstream_extra}

[routes.api]
prefix = "/v1"
upstream = "test"

[routes.api.grpc]
protos = ["tollgate/test/v1/test.proto"]
include_paths = ["{}/proto"]
"#,
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test]
async fn transcoded_calls_retry_a_refused_connect_on_another_target() {
    let up = start_upstream(Reflection::None).await;
    let dead = common::closed_addr();
    let gw = common::Gateway::start(&two_target_config(
        dead,
        up.addr,
        "outlier_detection = { enabled = false }",
    ))
    .await;
    let c = common::client();
    // Round robin sends every other first try to the dead target; each is sent on.
    for i in 0..10 {
        let resp = c
            .get(gw.url(&format!("/v1/shelves/s{i}/books/b1")))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "request {i}");
    }
}

#[tokio::test]
async fn transcoded_calls_follow_the_ring_hash_key() {
    use std::sync::atomic::Ordering;
    let up = start_upstream(Reflection::None).await;
    let (a, to_a) = counted_front(up.addr).await;
    let (b, to_b) = counted_front(up.addr).await;
    let gw = common::Gateway::start(&two_target_config(
        a,
        b,
        "balance = \"ring_hash\"\nhash_on = \"header:x-user\"",
    ))
    .await;
    let c = common::client();
    for i in 0..20 {
        let resp = c
            .get(gw.url(&format!("/v1/shelves/s{i}/books/b1")))
            .header("x-user", "alice")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
    }
    // One key, one target: only one of the two was ever connected to.
    let (na, nb) = (to_a.load(Ordering::SeqCst), to_b.load(Ordering::SeqCst));
    assert!(
        (na == 0) != (nb == 0),
        "alice's calls went to both targets: {na} / {nb}"
    );
}

/// An HTTP/2 server answering every call with HTTP `status` (not gRPC).
async fn plain_status_upstream(status: u16) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let resp = http::Response::builder()
                        .status(status)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .expect("response");
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn outlier_failure_statuses_hold_for_transcoded_routes() {
    let busy = plain_status_upstream(503).await;
    let gw = common::Gateway::start(&format!(
        r#"
[upstreams.test]
targets = ["{busy}"]
protocol = "h2c"
outlier_detection = {{ consecutive_failures = 1, failure_statuses = [500] }}

[routes.api]
prefix = "/v1"
upstream = "test"

[routes.api.grpc]
protos = ["tollgate/test/v1/test.proto"]
include_paths = ["{}/proto"]
"#,
        env!("CARGO_MANIFEST_DIR")
    ))
    .await;
    let c = common::client();
    for _ in 0..3 {
        let resp = c
            .get(gw.url("/v1/shelves/s/books/b1"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 503);
    }
    // 503 is not in failure_statuses: no failure counted, nothing ejected.
    let view: serde_json::Value = common::client()
        .get(format!("http://{}/upstreams", gw.admin))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let target = &view["upstreams"][0]["targets"][0];
    assert_eq!(target["total_failures"], 0, "{view}");
    assert_eq!(target["times_ejected"], 0, "{view}");
}
