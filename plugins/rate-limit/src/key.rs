//! What a limit counts by: the parts of its key (`client_ip`, `header:NAME`, ...) and how a
//! request's key is built from them.

use std::fmt;

use http::HeaderName;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize as DeriveDeserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};
use tollgate_plugin_api::{push_ip, RequestContext, RequestHeader};

/// One part of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client address, as resolved through the trusted proxies.
    ClientIp,
    /// The value(s) of a request header.
    Header(HeaderName),
    /// A verified JWT claim; holds the var it is read from, `jwt.NAME` (set by `jwt-auth`).
    Claim(String),
    /// The authenticated consumer, from `ctx.vars["consumer"]` (set by `jwt-auth`/`key-auth`).
    Consumer,
    /// The name of the matched route.
    Route,
    /// A path template parameter of the matched route.
    Param(String),
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::ClientIp => f.write_str("client_ip"),
            KeyPart::Header(h) => write!(f, "header:{h}"),
            KeyPart::Claim(var) => write!(f, "claim:{}", var.strip_prefix("jwt.").unwrap_or(var)),
            KeyPart::Consumer => f.write_str("consumer"),
            KeyPart::Route => f.write_str("route"),
            KeyPart::Param(p) => write!(f, "param:{p}"),
        }
    }
}

const KEY_HINT: &str = "write client_ip, consumer, route, header:NAME, claim:NAME or param:NAME";

impl std::str::FromStr for KeyPart {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let named = |kind: &str, name: &str| -> Result<String, String> {
            if name.is_empty() {
                Err(format!("key `{s}`: the {kind} name is empty; {KEY_HINT}"))
            } else {
                Ok(name.to_owned())
            }
        };
        match s.split_once(':') {
            None => match s {
                "client_ip" => Ok(KeyPart::ClientIp),
                "consumer" => Ok(KeyPart::Consumer),
                "route" => Ok(KeyPart::Route),
                _ => Err(format!("unknown key `{s}`; {KEY_HINT}")),
            },
            Some(("header", name)) => {
                let name = named("header", name)?;
                HeaderName::try_from(name.as_str())
                    .map(KeyPart::Header)
                    .map_err(|_| format!("key `{s}`: `{name}` is not a valid header name"))
            }
            Some(("claim", name)) => {
                named("claim", name).map(|n| KeyPart::Claim(format!("jwt.{n}")))
            }
            Some(("param", name)) => named("param", name).map(KeyPart::Param),
            Some(_) => Err(format!("unknown key `{s}`; {KEY_HINT}")),
        }
    }
}

/// The parts of a limit's key, in order: `"client_ip"` or `["consumer", "route"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    parts: Vec<KeyPart>,
}

impl Default for KeySpec {
    fn default() -> Self {
        KeySpec {
            parts: vec![KeyPart::ClientIp],
        }
    }
}

impl KeySpec {
    fn from_parts(names: Vec<String>) -> Result<Self, String> {
        if names.is_empty() {
            return Err(format!("key: the list is empty; {KEY_HINT}"));
        }
        let mut parts: Vec<KeyPart> = Vec::with_capacity(names.len());
        for name in &names {
            let part: KeyPart = name.parse()?;
            if parts.contains(&part) {
                return Err(format!("key: `{name}` is listed twice"));
            }
            parts.push(part);
        }
        Ok(KeySpec { parts })
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[KeyPart] {
        &self.parts
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Written as the list form, which reads back the same.
impl Serialize for KeySpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.parts.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeySpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a key such as \"client_ip\" or a list such as [\"consumer\", \"route\"]",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeySpec, E> {
                KeySpec::from_parts(vec![v.to_owned()]).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeySpec, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                KeySpec::from_parts(names).map_err(de::Error::custom)
            }
        }

        d.deserialize_any(KeyVisitor)
    }
}

/// One part of a key as written: a fixed name or `KIND:NAME`.
const KEY_PART_PATTERN: &str = r"^(client_ip|consumer|route|(header|claim|param):.+)$";

impl schemars::JsonSchema for KeySpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RateLimitKey".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "What requests are counted by: client_ip, consumer, route, \
                header:NAME, claim:NAME or param:NAME, or a list of them (each distinct).",
            "anyOf": [
                { "type": "string", "pattern": KEY_PART_PATTERN },
                {
                    "type": "array",
                    "items": { "type": "string", "pattern": KEY_PART_PATTERN },
                    "minItems": 1,
                    "uniqueItems": true
                }
            ]
        })
    }
}

/// What a limit does with a request that lacks a part of its key (no such header, no consumer,
/// no such claim or parameter, unknown client address).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, DeriveDeserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MissingKey {
    /// Count the request by its client address in place of the missing part (default): a limit
    /// never silently stops applying, and anonymous callers share nothing with named ones.
    #[default]
    ClientIp,
    /// Do not apply this limit to the request.
    Skip,
}

/// Built keys longer than this are replaced by a hash, so that what a key costs in Redis (and on
/// the way there) is bounded whatever a client sends in a header. (The local store keeps only a
/// fixed-size hash of every key anyway.)
const MAX_RAW_KEY: usize = 128;

impl KeySpec {
    /// The request's key for this limit, or `None` when a part is missing and the limit is to be
    /// skipped.
    ///
    /// The encoding is injective: parts are joined by `|`, and `\` and `|` inside values are
    /// escaped, so `["a|b", "c"]` and `["a", "b|c"]` never share a bucket. Markers that no value
    /// can produce (a single `\`) stand for a missing part (`\ip:ADDR`, `\unknown`) and for
    /// hashed long keys (`\sha256:HEX`).
    pub fn build(
        &self,
        req: &RequestHeader,
        ctx: &RequestContext,
        missing: MissingKey,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(48);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push(b'|');
            }
            let found = match part {
                KeyPart::ClientIp => match ctx.client_ip {
                    Some(ip) => {
                        push_ip(&mut out, ip);
                        true
                    }
                    None => false,
                },
                KeyPart::Header(name) => {
                    let mut values = req.headers.get_all(name).iter().peekable();
                    let present = values.peek().is_some();
                    for (n, v) in values.enumerate() {
                        if n > 0 {
                            out.push(b',');
                        }
                        push_escaped(&mut out, v.as_bytes());
                    }
                    present
                }
                KeyPart::Claim(var) => push_var(&mut out, ctx, var),
                KeyPart::Consumer => push_var(&mut out, ctx, "consumer"),
                KeyPart::Route => {
                    push_escaped(&mut out, ctx.route.as_bytes());
                    true
                }
                KeyPart::Param(name) => match ctx.param(name) {
                    Some(v) => {
                        push_escaped(&mut out, v.as_bytes());
                        true
                    }
                    None => false,
                },
            };
            if !found {
                match missing {
                    MissingKey::Skip => return None,
                    MissingKey::ClientIp => match ctx.client_ip {
                        // For a missing `client_ip` part itself the address is unknown too.
                        Some(ip) => {
                            out.extend_from_slice(b"\\ip:");
                            push_ip(&mut out, ip);
                        }
                        None => out.extend_from_slice(b"\\unknown"),
                    },
                }
            }
        }
        if out.len() > MAX_RAW_KEY {
            let digest = Sha256::digest(&out);
            out.clear();
            out.extend_from_slice(b"\\sha256:");
            // 128 bits: collisions are out of reach even for a client choosing its header values.
            for b in &digest[..16] {
                out.extend_from_slice(format!("{b:02x}").as_bytes());
            }
        }
        Some(out)
    }
}

fn push_var(out: &mut Vec<u8>, ctx: &RequestContext, var: &str) -> bool {
    match ctx.vars.get(var) {
        Some(v) => {
            push_escaped(out, v.as_bytes());
            true
        }
        None => false,
    }
}

fn push_escaped(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        if b == b'\\' || b == b'|' {
            out.push(b'\\');
        }
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn spec(toml_value: &str) -> Result<KeySpec, String> {
        #[derive(serde::Deserialize, schemars::JsonSchema)]
        struct W {
            key: KeySpec,
        }
        toml::from_str::<W>(&format!("key = {toml_value}"))
            .map(|w| w.key)
            .map_err(|e| e.message().to_owned())
    }

    /// A request of client 192.0.2.7 on route `orders`.
    fn ctx() -> RequestContext {
        let mut c = tollgate_plugin_test::ctx_from("192.0.2.7");
        c.route = Arc::from("orders");
        c
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        tollgate_plugin_test::request("GET", "/", headers)
    }

    fn key(s: &KeySpec, r: &RequestHeader, c: &RequestContext) -> Option<String> {
        s.build(r, c, MissingKey::ClientIp)
            .map(|k| String::from_utf8(k).unwrap())
    }

    #[test]
    fn every_part_kind_parses() {
        let s = spec(
            r#"["client_ip", "header:X-Api-Key", "claim:sub", "consumer", "route", "param:id"]"#,
        )
        .unwrap();
        assert_eq!(
            s.to_string(),
            "client_ip+header:x-api-key+claim:sub+consumer+route+param:id"
        );
        assert_eq!(spec(r#""route""#).unwrap().parts(), &[KeyPart::Route]);
    }

    #[test]
    fn bad_keys_are_rejected_with_a_hint() {
        for (bad, fragment) in [
            (r#""ip""#, "unknown key `ip`"),
            (r#""header:""#, "the header name is empty"),
            (r#""header:bad name""#, "not a valid header name"),
            (r#""cookie:x""#, "unknown key `cookie:x`"),
            (r#"[]"#, "the list is empty"),
            (r#"["route", "route"]"#, "`route` is listed twice"),
            ("5", "a key such as"),
        ] {
            let err = spec(bad).unwrap_err();
            assert!(err.contains(fragment), "{bad}: {err}");
        }
    }

    #[test]
    fn keys_are_built_from_the_request_and_context() {
        let mut c = ctx();
        c.vars.insert("consumer".into(), "alice".into());
        c.vars.insert("jwt.sub".into(), "user-1".into());
        c.params.push((Arc::from("id"), "42".into()));
        let r = req(&[("x-api-key", "k1")]);
        let s = spec(
            r#"["client_ip", "header:x-api-key", "claim:sub", "consumer", "route", "param:id"]"#,
        )
        .unwrap();
        assert_eq!(
            key(&s, &r, &c).unwrap(),
            "192.0.2.7|k1|user-1|alice|orders|42"
        );
    }

    #[test]
    fn ipv4_mapped_client_is_keyed_as_ipv4() {
        let mut c = ctx();
        c.client_ip = Some("::ffff:10.1.2.3".parse().unwrap());
        assert_eq!(key(&KeySpec::default(), &req(&[]), &c).unwrap(), "10.1.2.3");
    }

    #[test]
    fn repeated_headers_are_all_part_of_the_key() {
        let s = spec(r#""header:x-tenant""#).unwrap();
        let one = key(&s, &req(&[("x-tenant", "a")]), &ctx()).unwrap();
        let two = key(&s, &req(&[("x-tenant", "a"), ("x-tenant", "b")]), &ctx()).unwrap();
        assert_eq!(one, "a");
        assert_eq!(two, "a,b");
    }

    #[test]
    fn separators_in_values_cannot_forge_another_key() {
        let s = spec(r#"["header:a", "header:b"]"#).unwrap();
        let k1 = key(&s, &req(&[("a", "x|y"), ("b", "z")]), &ctx()).unwrap();
        let k2 = key(&s, &req(&[("a", "x"), ("b", "y|z")]), &ctx()).unwrap();
        assert_ne!(k1, k2);
        // A value cannot pose as the missing-part marker either.
        let forged = key(&s, &req(&[("a", "\\ip:192.0.2.7"), ("b", "z")]), &ctx()).unwrap();
        let missing = key(&s, &req(&[("b", "z")]), &ctx()).unwrap();
        assert_eq!(missing, "\\ip:192.0.2.7|z");
        assert_ne!(forged, missing);
    }

    #[test]
    fn missing_part_falls_back_to_the_client_address_or_skips() {
        let s = spec(r#"["consumer", "route"]"#).unwrap();
        let r = req(&[]);
        assert_eq!(key(&s, &r, &ctx()).unwrap(), "\\ip:192.0.2.7|orders");
        assert_eq!(s.build(&r, &ctx(), MissingKey::Skip), None);
        let mut anonymous = ctx();
        anonymous.client_ip = None;
        assert_eq!(key(&s, &r, &anonymous).unwrap(), "\\unknown|orders");
        assert_eq!(
            key(&KeySpec::default(), &r, &anonymous).unwrap(),
            "\\unknown"
        );
    }

    #[test]
    fn long_keys_are_hashed_to_a_bounded_size() {
        let s = spec(r#""header:x-token""#).unwrap();
        let long = "t".repeat(10_000);
        let k = key(&s, &req(&[("x-token", &long)]), &ctx()).unwrap();
        assert!(k.starts_with("\\sha256:"), "{k}");
        assert_eq!(k.len(), "\\sha256:".len() + 32);
        let other = key(&s, &req(&[("x-token", &format!("{long}u"))]), &ctx()).unwrap();
        assert_ne!(k, other);
        let short = key(&s, &req(&[("x-token", "t")]), &ctx()).unwrap();
        assert_eq!(short, "t");
    }
}
