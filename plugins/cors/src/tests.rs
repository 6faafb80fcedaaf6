//! Behaviour of the `cors` plugin on real request and response headers.

use super::*;
use tollgate_plugin_api::{BuildError, BuildErrorKind};
use tollgate_plugin_test::{ctx, header_list as header};

fn build(toml_src: &str) -> Result<Arc<dyn Plugin>, BuildError> {
    tollgate_plugin_test::build::<CorsPlugin>(toml_src)
}

fn build_err(toml_src: &str) -> BuildError {
    tollgate_plugin_test::build_err::<CorsPlugin>(toml_src)
}

fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
    tollgate_plugin_test::request(method, "/api", headers)
}

fn preflight(origin: &str, method: &str, extra: &[(&str, &str)]) -> RequestHeader {
    let mut headers = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    headers.extend_from_slice(extra);
    request("OPTIONS", &headers)
}

async fn answer(p: &Arc<dyn Plugin>, mut req: RequestHeader) -> Response {
    tollgate_plugin_test::answer(p, &mut req, &mut ctx()).await
}

/// Runs an actual request through both phases and returns the response headers.
async fn actual(p: &Arc<dyn Plugin>, req_headers: &[(&str, &str)]) -> ResponseHeader {
    let mut req = request("GET", req_headers);
    let mut ctx = ctx();
    let flow = p.on_request(&mut req, &mut ctx).await.unwrap();
    assert!(matches!(flow, Flow::Continue));
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.append_header("vary", "Accept-Encoding").unwrap();
    p.on_response(&mut resp, &mut ctx);
    resp
}

const APP: &str = r#"{ allow_origins = ["https://app.example.com", "https://*.example.org"] }"#;

#[tokio::test]
async fn preflight_from_allowed_origin_is_answered_with_204() {
    let p = build(APP).unwrap();
    let r = answer(&p, preflight("https://app.example.com", "PUT", &[])).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let h = &r.headers;
    assert_eq!(
        header(h, "access-control-allow-origin"),
        ["https://app.example.com"]
    );
    assert_eq!(
        header(h, "access-control-allow-methods"),
        ["GET, HEAD, POST, PUT, PATCH, DELETE"]
    );
    assert_eq!(header(h, "access-control-max-age"), ["600"]);
    assert!(header(h, "access-control-allow-credentials").is_empty());
    assert!(header(h, "access-control-allow-headers").is_empty());
    assert_eq!(
        header(h, "vary"),
        ["Origin, Access-Control-Request-Method, Access-Control-Request-Headers"]
    );
}

#[tokio::test]
async fn preflight_from_subdomain_of_a_pattern_is_answered() {
    let p = build(APP).unwrap();
    let r = answer(&p, preflight("https://a.b.example.org", "GET", &[])).await;
    assert_eq!(
        header(&r.headers, "access-control-allow-origin"),
        ["https://a.b.example.org"]
    );
}

#[tokio::test]
async fn preflight_reflects_requested_headers_when_allow_headers_is_empty() {
    let p = build(APP).unwrap();
    let req = preflight(
        "https://app.example.com",
        "POST",
        &[("access-control-request-headers", "content-type,x-api-key")],
    );
    let r = answer(&p, req).await;
    assert_eq!(
        header(&r.headers, "access-control-allow-headers"),
        ["content-type,x-api-key"]
    );
}

#[tokio::test]
async fn preflight_lists_configured_headers_instead_of_reflecting() {
    let p = build(
        r#"{ allow_origins = ["https://app.example.com"],
             allow_headers = ["Content-Type", "Authorization"],
             allow_methods = ["get", "POST"], max_age_secs = 60, allow_credentials = true }"#,
    )
    .unwrap();
    let req = preflight(
        "https://app.example.com",
        "GET",
        &[("access-control-request-headers", "x-anything")],
    );
    let r = answer(&p, req).await;
    let h = &r.headers;
    assert_eq!(
        header(h, "access-control-allow-headers"),
        ["content-type, authorization"]
    );
    assert_eq!(header(h, "access-control-allow-methods"), ["GET, POST"]);
    assert_eq!(header(h, "access-control-max-age"), ["60"]);
    assert_eq!(header(h, "access-control-allow-credentials"), ["true"]);
}

#[tokio::test]
async fn preflight_from_unknown_origin_is_forbidden() {
    let p = build(APP).unwrap();
    for origin in [
        "https://evil.example.net",
        "http://app.example.com",
        "https://example.org",
    ] {
        let mut req = preflight(origin, "GET", &[]);
        let mut ctx = ctx();
        let err = p.on_request(&mut req, &mut ctx).await.unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert_eq!(err.code, "cors_forbidden");
        assert!(err.message.contains(origin), "{}", err.message);
        assert_eq!(
            ctx.counts(),
            [Count::AuthFailure {
                reason: "cors_forbidden"
            }]
        );
    }
}

#[tokio::test]
async fn preflight_for_disallowed_method_is_forbidden() {
    let p = build(r#"{ allow_origins = ["*"], allow_methods = ["GET"] }"#).unwrap();
    let mut req = preflight("https://x.test", "DELETE", &[]);
    let err = p.on_request(&mut req, &mut ctx()).await.unwrap_err();
    assert_eq!(err.status, StatusCode::FORBIDDEN);
    assert_eq!(err.code, "cors_forbidden");
    assert!(
        err.message.contains("method `DELETE` is not allowed"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn any_origin_is_answered_with_a_wildcard() {
    let p = build(r#"{ allow_origins = ["*"] }"#).unwrap();
    let r = answer(&p, preflight("https://whoever.test", "GET", &[])).await;
    assert_eq!(header(&r.headers, "access-control-allow-origin"), ["*"]);
    let resp = actual(&p, &[("origin", "https://whoever.test")]).await;
    assert_eq!(resp.headers["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn options_without_request_method_is_not_a_preflight() {
    let p = build(APP).unwrap();
    let mut req = request("OPTIONS", &[("origin", "https://evil.test")]);
    let flow = p.on_request(&mut req, &mut ctx()).await.unwrap();
    assert!(matches!(flow, Flow::Continue));
}

#[tokio::test]
async fn actual_request_from_allowed_origin_gets_cors_headers() {
    let p = build(
        r#"{ allow_origins = ["https://app.example.com"], allow_credentials = true,
             expose_headers = ["X-Total-Count", "etag"] }"#,
    )
    .unwrap();
    let resp = actual(&p, &[("origin", "https://app.example.com")]).await;
    let h = &resp.headers;
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "x-total-count, etag");
    let vary: Vec<_> = h.get_all("vary").iter().collect();
    assert_eq!(vary, ["Accept-Encoding", "Origin"]);
}

#[tokio::test]
async fn actual_request_from_unknown_origin_gets_no_cors_headers() {
    let p = build(APP).unwrap();
    let resp = actual(&p, &[("origin", "https://evil.test")]).await;
    let names: Vec<_> = resp.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["vary"]);
    assert_eq!(resp.headers["vary"], "Accept-Encoding");
}

#[tokio::test]
async fn request_without_origin_passes_untouched() {
    let p = build(APP).unwrap();
    let resp = actual(&p, &[]).await;
    assert_eq!(resp.headers.len(), 1);
}

#[test]
fn vary_that_already_covers_origin_is_not_repeated() {
    for existing in ["origin", "Accept, Origin", "*"] {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("vary", existing).unwrap();
        add_vary_origin(&mut resp);
        let vary: Vec<_> = resp.headers.get_all("vary").iter().collect();
        assert_eq!(vary, [existing]);
    }
}

#[test]
fn credentials_with_any_origin_are_rejected() {
    let err = build_err(r#"{ allow_origins = ["*"], allow_credentials = true }"#);
    assert_eq!(err.kind, BuildErrorKind::Invalid);
    assert!(
        err.message
            .contains("allow_credentials = true cannot be combined with allow_origins = [\"*\"]"),
        "{}",
        err.message
    );
}

#[test]
fn empty_allow_origins_is_rejected() {
    let err = build_err("{ allow_origins = [] }");
    assert!(
        err.message.contains("allow_origins must list at least one"),
        "{}",
        err.message
    );
}

#[test]
fn missing_allow_origins_is_rejected() {
    let err = build_err("{}");
    assert_eq!(err.kind, BuildErrorKind::Config);
    assert!(err.message.contains("allow_origins"), "{}", err.message);
}

#[test]
fn origin_with_a_path_is_rejected() {
    let err = build_err(r#"{ allow_origins = ["https://app.example.com/"] }"#);
    assert!(
        err.message
            .contains("allow_origins: `https://app.example.com/` is not a valid origin"),
        "{}",
        err.message
    );
}

#[test]
fn bad_method_is_rejected() {
    let err = build_err(r#"{ allow_origins = ["*"], allow_methods = ["GE T"] }"#);
    assert!(
        err.message
            .contains("allow_methods: `GE T` is not a valid HTTP method"),
        "{}",
        err.message
    );
    let err = build_err(r#"{ allow_origins = ["*"], allow_methods = [] }"#);
    assert!(
        err.message.contains("at least one method"),
        "{}",
        err.message
    );
}

#[test]
fn bad_header_name_is_rejected() {
    let err = build_err(r#"{ allow_origins = ["*"], expose_headers = ["x(y)"] }"#);
    assert!(
        err.message
            .contains("expose_headers: `x(y)` is not a valid header name"),
        "{}",
        err.message
    );
}

#[test]
fn wildcard_allow_headers_is_rejected_with_a_hint() {
    let err = build_err(r#"{ allow_origins = ["*"], allow_headers = ["*"] }"#);
    assert!(
        err.message.contains("leave the list empty"),
        "{}",
        err.message
    );
    let err = build_err(
        r#"{ allow_origins = ["https://a.test"], allow_credentials = true, expose_headers = ["*"] }"#,
    );
    assert!(err.message.contains("literally"), "{}", err.message);
}

#[test]
fn unknown_key_is_rejected_with_a_span() {
    let err = build_err(r#"{ allow_origins = ["*"], allow_origin = "x" }"#);
    assert_eq!(err.kind, BuildErrorKind::Config);
    assert!(err.message.contains("allow_origin"), "{}", err.message);
    assert_eq!(err.span, Some(25..37));
}
