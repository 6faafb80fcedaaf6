//! HTTP/JSON → gRPC transcoding and gRPC-Web through the real gateway, against the test tonic
//! service of tests/grpc_transcode.rs (included as a module, so its engine tests also run here).

#[path = "grpc_transcode.rs"]
#[allow(dead_code)]
mod engine;

#[path = "common/mod.rs"]
mod common;

use engine::{start_upstream, Reflection};

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

#[tokio::test]
async fn json_requests_are_transcoded_through_the_gateway() {
    let up = start_upstream(Reflection::None).await;
    let gw = common::Gateway::start(&gateway_config(
        up.addr,
        &format!(
            "protos = [\"tollgate/test/v1/test.proto\"]\ninclude_paths = [\"{}/proto\"]",
            env!("CARGO_MANIFEST_DIR")
        ),
    ))
    .await;
    let c = common::client();
    let resp = c
        .get(gw.url("/v1/shelves/s1/books/b2"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["pages"], "9007199254740993", "{v}");
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
