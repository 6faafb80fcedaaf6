//! Routing through the real gateway: precedence, host matching, methods, headers, rewrites and
//! path normalisation.

mod common;

use common::{client, expect_error, Gateway, Upstream};

/// One upstream per route, so the answering upstream names the route that matched.
async fn precedence_gateway() -> (Gateway, Vec<Upstream>) {
    let names = [
        "exact", "template", "short", "long", "host", "wild", "post", "header",
    ];
    let mut ups = Vec::new();
    let mut cfg = String::new();
    for name in names {
        let up = Upstream::echo(name).await;
        cfg.push_str(&format!(
            "[upstreams.{name}]\ntargets = [\"{}\"]\n\n",
            up.addr
        ));
        ups.push(up);
    }
    cfg.push_str(
        r#"
[routes.exact]
exact = "/api/users/me"
upstream = "exact"

[routes.template]
template = "/api/users/{id}"
upstream = "template"

[routes.short]
prefix = "/api"
upstream = "short"

[routes.long]
prefix = "/api/users"
upstream = "long"

[routes.host]
prefix = "/api"
host = "admin.example.com"
upstream = "host"

[routes.wild]
prefix = "/api"
host = "*.tenants.example.com"
upstream = "wild"

[routes.post]
exact = "/submit"
methods = ["POST"]
upstream = "post"

[routes.header]
exact = "/submit"
methods = ["GET"]
headers = { "x-canary" = "1" }
upstream = "header"
"#,
    );
    (Gateway::start(&cfg).await, ups)
}

async fn who(gw: &Gateway, req: reqwest::RequestBuilder) -> String {
    let _ = gw;
    let resp = req.send().await.expect("request");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    body["upstream"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn precedence_is_by_specificity_not_file_order() {
    let (gw, _ups) = precedence_gateway().await;
    let c = client();
    assert_eq!(who(&gw, c.get(gw.url("/api/users/me"))).await, "exact");
    assert_eq!(who(&gw, c.get(gw.url("/api/users/42"))).await, "template");
    assert_eq!(
        who(&gw, c.get(gw.url("/api/users/42/orders"))).await,
        "long"
    );
    assert_eq!(who(&gw, c.get(gw.url("/api/users"))).await, "long");
    assert_eq!(who(&gw, c.get(gw.url("/api/orders"))).await, "short");
    // Prefixes match on segment boundaries only.
    assert_eq!(who(&gw, c.get(gw.url("/api/usersX"))).await, "short");
}

#[tokio::test]
async fn host_specific_routes_win_over_any_host() {
    let (gw, _ups) = precedence_gateway().await;
    let c = client();
    let host = |h: &'static str| c.get(gw.url("/api/users/me")).header("host", h);
    assert_eq!(who(&gw, host("admin.example.com")).await, "host");
    assert_eq!(who(&gw, host("ADMIN.example.com:8080")).await, "host");
    assert_eq!(who(&gw, host("acme.tenants.example.com")).await, "wild");
    // The wildcard needs at least one label in front of it.
    assert_eq!(who(&gw, host("tenants.example.com")).await, "exact");
    assert_eq!(who(&gw, host("other.example.com")).await, "exact");
}

#[tokio::test]
async fn methods_and_headers_select_routes() {
    let (gw, ups) = precedence_gateway().await;
    let c = client();
    assert_eq!(who(&gw, c.post(gw.url("/submit"))).await, "post");
    assert_eq!(
        who(&gw, c.get(gw.url("/submit")).header("x-canary", "1")).await,
        "header"
    );
    let resp = c.get(gw.url("/submit")).send().await.expect("request");
    expect_error(resp, 404, "route_not_found").await;
    let resp = c
        .get(gw.url("/submit"))
        .header("x-canary", "2")
        .send()
        .await
        .expect("request");
    expect_error(resp, 404, "route_not_found").await;
    // A 404 never reaches any upstream.
    let hits: usize = ups.iter().map(Upstream::requests).sum();
    assert_eq!(hits, 2);
}

#[tokio::test]
async fn strip_prefix_and_rewrite_change_the_upstream_path() {
    let up = Upstream::echo("svc").await;
    let gw = Gateway::start(&format!(
        r#"
[upstreams.svc]
targets = ["{}"]

[routes.strip]
prefix = "/strip"
strip_prefix = true
upstream = "svc"

[routes.prefix-rewrite]
prefix = "/old"
rewrite = "/new/v2"
upstream = "svc"

[routes.template-rewrite]
template = "/users/{{id}}/posts/{{post}}"
rewrite = "/v1/posts/{{post}}?author={{id}}"
upstream = "svc"
"#,
        up.addr
    ))
    .await;
    let c = client();
    let get = |path: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            let v: serde_json::Value = c
                .get(url)
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
            (
                v["path"].as_str().unwrap_or_default().to_string(),
                v["query"].as_str().map(str::to_string),
            )
        }
    };
    assert_eq!(
        get("/strip/a/b?x=1").await,
        ("/a/b".into(), Some("x=1".into()))
    );
    assert_eq!(get("/strip").await, ("/".into(), None));
    assert_eq!(get("/old/thing").await, ("/new/v2/thing".into(), None));
    assert_eq!(get("/old").await, ("/new/v2".into(), None));
    let (path, query) = get("/users/7/posts/99?x=1").await;
    assert_eq!(path, "/v1/posts/99");
    let query = query.unwrap_or_default();
    assert!(query.contains("author=7"), "{query}");
    assert!(query.contains("x=1"), "{query}");
}

#[tokio::test]
async fn traversal_is_normalised_before_matching() {
    let public = Upstream::echo("public").await;
    let gw = Gateway::start(&format!(
        r#"
[upstreams.public]
targets = ["{}"]

[routes.public]
prefix = "/public"
upstream = "public"
"#,
        public.addr
    ))
    .await;
    let c = client();
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
    ] {
        let resp = c.get(gw.url(path)).send().await.expect("request");
        expect_error(resp, 404, "route_not_found").await;
    }
    // Above the root is refused outright.
    let resp = c
        .get(gw.url("/../etc/passwd"))
        .send()
        .await
        .expect("request");
    // reqwest normalises `..` itself; send the raw path over a socket instead.
    let _ = resp;
    let raw = raw_request(
        gw.addr,
        "GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("\"bad_path\""), "{raw}");
    let raw = raw_request(gw.addr, "GET /public/%zz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    // Dot segments and doubled slashes that stay inside the route are cleaned, then proxied.
    let raw = raw_request(
        gw.addr,
        "GET /public//a/./b/../c HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"path\":\"/public/a/c\""), "{raw}");
    assert_eq!(public.requests(), 1);
}

/// Sends raw bytes, reads until the server closes or the response head and a short body arrived.
async fn raw_request(addr: std::net::SocketAddr, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = req.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
