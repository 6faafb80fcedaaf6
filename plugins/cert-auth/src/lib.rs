//! The `cert-auth` plugin: lets a request through only with a client certificate (mutual TLS)
//! that one of its lists allows, names the consumer after the certificate, and tells the
//! upstream who the client is in Envoy's `x-forwarded-client-cert` format.
//!
//! The certificate was verified in the handshake by the listener (`tls.client_auth` with its
//! `client_ca_file` and `client_crl_files`); this plugin decides which verified certificates a
//! route takes. Config keys (at least one entry in all lists together):
//! - `subjects`: exact subject DNs in RFC 4514 form (`CN=web,O=Example`).
//! - `san_dns`: DNS names of the subject alternative names (case-insensitive).
//! - `san_uris`: URIs of the subject alternative names, e.g. SPIFFE IDs; one ending in `/*`
//!   allows every URI that starts with what precedes the `*`.
//! - `fingerprints`: SHA-256 of the certificate's DER in hex, colons optional, any case.
//! - `consumer_header` (default `"x-consumer"`): header the consumer is sent upstream in; a
//!   client's own copy is always removed.
//! - `forward_client_cert` (default `true`): send `x-forwarded-client-cert` upstream.
//!
//! No certificate is 401 `missing_client_certificate` (also on plaintext listeners and
//! listeners without `client_auth`), a certificate none of the lists allows 403
//! `client_certificate_not_allowed`. The consumer is [`ClientCert::identity`]: the first SAN
//! URI, else the first SAN DNS name, else the subject's CN, else the fingerprint — whichever
//! list allowed the certificate, so that limits keyed on the consumer see one name per client.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tollgate_plugin_api::{
    async_trait, BuildContext, ClientCert, Count, Flow, Plugin, PluginError, PluginFactory,
    RequestContext, RequestHeader,
};

/// The header the client certificate is forwarded in (Envoy's name and format).
const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Configuration of the `cert-auth` plugin.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CertAuthConfig {
    /// Subject DNs allowed, exactly as RFC 4514 writes them (`CN=web,O=Example`).
    pub subjects: Vec<String>,
    /// SAN DNS names allowed (case-insensitive).
    pub san_dns: Vec<String>,
    /// SAN URIs allowed (e.g. SPIFFE IDs); a trailing `/*` allows a prefix.
    pub san_uris: Vec<String>,
    /// SHA-256 fingerprints allowed (hex, colons optional, any case).
    pub fingerprints: Vec<String>,
    /// Header the consumer name is forwarded in.
    pub consumer_header: String,
    /// Send `x-forwarded-client-cert` to the upstream.
    pub forward_client_cert: bool,
}

impl Default for CertAuthConfig {
    fn default() -> Self {
        Self {
            subjects: Vec::new(),
            san_dns: Vec::new(),
            san_uris: Vec::new(),
            fingerprints: Vec::new(),
            consumer_header: "x-consumer".into(),
            forward_client_cert: true,
        }
    }
}

/// Factory of the `cert-auth` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct CertAuthPlugin;

impl PluginFactory for CertAuthPlugin {
    const NAME: &'static str = "cert-auth";
    // The certificate is the strongest credential a request can carry and costs nothing to
    // check, so it runs before key-auth (8100) and jwt-auth (8000) and, like them, before rate
    // limiting, which can then be keyed on the consumer it names.
    const PRIORITY: i32 = 8200;
    type Config = CertAuthConfig;

    fn config_schema(
        generator: &mut tollgate_plugin_api::schemars::SchemaGenerator,
    ) -> tollgate_plugin_api::schemars::Schema {
        generator.subschema_for::<Self::Config>()
    }

    fn build(config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        let consumer_header =
            HeaderName::from_bytes(config.consumer_header.as_bytes()).map_err(|_| {
                format!(
                    "`consumer_header` `{}` is not a valid header name",
                    config.consumer_header
                )
            })?;
        // The gateway sets or removes these itself; a consumer written there would never
        // reach the upstream (or would break the request's framing).
        const RESERVED: &[&str] = &[
            "host",
            "x-forwarded-client-cert",
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-connection",
        ];
        if RESERVED.contains(&consumer_header.as_str()) {
            return Err(format!(
                "`consumer_header` `{}` is a header the gateway sets or removes itself; pick \
                 another name (default `x-consumer`)",
                config.consumer_header
            ));
        }
        if let Some(d) = config.san_dns.iter().find(|d| d.contains('*')) {
            return Err(format!(
                "`san_dns`: `{d}`: names are matched exactly (any letter case), without \
                 wildcards; list each name"
            ));
        }
        let non_empty = |key: &str, values: &[String]| -> Result<(), String> {
            if values.iter().any(|v| v.trim().is_empty()) {
                return Err(format!("`{key}` holds an empty entry"));
            }
            Ok(())
        };
        non_empty("subjects", &config.subjects)?;
        non_empty("san_dns", &config.san_dns)?;
        non_empty("san_uris", &config.san_uris)?;
        let fingerprints = config
            .fingerprints
            .iter()
            .map(|f| {
                parse_fingerprint(f).ok_or_else(|| {
                    format!(
                        "`fingerprints`: `{f}` is not a SHA-256 fingerprint (64 hex digits, \
                         colons optional)"
                    )
                })
            })
            .collect::<Result<HashSet<_>, _>>()?;
        let mut uri_exact = HashSet::new();
        let mut uri_prefixes = Vec::new();
        for u in &config.san_uris {
            match u.strip_suffix('*') {
                Some(prefix) if prefix.ends_with('/') => uri_prefixes.push(prefix.to_string()),
                Some(_) => {
                    return Err(format!(
                        "`san_uris`: `{u}`: a `*` is allowed only as a whole last segment \
                         (`spiffe://cluster.local/ns/x/*`)"
                    ))
                }
                None if u.contains('*') => {
                    return Err(format!(
                        "`san_uris`: `{u}`: a `*` is allowed only as a whole last segment \
                         (`spiffe://cluster.local/ns/x/*`)"
                    ))
                }
                None => {
                    uri_exact.insert(u.clone());
                }
            }
        }
        let allow = Allow {
            subjects: config.subjects.iter().cloned().collect(),
            san_dns: config
                .san_dns
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            uri_exact,
            uri_prefixes,
            fingerprints,
        };
        if allow.is_empty() {
            return Err(
                "nothing is allowed: list some `subjects`, `san_dns`, `san_uris` or \
                 `fingerprints`"
                    .into(),
            );
        }
        Ok(Arc::new(CertAuth {
            allow,
            consumer_header,
            forward_client_cert: config.forward_client_cert,
        }))
    }
}

/// A fingerprint as the certificate's [`ClientCert::sha256`] writes it: lower-case hex, no
/// separators.
fn parse_fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// What a route takes.
#[derive(Debug)]
struct Allow {
    subjects: HashSet<String>,
    san_dns: HashSet<String>,
    uri_exact: HashSet<String>,
    uri_prefixes: Vec<String>,
    fingerprints: HashSet<String>,
}

impl Allow {
    fn is_empty(&self) -> bool {
        self.subjects.is_empty()
            && self.san_dns.is_empty()
            && self.uri_exact.is_empty()
            && self.uri_prefixes.is_empty()
            && self.fingerprints.is_empty()
    }

    fn allows(&self, cert: &ClientCert) -> bool {
        self.fingerprints.contains(&cert.sha256)
            || self.subjects.contains(&cert.subject)
            || cert
                .san_dns
                .iter()
                .any(|d| self.san_dns.contains(&d.to_ascii_lowercase()))
            || cert.san_uris.iter().any(|u| {
                self.uri_exact.contains(u) || self.uri_prefixes.iter().any(|p| u.starts_with(p))
            })
    }
}

/// A built `cert-auth` plugin.
#[derive(Debug)]
struct CertAuth {
    allow: Allow,
    consumer_header: HeaderName,
    forward_client_cert: bool,
}

/// A refusal, counted as an auth failure under its code.
fn refuse(
    status: StatusCode,
    code: &'static str,
    message: &str,
    ctx: &mut RequestContext,
) -> PluginError {
    ctx.count(Count::AuthFailure { reason: code });
    PluginError::new(status, code, message)
}

#[async_trait]
impl Plugin for CertAuth {
    fn name(&self) -> &'static str {
        CertAuthPlugin::NAME
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        // Never let a client name its own consumer.
        req.remove_header(&self.consumer_header);
        let Some(cert) = ctx.client_cert.clone() else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "missing_client_certificate",
                "a client certificate is required: connect over TLS and present one",
                ctx,
            ));
        };
        if !self.allow.allows(&cert) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "client_certificate_not_allowed",
                "the client certificate is not allowed here",
                ctx,
            ));
        }
        let consumer = cert.identity();
        ctx.vars.insert("consumer".into(), consumer.to_string());
        // Certificate fields are text the CA chose: a value a header cannot carry is left out
        // rather than mangled.
        if let Ok(v) = HeaderValue::from_bytes(consumer.as_bytes()) {
            let _ = req.insert_header(self.consumer_header.clone(), v);
        }
        if self.forward_client_cert {
            if let Ok(v) = HeaderValue::from_bytes(cert.xfcc().as_bytes()) {
                let _ = req.insert_header(XFCC, v);
            }
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tollgate_plugin_test::{ctx, request};

    fn build(toml_text: &str) -> Result<Arc<dyn Plugin>, String> {
        tollgate_plugin_test::build::<CertAuthPlugin>(toml_text).map_err(|e| e.message)
    }

    fn cert() -> ClientCert {
        ClientCert {
            subject: "CN=web,O=Example".into(),
            common_name: Some("web".into()),
            san_dns: vec!["Web.Example".into()],
            san_uris: vec!["spiffe://cluster.local/ns/shop/sa/web".into()],
            sha256: "ab".repeat(32),
        }
    }

    async fn run(
        p: &Arc<dyn Plugin>,
        cert: Option<ClientCert>,
    ) -> (Result<Flow, PluginError>, RequestContext, RequestHeader) {
        let mut req = request("GET", "/x", &[("x-consumer", "mallory")]);
        let mut c = ctx();
        c.client_cert = cert.map(Arc::new);
        let r = p.on_request(&mut req, &mut c).await;
        (r, c, req)
    }

    #[tokio::test]
    async fn no_certificate_is_401_and_a_stranger_403() {
        let p = build("san_dns = [\"other.example\"]").unwrap();
        let (r, c, _) = run(&p, None).await;
        let e = r.err().unwrap();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.code, "missing_client_certificate");
        assert_eq!(
            c.counts(),
            [Count::AuthFailure {
                reason: "missing_client_certificate"
            }]
        );
        let (r, _, _) = run(&p, Some(cert())).await;
        let e = r.err().unwrap();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.code, "client_certificate_not_allowed");
    }

    #[tokio::test]
    async fn each_list_allows_and_the_consumer_is_the_identity() {
        for cfg in [
            "subjects = [\"CN=web,O=Example\"]",
            "san_dns = [\"web.example\"]",
            "san_uris = [\"spiffe://cluster.local/ns/shop/sa/web\"]",
            "san_uris = [\"spiffe://cluster.local/ns/shop/*\"]",
            &format!("fingerprints = [\"{}\"]", "AB:".repeat(31) + "AB"),
        ] {
            let p = build(cfg).unwrap();
            let (r, c, req) = run(&p, Some(cert())).await;
            assert!(matches!(r, Ok(Flow::Continue)), "{cfg}");
            assert_eq!(
                c.vars.get("consumer"),
                Some("spiffe://cluster.local/ns/shop/sa/web")
            );
            assert_eq!(
                req.headers["x-consumer"],
                "spiffe://cluster.local/ns/shop/sa/web"
            );
            assert_eq!(
                req.headers["x-forwarded-client-cert"],
                cert().xfcc().as_str()
            );
        }
    }

    #[tokio::test]
    async fn a_prefix_is_a_whole_segment_and_subjects_are_exact() {
        let p = build("san_uris = [\"spiffe://cluster.local/ns/sho/*\"]\nsubjects = [\"CN=web\"]")
            .unwrap();
        let (r, _, _) = run(&p, Some(cert())).await;
        assert_eq!(r.err().unwrap().code, "client_certificate_not_allowed");
    }

    #[tokio::test]
    async fn forwarding_can_be_turned_off() {
        let p = build("san_dns = [\"web.example\"]\nforward_client_cert = false").unwrap();
        let (r, _, req) = run(&p, Some(cert())).await;
        assert!(r.is_ok());
        assert!(req.headers.get("x-forwarded-client-cert").is_none());
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(build("").err().unwrap().contains("nothing is allowed"));
        assert!(build("fingerprints = [\"abc\"]")
            .err()
            .unwrap()
            .contains("not a SHA-256"));
        assert!(build("san_uris = [\"spiffe://x/ns*\"]")
            .err()
            .unwrap()
            .contains("whole last segment"));
        assert!(build("san_uris = [\"spiffe://c/*/a/sa/b\"]")
            .err()
            .unwrap()
            .contains("whole last segment"));
        assert!(build("san_dns = [\"*.example.com\"]")
            .err()
            .unwrap()
            .contains("without wildcards"));
        assert!(
            build("san_dns = [\"a\"]\nconsumer_header = \"X-Forwarded-Client-Cert\"")
                .err()
                .unwrap()
                .contains("sets or removes itself")
        );
        assert!(build("san_dns = [\"\"]").err().unwrap().contains("empty"));
        assert!(build("san_dns = [\"a\"]\nconsumer_header = \"bad header\"").is_err());
        assert!(
            build("subject = [\"CN=a\"]").is_err(),
            "unknown keys are refused"
        );
    }
}
