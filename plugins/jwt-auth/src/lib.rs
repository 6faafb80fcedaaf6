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
//! - `cache_size` (default `1024`, `0` = off): verified tokens remembered so a repeated token
//!   skips the signature check; time claims are rechecked on every hit.
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

mod cache;
mod claims;
mod config;
mod errors;
mod jwks;
mod keys;
mod providers;
mod source;
mod verify;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderValue, Method};
use tokio::sync::watch;
use tollgate_plugin_api::{
    async_trait, BuildContext, Count, Flow, Plugin, PluginError, PluginFactory, RequestContext,
    RequestHeader,
};

use crate::cache::TokenCache;
pub use crate::config::{
    AlgorithmName, Duration as ConfigDuration, JwtAuthConfig, ProviderConfig, TokenFrom,
    TokenSourceConfig,
};
use crate::errors::AuthError;
use crate::providers::{compile_providers, EnvLookup};
use crate::source::TokenSource;
use crate::verify::Verifier;

/// Factory of the `jwt-auth` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct JwtAuthPlugin;

impl PluginFactory for JwtAuthPlugin {
    const NAME: &'static str = "jwt-auth";
    // After IP rules (9500) and CORS (9000), so preflights are answered first; before rate
    // limiting (7000), so limits can be keyed on the consumer.
    const PRIORITY: i32 = 8000;
    type Config = JwtAuthConfig;

    fn config_schema(
        generator: &mut tollgate_plugin_api::schemars::SchemaGenerator,
    ) -> tollgate_plugin_api::schemars::Schema {
        generator.subschema_for::<Self::Config>()
    }

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
    allow_preflight: bool,
    realm: String,
}

impl JwtAuth {
    /// The error answer to a refusal, counted as an auth failure unless the fault is the
    /// gateway's (keys not loaded).
    fn refuse(&self, e: AuthError, ctx: &mut RequestContext) -> PluginError {
        let counted = !matches!(e, AuthError::KeysUnavailable { .. });
        let err = e.into_plugin_error(&self.realm);
        if counted {
            ctx.count(Count::AuthFailure { reason: err.code });
        }
        err
    }

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
                cache: TokenCache::new(config.cache_size, config.leeway.0.as_secs()),
                consumer_claim: Some(config.consumer_claim).filter(|c| !c.is_empty()),
            },
            required_claims: config.required_claims,
            required_scopes: config.required_scopes,
            forward_claims,
            forward_payload,
            owned_headers,
            strip_token: config.strip_token,
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
        verified: &claims::Verified,
        req: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) {
        ctx.vars.extend_shared(verified.vars.clone());
        let claims = &verified.claims;
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
/// enabled in one build (it would then panic on first use): choose aws-lc explicitly then.
fn ensure_crypto_provider() {
    if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    }
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
            return Err(self.refuse(AuthError::Missing, ctx));
        };
        let claims = match self
            .verifier
            .verify(&token, Some(ctx))
            .await
            .and_then(|claims| self.check_requirements(&claims).map(|()| claims))
        {
            Ok(claims) => claims,
            Err(e) => return Err(self.refuse(e, ctx)),
        };
        self.publish(&token, &claims, req, ctx);
        if self.strip_token {
            source.strip(req);
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests;
