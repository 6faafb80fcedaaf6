//! The `ip-restriction` plugin: lets a request through only when its client address is allowed.
//!
//! Config keys (at least one of `allow` and `deny` must be non-empty):
//! - `allow` (default `[]`): CIDR blocks or bare addresses, IPv4 and IPv6; when non-empty, only
//!   clients in it are let through.
//! - `deny` (default `[]`): CIDR blocks or bare addresses that are refused; deny wins over allow.
//! - `message` (optional): the message of the 403 `ip_forbidden` error instead of the default.
//!
//! The client address is the one the core resolved through the trusted proxies; IPv4-mapped IPv6
//! addresses (`::ffff:10.1.2.3`) are matched as their IPv4 address.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use http::StatusCode;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use tollgate_plugin_api::{
    async_trait, BuildContext, Count, Flow, Plugin, PluginError, PluginFactory, RequestContext,
    RequestHeader,
};

/// Configuration of the `ip-restriction` plugin.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct IpRestrictionConfig {
    /// Allowed CIDR blocks or addresses; when non-empty, every other client is refused.
    pub allow: Vec<String>,
    /// Refused CIDR blocks or addresses; they win over `allow`.
    pub deny: Vec<String>,
    /// Message of the rejection instead of the default one.
    pub message: Option<String>,
}

/// Factory of the `ip-restriction` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct IpRestrictionPlugin;

impl PluginFactory for IpRestrictionPlugin {
    const NAME: &'static str = "ip-restriction";
    // Right after request-id, before CORS and authentication: a refused client should cost as
    // little as possible and learn nothing about the route.
    const PRIORITY: i32 = 9500;
    type Config = IpRestrictionConfig;

    fn config_schema(
        generator: &mut tollgate_plugin_api::schemars::SchemaGenerator,
    ) -> tollgate_plugin_api::schemars::Schema {
        generator.subschema_for::<Self::Config>()
    }

    fn build(config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        if config.allow.is_empty() && config.deny.is_empty() {
            return Err("at least one of `allow` and `deny` must list an address".to_owned());
        }
        if config
            .message
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return Err("`message` must not be empty; leave it out for the default".to_owned());
        }
        Ok(Arc::new(IpRestriction {
            allow: NetList::parse("allow", &config.allow)?,
            deny: NetList::parse("deny", &config.deny)?,
            message: config.message,
        }))
    }
}

/// A set of networks, split by family so a lookup only scans its own.
#[derive(Debug, Default)]
struct NetList {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl NetList {
    fn parse(key: &str, entries: &[String]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            nets.push(parse_net(entry).ok_or_else(|| {
                format!(
                    "{key}: `{entry}` is not an IP address or CIDR block \
                     (write e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\")"
                )
            })?);
        }
        let mut list = NetList::default();
        // Merging overlapping and adjacent blocks keeps the per-request scan short.
        for net in IpNet::aggregate(&nets) {
            match net {
                IpNet::V4(n) => list.v4.push(n),
                IpNet::V6(n) => list.v6.push(n),
            }
        }
        Ok(list)
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.v4.iter().any(|n| n.contains(&ip)),
            IpAddr::V6(ip) => self.v6.iter().any(|n| n.contains(&ip)),
        }
    }
}

/// Parses a CIDR block or a bare address (a host prefix), with IPv4-mapped IPv6 blocks turned
/// into IPv4 ones so that they match the IPv4 client addresses they describe.
fn parse_net(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    let net = IpNet::from_str(entry)
        .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
        .ok()?;
    Some(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).ok()?),
            None => net,
        },
        _ => net,
    })
    .map(|n| n.trunc())
}

/// A built `ip-restriction` plugin.
#[derive(Debug)]
struct IpRestriction {
    allow: NetList,
    deny: NetList,
    message: Option<String>,
}

impl IpRestriction {
    fn allows(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }
}

#[async_trait]
impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        IpRestrictionPlugin::NAME
    }

    async fn on_request(
        &self,
        _req: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        // Clients behind an IPv6 socket show up as ::ffff:a.b.c.d; rules are written for a.b.c.d.
        let client = ctx.client_ip.map(|ip| ip.to_canonical());
        match client {
            Some(ip) if self.allows(ip) => Ok(Flow::Continue),
            _ => {
                let message = match (&self.message, client) {
                    (Some(m), _) => m.clone(),
                    (None, Some(ip)) => format!("client address {ip} is not allowed on this route"),
                    (None, None) => {
                        "the client address is unknown and this route is restricted by address"
                            .to_owned()
                    }
                };
                ctx.count(Count::AuthFailure {
                    reason: "ip_forbidden",
                });
                Err(PluginError::new(
                    StatusCode::FORBIDDEN,
                    "ip_forbidden",
                    message,
                ))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tollgate_plugin_api::{BuildError, BuildErrorKind};
    use tollgate_plugin_test::{ctx, ctx_from, request};

    fn build(toml_src: &str) -> Result<Arc<dyn Plugin>, BuildError> {
        tollgate_plugin_test::build::<IpRestrictionPlugin>(toml_src)
    }

    fn build_err(toml_src: &str) -> BuildError {
        tollgate_plugin_test::build_err::<IpRestrictionPlugin>(toml_src)
    }

    async fn check(p: &Arc<dyn Plugin>, client: Option<&str>) -> Result<(), PluginError> {
        let mut req = request("GET", "/", &[]);
        let mut ctx = client.map_or_else(ctx, ctx_from);
        p.on_request(&mut req, &mut ctx).await.map(|flow| {
            assert!(matches!(flow, Flow::Continue));
        })
    }

    #[tokio::test]
    async fn client_in_allow_list_passes() {
        let p = build(r#"{ allow = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"] }"#).unwrap();
        for ip in ["10.1.2.3", "192.0.2.7", "2001:db8::1"] {
            check(&p, Some(ip)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn client_outside_allow_list_is_forbidden() {
        let p = build(r#"{ allow = ["10.0.0.0/8", "192.0.2.7"] }"#).unwrap();
        for ip in ["11.0.0.1", "192.0.2.8", "::1"] {
            let err = check(&p, Some(ip)).await.unwrap_err();
            assert_eq!(err.status, StatusCode::FORBIDDEN);
            assert_eq!(err.code, "ip_forbidden");
            assert_eq!(
                err.message,
                format!("client address {ip} is not allowed on this route")
            );
        }
    }

    #[tokio::test]
    async fn a_refusal_is_counted_as_an_auth_failure() {
        let p = build(r#"{ allow = ["10.0.0.0/8"] }"#).unwrap();
        let mut ctx = ctx_from("11.0.0.1");
        p.on_request(&mut request("GET", "/", &[]), &mut ctx)
            .await
            .unwrap_err();
        assert_eq!(
            ctx.counts(),
            [Count::AuthFailure {
                reason: "ip_forbidden"
            }]
        );
        let mut ctx = ctx_from("10.0.0.1");
        p.on_request(&mut request("GET", "/", &[]), &mut ctx)
            .await
            .unwrap();
        assert!(ctx.counts().is_empty());
    }

    #[tokio::test]
    async fn deny_wins_over_allow() {
        let p = build(r#"{ allow = ["10.0.0.0/8"], deny = ["10.1.0.0/16"] }"#).unwrap();
        check(&p, Some("10.2.0.1")).await.unwrap();
        assert!(check(&p, Some("10.1.2.3")).await.is_err());
    }

    #[tokio::test]
    async fn deny_only_lets_everyone_else_through() {
        let p = build(r#"{ deny = ["203.0.113.0/24", "2001:db8::bad"] }"#).unwrap();
        check(&p, Some("198.51.100.1")).await.unwrap();
        check(&p, Some("2001:db8::1")).await.unwrap();
        assert!(check(&p, Some("203.0.113.99")).await.is_err());
        assert!(check(&p, Some("2001:db8::bad")).await.is_err());
    }

    #[tokio::test]
    async fn unknown_client_address_is_forbidden() {
        let p = build(r#"{ deny = ["10.0.0.0/8"] }"#).unwrap();
        let err = check(&p, None).await.unwrap_err();
        assert_eq!(err.code, "ip_forbidden");
        assert!(err.message.contains("unknown"), "{}", err.message);
    }

    #[tokio::test]
    async fn ipv4_mapped_client_is_matched_as_ipv4() {
        let p = build(r#"{ allow = ["10.0.0.0/8"], deny = ["10.9.9.9"] }"#).unwrap();
        check(&p, Some("::ffff:10.1.2.3")).await.unwrap();
        let err = check(&p, Some("::ffff:10.9.9.9")).await.unwrap_err();
        assert_eq!(
            err.message,
            "client address 10.9.9.9 is not allowed on this route"
        );
    }

    #[tokio::test]
    async fn ipv4_mapped_rule_is_matched_as_ipv4() {
        let p = build(r#"{ allow = ["::ffff:10.0.0.0/104"] }"#).unwrap();
        check(&p, Some("10.1.2.3")).await.unwrap();
        check(&p, Some("::ffff:10.1.2.3")).await.unwrap();
        assert!(check(&p, Some("11.0.0.1")).await.is_err());
    }

    #[tokio::test]
    async fn custom_message_is_used() {
        let p = build(r#"{ allow = ["10.0.0.0/8"], message = "office network only" }"#).unwrap();
        let err = check(&p, Some("8.8.8.8")).await.unwrap_err();
        assert_eq!(err.message, "office network only");
    }

    #[test]
    fn host_bits_in_a_block_are_ignored() {
        assert_eq!(parse_net("10.1.2.3/8"), Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(
            parse_net("2001:db8::1"),
            Some("2001:db8::1/128".parse().unwrap())
        );
    }

    #[test]
    fn bad_cidr_is_rejected_naming_the_entry() {
        for (src, bad) in [
            (r#"{ allow = ["10.0.0.0/33"] }"#, "allow: `10.0.0.0/33`"),
            (r#"{ deny = ["10.0.0.256"] }"#, "deny: `10.0.0.256`"),
            (
                r#"{ allow = ["10.0.0.0/8", "example.com"] }"#,
                "allow: `example.com`",
            ),
        ] {
            let err = build_err(src);
            assert_eq!(err.kind, BuildErrorKind::Invalid);
            assert!(
                err.message.contains(bad) && err.message.contains("not an IP address or CIDR"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn empty_allow_and_deny_are_rejected() {
        let err = build_err("{}");
        assert!(
            err.message.contains("at least one of `allow` and `deny`"),
            "{}",
            err.message
        );
        let err = build_err("{ allow = [], deny = [] }");
        assert!(err.message.contains("at least one"), "{}", err.message);
    }

    #[test]
    fn empty_message_is_rejected() {
        let err = build_err(r#"{ deny = ["10.0.0.0/8"], message = " " }"#);
        assert!(
            err.message.contains("`message` must not be empty"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_a_span() {
        let err = build_err(r#"{ whitelist = ["10.0.0.0/8"] }"#);
        assert_eq!(err.kind, BuildErrorKind::Config);
        assert!(err.message.contains("whitelist"), "{}", err.message);
        assert_eq!(err.span, Some(2..11));
    }
}
