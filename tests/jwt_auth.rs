//! The `jwt-auth` plugin through the real gateway: tokens signed here with the test keys of
//! `tests/fixtures/jwt/`, a JWKS served by a hyper server in the test (counting its fetches,
//! switching keys, failing on demand), the echo upstream showing what reached it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, expect_error, full, Gateway, Upstream};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).expect("fixture")
}

/// A fixture path written as a TOML string.
fn toml_path(name: &str) -> String {
    format!("{:?}", fixture_path(name).display().to_string())
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("rsa1.key.pem")).expect("rsa1")
}

fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("rsa2.key.pem")).expect("rsa2")
}

fn hmac() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes()).expect("hmac")
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, key).expect("sign")
}

fn b64(s: &str) -> String {
    use base64_helper::encode_url;
    encode_url(s.as_bytes())
}

/// base64url without padding, so the tests need no base64 crate of their own.
mod base64_helper {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode_url(input: &[u8]) -> String {
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
}

/// The public half of a fixture key as a JWK with a `kid`.
fn jwk(pub_pem: &str, kid: &str) -> Value {
    let pem = fixture(pub_pem);
    let key = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .expect("public key");
    let mut jwk = Jwk::from_decoding_key(&key, None).expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).expect("jwk json")
}

/// What the test JWKS endpoint answers; changed by the test while the gateway runs.
struct JwksState {
    status: u16,
    keys: Vec<Value>,
    cache_control: &'static str,
    delay: Duration,
}

/// A JWKS endpoint: a hyper server whose `requests()` counts the fetches.
struct JwksServer {
    server: Upstream,
    state: Arc<Mutex<JwksState>>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let state = Arc::new(Mutex::new(JwksState {
            status: 200,
            keys,
            cache_control: "public, max-age=3600",
            delay: Duration::ZERO,
        }));
        let shared = state.clone();
        let server = Upstream::start(move |_req| {
            let (status, body, cache_control, delay) = {
                let s = shared.lock().expect("state");
                let body = json!({ "keys": s.keys }).to_string();
                (s.status, body, s.cache_control, s.delay)
            };
            async move {
                tokio::time::sleep(delay).await;
                hyper::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .header("cache-control", cache_control)
                    .body(full(body))
                    .expect("response")
            }
        })
        .await;
        JwksServer { server, state }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.server.addr)
    }

    fn fetches(&self) -> usize {
        self.server.requests()
    }

    fn set(&self, f: impl FnOnce(&mut JwksState)) {
        f(&mut self.state.lock().expect("state"));
    }
}

/// `[upstreams.svc]` → `up`, route `api` on `/api` with `plugin` as its jwt-auth table.
fn route_config(up: SocketAddr, plugin: &str) -> String {
    format!(
        "[upstreams.svc]\ntargets = [\"{up}\"]\n\n\
         [routes.api]\nprefix = \"/api\"\nupstream = \"svc\"\n\n\
         [routes.api.plugins.jwt-auth]\n{plugin}\n"
    )
}

/// A gateway whose config directory also holds `secret` (SECRET), for `secret_file = "secret"`.
async fn gateway(body: &str) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).expect("secret");
    Gateway::start_in(dir, body).await
}

async fn get(gw: &Gateway, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

/// Asserts 200 from the echo upstream and returns what it saw.
async fn expect_ok(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
    body
}

fn www_authenticate(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Asserts a 401 `invalid_token` with its challenge; returns the message.
async fn expect_invalid(resp: reqwest::Response) -> String {
    let challenge = www_authenticate(&resp);
    assert!(
        challenge.starts_with(
            "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\""
        ),
        "{challenge}"
    );
    let body = expect_error(resp, 401, "invalid_token").await;
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const HS_PROVIDER: &str = r#"providers = [{ issuer = "https://auth.example", secret_file = "secret", audiences = ["orders"] }]"#;

fn hs_claims(extra: Value) -> Value {
    let mut claims = json!({
        "iss": "https://auth.example",
        "aud": "orders",
        "sub": "user-1",
        "exp": now() + 300,
    });
    if let (Some(c), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        c.extend(extra);
    }
    claims
}

#[tokio::test]
async fn hs256_token_is_accepted_and_claims_reach_the_upstream_as_headers() {
    let up = Upstream::echo("svc").await;
    let gw = gateway(&route_config(
        up.addr,
        &format!(
            "{HS_PROVIDER}\n\
             forward_claims = {{ sub = \"x-user-id\", \"realm_access.roles\" = \"x-roles\", \
             level = \"x-level\", email = \"x-email\" }}\n\
             forward_payload_header = \"x-jwt-payload\""
        ),
    ))
    .await;
    let token = sign(
        Algorithm::HS256,
        &hmac(),
        None,
        hs_claims(json!({"realm_access": {"roles": ["admin", "viewer"]}, "level": 3})),
    );
    let resp = client()
        .get(gw.url("/api/orders"))
        .bearer_auth(&token)
        .header("x-user-id", "mallory")
        .header("x-email", "ceo@example.com")
        .header("x-jwt-payload", "e30")
        .send()
        .await
        .expect("request");
    let seen = expect_ok(resp).await;
    let h = &seen["headers"];
    assert_eq!(h["x-user-id"], "user-1", "the client's copy is replaced");
    assert_eq!(h["x-roles"], "admin,viewer");
    assert_eq!(h["x-level"], "3");
    assert!(
        h.get("x-email").is_none(),
        "a spoofed header without a claim is removed: {h}"
    );
    assert_eq!(
        h["x-jwt-payload"],
        token.split('.').nth(1).expect("payload")
    );
    assert_eq!(
        h["authorization"],
        format!("Bearer {token}"),
        "kept without strip_token"
    );
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_verify_against_their_pem_keys() {
    let up = Upstream::echo("svc").await;
    let mut body = format!("[upstreams.svc]\ntargets = [\"{}\"]\n", up.addr);
    for (route, pem) in [("rsa", "rsa1"), ("ec", "ec256"), ("ed", "ed25519")] {
        body.push_str(&format!(
            "\n[routes.{route}]\nprefix = \"/{route}\"\nupstream = \"svc\"\n\
             [routes.{route}.plugins.jwt-auth]\n\
             providers = [{{ public_key_file = {} }}]\n",
            toml_path(&format!("{pem}.pub.pem"))
        ));
    }
    let gw = gateway(&body).await;
    let claims = || json!({"sub": "u", "exp": now() + 60});
    let ec = EncodingKey::from_ec_pem(&fixture("ec256.key.pem")).expect("ec");
    let ed = EncodingKey::from_ed_pem(&fixture("ed25519.key.pem")).expect("ed");
    let rs256 = sign(Algorithm::RS256, &rsa1(), None, claims());
    let es256 = sign(Algorithm::ES256, &ec, None, claims());
    let eddsa = sign(Algorithm::EdDSA, &ed, None, claims());
    expect_ok(get(&gw, "/rsa/x", &rs256).await).await;
    expect_ok(get(&gw, "/ec/x", &es256).await).await;
    expect_ok(get(&gw, "/ed/x", &eddsa).await).await;
    // Each key verifies only its own algorithm family.
    let msg = expect_invalid(get(&gw, "/ec/x", &rs256).await).await;
    assert!(msg.contains("RS256 is not accepted"), "{msg}");
    let msg = expect_invalid(get(&gw, "/rsa/x", &eddsa).await).await;
    assert!(msg.contains("EdDSA is not accepted"), "{msg}");
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_a_bearer_challenge() {
    let up = Upstream::echo("svc").await;
    let gw = gateway(&route_config(
        up.addr,
        &format!("{HS_PROVIDER}\nmax_token_size = \"1KiB\""),
    ))
    .await;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(
                Algorithm::HS256,
                &hmac(),
                None,
                hs_claims(json!({"exp": now() - 3600})),
            ),
            "expired",
        ),
        (
            "not yet valid",
            sign(
                Algorithm::HS256,
                &hmac(),
                None,
                hs_claims(json!({"nbf": now() + 3600})),
            ),
            "not valid yet",
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::HS256,
                &hmac(),
                None,
                hs_claims(json!({"iss": "https://evil.example"})),
            ),
            "issuer",
        ),
        (
            "wrong audience",
            sign(
                Algorithm::HS256,
                &hmac(),
                None,
                hs_claims(json!({"aud": ["billing", "admin"]})),
            ),
            "audience",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&hs_claims(json!({})).to_string())
            ),
            "alg `none`",
        ),
        (
            "RS256 token for an HMAC provider",
            sign(Algorithm::RS256, &rsa1(), None, hs_claims(json!({}))),
            "RS256 is not accepted",
        ),
        (
            "tampered signature",
            {
                let t = sign(Algorithm::HS256, &hmac(), None, hs_claims(json!({})));
                let (head, sig) = t.rsplit_once('.').expect("three parts");
                let flipped = if sig.starts_with('A') { "B" } else { "A" };
                format!("{head}.{flipped}{}", &sig[1..])
            },
            "signature",
        ),
        (
            "tampered payload",
            {
                let t = sign(Algorithm::HS256, &hmac(), None, hs_claims(json!({})));
                let parts: Vec<&str> = t.split('.').collect();
                let forged = b64(&hs_claims(json!({"sub": "admin"})).to_string());
                format!("{}.{forged}.{}", parts[0], parts[2])
            },
            "signature",
        ),
        (
            "oversize",
            sign(
                Algorithm::HS256,
                &hmac(),
                None,
                hs_claims(json!({"pad": "x".repeat(2000)})),
            ),
            "larger than 1024 bytes",
        ),
        ("garbage", "not.a.token".to_owned(), "malformed"),
        ("one part", "garbage".to_owned(), "not a JWT"),
        (
            "binary-ish",
            "\u{7f}%%%.@@@.###".replace('\u{7f}', "x"),
            "malformed",
        ),
    ];
    for (what, token, expected) in cases {
        let msg = expect_invalid(get(&gw, "/api/x", &token).await).await;
        assert!(msg.contains(expected), "{what}: {msg}");
    }
    assert_eq!(up.requests(), 0, "no refused request reaches the upstream");
    assert!(!gw.logs().contains("panicked"), "{}", gw.logs());
}

#[tokio::test]
async fn an_hs256_token_made_with_the_rsa_public_key_is_refused() {
    let up = Upstream::echo("svc").await;
    let gw = gateway(&route_config(
        up.addr,
        &format!(
            "providers = [{{ public_key_file = {} }}]",
            toml_path("rsa1.pub.pem")
        ),
    ))
    .await;
    // Algorithm confusion: the (public) PEM text as an HMAC secret.
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&fixture("rsa1.pub.pem")).expect("key"),
        None,
        json!({"sub": "admin", "exp": now() + 60}),
    );
    let msg = expect_invalid(get(&gw, "/api/x", &forged).await).await;
    assert!(msg.contains("HS256 is not accepted"), "{msg}");
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn a_missing_token_gets_a_challenge_without_an_error_code() {
    let up = Upstream::echo("svc").await;
    let gw = gateway(&route_config(
        up.addr,
        &format!("{HS_PROVIDER}\nrealm = \"orders\""),
    ))
    .await;
    let resp = client()
        .get(gw.url("/api/x"))
        .send()
        .await
        .expect("request");
    assert_eq!(www_authenticate(&resp), "Bearer realm=\"orders\"");
    expect_error(resp, 401, "missing_token").await;
    let resp = client()
        .get(gw.url("/api/x"))
        .basic_auth("user", Some("password"))
        .send()
        .await
        .expect("request");
    expect_error(resp, 401, "missing_token").await;
}

#[tokio::test]
async fn missing_scopes_and_claims_are_403() {
    let up = Upstream::echo("svc").await;
    let gw = gateway(&route_config(
        up.addr,
        &format!(
            "{HS_PROVIDER}\nrequired_scopes = [\"orders:read\", \"orders:write\"]\n\
             required_claims = [\"tenant\"]"
        ),
    ))
    .await;
    let ok = sign(
        Algorithm::HS256,
        &hmac(),
        None,
        hs_claims(json!({"scope": "orders:read orders:write profile", "tenant": "acme"})),
    );
    expect_ok(get(&gw, "/api/x", &ok).await).await;
    let read_only = sign(
        Algorithm::HS256,
        &hmac(),
        None,
        hs_claims(json!({"scp": ["orders:read"], "tenant": "acme"})),
    );
    let resp = get(&gw, "/api/x", &read_only).await;
    let challenge = www_authenticate(&resp);
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"orders:write\""), "{challenge}");
    expect_error(resp, 403, "insufficient_scope").await;
    let no_tenant = sign(
        Algorithm::HS256,
        &hmac(),
        None,
        hs_claims(json!({"scope": "orders:read orders:write"})),
    );
    expect_error(get(&gw, "/api/x", &no_tenant).await, 403, "missing_claim").await;
}

#[tokio::test]
async fn tokens_are_taken_from_query_and_cookie_and_stripped() {
    let up = Upstream::echo("svc").await;
    let gw = gateway(&route_config(
        up.addr,
        &format!(
            "{HS_PROVIDER}\ntoken_from = [{{ query = \"access_token\" }}, {{ cookie = \"jwt\" }}]\n\
             strip_token = true"
        ),
    ))
    .await;
    let token = sign(Algorithm::HS256, &hmac(), None, hs_claims(json!({})));
    let resp = client()
        .get(gw.url(&format!("/api/items?page=2&access_token={token}")))
        .send()
        .await
        .expect("request");
    let seen = expect_ok(resp).await;
    assert_eq!(
        seen["query"], "page=2",
        "the token is stripped from the query"
    );

    let resp = client()
        .get(gw.url("/api/items"))
        .header("cookie", format!("theme=dark; jwt={token}; lang=en"))
        .send()
        .await
        .expect("request");
    let seen = expect_ok(resp).await;
    assert_eq!(seen["headers"]["cookie"], "theme=dark; lang=en");

    // A bearer header is not a configured source here.
    let resp = get(&gw, "/api/items", &token).await;
    expect_error(resp, 401, "missing_token").await;
}

#[tokio::test]
async fn a_cors_preflight_passes_without_a_token() {
    let up = Upstream::echo("svc").await;
    let gw = gateway(&route_config(up.addr, HS_PROVIDER)).await;
    let resp = client()
        .request(reqwest::Method::OPTIONS, gw.url("/api/items"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(resp.status(), 200, "reached the echo upstream");
    // An OPTIONS request that is not a preflight still needs a token.
    let resp = client()
        .request(reqwest::Method::OPTIONS, gw.url("/api/items"))
        .send()
        .await
        .expect("options");
    expect_error(resp, 401, "missing_token").await;
}

#[tokio::test]
async fn several_providers_are_chosen_by_iss() {
    let up = Upstream::echo("svc").await;
    let jwks = JwksServer::start(vec![jwk("rsa1.pub.pem", "idp-1")]).await;
    let gw = gateway(&route_config(
        up.addr,
        &format!(
            "providers = [\n\
               {{ issuer = \"internal\", secret_file = \"secret\" }},\n\
               {{ issuer = \"https://idp.example\", jwks_url = \"{}\", algorithms = [\"RS256\"] }},\n\
             ]\nforward_claims = {{ iss = \"x-issuer\" }}",
            jwks.url()
        ),
    ))
    .await;
    let internal = sign(
        Algorithm::HS256,
        &hmac(),
        None,
        json!({"iss": "internal", "sub": "cron", "exp": now() + 60}),
    );
    let seen = expect_ok(get(&gw, "/api/x", &internal).await).await;
    assert_eq!(seen["headers"]["x-issuer"], "internal");
    let idp = sign(
        Algorithm::RS256,
        &rsa1(),
        Some("idp-1"),
        json!({"iss": "https://idp.example", "sub": "alice", "exp": now() + 60}),
    );
    let seen = expect_ok(get(&gw, "/api/x", &idp).await).await;
    assert_eq!(seen["headers"]["x-issuer"], "https://idp.example");
    // An HS token claiming the IdP's issuer meets the IdP's RSA keys, not the secret.
    let confused = sign(
        Algorithm::HS256,
        &hmac(),
        Some("idp-1"),
        json!({"iss": "https://idp.example", "exp": now() + 60}),
    );
    expect_invalid(get(&gw, "/api/x", &confused).await).await;
    let stranger = sign(
        Algorithm::HS256,
        &hmac(),
        None,
        json!({"iss": "https://other.example", "exp": now() + 60}),
    );
    let msg = expect_invalid(get(&gw, "/api/x", &stranger).await).await;
    assert!(msg.contains("not accepted here"), "{msg}");
}

fn jwks_route(up: SocketAddr, jwks: &JwksServer, extra: &str) -> String {
    route_config(
        up,
        &format!(
            "providers = [{{ issuer = \"https://idp.example\", jwks_url = \"{}\"{extra} }}]",
            jwks.url()
        ),
    )
}

fn idp_token(key: &EncodingKey, kid: &str) -> String {
    sign(
        Algorithm::RS256,
        key,
        Some(kid),
        json!({"iss": "https://idp.example", "sub": "alice", "exp": now() + 60}),
    )
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_one_refetch() {
    let up = Upstream::echo("svc").await;
    let jwks = JwksServer::start(vec![jwk("rsa1.pub.pem", "k1")]).await;
    let gw = gateway(&jwks_route(up.addr, &jwks, "")).await;
    assert_eq!(jwks.fetches(), 1, "fetched before the route serves");
    expect_ok(get(&gw, "/api/x", &idp_token(&rsa1(), "k1")).await).await;

    jwks.set(|s| s.keys.push(jwk("rsa2.pub.pem", "k2")));
    expect_ok(get(&gw, "/api/x", &idp_token(&rsa2(), "k2")).await).await;
    assert_eq!(
        jwks.fetches(),
        2,
        "the unknown kid caused exactly one fetch"
    );
    expect_ok(get(&gw, "/api/x", &idp_token(&rsa2(), "k2")).await).await;
    expect_ok(get(&gw, "/api/x", &idp_token(&rsa1(), "k1")).await).await;
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test]
async fn a_cached_token_is_refused_once_its_key_leaves_the_jwks() {
    let up = Upstream::echo("svc").await;
    let jwks = JwksServer::start(vec![jwk("rsa1.pub.pem", "k1")]).await;
    let gw = gateway(&jwks_route(up.addr, &jwks, "")).await;
    let old = idp_token(&rsa1(), "k1");
    // Twice: the second is served from the verified-token cache (cache_size defaults on).
    expect_ok(get(&gw, "/api/x", &old).await).await;
    expect_ok(get(&gw, "/api/x", &old).await).await;

    // The IdP rotates k1 out; a token with the new kid makes the gateway refetch.
    jwks.set(|s| s.keys = vec![jwk("rsa2.pub.pem", "k2")]);
    expect_ok(get(&gw, "/api/x", &idp_token(&rsa2(), "k2")).await).await;
    assert_eq!(jwks.fetches(), 2);
    let msg = expect_invalid(get(&gw, "/api/x", &old).await).await;
    assert!(msg.contains("key id `k1`"), "{msg}");
}

#[tokio::test]
async fn forged_kids_cause_at_most_one_fetch_per_interval() {
    let up = Upstream::echo("svc").await;
    let jwks = JwksServer::start(vec![jwk("rsa1.pub.pem", "k1")]).await;
    jwks.set(|s| s.delay = Duration::from_millis(300));
    let gw = gateway(&jwks_route(up.addr, &jwks, "")).await;
    assert_eq!(jwks.fetches(), 1);

    let c = client();
    let storm = (0..20).map(|i| {
        let token = idp_token(&rsa1(), &format!("forged-{i}"));
        let req = c.get(gw.url("/api/x")).bearer_auth(token).send();
        async move { req.await.expect("request") }
    });
    for resp in futures_util::future::join_all(storm).await {
        let msg = expect_invalid(resp).await;
        assert!(msg.contains("key id `forged-"), "{msg}");
    }
    assert_eq!(jwks.fetches(), 2, "20 concurrent unknown kids: one fetch");
    for i in 20..30 {
        let token = idp_token(&rsa1(), &format!("forged-{i}"));
        expect_invalid(get(&gw, "/api/x", &token).await).await;
    }
    assert_eq!(jwks.fetches(), 2, "none more within jwks_refetch_interval");
    expect_ok(get(&gw, "/api/x", &idp_token(&rsa1(), "k1")).await).await;
}

#[tokio::test]
async fn the_last_good_keys_keep_working_while_the_jwks_is_down() {
    let up = Upstream::echo("svc").await;
    let jwks = JwksServer::start(vec![jwk("rsa1.pub.pem", "k1")]).await;
    let gw = gateway(&jwks_route(
        up.addr,
        &jwks,
        ", jwks_min_refresh = \"1s\", jwks_max_refresh = \"1s\"",
    ))
    .await;
    expect_ok(get(&gw, "/api/x", &idp_token(&rsa1(), "k1")).await).await;
    jwks.set(|s| s.status = 503);
    let before = jwks.fetches();
    // Refreshes every second: the next ones fail (and say so), however long the machine takes
    // to run them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while jwks.fetches() <= before || !gw.logs().contains("JWKS fetch failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the background refresh did not try again:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect_ok(get(&gw, "/api/x", &idp_token(&rsa1(), "k1")).await).await;
}

#[tokio::test]
async fn a_jwks_that_never_loaded_answers_503_until_it_does() {
    let up = Upstream::echo("svc").await;
    let jwks = JwksServer::start(vec![jwk("rsa1.pub.pem", "k1")]).await;
    jwks.set(|s| s.status = 500);
    let gw = gateway(&jwks_route(
        up.addr,
        &jwks,
        ", jwks_refetch_interval = \"1s\"",
    ))
    .await;
    let token = idp_token(&rsa1(), "k1");
    let resp = get(&gw, "/api/x", &token).await;
    assert!(resp.headers().contains_key("retry-after"));
    expect_error(resp, 503, "jwks_unavailable").await;
    jwks.set(|s| s.status = 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expect_ok(get(&gw, "/api/x", &token).await).await;
}

/// Runs `tollgate check` on `body` (plus a listener) written to a temp dir holding `secret`.
fn check(body: &str) -> (i32, String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), SECRET).expect("secret");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!("{body}\n[[listeners]]\naddress = \"127.0.0.1:18080\"\n"),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env_remove("TOLLGATE_TEST_UNSET_SECRET")
        .output()
        .expect("run tollgate check");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr, path, dir)
}

const CHECK_ROUTE: &str = "[upstreams.svc]\ntargets = [\"127.0.0.1:3000\"]\n\n\
    [routes.api]\nprefix = \"/api\"\nupstream = \"svc\"\n\n";

#[test]
fn check_reports_an_hmac_algorithm_for_a_public_key_at_the_plugin_table() {
    let body = format!(
        "{CHECK_ROUTE}[routes.api.plugins.jwt-auth]\n\
         providers = [{{ public_key_file = {}, algorithms = [\"HS256\"] }}]\n",
        toml_path("rsa1.pub.pem")
    );
    let (code, stderr, path, _dir) = check(&body);
    assert_eq!(code, 1, "{stderr}");
    let line = stderr.lines().next().unwrap_or_default();
    let prefix = format!("{}:", path.display());
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{line}"));
    let mut parts = rest.splitn(3, ':');
    let (row, col) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    assert!(
        row.parse::<u32>().is_ok() && col.parse::<u32>().is_ok(),
        "{line}"
    );
    assert!(line.contains("plugin `jwt-auth`"), "{line}");
    assert!(line.contains("HS256 needs a shared secret"), "{line}");
}

#[test]
fn check_reports_a_missing_secret_and_an_unknown_algorithm() {
    let body = format!(
        "{CHECK_ROUTE}[routes.api.plugins.jwt-auth]\n\
         providers = [{{ secret_env = \"TOLLGATE_TEST_UNSET_SECRET\" }}]\n"
    );
    let (code, stderr, path, _dir) = check(&body);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("`TOLLGATE_TEST_UNSET_SECRET` is not set"),
        "{stderr}"
    );

    let body = format!(
        "{CHECK_ROUTE}[routes.api.plugins.jwt-auth]\n\
         providers = [{{ secret_file = \"secret\", algorithms = [\"HS256\", \"none\"] }}]\n"
    );
    let (code, stderr, path, _dir) = check(&body);
    assert_eq!(code, 1, "{stderr}");
    // Line 9 of the file holds `providers = ...`.
    assert!(
        stderr.starts_with(&format!("{}:9:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("`none` is never accepted"), "{stderr}");
}
