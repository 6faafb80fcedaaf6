//! The plugin as the gateway uses it: built from TOML through the registry, then called with
//! requests.

use std::path::{Path, PathBuf};

use http::StatusCode;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tollgate_plugin_api::BuildErrorKind;
use tollgate_plugin_test::{ctx, request};

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/jwt")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

/// A directory with `secret` (holding SECRET) next to the config, as `base_dir`.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    dir
}

fn build_in(dir: &Path, src: &str) -> Result<Arc<dyn Plugin>, String> {
    tollgate_plugin_test::build_in::<JwtAuthPlugin>(dir, src).map_err(|e| e.message)
}

fn build(src: &str) -> Arc<dyn Plugin> {
    let dir = config_dir();
    build_in(dir.path(), src).unwrap()
}

fn build_err(src: &str) -> String {
    let dir = config_dir();
    match build_in(dir.path(), src) {
        Ok(_) => panic!("built: {src}"),
        Err(e) => e,
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn hs256(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        None,
        &claims,
    )
}

fn get(headers: &[(&str, &str)]) -> RequestHeader {
    request("GET", "/x?a=1", headers)
}

fn bearer(token: &str) -> RequestHeader {
    get(&[("authorization", &format!("Bearer {token}"))])
}

async fn run(p: &Arc<dyn Plugin>, req: &mut RequestHeader) -> Result<RequestContext, PluginError> {
    let mut c = ctx();
    p.on_request(req, &mut c).await.map(|_| c)
}

fn challenge_of(e: &PluginError) -> String {
    e.headers
        .iter()
        .find(|(n, _)| n == http::header::WWW_AUTHENTICATE)
        .map(|(_, v)| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

const HS: &str = r#"providers = [{ issuer = "me", secret_file = "secret" }]"#;

#[tokio::test]
async fn a_valid_token_passes_and_publishes_its_claims() {
    let p = build(&format!(
        "{HS}\nforward_claims = {{ sub = \"x-user-id\", \"realm_access.roles\" = \"x-roles\", \
         admin = \"x-admin\" }}"
    ));
    let token = hs256(
        json!({"iss": "me", "sub": "u1", "exp": now() + 60, "admin": false,
        "realm_access": {"roles": ["a", "b"]}, "n": 3}),
    );
    let mut req = bearer(&token);
    req.append_header("x-user-id", "spoofed").unwrap();
    req.append_header("x-roles", "root").unwrap();
    let c = run(&p, &mut req).await.unwrap();
    assert_eq!(req.headers["x-user-id"], "u1");
    assert_eq!(req.headers["x-roles"], "a,b");
    assert_eq!(req.headers["x-admin"], "false");
    assert_eq!(req.headers.get_all("x-user-id").iter().count(), 1);
    assert_eq!(&c.vars["consumer"], "u1");
    assert_eq!(&c.vars["jwt.sub"], "u1");
    assert_eq!(&c.vars["jwt.iss"], "me");
    assert_eq!(&c.vars["jwt.n"], "3");
    assert_eq!(&c.vars["jwt.realm_access"], r#"{"roles":["a","b"]}"#);
    assert!(
        req.headers.contains_key("authorization"),
        "kept without strip_token"
    );
}

#[tokio::test]
async fn spoofed_claim_headers_are_removed_even_when_the_claim_is_absent() {
    let p = build(&format!(
        "{HS}\nforward_claims = {{ email = \"x-email\" }}\nforward_payload_header = \"x-jwt\""
    ));
    let token = hs256(json!({"iss": "me", "exp": now() + 60}));
    let mut req = bearer(&token);
    req.append_header("x-email", "ceo@example.com").unwrap();
    req.append_header("x-jwt", "e30").unwrap();
    run(&p, &mut req).await.unwrap();
    assert!(req.headers.get("x-email").is_none());
    let payload = token.split('.').nth(1).unwrap();
    assert_eq!(req.headers["x-jwt"], payload);
    // Also on a refused request: nothing of the client's survives.
    let mut refused = get(&[("x-email", "ceo@example.com")]);
    assert!(run(&p, &mut refused).await.is_err());
    assert!(refused.headers.get("x-email").is_none());
}

#[tokio::test]
async fn a_missing_token_is_401_with_a_bare_challenge() {
    let p = build(&format!("{HS}\nrealm = \"orders\""));
    let e = run(&p, &mut get(&[])).await.unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (StatusCode::UNAUTHORIZED, "missing_token")
    );
    assert_eq!(challenge_of(&e), "Bearer realm=\"orders\"");
    let e = run(&p, &mut get(&[("authorization", "Basic YTpi")]))
        .await
        .unwrap_err();
    assert_eq!(e.code, "missing_token");
}

#[tokio::test]
async fn an_invalid_token_is_401_with_invalid_token() {
    let p = build(HS);
    let expired = hs256(json!({"iss": "me", "exp": now() - 3600}));
    let e = run(&p, &mut bearer(&expired)).await.unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
    let c = challenge_of(&e);
    assert!(
        c.starts_with("Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\""),
        "{c}"
    );
    assert!(c.contains("expired"), "{c}");
    let e = run(&p, &mut bearer("not-a-jwt")).await.unwrap_err();
    assert_eq!(e.code, "invalid_token");
}

#[tokio::test]
async fn required_scopes_and_claims_are_403() {
    let p = build(&format!(
        "{HS}\nrequired_scopes = [\"orders:read\", \"orders:write\"]\nrequired_claims = [\"tenant.id\"]"
    ));
    let ok = hs256(
        json!({"iss": "me", "exp": now() + 60, "scope": "orders:read orders:write",
        "tenant": {"id": "t1"}}),
    );
    assert!(run(&p, &mut bearer(&ok)).await.is_ok());
    let no_write = hs256(
        json!({"iss": "me", "exp": now() + 60, "scp": ["orders:read"],
        "tenant": {"id": "t1"}}),
    );
    let e = run(&p, &mut bearer(&no_write)).await.unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    assert!(challenge_of(&e).contains("scope=\"orders:write\""));
    let no_tenant = hs256(
        json!({"iss": "me", "exp": now() + 60, "scopes": ["orders:read", "orders:write"],
        "tenant": {"id": null}}),
    );
    let e = run(&p, &mut bearer(&no_tenant)).await.unwrap_err();
    assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "missing_claim"));
}

#[tokio::test]
async fn refusals_are_counted_as_auth_failures_under_their_code() {
    let p = build(&format!("{HS}\nrequired_scopes = [\"orders:write\"]"));
    let counted = |token: Option<String>| {
        let p = p.clone();
        async move {
            let mut req = match token {
                Some(t) => bearer(&t),
                None => get(&[]),
            };
            let mut c = ctx();
            let _ = p.on_request(&mut req, &mut c).await;
            c.counts().to_vec()
        }
    };
    let reason = |reason| vec![Count::AuthFailure { reason }];
    assert_eq!(counted(None).await, reason("missing_token"));
    assert_eq!(
        counted(Some("not.a.token".into())).await,
        reason("invalid_token")
    );
    let read_only = hs256(json!({"iss": "me", "exp": now() + 60, "scope": "orders:read"}));
    assert_eq!(counted(Some(read_only)).await, reason("insufficient_scope"));
    let ok = hs256(json!({"iss": "me", "exp": now() + 60, "scope": "orders:write"}));
    assert_eq!(counted(Some(ok)).await, []);
}

#[tokio::test]
async fn tokens_are_read_from_the_configured_sources_in_order_and_stripped() {
    let p = build(&format!(
        "{HS}\ntoken_from = [{{ header = \"x-token\" }}, {{ query = \"access_token\" }}, \
         {{ cookie = \"jwt\" }}]\nstrip_token = true"
    ));
    let token = hs256(json!({"iss": "me", "exp": now() + 60}));
    let mut req = get(&[("x-token", &token)]);
    run(&p, &mut req).await.unwrap();
    assert!(req.headers.get("x-token").is_none());

    let mut req = request("GET", &format!("/x?a=1&access_token={token}"), &[]);
    run(&p, &mut req).await.unwrap();
    assert_eq!(req.uri.to_string(), "/x?a=1");

    let mut req = get(&[("cookie", &format!("theme=dark; jwt={token}"))]);
    run(&p, &mut req).await.unwrap();
    assert_eq!(req.headers["cookie"], "theme=dark");

    // The default source is not consulted once others are configured.
    let e = run(&p, &mut bearer(&token)).await.unwrap_err();
    assert_eq!(e.code, "missing_token");
}

#[tokio::test]
async fn preflights_pass_without_a_token_unless_disabled() {
    let preflight = || {
        request(
            "OPTIONS",
            "/x",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
            ],
        )
    };
    let p = build(HS);
    assert!(run(&p, &mut preflight()).await.is_ok());
    let p = build(&format!("{HS}\nallow_preflight = false"));
    assert_eq!(
        run(&p, &mut preflight()).await.unwrap_err().code,
        "missing_token"
    );
}

#[tokio::test]
async fn public_keys_verify_their_own_algorithms() {
    let cases = [
        (
            "rsa1",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&fixture("rsa1.key.pem")).unwrap(),
        ),
        (
            "rsa1",
            Algorithm::PS384,
            EncodingKey::from_rsa_pem(&fixture("rsa1.key.pem")).unwrap(),
        ),
        (
            "ec256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&fixture("ec256.key.pem")).unwrap(),
        ),
        (
            "ec384",
            Algorithm::ES384,
            EncodingKey::from_ec_pem(&fixture("ec384.key.pem")).unwrap(),
        ),
        (
            "ed25519",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&fixture("ed25519.key.pem")).unwrap(),
        ),
    ];
    for (name, alg, key) in cases {
        let file = fixtures().join(format!("{name}.pub.pem"));
        let p = build(&format!(
            "providers = [{{ public_key_file = {:?} }}]",
            file.display().to_string()
        ));
        let token = sign(alg, &key, None, &json!({"sub": name, "exp": now() + 60}));
        let c = run(&p, &mut bearer(&token)).await.unwrap();
        assert_eq!(&c.vars["consumer"], name);
    }
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_public_key_is_refused() {
    let pem = fixtures().join("rsa1.pub.pem");
    let p = build(&format!(
        "providers = [{{ public_key_file = {:?} }}]",
        pem.display().to_string()
    ));
    // The classic confusion attack: the public key's PEM used as an HMAC secret.
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&fixture("rsa1.pub.pem")).unwrap(),
        None,
        &json!({"sub": "admin", "exp": now() + 60}),
    );
    let e = run(&p, &mut bearer(&forged)).await.unwrap_err();
    assert_eq!(e.code, "invalid_token");
    assert!(e.message.contains("HS256 is not accepted"), "{}", e.message);
}

#[tokio::test]
async fn a_jwks_file_selects_keys_by_kid() {
    let dir = config_dir();
    let jwk = |pem: &str, kid: &str| {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(&fixture(pem))
            .or_else(|_| jsonwebtoken::DecodingKey::from_ec_pem(&fixture(pem)))
            .unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_decoding_key(&key, None).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    };
    let doc = json!({"keys": [jwk("rsa1.pub.pem", "r1"), jwk("rsa2.pub.pem", "r2"), jwk("ec256.pub.pem", "e1")]});
    std::fs::write(dir.path().join("jwks.json"), doc.to_string()).unwrap();
    let p = build_in(
        dir.path(),
        r#"providers = [{ jwks_file = "jwks.json", algorithms = ["RS256", "ES256"] }]"#,
    )
    .unwrap();
    let rsa2 = EncodingKey::from_rsa_pem(&fixture("rsa2.key.pem")).unwrap();
    let claims = json!({"exp": now() + 60});
    let ok = sign(Algorithm::RS256, &rsa2, Some("r2"), &claims);
    assert!(run(&p, &mut bearer(&ok)).await.is_ok());
    let wrong_kid = sign(Algorithm::RS256, &rsa2, Some("r1"), &claims);
    let e = run(&p, &mut bearer(&wrong_kid)).await.unwrap_err();
    assert!(e.message.contains("signature"), "{}", e.message);
    let unknown = sign(Algorithm::RS256, &rsa2, Some("zz"), &claims);
    let e = run(&p, &mut bearer(&unknown)).await.unwrap_err();
    assert!(e.message.contains("key id `zz`"), "{}", e.message);
    let ambiguous = sign(Algorithm::RS256, &rsa2, None, &claims);
    let e = run(&p, &mut bearer(&ambiguous)).await.unwrap_err();
    assert!(e.message.contains("several keys"), "{}", e.message);
    let ps = sign(Algorithm::PS256, &rsa2, Some("r2"), &claims);
    let e = run(&p, &mut bearer(&ps)).await.unwrap_err();
    assert!(e.message.contains("PS256 is not accepted"), "{}", e.message);
}

#[tokio::test]
async fn several_providers_are_told_apart_by_iss() {
    let pem = fixtures().join("ec256.pub.pem");
    let p = build(&format!(
        "providers = [{{ issuer = \"internal\", secret_file = \"secret\" }}, \
         {{ issuer = \"https://idp.example\", public_key_file = {:?}, audiences = [\"api\"] }}]",
        pem.display().to_string()
    ));
    let internal = hs256(json!({"iss": "internal", "sub": "job", "exp": now() + 60}));
    assert_eq!(
        &run(&p, &mut bearer(&internal)).await.unwrap().vars["consumer"],
        "job"
    );
    let ec = EncodingKey::from_ec_pem(&fixture("ec256.key.pem")).unwrap();
    let idp = sign(
        Algorithm::ES256,
        &ec,
        None,
        &json!({"iss": "https://idp.example", "sub": "u",
        "aud": "api", "exp": now() + 60}),
    );
    assert_eq!(
        &run(&p, &mut bearer(&idp)).await.unwrap().vars["consumer"],
        "u"
    );
    // An HS token claiming the IdP's issuer meets the IdP's EC key, not the secret.
    let confused = hs256(json!({"iss": "https://idp.example", "aud": "api", "exp": now() + 60}));
    assert_eq!(
        run(&p, &mut bearer(&confused)).await.unwrap_err().code,
        "invalid_token"
    );
}

#[test]
fn secrets_come_from_the_environment_or_a_file_never_inline() {
    let dir = config_dir();
    let ctx = BuildContext {
        base_dir: dir.path().to_owned(),
    };
    let config = |src: &str| -> JwtAuthConfig { toml::from_str(src).unwrap() };
    let env = |name: &str| (name == "JWT_SECRET").then(|| SECRET.into());
    assert!(JwtAuth::compile(
        config(r#"providers = [{ secret_env = "JWT_SECRET" }]"#),
        &ctx,
        &env
    )
    .is_ok());
    let e = JwtAuth::compile(
        config(r#"providers = [{ secret_env = "NOPE" }]"#),
        &ctx,
        &env,
    )
    .unwrap_err();
    assert!(e.contains("`NOPE` is not set"), "{e}");
    let e = build_err(r#"providers = [{ secret = "hunter2" }]"#);
    assert!(e.contains("inline `secret` is not accepted"), "{e}");
    let e = build_err(r#"providers = [{ secret_file = "missing" }]"#);
    assert!(e.contains("cannot read `secret_file`"), "{e}");
}

#[test]
fn bad_configs_are_refused_with_a_clear_message() {
    let pem = fixtures().join("rsa1.pub.pem").display().to_string();
    let cases: Vec<(String, &str)> = vec![
        ("providers = []".into(), "at least one token issuer"),
        (r#"providers = [{ issuer = "a" }]"#.into(), "no key"),
        (r#"providers = [{ secret_file = "secret", jwks_url = "https://x/" }]"#.into(), "only one key source"),
        (format!(r#"providers = [{{ public_key_file = {pem:?}, algorithms = ["HS256"] }}]"#), "needs a shared secret"),
        (r#"providers = [{ secret_file = "secret", algorithms = ["RS256"] }]"#.into(), "needs a public key"),
        (r#"providers = [{ secret_file = "secret", algorithms = ["HS512"] }]"#.into(), "at least 64"),
        (r#"providers = [{ secret_file = "secret", algorithms = [] }]"#.into(), "`algorithms` is empty"),
        (r#"providers = [{ jwks_url = "http://idp.example/jwks" }]"#.into(), "plain http"),
        (r#"providers = [{ jwks_url = "ftp://idp.example/jwks" }]"#.into(), "scheme `ftp`"),
        (r#"providers = [{ jwks_url = "not a url" }]"#.into(), "not a URL"),
        (r#"providers = [{ jwks_url = "https://u:pw@idp.example/jwks" }]"#.into(), "`https://u:<redacted>@idp.example/jwks` carries credentials"),
        (r#"providers = [{ jwks_url = "https://i/", jwks_min_refresh = "10m", jwks_max_refresh = "1m" }]"#.into(), "jwks_max_refresh"),
        (r#"providers = [{ jwks_url = "https://i/", jwks_refetch_interval = "10ms" }]"#.into(), "at least \"1s\""),
        (r#"providers = [{ secret_file = "secret", jwks_timeout = "1s" }]"#.into(), "apply to jwks_url only"),
        (r#"providers = [{ secret_file = "secret", issuer = "a" }, { secret_file = "secret" }]"#.into(), "`issuer` is required"),
        (r#"providers = [{ secret_file = "secret", issuer = "a" }, { secret_file = "secret", issuer = "a" }]"#.into(), "listed twice"),
        (r#"providers = [{ public_key_file = "secret" }]"#.into(), "not a PEM file"),
        (r#"providers = [{ jwks_file = "secret" }]"#.into(), "not a JWKS"),
        (format!("{HS}\nleeway = \"2h\""), "at most \"1h\""),
        (format!("{HS}\nforward_claims = {{ sub = \"host\" }}"), "managed by the gateway"),
        (format!("{HS}\nforward_claims = {{ sub = \"authorization\" }}"), "where the token is read from"),
        (format!("{HS}\nforward_claims = {{ sub = \"x-a\", id = \"x-a\" }}"), "used twice"),
        (format!("{HS}\nforward_claims = {{ sub = \"bad header\" }}"), "not a valid header name"),
        (format!("{HS}\nrequired_scopes = [\"a b\"]"), "without spaces"),
        (format!("{HS}\nrealm = \"a\\\"b\""), "realm"),
        (format!("{HS}\nmax_token_size = 10"), "at least 64"),
        (format!("{HS}\ntoken_from = []"), "at least one source"),
    ];
    for (src, expected) in cases {
        let e = build_err(&src);
        assert!(e.starts_with("plugin `jwt-auth`: "), "{e}");
        assert!(
            e.contains(expected),
            "{src}\n=> {e}\n(expected `{expected}`)"
        );
    }
}

#[test]
fn loopback_jwks_urls_may_be_plain_http() {
    let dir = config_dir();
    for url in [
        "http://127.0.0.1:1/jwks",
        "http://localhost/jwks",
        "http://[::1]/jwks",
    ] {
        assert!(
            build_in(
                dir.path(),
                &format!("providers = [{{ jwks_url = {url:?} }}]")
            )
            .is_ok(),
            "{url}"
        );
    }
    let allowed =
        r#"providers = [{ jwks_url = "http://idp.internal/jwks", jwks_allow_http = true }]"#;
    assert!(build_in(dir.path(), allowed).is_ok());
}

#[test]
fn config_errors_carry_a_position() {
    let src = r#"providers = [{ secret_env = "S", algorithms = ["XX1"] }]"#;
    let err = tollgate_plugin_test::build_err::<JwtAuthPlugin>(src);
    assert_eq!(err.kind, BuildErrorKind::Config);
    assert_eq!(&src[err.span.unwrap()], "[\"XX1\"]");
}

#[tokio::test]
async fn an_unreachable_jwks_answers_503_until_it_loads() {
    let p =
        build(r#"providers = [{ jwks_url = "http://127.0.0.1:9/jwks", jwks_timeout = "500ms" }]"#);
    assert!(p.prepare().await.is_err());
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa1.key.pem")).unwrap();
    let token = sign(
        Algorithm::RS256,
        &rsa,
        Some("k"),
        &json!({"exp": now() + 60}),
    );
    let mut c = ctx();
    let e = p.on_request(&mut bearer(&token), &mut c).await.unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (StatusCode::SERVICE_UNAVAILABLE, "jwks_unavailable")
    );
    // The gateway's fault, not the client's: no auth failure.
    assert_eq!(c.counts(), []);
    assert!(e
        .headers
        .iter()
        .any(|(n, v)| n == http::header::RETRY_AFTER && v == "30"));
}
