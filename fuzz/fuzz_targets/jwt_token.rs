//! The jwt-auth plugin on attacker-controlled requests: finding the token (bearer header, query,
//! cookie), decoding its header and segments, choosing the issuer, verifying, and reading the
//! claims into headers and vars. Two instances: a lenient one with two issuers (an HMAC secret
//! and an EC P-256 key from tests/fixtures/jwt) that forwards claims, and a strict one with an
//! audience, required claims and scopes.
//!
//! Input: byte 0 picks where the rest goes — `Authorization: Bearer`, the `access_token` query
//! parameter, the `jwt` cookie, a raw `Authorization` value — or (4) makes the rest a token:
//! header JSON and payload JSON separated by a newline, signed with the secret, so that claims
//! decoding past the signature check is reached.
//!
//! Properties: every refusal is a 401 or 403 with a challenge; an accepted token really is
//! signed by one of the keys; and a client's own copies of the headers the plugin sets never
//! reach the upstream, accepted or not.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tollgate_plugin_api::{
    BuildContext, Plugin, PluginRegistry, RequestContext, RequestHeader, Scheme,
};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

const SECRET: &str = "fuzz-secret-0123456789abcdef0123";
const SECRET_ENV: &str = "TOLLGATE_FUZZ_JWT_SECRET";
/// The headers the lenient instance owns; the client's values must never survive.
const OWNED: [&str; 4] = ["x-user", "x-roles", "x-scope", "x-jwt-payload"];
/// Not UTF-8, so no claim can produce it.
const SPOOFED: &[u8] = b"\xffspoofed";

const LENIENT: &str = r#"
providers = [
  { issuer = "hs", secret_env = "TOLLGATE_FUZZ_JWT_SECRET" },
  { issuer = "ec", public_key_file = "tests/fixtures/jwt/ec256.pub.pem" },
]
token_from = [{ header = "authorization" }, { query = "access_token" }, { cookie = "jwt" }]
require_exp = false
forward_claims = { sub = "x-user", "realm_access.roles" = "x-roles", scope = "x-scope" }
forward_payload_header = "x-jwt-payload"
strip_token = true
"#;

const STRICT: &str = r#"
providers = [{ issuer = "hs", secret_env = "TOLLGATE_FUZZ_JWT_SECRET", audiences = ["api"] }]
required_claims = ["sub", "realm_access.roles"]
required_scopes = ["read"]
leeway = "0s"
cache_size = 0
"#;

struct Harness {
    runtime: Runtime,
    plugins: Vec<Arc<dyn Plugin>>,
    hs: DecodingKey,
    ec: DecodingKey,
    signing: EncodingKey,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // Set once, before any thread reads the environment.
        std::env::set_var(SECRET_ENV, SECRET);
        let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let mut registry = PluginRegistry::new();
        registry.register::<tollgate_jwt_auth::JwtAuthPlugin>();
        let ctx = BuildContext {
            base_dir: root.clone(),
        };
        let plugins = [LENIENT, STRICT]
            .iter()
            .map(|src| {
                let table = DeTable::parse(src).unwrap_or_else(|e| panic!("harness TOML: {e}"));
                let value = Spanned::new(table.span(), DeValue::Table(table.into_inner()));
                match registry.build("jwt-auth", value, &ctx) {
                    Ok((plugin, _)) => plugin,
                    Err(e) => panic!("harness plugin: {}", e.message),
                }
            })
            .collect();
        let pem = std::fs::read(root.join("tests/fixtures/jwt/ec256.pub.pem"))
            .unwrap_or_else(|e| panic!("EC fixture: {e}"));
        Harness {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}")),
            plugins,
            hs: DecodingKey::from_secret(SECRET.as_bytes())
                .unwrap_or_else(|e| panic!("HS key: {e}")),
            ec: DecodingKey::from_ec_pem(&pem).unwrap_or_else(|e| panic!("EC key: {e}")),
            signing: EncodingKey::from_secret(SECRET.as_bytes())
                .unwrap_or_else(|e| panic!("HS key: {e}")),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let h = harness();
    let (request, bearer_token) = match mode % 5 {
        0 => (
            with_header("authorization", &[b"Bearer ", rest].concat()),
            Some(rest.to_vec()),
        ),
        1 => (request(&[b"/x?access_token=", rest].concat()), None),
        2 => (with_header("cookie", &[b"jwt=", rest].concat()), None),
        3 => (with_header("authorization", rest), None),
        _ => {
            let Some(token) = signed(h, rest) else { return };
            let value = format!("Bearer {token}");
            (
                with_header("authorization", value.as_bytes()),
                Some(token.into_bytes()),
            )
        }
    };
    let Some(request) = request else { return };
    for (i, plugin) in h.plugins.iter().enumerate() {
        let mut req = request.clone();
        let mut ctx =
            RequestContext::new("id".into(), Scheme::Http, Arc::from("r"), Arc::from("u"));
        let outcome = h.runtime.block_on(plugin.on_request(&mut req, &mut ctx));
        // Only the lenient instance sets (and so owns) these headers.
        if i == 0 {
            for name in OWNED {
                assert!(
                    req.headers
                        .get_all(name)
                        .iter()
                        .all(|v| v.as_bytes() != SPOOFED),
                    "the client's {name} reached the upstream"
                );
            }
        }
        match outcome {
            Ok(_) => {
                if let Some(token) = &bearer_token {
                    assert!(
                        is_signed(h, token),
                        "accepted a token no key signed: {token:?}"
                    );
                }
            }
            Err(e) => {
                assert!(
                    e.status == StatusCode::UNAUTHORIZED || e.status == StatusCode::FORBIDDEN,
                    "{} {}",
                    e.status,
                    e.message
                );
                assert!(
                    e.headers.iter().any(|(n, _)| n == WWW_AUTHENTICATE),
                    "{}",
                    e.message
                );
            }
        }
    }
});

/// A GET with `target`, and the client's spoofed copies of the plugin's headers.
fn request(target: &[u8]) -> Option<RequestHeader> {
    let mut req = RequestHeader::build("GET", target, None).ok()?;
    for name in OWNED {
        req.append_header(name, HeaderValue::from_bytes(SPOOFED).ok()?)
            .ok()?;
    }
    Some(req)
}

fn with_header(name: &'static str, value: &[u8]) -> Option<RequestHeader> {
    let mut req = request(b"/x")?;
    req.append_header(name, HeaderValue::from_bytes(value).ok()?)
        .ok()?;
    Some(req)
}

/// `header JSON \n payload JSON` made into an HS256-signed token (whatever `alg` it claims).
fn signed(h: &Harness, rest: &[u8]) -> Option<String> {
    let at = rest.iter().position(|&b| b == b'\n')?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        b64.encode(&rest[..at]),
        b64.encode(&rest[at + 1..])
    );
    let signature =
        jsonwebtoken::crypto::sign(input.as_bytes(), &h.signing, Algorithm::HS256).ok()?;
    Some(format!("{input}.{signature}"))
}

/// Whether a key of the lenient instance signed `token` (nothing else checked).
fn is_signed(h: &Harness, token: &[u8]) -> bool {
    let Ok(token) = std::str::from_utf8(token) else {
        return false;
    };
    let token = token.trim();
    [(Algorithm::HS256, &h.hs), (Algorithm::ES256, &h.ec)]
        .iter()
        .any(|(alg, key)| {
            let mut v = Validation::new(*alg);
            v.validate_exp = false;
            v.validate_aud = false;
            v.required_spec_claims.clear();
            jsonwebtoken::decode::<serde_json::Value>(token, key, &v).is_ok()
        })
}
