//! The `jwt-auth` plugin: lets a request through only with a valid JSON Web Token, tells the
//! upstream (and later plugins, e.g. `rate-limit` keyed on `consumer`) who the caller is, and
//! refuses with RFC 6750 challenges otherwise.
//!
//! Config keys (full reference with examples: `docs/plugins/jwt-auth.md`):
//! - `providers` (required, non-empty): issuers of accepted tokens, chosen by the token's `iss`.
//!   Each has `issuer` (required when there are several), `audiences` (default `[]`: `aud` not
//!   checked), `algorithms` (default: every algorithm of the key's type; `HS256` for secrets),
//!   and exactly one key source: `secret_env`, `secret_file` (with `secret_base64`, default
//!   `false`), `public_key_file` (PEM: RSA, EC P-256/P-384, Ed25519), `jwks_file` or `jwks_url`
//!   (with `jwks_min_refresh` `"1m"`, `jwks_max_refresh` `"1h"`, `jwks_refetch_interval` `"30s"`,
//!   `jwks_timeout` `"5s"`, `jwks_allow_http` `false`). Inline secrets are refused.
//! - `token_from` (default `{ header = "authorization" }`): `{ header = ".." }`,
//!   `{ query = ".." }`, `{ cookie = ".." }` or a list of them tried in order.
//! - `leeway` (default `"60s"`, at most `"1h"`) for `exp` and `nbf`; `require_exp` (default
//!   `true`).
//! - `required_claims` (default `[]`, dotted paths) → 403 `missing_claim`; `required_scopes`
//!   (default `[]`, from `scope`, `scp`, `scopes`) → 403 `insufficient_scope`.
//! - `max_token_size` (default `"8KiB"`).
//! - `forward_claims` (default `{}`): claim path → upstream header; `forward_payload_header`
//!   (optional): the verified payload as base64url JSON. Client-sent copies are always removed.
//! - `strip_token` (default `false`): remove the token before proxying.
//! - `consumer_claim` (default `"sub"`, `""` for none): becomes `ctx.vars["consumer"]`; every
//!   top-level claim becomes `ctx.vars["jwt.<claim>"]`.
//! - `allow_preflight` (default `true`): CORS preflights pass without a token.
//! - `realm` (default `"tollgate"`): the challenges' realm.
//!
//! Refusals: 401 `missing_token` (challenge without `error`), 401 `invalid_token`, 403
//! `insufficient_scope` / `missing_claim`, 503 `jwks_unavailable` while a JWKS never loaded.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod claims;
mod config;
mod errors;
mod jwks;
mod keys;
mod source;
mod verify;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderValue, Method};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use tokio::sync::watch;
use tollgate_plugin_api::{
    async_trait, BuildContext, Flow, Plugin, PluginError, PluginFactory, RequestContext,
    RequestHeader,
};

pub use crate::config::{
    AlgorithmName, Duration as ConfigDuration, JwtAuthConfig, ProviderConfig, TokenFrom,
    TokenSourceConfig,
};
use crate::errors::AuthError;
use crate::jwks::{JwksSettings, RemoteJwks};
use crate::keys::{KeySet, VerifyKey};
use crate::source::TokenSource;
use crate::verify::{KeySource, Provider, Verifier};

/// Factory of the `jwt-auth` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct JwtAuthPlugin;

impl PluginFactory for JwtAuthPlugin {
    const NAME: &'static str = "jwt-auth";
    // After IP rules (9500) and CORS (9000), so preflights are answered first; before rate
    // limiting (7000), so limits can be keyed on the consumer.
    const PRIORITY: i32 = 8000;
    type Config = JwtAuthConfig;

    fn build(config: Self::Config, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        JwtAuth::compile(config, ctx, &|name| std::env::var_os(name))
            .map(|p| Arc::new(p) as Arc<dyn Plugin>)
    }
}

/// Largest `leeway`: clocks an hour apart are a fault to fix, not to tolerate.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// Headers a claim must never be forwarded in: the core and HTTP framing own them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// A built `jwt-auth` plugin.
#[derive(Debug)]
struct JwtAuth {
    sources: Vec<TokenSource>,
    verifier: Verifier,
    required_claims: Vec<String>,
    required_scopes: Vec<String>,
    /// Claim path and the header it is forwarded in.
    forward_claims: Vec<(String, HeaderName)>,
    forward_payload: Option<HeaderName>,
    /// Every header the plugin sets upstream; client copies are removed first.
    owned_headers: Vec<HeaderName>,
    strip_token: bool,
    consumer_claim: Option<String>,
    allow_preflight: bool,
    realm: String,
}

type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<std::ffi::OsString>;

impl JwtAuth {
    fn compile(
        config: JwtAuthConfig,
        ctx: &BuildContext,
        env: EnvLookup<'_>,
    ) -> Result<Self, String> {
        ensure_crypto_provider();
        if config.leeway.0 > MAX_LEEWAY {
            return Err("leeway must be at most \"1h\"".to_owned());
        }
        let max_token_size = usize::try_from(config.max_token_size.as_u64())
            .ok()
            .filter(|n| *n >= 64)
            .ok_or("max_token_size must be at least 64 bytes")?;
        if config.realm.is_empty()
            || !config
                .realm
                .chars()
                .all(|c| matches!(c, ' '..='~') && c != '"' && c != '\\')
        {
            return Err("realm must be non-empty printable ASCII without `\"` or `\\`".to_owned());
        }

        if config.token_from.0.is_empty() {
            return Err("token_from must name at least one source".to_owned());
        }
        let sources = config
            .token_from
            .0
            .iter()
            .map(TokenSource::compile)
            .collect::<Result<Vec<_>, _>>()?;

        let mut forward_claims = Vec::new();
        let mut owned_headers: Vec<HeaderName> = Vec::new();
        let mut own_header = |key: &str, name: &str| -> Result<HeaderName, String> {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{key}: `{name}` is not a valid header name"))?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(format!(
                    "{key}: `{name}` is managed by the gateway; pick another header"
                ));
            }
            if sources.iter().any(|s| s.header() == Some(&header)) {
                return Err(format!("{key}: `{name}` is where the token is read from"));
            }
            if owned_headers.contains(&header) {
                return Err(format!("{key}: header `{name}` is used twice"));
            }
            owned_headers.push(header.clone());
            Ok(header)
        };
        for (claim, header) in &config.forward_claims {
            if claim.is_empty() {
                return Err("forward_claims: a claim name is empty".to_owned());
            }
            let header = own_header("forward_claims", header)?;
            forward_claims.push((claim.clone(), header));
        }
        let forward_payload = config
            .forward_payload_header
            .as_deref()
            .map(|h| own_header("forward_payload_header", h))
            .transpose()?;
        for (key, list) in [
            ("required_claims", &config.required_claims),
            ("required_scopes", &config.required_scopes),
        ] {
            if let Some(bad) = list
                .iter()
                .find(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                return Err(format!(
                    "{key}: `{bad}` must be a non-empty name without spaces"
                ));
            }
        }

        let providers = compile_providers(&config, ctx, env)?;
        Ok(Self {
            sources,
            verifier: Verifier {
                providers,
                max_token_size,
            },
            required_claims: config.required_claims,
            required_scopes: config.required_scopes,
            forward_claims,
            forward_payload,
            owned_headers,
            strip_token: config.strip_token,
            consumer_claim: Some(config.consumer_claim).filter(|c| !c.is_empty()),
            allow_preflight: config.allow_preflight,
            realm: config.realm,
        })
    }

    /// Refuses a verified token that lacks a required claim or scope.
    fn check_requirements(&self, claims: &claims::Claims) -> Result<(), AuthError> {
        for claim in &self.required_claims {
            if claims::lookup(claims, claim).is_none_or(serde_json::Value::is_null) {
                return Err(AuthError::MissingClaim(claim.clone()));
            }
        }
        if !self.required_scopes.is_empty() {
            let granted: HashSet<&str> = claims::scopes(claims).into_iter().collect();
            let missing: Vec<String> = self
                .required_scopes
                .iter()
                .filter(|s| !granted.contains(s.as_str()))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(AuthError::InsufficientScope { missing });
            }
        }
        Ok(())
    }

    /// Hands the verified claims to later plugins and to the upstream.
    fn publish(
        &self,
        token: &str,
        claims: &claims::Claims,
        req: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) {
        for (name, value) in claims {
            if let Some(text) = claims::to_text(value) {
                ctx.vars.insert(format!("jwt.{name}"), text);
            }
        }
        if let Some(consumer) = self
            .consumer_claim
            .as_deref()
            .and_then(|path| claims::lookup(claims, path))
            .and_then(claims::to_text)
        {
            ctx.vars.insert("consumer".to_owned(), consumer);
        }
        for (path, header) in &self.forward_claims {
            let Some(text) = claims::lookup(claims, path).and_then(claims::to_text) else {
                continue;
            };
            // A value a header cannot carry (control characters) is left out rather than
            // mangled: the upstream sees the claim as absent, never as something else.
            match HeaderValue::from_str(&text) {
                Ok(v) => {
                    let _ = req.insert_header(header.clone(), v);
                }
                Err(_) => {
                    tracing::debug!(claim = %path, "claim not forwarded: not a valid header value")
                }
            }
        }
        if let Some(header) = &self.forward_payload {
            // The payload part of the token is already base64url JSON, and it is what was signed.
            if let Some(v) = token
                .split('.')
                .nth(1)
                .and_then(|p| HeaderValue::from_str(p).ok())
            {
                let _ = req.insert_header(header.clone(), v);
            }
        }
    }
}

/// jsonwebtoken picks its crypto backend from its features, and finds none when both are
/// enabled in one build (it would then panic on first use): choose RustCrypto explicitly then.
fn ensure_crypto_provider() {
    if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    }
}

fn compile_providers(
    config: &JwtAuthConfig,
    ctx: &BuildContext,
    env: EnvLookup<'_>,
) -> Result<Vec<Provider>, String> {
    if config.providers.is_empty() {
        return Err("providers must list at least one token issuer".to_owned());
    }
    let several = config.providers.len() > 1;
    let mut issuers = HashSet::new();
    let mut out = Vec::new();
    for (i, p) in config.providers.iter().enumerate() {
        let name = match &p.issuer {
            Some(iss) => format!("providers[{i}] (issuer `{iss}`)"),
            None => format!("providers[{i}]"),
        };
        match &p.issuer {
            None if several => {
                return Err(format!(
                    "{name}: `issuer` is required when there are several providers (tokens are \
                     matched to their provider by `iss`)"
                ))
            }
            Some(iss) if iss.is_empty() => return Err(format!("{name}: `issuer` is empty")),
            Some(iss) if !issuers.insert(iss.clone()) => {
                return Err(format!("{name}: issuer `{iss}` is listed twice"))
            }
            _ => {}
        }
        if p.audiences.iter().any(String::is_empty) {
            return Err(format!("{name}: `audiences` has an empty entry"));
        }
        let provider = compile_provider(p, config, ctx, env).map_err(|e| format!("{name}: {e}"))?;
        out.push(provider);
    }
    Ok(out)
}

fn compile_provider(
    p: &ProviderConfig,
    config: &JwtAuthConfig,
    ctx: &BuildContext,
    env: EnvLookup<'_>,
) -> Result<Provider, String> {
    if p.secret.is_some() {
        return Err(
            "inline `secret` is not accepted (a config file is copied, logged and \
                    committed); put it in an environment variable (`secret_env`) or a file \
                    (`secret_file`)"
                .to_owned(),
        );
    }
    let sources: Vec<&str> = [
        ("secret_env", p.secret_env.is_some()),
        ("secret_file", p.secret_file.is_some()),
        ("public_key_file", p.public_key_file.is_some()),
        ("jwks_file", p.jwks_file.is_some()),
        ("jwks_url", p.jwks_url.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    match sources.as_slice() {
        [_] => {}
        [] => {
            return Err(
                "no key: set one of secret_env, secret_file, public_key_file, jwks_file, \
                        jwks_url"
                    .to_owned(),
            )
        }
        many => {
            return Err(format!(
                "set only one key source, not {}",
                many.join(" and ")
            ))
        }
    }
    if p.secret_base64 && p.secret_env.is_none() && p.secret_file.is_none() {
        return Err("secret_base64 applies to secret_env or secret_file only".to_owned());
    }
    let jwks_tuning = p.jwks_min_refresh.is_some()
        || p.jwks_max_refresh.is_some()
        || p.jwks_refetch_interval.is_some()
        || p.jwks_timeout.is_some()
        || p.jwks_allow_http;
    if jwks_tuning && p.jwks_url.is_none() {
        return Err("the jwks_* refresh settings apply to jwks_url only".to_owned());
    }

    let listed: Option<Vec<Algorithm>> = p.algorithms.as_ref().map(|list| {
        let mut out: Vec<Algorithm> = Vec::new();
        for AlgorithmName(a) in list {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out
    });
    if listed.as_ref().is_some_and(Vec::is_empty) {
        return Err(
            "`algorithms` is empty; leave it out to accept every algorithm of the key's type"
                .to_owned(),
        );
    }
    let is_hmac = |a: &Algorithm| a.family() == AlgorithmFamily::Hmac;

    let (keys, algorithms) = if p.secret_env.is_some() || p.secret_file.is_some() {
        let algorithms = listed.unwrap_or_else(|| vec![Algorithm::HS256]);
        if let Some(bad) = algorithms.iter().find(|a| !is_hmac(a)) {
            return Err(format!(
                "algorithm {bad:?} needs a public key; a secret only verifies HS256, HS384, HS512"
            ));
        }
        let (raw, origin) = read_secret(p, ctx, env)?;
        let key = keys::secret_key(&raw, p.secret_base64, &algorithms, &origin)?;
        (KeySource::Fixed(Arc::new(KeySet::single(key))), algorithms)
    } else {
        if let Some(bad) = listed.iter().flatten().find(|a| is_hmac(a)) {
            return Err(format!(
                "algorithm {bad:?} needs a shared secret (secret_env or secret_file); an HMAC \
                 algorithm is never used with a public key"
            ));
        }
        if let Some(file) = &p.public_key_file {
            let path = ctx.resolve(file);
            let pem = keys::read_config_file("public_key_file", &path)?;
            let origin = format!("public_key_file {}", path.display());
            let key: VerifyKey = keys::pem_public_key(&pem, listed.as_deref(), &origin)?;
            let algorithms = key.algorithms.clone();
            (KeySource::Fixed(Arc::new(KeySet::single(key))), algorithms)
        } else {
            let algorithms = listed.unwrap_or_else(every_public_key_algorithm);
            if let Some(file) = &p.jwks_file {
                let path = ctx.resolve(file);
                let body = keys::read_config_file("jwks_file", &path)?;
                let (keys, skipped) = keys::parse_jwks(&body, &algorithms)
                    .map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
                for why in skipped {
                    tracing::warn!(jwks_file = %path.display(), "JWKS key ignored: {why}");
                }
                let set = KeySet {
                    keys,
                    generation: 1,
                    ignore_kid: false,
                };
                (KeySource::Fixed(Arc::new(set)), algorithms)
            } else {
                let settings = jwks_settings(p, algorithms.clone())?;
                (
                    KeySource::Remote(Arc::new(RemoteJwks::new(settings))),
                    algorithms,
                )
            }
        }
    };

    let leeway = config.leeway.0.as_secs();
    let validations = algorithms
        .iter()
        .map(|&alg| {
            let v = verify::validation(
                alg,
                p.issuer.as_deref(),
                &p.audiences,
                leeway,
                config.require_exp,
            );
            (alg, v)
        })
        .collect();
    Ok(Provider {
        issuer: p.issuer.clone(),
        keys,
        validations,
    })
}

fn every_public_key_algorithm() -> Vec<Algorithm> {
    [
        AlgorithmFamily::Rsa,
        AlgorithmFamily::Ec,
        AlgorithmFamily::Ed,
    ]
    .iter()
    .flat_map(|f| f.algorithms().iter().copied())
    .collect()
}

/// The secret's bytes and a description of where they came from (never the secret itself).
fn read_secret(
    p: &ProviderConfig,
    ctx: &BuildContext,
    env: EnvLookup<'_>,
) -> Result<(Vec<u8>, String), String> {
    if let Some(var) = &p.secret_env {
        let value = env(var)
            .ok_or_else(|| format!("secret_env: the environment variable `{var}` is not set"))?;
        let bytes = value
            .into_string()
            .map_err(|_| format!("secret_env: `{var}` is not valid UTF-8"))?
            .into_bytes();
        return Ok((bytes, format!("secret_env `{var}`")));
    }
    let file = p.secret_file.as_deref().unwrap_or_default();
    let path = ctx.resolve(file);
    let bytes = keys::read_config_file("secret_file", &path)?;
    Ok((bytes, format!("secret_file {}", path.display())))
}

fn jwks_settings(p: &ProviderConfig, algorithms: Vec<Algorithm>) -> Result<JwksSettings, String> {
    let raw = p.jwks_url.as_deref().unwrap_or_default();
    let url: reqwest::Url = raw
        .parse()
        .map_err(|e| format!("jwks_url: `{raw}` is not a URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if p.jwks_allow_http || is_loopback(&url) => {}
        "http" => {
            return Err(format!(
                "jwks_url: `{raw}` is plain http, so anyone on the path could swap the keys; use \
                 https, or set jwks_allow_http = true for a trusted network"
            ))
        }
        other => return Err(format!("jwks_url: scheme `{other}` is not http or https")),
    }
    let get =
        |v: Option<config::Duration>, default: u64| v.map_or(Duration::from_secs(default), |d| d.0);
    let min_refresh = get(p.jwks_min_refresh, 60);
    let max_refresh = get(p.jwks_max_refresh, 3600);
    let refetch_interval = get(p.jwks_refetch_interval, 30);
    let timeout = get(p.jwks_timeout, 5);
    let second = Duration::from_secs(1);
    if min_refresh < second || refetch_interval < second {
        return Err(
            "jwks_min_refresh and jwks_refetch_interval must be at least \"1s\"".to_owned(),
        );
    }
    if max_refresh < min_refresh {
        return Err("jwks_max_refresh must not be shorter than jwks_min_refresh".to_owned());
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&timeout) {
        return Err("jwks_timeout must be between \"100ms\" and \"60s\"".to_owned());
    }
    Ok(JwksSettings {
        label: p.issuer.clone().unwrap_or_else(|| url.to_string()),
        url,
        algorithms,
        min_refresh,
        max_refresh,
        refetch_interval,
        timeout,
    })
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

#[async_trait]
impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        JwtAuthPlugin::NAME
    }

    async fn prepare(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        for remote in self.verifier.remote_sets() {
            if let Err(e) = remote.refresh().await {
                errors.push(format!("JWKS of `{}`: {e}", remote.label()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    async fn background(&self, stop: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for remote in self.verifier.remote_sets() {
            let remote = remote.clone();
            let stop = stop.clone();
            tasks.spawn(async move { remote.run(stop).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        // Whatever happens next, a client never gets to speak for the token.
        for header in &self.owned_headers {
            req.remove_header(header);
        }
        if self.allow_preflight && is_preflight(req) {
            return Ok(Flow::Continue);
        }
        let Some((token, source)) = self
            .sources
            .iter()
            .find_map(|s| s.find(req).map(|t| (t, s)))
        else {
            return Err(AuthError::Missing.into_plugin_error(&self.realm));
        };
        let claims = self
            .verifier
            .verify(&token)
            .await
            .and_then(|claims| self.check_requirements(&claims).map(|()| claims))
            .map_err(|e| e.into_plugin_error(&self.realm))?;
        self.publish(&token, &claims, req, ctx);
        if self.strip_token {
            source.strip(req);
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests;
