//! The `rate-limit` plugin: GCRA limits per key, counted in this process or shared through Redis.
//!
//! A route lists one or more limits (`rate`, `burst`, `key`); a request is admitted only when
//! every limit admits it, and is otherwise refused with 429 `rate_limited` and `Retry-After`.
//! Responses carry the `RateLimit-Policy`/`RateLimit` headers of
//! draft-ietf-httpapi-ratelimit-headers-10, the legacy `X-RateLimit-*` ones, or none.
//!
//! - `rate.rs`: `"100/s"` and friends; `key.rs`: what a limit counts by and how a request's key
//!   is built; `config.rs`: the TOML table.
//! - `local.rs` + `store.rs`: governor's GCRA over a store with a hard cap on keys.
//! - `remote.rs` + `gcra.lua`: the same GCRA in Redis, atomic across limits and instances.
//! - `headers.rs`: the response headers.
//!
//! Full reference: docs/plugins/rate-limit.md.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod headers;
mod key;
mod local;
mod rate;
mod remote;
mod store;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, StatusCode};
use tokio::sync::watch;
use tollgate_plugin_api::{
    async_trait, BuildContext, Count, Flow, Plugin, PluginError, PluginFactory, RequestContext,
    RequestHeader, ResponseHeader,
};

pub use config::{
    BackendConfig, Burst, HeaderMode, LimitConfig, OnError, RateLimitConfig, RedisConfig, RedisUrl,
};
pub use key::{KeyPart, KeySpec, MissingKey};
pub use local::{LocalLimiter, Verdict};
pub use rate::Rate;

use remote::{LinkSettings, RedisLink, RemoteLimit};

/// Factory of the `rate-limit` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimitPlugin;

/// How often idle keys are swept out of the local stores. `max_keys` bounds memory in between.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A bucket that takes longer than this to refill from empty is almost certainly a typo, and
/// bounds the GCRA arithmetic (burst × interval) far below overflow.
const MAX_BUCKET_SPAN: Duration = Duration::from_secs(366 * 86_400);

impl PluginFactory for RateLimitPlugin {
    const NAME: &'static str = "rate-limit";
    // After authentication (jwt-auth 8000, key-auth 8100), so that limits can key on the consumer
    // and unauthenticated requests are refused before they spend anyone's budget; before
    // body-limit (5000) and the transforming plugins.
    const PRIORITY: i32 = 7000;
    type Config = RateLimitConfig;

    fn config_schema(
        generator: &mut tollgate_plugin_api::schemars::SchemaGenerator,
    ) -> tollgate_plugin_api::schemars::Schema {
        generator.subschema_for::<Self::Config>()
    }

    fn build(config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(RateLimit::from_config(config)?))
    }
}

/// One configured limit, validated.
#[derive(Debug)]
struct Limit {
    name: String,
    rate: Rate,
    burst: NonZeroU32,
    key: KeySpec,
    missing: MissingKey,
}

#[derive(Debug)]
enum Backend {
    /// One limiter per limit, same order as `RateLimit::limits`.
    Local(Vec<LocalLimiter>),
    Redis {
        link: Arc<RedisLink>,
        /// `{prefix}{name}:` per limit.
        key_prefixes: Vec<Vec<u8>>,
        on_error: OnError,
        retry_interval: Duration,
        /// Same rate and burst as the shared limits, per instance (see `on_request`).
        precheck: Option<Vec<LocalLimiter>>,
    },
}

/// A built `rate-limit` plugin.
#[derive(Debug)]
struct RateLimit {
    limits: Vec<Limit>,
    headers: HeaderMode,
    /// `RateLimit-Policy`, the same on every response.
    policy: Option<HeaderValue>,
    backend: Backend,
}

/// What the plugin decided for a request, for the response phase.
#[derive(Debug, Clone)]
struct Applied {
    /// Limit index and verdict, for the limits that have one: on an admitted request every
    /// applied limit, on a refused one the limits that refused. Empty when Redis could not
    /// decide.
    verdicts: Vec<(usize, Verdict)>,
}

fn valid_policy_name(name: &str) -> bool {
    // A structured-field String may hold more, but these need no escaping anywhere (headers,
    // Redis keys, logs) and are enough for a name.
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl RateLimit {
    fn from_config(config: RateLimitConfig) -> Result<Self, String> {
        if config.limits.is_empty() {
            return Err(
                "`limits` must list at least one limit, e.g. limits = [{ rate = \"100/s\" }]"
                    .to_owned(),
            );
        }
        if config.max_keys == 0 {
            return Err("`max_keys` must be at least 1".to_owned());
        }
        let single = config.limits.len() == 1;
        let mut limits: Vec<Limit> = Vec::with_capacity(config.limits.len());
        for (i, l) in config.limits.into_iter().enumerate() {
            let name = match l.name {
                Some(n) => n,
                None if single => "default".to_owned(),
                None => format!("limit{}", i + 1),
            };
            if !valid_policy_name(&name) {
                return Err(format!(
                    "limits[{i}]: name `{name}` must be 1 to 64 letters, digits, `_`, `-` or `.`"
                ));
            }
            if limits.iter().any(|other| other.name == name) {
                return Err(format!(
                    "limits[{i}]: name `{name}` is used twice; give each limit its own `name`"
                ));
            }
            let burst = match l.burst {
                Some(b) => b.0,
                // "100/min" admits 100 at once by default, as the policy header says.
                None => NonZeroU32::new(l.rate.count())
                    .ok_or_else(|| format!("limits[{i}]: rate {} admits nothing", l.rate))?,
            };
            let span = l.rate.interval().saturating_mul(burst.get());
            if span > MAX_BUCKET_SPAN {
                return Err(format!(
                    "limits[{i}]: burst {burst} at {} takes over a year to refill; lower the \
                     burst or raise the rate",
                    l.rate
                ));
            }
            limits.push(Limit {
                name,
                rate: l.rate,
                burst,
                key: l.key,
                missing: l.missing,
            });
        }
        let local = |max_keys: usize| -> Result<Vec<LocalLimiter>, String> {
            limits
                .iter()
                .map(|l| LocalLimiter::new(l.rate, l.burst, max_keys))
                .collect()
        };
        let backend = match config.backend {
            BackendConfig::Local => Backend::Local(local(config.max_keys)?),
            BackendConfig::Redis(r) => {
                let r = *r;
                let key_prefixes = limits
                    .iter()
                    .map(|l| format!("{}{}:", r.prefix, l.name).into_bytes())
                    .collect();
                Backend::Redis {
                    link: Arc::new(RedisLink::new(
                        r.url.client,
                        LinkSettings {
                            timeout: r.timeout,
                            connect_timeout: r.connect_timeout,
                            retry_interval: r.retry_interval,
                        },
                    )),
                    key_prefixes,
                    on_error: r.on_error,
                    retry_interval: r.retry_interval,
                    precheck: if r.local_precheck {
                        Some(local(config.max_keys)?)
                    } else {
                        None
                    },
                }
            }
        };
        let names: Vec<(&str, Rate)> = limits.iter().map(|l| (l.name.as_str(), l.rate)).collect();
        let policy = headers::policy(&names);
        Ok(RateLimit {
            limits,
            headers: config.headers,
            policy,
            backend,
        })
    }

    fn local_limiters(&self) -> &[LocalLimiter] {
        match &self.backend {
            Backend::Local(l) => l,
            Backend::Redis { precheck, .. } => precheck.as_deref().unwrap_or(&[]),
        }
    }

    /// Checks the limits in order on local limiters; stops at the first refusal, so a refused
    /// request is not charged to the limits after it (those before it have been charged: governor
    /// cannot give a unit back).
    fn check_local(
        limiters: &[LocalLimiter],
        keys: &[Option<Vec<u8>>],
    ) -> (bool, Vec<(usize, Verdict)>) {
        let mut verdicts = Vec::with_capacity(keys.len());
        for (i, (limiter, key)) in limiters.iter().zip(keys).enumerate() {
            let Some(key) = key else { continue };
            let v = limiter.check(key);
            verdicts.push((i, v));
            if !v.allowed {
                return (false, verdicts);
            }
        }
        (true, verdicts)
    }

    fn refusal(&self, verdicts: Vec<(usize, Verdict)>, ctx: &mut RequestContext) -> PluginError {
        let refused: Vec<(usize, Verdict)> =
            verdicts.into_iter().filter(|(_, v)| !v.allowed).collect();
        let wait = refused
            .iter()
            .map(|(_, v)| v.refill_in)
            .max()
            .unwrap_or(Duration::from_secs(1));
        let names: Vec<String> = refused
            .iter()
            .filter_map(|(i, _)| self.limits.get(*i))
            .map(|l| format!("`{}` ({}, burst {})", l.name, l.rate, l.burst))
            .collect();
        let message = format!(
            "rate limit {} exceeded; retry in {} s",
            names.join(" and "),
            headers::ceil_secs(wait).max(1)
        );
        ctx.extensions.insert(Applied { verdicts: refused });
        ctx.count(Count::RateLimited);
        PluginError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            .with_header(header::RETRY_AFTER, headers::retry_after(wait))
    }
}

#[async_trait]
impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        RateLimitPlugin::NAME
    }

    async fn background(&self, mut stop: watch::Receiver<bool>) {
        if let Backend::Redis { link, .. } = &self.backend {
            // Connect now rather than on the first request.
            link.warm_up();
        }
        if self.local_limiters().is_empty() {
            return;
        }
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = sweep.tick() => {
                    for limiter in self.local_limiters() {
                        limiter.sweep();
                        // Each sweep holds one shard lock at a time; let other tasks in between.
                        tokio::task::yield_now().await;
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        let keys: Vec<Option<Vec<u8>>> = self
            .limits
            .iter()
            .map(|l| l.key.build(req, ctx, l.missing))
            .collect();
        let verdicts = match &self.backend {
            Backend::Local(limiters) => {
                let (allowed, verdicts) = Self::check_local(limiters, &keys);
                if !allowed {
                    return Err(self.refusal(verdicts, ctx));
                }
                verdicts
            }
            Backend::Redis {
                link,
                key_prefixes,
                on_error,
                retry_interval,
                precheck,
            } => {
                // The pre-check runs each shared limit at its full rate and burst in this
                // instance. Every request this instance admits is part of the shared stream, so
                // a request over the limit locally is over it globally: refusing it here never
                // refuses one Redis would admit. A lower local rate (rate / N) would: traffic
                // need not be spread evenly over the instances.
                if let Some(pre) = precheck {
                    let (allowed, verdicts) = Self::check_local(pre, &keys);
                    if !allowed {
                        return Err(self.refusal(verdicts, ctx));
                    }
                }
                let mut remote = Vec::with_capacity(keys.len());
                let mut index = Vec::with_capacity(keys.len());
                for (i, key) in keys.iter().enumerate() {
                    let (Some(key), Some(prefix), Some(limit)) =
                        (key, key_prefixes.get(i), self.limits.get(i))
                    else {
                        continue;
                    };
                    let mut full = prefix.clone();
                    full.extend_from_slice(key);
                    remote.push(RemoteLimit {
                        key: full,
                        interval_micros: limit.rate.interval_micros(),
                        burst: limit.burst.get(),
                    });
                    index.push(i);
                }
                if remote.is_empty() {
                    ctx.extensions.insert(Applied {
                        verdicts: Vec::new(),
                    });
                    return Ok(Flow::Continue);
                }
                let mut span = redis_span(ctx, link);
                let result = link.check(&remote).await;
                if let Err(e) = &result {
                    span.error(e.kind(), &e.to_string());
                }
                drop(span);
                match result {
                    Ok(outcome) => {
                        let verdicts: Vec<(usize, Verdict)> =
                            index.into_iter().zip(outcome.verdicts).collect();
                        if !outcome.allowed {
                            return Err(self.refusal(verdicts, ctx));
                        }
                        verdicts
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "rate-limit: Redis could not decide");
                        ctx.extensions.insert(Applied {
                            verdicts: Vec::new(),
                        });
                        return match on_error {
                            OnError::Allow => Ok(Flow::Continue),
                            OnError::Deny => Err(PluginError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "rate_limit_unavailable",
                                "the rate limiter is unavailable; try again shortly",
                            )
                            .with_header(
                                header::RETRY_AFTER,
                                headers::retry_after(*retry_interval),
                            )),
                        };
                    }
                }
            }
        };
        ctx.extensions.insert(Applied { verdicts });
        Ok(Flow::Continue)
    }

    fn on_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestContext) {
        // Only for requests this plugin looked at: a request refused earlier (401 by an
        // authentication plugin) was not counted, so its limits say nothing about it.
        let Some(applied) = ctx.extensions.get::<Applied>() else {
            return;
        };
        match self.headers {
            HeaderMode::None => {}
            HeaderMode::Draft => {
                // Appended, not inserted: the upstream's own policies stay visible, and a
                // structured-field List may be split over several fields.
                if let Some(policy) = &self.policy {
                    let _ = resp.append_header(headers::RATELIMIT_POLICY_STR, policy.clone());
                }
                let items: Vec<(&str, Verdict)> = applied
                    .verdicts
                    .iter()
                    .filter_map(|(i, v)| self.limits.get(*i).map(|l| (l.name.as_str(), *v)))
                    .collect();
                if let Some(value) = headers::ratelimit(&items) {
                    let _ = resp.append_header(headers::RATELIMIT_STR, value);
                }
            }
            HeaderMode::Legacy => {
                let items: Vec<(Rate, Verdict)> = applied
                    .verdicts
                    .iter()
                    .filter_map(|(i, v)| self.limits.get(*i).map(|l| (l.rate, *v)))
                    .collect();
                // Inserted: three single-valued headers cannot be merged with an upstream's.
                if let Some(hs) = headers::legacy(&items) {
                    for (name, value) in hs {
                        let _ = resp.insert_header(name, value);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// The client span of one Redis round trip (OpenTelemetry database conventions).
fn redis_span(ctx: &RequestContext, link: &RedisLink) -> tollgate_plugin_api::IoSpan {
    let mut port = None;
    let mut span = tollgate_plugin_api::IoSpan::start(Some(ctx), "EVALSHA", || {
        let (host, p) = link.server();
        port = p;
        vec![
            ("db.system.name", "redis".to_owned()),
            ("db.operation.name", "EVALSHA".to_owned()),
            ("server.address", host),
            ("tollgate.plugin", "rate-limit".to_owned()),
        ]
    });
    if let Some(port) = port {
        span.int("server.port", i64::from(port));
    }
    span
}
