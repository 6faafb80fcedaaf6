//! gRPC through the gateway unchanged: h2c clients to h2c and h2-over-TLS upstreams, unary and
//! server streaming calls, many concurrent streams on one upstream connection, trailers, and
//! gRPC-shaped errors when the gateway itself fails a call.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Gateway;
use tonic_health::pb::health_check_response::ServingStatus as PbStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::ServingStatus;

/// A tonic server with the health service; counts TCP connections.
async fn grpc_upstream() -> (
    std::net::SocketAddr,
    tonic_health::server::HealthReporter,
    Arc<AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let incoming = futures_util::stream::unfold(listener, move |l| {
        let counted = counted.clone();
        async move {
            let accepted = l.accept().await.map(|(s, _)| {
                counted.fetch_add(1, Ordering::SeqCst);
                s
            });
            Some((accepted, l))
        }
    });
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
    });
    (addr, reporter, conns)
}

async fn gateway(upstream: std::net::SocketAddr) -> Gateway {
    let down = common::closed_addr();
    Gateway::start(&format!(
        r#"
[upstreams.grpc]
targets = ["{upstream}"]
protocol = "h2c"
max_h2_streams = 200

[upstreams.down]
targets = ["{down}"]
protocol = "h2c"

[routes.grpc]
prefix = "/"
host = "grpc.internal"
upstream = "grpc"

[routes.down]
prefix = "/"
host = "down.internal"
upstream = "down"
"#
    ))
    .await
}

async fn client(gw: &Gateway, authority: &str) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
        .expect("endpoint")
        .origin(format!("http://{authority}").parse().expect("origin"))
        .connect()
        .await
        .expect("connect through the gateway");
    HealthClient::new(channel)
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

#[tokio::test]
async fn unary_calls_and_their_trailers_pass_through() {
    let (addr, _reporter, _) = grpc_upstream().await;
    let gw = gateway(addr).await;
    let mut c = client(&gw, "grpc.internal").await;
    let reply = c.check(check("shop.v1.Orders")).await.expect("check");
    assert_eq!(reply.into_inner().status, PbStatus::Serving as i32);
    // An error status from the upstream arrives intact (status and message in the trailers).
    let err = c
        .check(check("no.such.Service"))
        .await
        .expect_err("not found");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("service not registered"), "{err}");
}

#[tokio::test]
async fn many_concurrent_streams_share_one_upstream_connection() {
    let (addr, _reporter, conns) = grpc_upstream().await;
    let gw = gateway(addr).await;
    let mut c = client(&gw, "grpc.internal").await;
    // One call first: pingora opens the upstream h2 connection on first use, and 200 calls that
    // all arrive before it exists would each open their own.
    c.check(check("shop.v1.Orders")).await.expect("warm-up");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut c = c.clone();
        set.spawn(async move {
            c.check(check("shop.v1.Orders"))
                .await
                .map(|r| r.into_inner().status)
        });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.expect("join").expect("call"), PbStatus::Serving as i32);
    }
    // Streams are multiplexed: far fewer connections than calls. pingora opens extra
    // connections when many calls arrive at once (8–26 seen for 200 calls on this machine),
    // so the bound proves sharing, not a single connection.
    let n = conns.load(Ordering::SeqCst);
    assert!(n <= 50, "{n} upstream connections for 200 concurrent calls");
}

#[tokio::test]
async fn server_streaming_messages_arrive_as_they_are_sent() {
    let (addr, reporter, _) = grpc_upstream().await;
    let gw = gateway(addr).await;
    let mut c = client(&gw, "grpc.internal").await;
    let mut stream = c
        .watch(check("shop.v1.Orders"))
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("first message must not wait for the stream's end")
        .expect("message")
        .expect("some");
    assert_eq!(first.status, PbStatus::Serving as i32);
    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the update is streamed")
        .expect("message")
        .expect("some");
    assert_eq!(second.status, PbStatus::NotServing as i32);
}

#[tokio::test]
async fn gateway_made_failures_are_grpc_statuses() {
    let (addr, _reporter, _) = grpc_upstream().await;
    let gw = gateway(addr).await;
    // No route for this authority: UNIMPLEMENTED, in a trailers-only response.
    let mut c = client(&gw, "unknown.internal").await;
    let err = c
        .check(check("shop.v1.Orders"))
        .await
        .expect_err("no route");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    assert!(err.message().contains("route_not_found"), "{err}");
    // Upstream down: UNAVAILABLE.
    let mut c = client(&gw, "down.internal").await;
    let err = c.check(check("shop.v1.Orders")).await.expect_err("down");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
}

#[tokio::test]
async fn grpc_passes_through_to_an_h2_upstream_over_tls() {
    let (addr, reporter, _) = grpc_upstream().await;
    let (front, _, pem) = common::tls_front(addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), pem).expect("ca");
    let gw = Gateway::start_in(
        dir,
        &format!(
            r#"
[upstreams.grpc]
targets = ["{front}"]
protocol = "h2"
tls = {{ ca_file = "ca.pem", sni = "localhost" }}

[routes.grpc]
prefix = "/"
upstream = "grpc"
"#
        ),
    )
    .await;
    let mut c = client(&gw, "grpc.internal").await;
    let reply = c.check(check("shop.v1.Orders")).await.expect("check");
    assert_eq!(reply.into_inner().status, PbStatus::Serving as i32);
    let err = c
        .check(check("no.such.Service"))
        .await
        .expect_err("not found");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Server streaming over TLS: the current status, then a change as it happens.
    let mut stream = c
        .watch(check("shop.v1.Orders"))
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("first message in time")
        .expect("stream")
        .expect("a message");
    assert_eq!(first.status, PbStatus::Serving as i32);
    reporter
        .set_service_status("shop.v1.Orders", ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("second message in time")
        .expect("stream")
        .expect("a message");
    assert_eq!(second.status, PbStatus::NotServing as i32);
}
