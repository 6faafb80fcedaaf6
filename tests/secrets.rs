//! Secrets in the config: one config with a real value in every field that can hold a
//! credential (tracing headers and endpoint password, key-auth key hashes, JWT HMAC secrets from
//! a variable and a file, the Redis password, the Consul token, the admin token, request
//! headers the `headers` plugin sends upstream, a listener's TLS key), each of them used for
//! real, and none of the values anywhere the config is shown or logged: `GET /config`,
//! `tollgate check`, the gateway's debug log, and `{:?}` of the loaded model.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{client, free_port, Gateway, Upstream};
use sha2::{Digest, Sha256};

const TRACE_TOKEN: &str = "Bearer trace-collector-t0ken-5f2a";
const TRACE_API_KEY: &str = "trace-api-k3y-91c4";
const TRACE_URL_PASSWORD: &str = "trace-url-passw0rd-77d1";
const API_KEY: &str = "client-api-k3y-0b3e";
const JWT_ENV_SECRET: &str = "jwt-hmac-secret-from-env-4c1d9e7a2b";
const JWT_FILE_SECRET: &str = "jwt-hmac-secret-from-file-8e2f6a0c3d";
const REDIS_PASSWORD: &str = "redis-passw0rd-3a9f";
const CONSUL_TOKEN: &str = "consul-acl-t0ken-6b8e";
const ADMIN_TOKEN: &str = "admin-t0ken-2d7c";
const UPSTREAM_CREDENTIAL: &str = "upstream-cred-5e1b";

const JWT_VAR: &str = "TG_SECRETS_TEST_JWT";
const ADMIN_VAR: &str = "TG_SECRETS_TEST_ADMIN";

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A `redis-server` that requires a password; killed on drop.
struct PasswordRedis {
    child: Child,
    port: u16,
}

impl PasswordRedis {
    fn start() -> PasswordRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", REDIS_PASSWORD])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-prereqs.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        PasswordRedis { child, port }
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A header value of every request a fake server received, by header name.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A server that records `headers` of each request and answers with an empty 200 (an upstream,
/// an OTLP collector), or, for Consul's health API, no instances at index 7. It echoes nothing:
/// the gateway logs response bodies at debug level.
async fn recording_server(headers: &'static [&'static str]) -> (Upstream, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let up = Upstream::start(move |req| {
        let s = s.clone();
        async move {
            for name in headers {
                if let Some(v) = req.headers().get(*name) {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    s.lock().expect("lock").push((name.to_string(), v));
                }
            }
            let consul = req.uri().path().starts_with("/v1/health/");
            if consul && req.uri().query().is_some_and(|q| q.contains("index=")) {
                // A blocking query with nothing new: held a while, as Consul holds it.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            hyper::Response::builder()
                .status(200)
                .header("x-consul-index", "7")
                .header(
                    "content-type",
                    if consul {
                        "application/json"
                    } else {
                        "application/x-protobuf"
                    },
                )
                .body(common::full(if consul { "[]" } else { "" }))
                .expect("response")
        }
    })
    .await;
    (up, seen)
}

/// Waits (up to 30 s, which only a hang exceeds) until `seen` holds `name: value`.
async fn wait_seen(seen: &Seen, name: &str, value: &str, what: &str, gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if seen
            .lock()
            .expect("lock")
            .iter()
            .any(|(n, v)| n == name && v == value)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never received `{name}`:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn jwt(issuer: &str, secret: &str) -> String {
    let claims = serde_json::json!({"iss": issuer, "sub": "alice", "exp": 4_000_000_000u64});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("hmac key"),
    )
    .expect("sign")
}

/// A self-signed certificate and its key (PEM), and a stretch of the key's DER from its middle
/// (key material, unlike the leading ASN.1 header every key shares).
fn tls_files() -> (String, String, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let der = cert.signing_key.serialize_der();
    let middle = der[der.len() / 2..der.len() / 2 + 16].to_vec();
    (cert.cert.pem(), cert.signing_key.serialize_pem(), middle)
}

fn config(
    tls_addr: SocketAddr,
    collector: SocketAddr,
    consul: SocketAddr,
    app: SocketAddr,
    redis_port: u16,
) -> String {
    format!(
        r#"
[[listeners]]
name = "tls"
address = "{tls_addr}"
tls = {{ cert_file = "cert.pem", key_file = "key.pem" }}

[tracing]
enabled = true
protocol = "http/protobuf"
endpoint = "http://otel:{TRACE_URL_PASSWORD}@{collector}"
scheduled_delay = "100ms"
headers = {{ x-collector-token = "{TRACE_TOKEN}", x-api-key = "{TRACE_API_KEY}" }}

[upstreams.app]
targets = ["{app}"]

[upstreams.discovered]
discovery = {{ type = "consul", service = "svc", address = "http://{consul}", token = "{CONSUL_TOKEN}", wait = "1s" }}

[plugins.headers]
request = {{ set = {{ x-upstream-auth = "{UPSTREAM_CREDENTIAL}" }} }}

[routes.keyed]
prefix = "/keyed"
upstream = "app"

[routes.keyed.plugins.key-auth]
consumers = [{{ name = "ops", key_sha256 = "{key_hash}" }}]

[routes.keyed.plugins.rate-limit]
limits = [{{ rate = "1000/s" }}]
backend = {{ redis = {{ url = "redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0", timeout = "5s", connect_timeout = "5s", on_error = "deny" }} }}

[routes.jwt]
prefix = "/jwt"
upstream = "app"

[routes.jwt.plugins.jwt-auth]
providers = [{{ issuer = "env", secret_env = "{JWT_VAR}" }}, {{ issuer = "file", secret_file = "jwt.secret" }}]

[routes.discovered]
prefix = "/discovered"
upstream = "discovered"
"#,
        key_hash = sha256_hex(API_KEY),
    )
}

/// Every secret value of the config, as it could appear in text.
fn secrets() -> Vec<String> {
    vec![
        TRACE_TOKEN.into(),
        "trace-collector-t0ken-5f2a".into(),
        TRACE_API_KEY.into(),
        TRACE_URL_PASSWORD.into(),
        base64::engine::general_purpose::STANDARD.encode(format!("otel:{TRACE_URL_PASSWORD}")),
        API_KEY.into(),
        sha256_hex(API_KEY),
        JWT_ENV_SECRET.into(),
        JWT_FILE_SECRET.into(),
        REDIS_PASSWORD.into(),
        CONSUL_TOKEN.into(),
        ADMIN_TOKEN.into(),
        UPSTREAM_CREDENTIAL.into(),
    ]
}

fn assert_no_secret(place: &str, text: &str, key_der_middle: &[u8]) {
    // The TLS key's material as `Debug` prints bytes, in decimal or in hex.
    let decimal = format!("{key_der_middle:?}");
    let decimal = decimal.trim_start_matches('[').trim_end_matches(']');
    let mut values = secrets();
    values.push(decimal.to_string());
    values.push(hex::encode(key_der_middle));
    let shown: Vec<String> = values
        .iter()
        .flat_map(|secret| {
            text.lines()
                .filter(move |l| l.contains(secret.as_str()))
                .map(move |l| format!("`{secret}` in: {l}"))
        })
        .collect();
    assert!(
        shown.is_empty(),
        "{place} shows secrets:\n{}",
        shown.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_shown_by_config_check_logs_or_debug() {
    // Read in-process by the `{:?}` check below; the only test of this binary, so no other
    // thread reads the environment meanwhile.
    std::env::set_var(JWT_VAR, JWT_ENV_SECRET);
    std::env::set_var(ADMIN_VAR, ADMIN_TOKEN);

    let redis = PasswordRedis::start();
    let (collector, collector_saw) =
        recording_server(&["authorization", "x-api-key", "x-collector-token"]).await;
    let (consul, consul_saw) = recording_server(&["x-consul-token"]).await;
    let (app, app_saw) = recording_server(&["x-upstream-auth"]).await;
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (cert_pem, key_pem, key_der_middle) = tls_files();

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).expect("cert");
    std::fs::write(dir.path().join("key.pem"), &key_pem).expect("key");
    std::fs::write(dir.path().join("jwt.secret"), JWT_FILE_SECRET).expect("secret file");
    let body = config(tls_addr, collector.addr, consul.addr, app.addr, redis.port);
    let gw = Gateway::start_opts(
        dir,
        &body,
        &format!("token_env = \"{ADMIN_VAR}\""),
        &[(JWT_VAR, JWT_ENV_SECRET), (ADMIN_VAR, ADMIN_TOKEN)],
    )
    .await;

    // Every secret is used: a key-authenticated request counted in Redis (fail closed, so a
    // wrong Redis password would be a 503), tokens signed with both HMAC secrets, the upstream
    // credential sent, Consul asked with its token, traces exported with their headers.
    let c = client();
    let resp = c
        .get(gw.url("/keyed/x"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("keyed request");
    assert_eq!(resp.status(), 200, "{}", gw.logs());
    wait_seen(
        &app_saw,
        "x-upstream-auth",
        UPSTREAM_CREDENTIAL,
        "the upstream",
        &gw,
    )
    .await;
    for (issuer, secret) in [("env", JWT_ENV_SECRET), ("file", JWT_FILE_SECRET)] {
        let resp = c
            .get(gw.url("/jwt/x"))
            .bearer_auth(jwt(issuer, secret))
            .send()
            .await
            .expect("jwt request");
        assert_eq!(resp.status(), 200, "issuer {issuer}: {}", gw.logs());
    }
    wait_seen(&consul_saw, "x-consul-token", CONSUL_TOKEN, "Consul", &gw).await;
    wait_seen(
        &collector_saw,
        "x-api-key",
        TRACE_API_KEY,
        "the collector",
        &gw,
    )
    .await;
    wait_seen(
        &collector_saw,
        "x-collector-token",
        TRACE_TOKEN,
        "the collector",
        &gw,
    )
    .await;
    // The endpoint's user info, sent as Basic credentials rather than kept in the URL.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("otel:{TRACE_URL_PASSWORD}"))
    );
    wait_seen(
        &collector_saw,
        "authorization",
        &basic,
        "the collector",
        &gw,
    )
    .await;

    // The admin API with its token: a reload (logged) and the config view.
    let admin = |path: &str| format!("http://{}{path}", gw.admin);
    let resp = c
        .post(admin("/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(resp.status(), 200, "{}", gw.logs());
    let view = c
        .get(admin("/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("config");
    assert_eq!(view.status(), 200);
    let view = view.text().await.expect("config text");
    assert!(view.contains("<redacted>"), "{view}");
    assert_no_secret("GET /config", &view, &key_der_middle);
    let v: serde_json::Value = serde_json::from_str(&view).expect("json");
    assert_eq!(
        v["config"]["tracing"]["endpoint"],
        format!("http://otel:<redacted>@{}", collector.addr)
    );
    assert_eq!(
        v["config"]["routes"]["keyed"]["plugins"]["rate-limit"]["backend"]["redis"]["url"],
        format!("redis://:<redacted>@127.0.0.1:{}/0", redis.port)
    );
    assert_eq!(
        v["config"]["upstreams"]["discovered"]["discovery"]["token"],
        "<redacted>"
    );

    let check = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .arg("-c")
        .arg(gw.config_path())
        .env(JWT_VAR, JWT_ENV_SECRET)
        .env(ADMIN_VAR, ADMIN_TOKEN)
        .output()
        .expect("tollgate check");
    let check_output = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{check_output}");
    assert_no_secret("tollgate check", &check_output, &key_der_middle);

    let model = tollgate::config::load(gw.config_path(), &tollgate::plugins::builtin_registry())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_no_secret("{:?} of the model", &format!("{model:?}"), &key_der_middle);

    let logs = gw.logs();
    assert!(
        logs.contains("DEBUG"),
        "the gateway logs at debug level:\n{logs}"
    );
    assert_no_secret("the gateway's log", &logs, &key_der_middle);
}
