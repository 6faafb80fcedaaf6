//! The plugin as a route uses it: built from TOML, run over request bodies.

use tollgate_plugin_api::BuildErrorKind;
use tollgate_plugin_test::{build, build_err, ctx, request, run_body};

use super::*;

fn plugin(src: &str) -> Arc<dyn Plugin> {
    build::<RequireJsonFieldPlugin>(src).unwrap()
}

/// Runs the body phase of a chain of just this plugin over `body`, sent by `method`.
async fn send(p: &Arc<dyn Plugin>, method: &str, body: &[u8]) -> Result<Bytes, PluginError> {
    let mut req = request(method, "/orders", &[]);
    let pieces: &[&[u8]] = if body.is_empty() { &[] } else { &[body] };
    let (flow, body) = run_body(std::slice::from_ref(p), &mut req, pieces, &mut ctx()).await?;
    assert!(matches!(flow, Flow::Continue));
    Ok(body)
}

#[tokio::test]
async fn an_object_with_every_field_passes_unchanged() {
    let p = plugin(r#"{ fields = ["name", "email"] }"#);
    let body = br#"{"name": "Ada", "email": "ada@example.com", "extra": [1, 2]}"#;
    assert_eq!(send(&p, "POST", body).await.unwrap(), &body[..]);
}

#[tokio::test]
async fn a_missing_field_is_400_naming_it() {
    let p = build::<RequireJsonFieldPlugin>(r#"{ fields = ["name", "email"] }"#).unwrap();
    let mut req = request("POST", "/orders", &[]);
    let body: &[&[u8]] = &[br#"{"email": "ada@example.com"}"#];
    let err = run_body(&[p], &mut req, body, &mut ctx())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status, err.code),
        (StatusCode::BAD_REQUEST, "missing_field")
    );
    assert_eq!(err.message, "the JSON body lacks `name`");
}

#[tokio::test]
async fn every_missing_or_null_field_is_named() {
    let p = plugin(r#"{ fields = ["name", "email", "age"] }"#);
    let err = send(&p, "PUT", br#"{"email": null, "age": 0}"#)
        .await
        .unwrap_err();
    assert_eq!(err.code, "missing_field");
    assert_eq!(err.message, "the JSON body lacks `name`, `email`");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400_invalid_json() {
    let p = plugin(r#"{ fields = ["name"] }"#);
    let err = send(&p, "POST", b"name=Ada").await.unwrap_err();
    assert_eq!(
        (err.status, err.code),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    assert!(
        err.message.starts_with("the request body is not JSON: "),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn json_that_is_not_an_object_is_invalid_json() {
    let p = plugin(r#"{ fields = ["name"] }"#);
    let err = send(&p, "PATCH", br#"[{"name": "Ada"}]"#)
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_json");
    assert_eq!(
        err.message,
        "the request body must be a JSON object with `name`"
    );
}

#[tokio::test]
async fn an_empty_body_is_refused_only_where_a_document_is_expected() {
    let p = plugin(r#"{ fields = ["name"] }"#);
    for method in ["POST", "PUT", "PATCH"] {
        let err = send(&p, method, b"").await.unwrap_err();
        assert_eq!(err.code, "invalid_json", "{method}");
    }
    for method in ["GET", "HEAD", "DELETE", "OPTIONS"] {
        send(&p, method, b"").await.unwrap();
    }
    // A body sent with any method is checked.
    let err = send(&p, "DELETE", b"{}").await.unwrap_err();
    assert_eq!(err.code, "missing_field");
}

#[tokio::test]
async fn a_body_over_max_bytes_is_413_before_it_is_parsed() {
    let p = plugin(r#"{ fields = ["name"], max_bytes = 16 }"#);
    let err = send(&p, "POST", br#"{"name": "Ada Lovelace"}"#)
        .await
        .unwrap_err();
    assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(err.code, "body_too_large");
    assert!(
        err.message
            .contains("`max_bytes` of plugin `require-json-field`"),
        "{}",
        err.message
    );
}

#[test]
fn the_default_limit_is_64_kib() {
    let p = plugin(r#"{ fields = ["name"] }"#);
    assert_eq!(
        p.body_access(),
        BodyAccess::Buffer {
            max_bytes: 64 * 1024
        }
    );
}

#[test]
fn bad_configs_are_refused_with_what_to_write() {
    let err = build_err::<RequireJsonFieldPlugin>("{ fields = [] }");
    assert_eq!(err.kind, BuildErrorKind::Invalid);
    assert!(
        err.message.contains("at least one field"),
        "{}",
        err.message
    );
    let err = build_err::<RequireJsonFieldPlugin>(r#"{ fields = ["a", "a"] }"#);
    assert!(err.message.contains("`a` twice"), "{}", err.message);
    let err = build_err::<RequireJsonFieldPlugin>(r#"{ fields = [""] }"#);
    assert!(err.message.contains("empty name"), "{}", err.message);
    let err = build_err::<RequireJsonFieldPlugin>(r#"{ fields = ["a"], max_bytes = 0 }"#);
    assert!(err.message.contains("greater than 0"), "{}", err.message);
    let err = build_err::<RequireJsonFieldPlugin>("{}");
    assert_eq!(err.kind, BuildErrorKind::Config);
    assert!(err.message.contains("fields"), "{}", err.message);
    let err = build_err::<RequireJsonFieldPlugin>(r#"{ fields = ["a"], field = "b" }"#);
    assert_eq!(err.kind, BuildErrorKind::Config);
    assert_eq!(err.span, Some(18..23));
}
