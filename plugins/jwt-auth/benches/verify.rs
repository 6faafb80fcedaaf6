//! Cost of authenticating one request with `jwt-auth`: token lookup, signature and claim checks,
//! `ctx.vars` and forwarded headers, through the plugin's real request phase.
//!
//! Run: `cargo bench -p tollgate-jwt-auth -- --warm-up-time 1 --measurement-time 2`

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use tollgate_jwt_auth::JwtAuthPlugin;
use tollgate_plugin_api::{
    BuildContext, Plugin, PluginFactory, RequestContext, RequestHeader, Scheme,
};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/jwt")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).expect("fixture")
}

fn plugin(dir: &Path, provider: &str, cache_size: usize) -> Arc<dyn Plugin> {
    let src = format!(
        "providers = [{{ issuer = \"bench\", {provider} }}]\n\
         forward_claims = {{ sub = \"x-user-id\", scope = \"x-scope\" }}\n\
         cache_size = {cache_size}"
    );
    let config = toml::from_str(&src).expect("config");
    JwtAuthPlugin::build(
        config,
        &BuildContext {
            base_dir: dir.to_owned(),
        },
    )
    .expect("plugin")
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let claims = serde_json::json!({
        "iss": "bench",
        "sub": "user-1234",
        "scope": "orders:read orders:write",
        "exp": jsonwebtoken::get_current_timestamp() + 3600,
        "iat": jsonwebtoken::get_current_timestamp(),
    });
    encode(&Header::new(alg), &claims, key).expect("token")
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), SECRET).expect("secret");
    let rsa_pub = fixtures().join("rsa1.pub.pem").display().to_string();
    let ec_pub = fixtures().join("ec256.pub.pem").display().to_string();
    let rsa_key = EncodingKey::from_rsa_pem(&read("rsa1.key.pem")).expect("key");
    // Every case but the last verifies the signature each time (cache off): the cost of a
    // token seen for the first time. The last is a repeated token served from the cache.
    let cases = [
        (
            "HS256",
            plugin(dir.path(), "secret_file = \"secret\"", 0),
            token(
                Algorithm::HS256,
                &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
            ),
        ),
        (
            "RS256",
            plugin(dir.path(), &format!("public_key_file = {rsa_pub:?}"), 0),
            token(Algorithm::RS256, &rsa_key),
        ),
        (
            "ES256",
            plugin(dir.path(), &format!("public_key_file = {ec_pub:?}"), 0),
            token(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&read("ec256.key.pem")).expect("key"),
            ),
        ),
        (
            "RS256_cached",
            plugin(dir.path(), &format!("public_key_file = {rsa_pub:?}"), 1024),
            token(Algorithm::RS256, &rsa_key),
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("jwt_verify");
    for (name, plugin, token) in &cases {
        let authorization = format!("Bearer {token}");
        group.bench_function(*name, |b| {
            b.iter_batched_ref(
                || {
                    let mut req = RequestHeader::build("GET", b"/orders/1", None).expect("req");
                    req.insert_header("authorization", authorization.as_str())
                        .expect("header");
                    let ctx = RequestContext::new(
                        "id".into(),
                        Scheme::Http,
                        Arc::from("r"),
                        Arc::from("u"),
                    );
                    (req, ctx)
                },
                |(req, ctx)| {
                    let flow = rt.block_on(plugin.on_request(req, ctx));
                    assert!(flow.is_ok());
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
