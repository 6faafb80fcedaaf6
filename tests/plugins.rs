//! The built-in plugins, configured in gateway.toml and exercised through the real gateway.

mod common;

use common::{client, expect_error, h2c_client, Gateway, Upstream};

fn cfg(addr: std::net::SocketAddr, body: &str) -> String {
    format!(
        r#"
[upstreams.svc]
targets = ["{addr}"]

[routes.api]
prefix = "/api"
upstream = "svc"
{body}
"#
    )
}

#[tokio::test]
async fn cors_preflight_is_answered_at_the_edge() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        up.addr,
        r#"
[routes.api.plugins.cors]
allow_origins = ["https://app.example.com", "https://*.example.org"]
allow_methods = ["GET", "POST"]
allow_headers = ["content-type"]
expose_headers = ["x-total"]
max_age_secs = 120
"#,
    ))
    .await;
    let c = client();
    let resp = c
        .request(reqwest::Method::OPTIONS, gw.url("/api/items"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(resp.status().is_success(), "{}", resp.status());
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    let methods = h["access-control-allow-methods"].to_str().expect("ascii");
    assert!(methods.contains("POST"), "{methods}");
    assert_eq!(h["access-control-max-age"], "120");
    // Wildcard subdomain origin.
    let resp = c
        .request(reqwest::Method::OPTIONS, gw.url("/api/items"))
        .header("origin", "https://shop.example.org")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    assert!(resp.status().is_success());
    assert_eq!(up.requests(), 0, "a preflight never reaches the upstream");

    // A disallowed origin or method is refused with the JSON shape.
    let resp = c
        .request(reqwest::Method::OPTIONS, gw.url("/api/items"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    expect_error(resp, 403, "cors_forbidden").await;
    let resp = c
        .request(reqwest::Method::OPTIONS, gw.url("/api/items"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "DELETE")
        .send()
        .await
        .expect("preflight");
    expect_error(resp, 403, "cors_forbidden").await;

    // An actual cross-origin request is proxied and gets the CORS headers.
    let resp = c
        .get(gw.url("/api/items"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(resp.headers()["access-control-expose-headers"], "x-total");
    // Same request without an Origin: no CORS headers.
    let resp = c.get(gw.url("/api/items")).send().await.expect("request");
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn ip_restriction_uses_the_trusted_client_address() {
    let up = Upstream::echo("svc").await;
    let body = format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{}",
        cfg(
            up.addr,
            r#"
[routes.api.plugins.ip-restriction]
allow = ["10.0.0.0/8", "127.0.0.1"]
deny = ["10.66.0.0/16"]
message = "office network only"
"#
        )
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    let via = |ip: &'static str| c.get(gw.url("/api/x")).header("x-forwarded-for", ip);
    assert_eq!(via("10.1.2.3").send().await.expect("req").status(), 200);
    let resp = via("10.66.1.1").send().await.expect("req");
    let err = expect_error(resp, 403, "ip_forbidden").await;
    assert_eq!(err["error"]["message"], "office network only");
    let resp = via("203.0.113.5").send().await.expect("req");
    expect_error(resp, 403, "ip_forbidden").await;
    // Direct from loopback (allowed), no forwarded chain.
    assert_eq!(
        c.get(gw.url("/api/x")).send().await.expect("req").status(),
        200
    );
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn ip_restriction_ignores_forwarded_for_from_untrusted_peers() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        up.addr,
        "[routes.api.plugins.ip-restriction]\nallow = [\"10.0.0.0/8\"]\n",
    ))
    .await;
    // Claiming an allowed address does not help when the peer is not a trusted proxy.
    let resp = client()
        .get(gw.url("/api/x"))
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .expect("req");
    expect_error(resp, 403, "ip_forbidden").await;
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn headers_plugin_edits_request_and_response() {
    let up = Upstream::start(|req| async move {
        let mut resp = common::describe("svc", req).await;
        let h = resp.headers_mut();
        h.insert("server", "upstream/1.0".parse().expect("value"));
        h.insert("x-internal", "secret".parse().expect("value"));
        resp
    })
    .await;
    let gw = Gateway::start(&cfg(
        up.addr,
        r#"
[routes.api.plugins.headers]
request.add = { "x-added" = "a" }
request.set = { "x-env" = "prod" }
request.remove = ["cookie"]
response.set = { "server" = "tollgate" }
response.add = { "x-frame-options" = "DENY" }
response.remove = ["x-internal"]
"#,
    ))
    .await;
    let resp = client()
        .get(gw.url("/api/x"))
        .header("x-env", "dev")
        .header("x-added", "client")
        .header("cookie", "session=1")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["server"], "tollgate");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(h.get("x-internal").is_none());
    let v: serde_json::Value = resp.json().await.expect("json");
    let seen = &v["headers"];
    assert_eq!(seen["x-env"], "prod");
    assert_eq!(seen["x-added"], "client, a");
    assert!(seen.get("cookie").is_none(), "{seen}");
}

#[tokio::test]
async fn global_plugins_apply_to_every_route_unless_disabled_or_overridden() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&format!(
        r#"
[plugins.headers]
response.set = {{ "x-global" = "yes" }}

[upstreams.svc]
targets = ["{}"]

[routes.plain]
prefix = "/plain"
upstream = "svc"

[routes.quiet]
prefix = "/quiet"
upstream = "svc"
disable_plugins = ["headers"]

[routes.own]
prefix = "/own"
upstream = "svc"
[routes.own.plugins.headers]
response.set = {{ "x-global" = "route" }}
"#,
        up.addr
    ))
    .await;
    let c = client();
    let get = |p: &'static str| c.get(gw.url(p)).send();
    let r = get("/plain").await.expect("req");
    assert_eq!(r.headers()["x-global"], "yes");
    let r = get("/quiet").await.expect("req");
    assert!(r.headers().get("x-global").is_none());
    let r = get("/own").await.expect("req");
    assert_eq!(r.headers()["x-global"], "route");
    // Global plugins also run on the gateway's own answers when no route matched.
    let r = get("/none").await.expect("req");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-global"], "yes");
}

#[tokio::test]
async fn request_id_plugin_with_custom_header_and_no_trust() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        up.addr,
        "[routes.api.plugins.request-id]\nheader = \"x-correlation-id\"\ntrust_incoming = false\n",
    ))
    .await;
    let resp = client()
        .get(gw.url("/api/x"))
        .header("x-correlation-id", "client-chosen")
        .send()
        .await
        .expect("request");
    let echoed = resp.headers()["x-correlation-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_ne!(echoed, "client-chosen");
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["headers"]["x-correlation-id"], echoed.as_str());
}

#[tokio::test]
async fn plugins_run_on_h2_requests() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        up.addr,
        "[routes.api.plugins.headers]\nrequest.set = { \"x-via-h2\" = \"1\" }\n\
         [routes.api.plugins.ip-restriction]\ndeny = [\"192.0.2.0/24\"]\n",
    ))
    .await;
    let resp = h2c_client()
        .get(gw.url("/api/x"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["headers"]["x-via-h2"], "1");
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[tokio::test]
async fn key_auth_names_the_consumer_and_refuses_bad_keys() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&cfg(
        up.addr,
        &format!(
            "[routes.api.plugins.key-auth]\nquery = \"api_key\"\nconsumers = [{{ name = \"alice\", key_sha256 = \"{}\" }}]\n",
            sha256_hex("alice-key")
        ),
    ))
    .await;
    let c = client();
    let (_, v) = {
        let resp = c
            .get(gw.url("/api/x"))
            .header("x-api-key", "alice-key")
            .header("x-consumer", "mallory")
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 200);
        ((), resp.json::<serde_json::Value>().await.expect("json"))
    };
    assert_eq!(v["headers"]["x-consumer"], "alice");
    assert!(
        v["headers"].get("x-api-key").is_none(),
        "the key is not forwarded"
    );
    let resp = c
        .get(gw.url("/api/x?api_key=alice-key&q=1"))
        .send()
        .await
        .expect("req");
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["query"], "q=1");
    let resp = c.get(gw.url("/api/x")).send().await.expect("req");
    assert_eq!(resp.headers()["www-authenticate"], "ApiKey");
    expect_error(resp, 401, "missing_api_key").await;
    let resp = c
        .get(gw.url("/api/x"))
        .header("x-api-key", "guess")
        .send()
        .await
        .expect("req");
    expect_error(resp, 401, "invalid_api_key").await;
    assert_eq!(up.requests(), 2);
}

/// A plugin that reads the whole body before the handler (`require-json-field`): it answers
/// before the upstream sees anything, and a body it lets through reaches the upstream whole —
/// also when pingora sends it again to another target.
#[tokio::test]
async fn a_body_reading_plugin_answers_before_the_upstream_and_passes_the_body_on() {
    let up = Upstream::echo("svc").await;
    let dead = common::closed_addr();
    let gw = Gateway::start(&format!(
        r#"
[upstreams.svc]
targets = ["{dead}", "{}"]
outlier_detection = {{ enabled = false }}

[routes.api]
prefix = "/api"
upstream = "svc"

[routes.api.plugins.require-json-field]
fields = ["name"]
"#,
        up.addr
    ))
    .await;
    let c = client();
    for _ in 0..4 {
        // Round robin tries the dead target first every other time: the body is replayed.
        let resp = c
            .post(gw.url("/api/things"))
            .header("content-type", "application/json")
            .body(r#"{"name":"x","size":3}"#)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(v["body_len"], 21, "{v}");
    }
    let before = up.requests();
    let resp = c
        .post(gw.url("/api/things"))
        .header("content-type", "application/json")
        .body(r#"{"size":3}"#)
        .send()
        .await
        .expect("request");
    let body = expect_error(resp, 400, "missing_field").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("name")),
        "{body}"
    );
    // Chunked, with no declared length: read whole all the same.
    let chunks = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"not ")),
        Ok(bytes::Bytes::from_static(b"json")),
    ]);
    let resp = c
        .post(gw.url("/api/things"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("request");
    expect_error(resp, 400, "invalid_json").await;
    assert_eq!(
        up.requests(),
        before,
        "the upstream saw none of the refused requests"
    );
    // A proxied route reads at most 64 KiB for its plugins (pingora's replay buffer).
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(70 * 1024));
    let resp = c
        .post(gw.url("/api/things"))
        .body(big)
        .send()
        .await
        .expect("request");
    expect_error(resp, 413, "body_too_large").await;
}
