//! Turning the `providers` of the config into verifiers: reading secrets and key files,
//! pinning algorithms to key types, and the settings of remote JWKS.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use tollgate_plugin_api::BuildContext;

use crate::config::{self, AlgorithmName, JwtAuthConfig, ProviderConfig};
use crate::jwks::{JwksSettings, RemoteJwks};
use crate::keys::{self, KeySet, VerifyKey};
use crate::verify::{self, KeySource, Provider};

/// Looks an environment variable up (the real environment, or a stand-in in tests).
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<std::ffi::OsString>;

pub(crate) fn compile_providers(
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
    let Some(configured) = p.jwks_url.as_ref() else {
        return Err("jwks_url is not set".to_owned());
    };
    // Messages quote the URL with any credentials redacted.
    let shown = configured.redacted();
    let url: reqwest::Url = configured
        .expose()
        .parse()
        .map_err(|e| format!("jwks_url: `{shown}` is not a URL ({e})"))?;
    if configured.has_user_info() {
        // The URL is logged and traced (`url.full`) on every fetch, and a JWKS holds public keys
        // that need no credentials.
        return Err(format!(
            "jwks_url: `{shown}` carries credentials; a JWKS is public, fetch it without them"
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if p.jwks_allow_http || is_loopback(&url) => {}
        "http" => {
            return Err(format!(
                "jwks_url: `{shown}` is plain http, so anyone on the path could swap the keys; use \
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
