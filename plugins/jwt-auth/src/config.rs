//! The plugin's config as written in gateway.toml. Every value that can be checked by its type
//! (durations, algorithm names, token sources) is checked here, so serde reports it at the value's
//! own position; checks that need several keys or the file system are done by `build`.

use std::collections::BTreeMap;
use std::fmt;

use jsonwebtoken::Algorithm;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use tollgate_plugin_api::{ByteSize, SecretUrl};

/// Configuration of the `jwt-auth` plugin (`[routes.x.plugins.jwt-auth]`).
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthConfig {
    /// Who issues accepted tokens and with which keys; a token is matched to one by its `iss`.
    pub providers: Vec<ProviderConfig>,
    /// Where the token is looked for, in order.
    #[serde(default)]
    pub token_from: TokenFrom,
    /// Clock skew allowed when checking `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Refuse tokens without an `exp` claim.
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Claims (dotted paths) a token must carry, else 403 `missing_claim`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Scopes a token must all grant, else 403 `insufficient_scope`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Longest token accepted; longer ones are refused before any decoding.
    #[serde(default = "default_max_token_size")]
    pub max_token_size: ByteSize,
    /// Verified tokens remembered (by their full text) so a repeated token skips the signature
    /// check; `0` turns the cache off.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// Claim path → request header the claim is sent upstream in.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Header the whole verified payload is sent upstream in (base64url JSON).
    #[serde(default)]
    pub forward_payload_header: Option<String>,
    /// Remove the token from the request before it goes upstream.
    #[serde(default)]
    pub strip_token: bool,
    /// Claim path whose value becomes `ctx.vars["consumer"]`; empty to set none.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Let CORS preflights through without a token.
    #[serde(default = "yes")]
    pub allow_preflight: bool,
    /// The `realm` of the `WWW-Authenticate` challenges.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// One issuer of tokens and where its verification keys come from. HMAC secrets are never
/// written here, only where they are read from (`secret_env`, `secret_file`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The `iss` of its tokens; optional only when it is the sole provider.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one suffices); empty: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted `alg` values; by default every algorithm of the key's type (HS256 for secrets).
    pub algorithms: Option<Vec<AlgorithmName>>,
    /// Environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// File holding the HMAC secret (relative to the config file).
    pub secret_file: Option<String>,
    /// The secret is written in base64 (standard or URL-safe alphabet).
    #[serde(default)]
    pub secret_base64: bool,
    /// Never accepted: present only to explain why, at its position (and never shown).
    #[serde(skip_serializing)]
    #[schemars(skip)]
    pub secret: Option<IgnoredAny>,
    /// PEM file of an RSA, EC (P-256/P-384) or Ed25519 public key.
    pub public_key_file: Option<String>,
    /// File holding a JWKS (`{"keys": [...]}`).
    pub jwks_file: Option<String>,
    /// URL of a JWKS, fetched before the route serves and refreshed while it does.
    pub jwks_url: Option<SecretUrl>,
    /// Shortest time between two scheduled JWKS fetches.
    pub jwks_min_refresh: Option<Duration>,
    /// Longest time between two scheduled JWKS fetches.
    pub jwks_max_refresh: Option<Duration>,
    /// Shortest time between two fetches caused by tokens with an unknown `kid`.
    pub jwks_refetch_interval: Option<Duration>,
    /// Time limit of one JWKS fetch.
    pub jwks_timeout: Option<Duration>,
    /// Allow `http://` JWKS URLs on hosts other than loopback.
    #[serde(default)]
    pub jwks_allow_http: bool,
}

fn yes() -> bool {
    true
}

fn default_leeway() -> Duration {
    Duration(std::time::Duration::from_secs(60))
}

fn default_max_token_size() -> ByteSize {
    ByteSize(8 * 1024)
}

fn default_cache_size() -> usize {
    1024
}

fn default_consumer_claim() -> String {
    "sub".to_owned()
}

fn default_realm() -> String {
    "tollgate".to_owned()
}

/// A duration written as `"250ms"`, `"30s"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Duration).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration `{s}`: {e} (write e.g. \"500ms\", \"30s\", \"1h\")"
            ))
        })
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        tollgate_plugin_api::schema::duration()
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

/// The names accepted in `algorithms`, in the spelling of RFC 7518.
pub(crate) const ALGORITHM_NAMES: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// An algorithm name from `algorithms`; `none` and unknown names fail at their position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgorithmName(pub Algorithm);

impl<'de> Deserialize<'de> for AlgorithmName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.eq_ignore_ascii_case("none") {
            return Err(de::Error::custom(
                "algorithm `none` is never accepted: an unsigned token proves nothing",
            ));
        }
        if s == "ES512" {
            return Err(de::Error::custom(
                "algorithm `ES512` (P-521) is not supported; use ES256 or ES384",
            ));
        }
        s.parse::<Algorithm>().map(AlgorithmName).map_err(|_| {
            de::Error::custom(format!(
                "unknown algorithm `{s}` (known, case-sensitive: {ALGORITHM_NAMES})"
            ))
        })
    }
}

impl schemars::JsonSchema for AlgorithmName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "JwtAlgorithm".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = ALGORITHM_NAMES.split(", ").collect();
        schemars::json_schema!({ "type": "string", "enum": names })
    }
}

impl Serialize for AlgorithmName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// One place a token may be carried in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenSourceConfig {
    /// A request header; `authorization` expects the `Bearer` scheme.
    Header(String),
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
}

/// `token_from`: one source (`{ header = "authorization" }`) or a list tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFrom(pub Vec<TokenSourceConfig>);

impl Default for TokenFrom {
    fn default() -> Self {
        Self(vec![TokenSourceConfig::Header("authorization".to_owned())])
    }
}

impl schemars::JsonSchema for TokenFrom {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TokenFrom".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let one = generator.subschema_for::<TokenSourceConfig>();
        schemars::json_schema!({
            "anyOf": [one, { "type": "array", "items": one }]
        })
    }
}

/// Written as the list form, which reads back the same.
impl Serialize for TokenFrom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for TokenFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TokenFromVisitor;

        impl<'de> Visitor<'de> for TokenFromVisitor {
            type Value = TokenFrom;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a source such as { header = \"authorization\" }, { query = \"access_token\" } \
                     or { cookie = \"jwt\" }, or a list of them",
                )
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TokenFrom, A::Error> {
                TokenSourceConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|s| TokenFrom(vec![s]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TokenFrom, A::Error> {
                Vec::<TokenSourceConfig>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(TokenFrom)
            }
        }

        d.deserialize_any(TokenFromVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<JwtAuthConfig, String> {
        toml::from_str(src).map_err(|e| e.message().to_owned())
    }

    const ONE_PROVIDER: &str = "providers = [{ secret_env = \"S\" }]\n";

    #[test]
    fn defaults_read_the_authorization_header_with_a_minute_of_leeway() {
        let c = parse(ONE_PROVIDER).unwrap();
        assert_eq!(c.token_from, TokenFrom::default());
        assert_eq!(c.leeway.0, std::time::Duration::from_secs(60));
        assert_eq!(c.max_token_size, ByteSize(8192));
        assert_eq!(c.consumer_claim, "sub");
        assert!(c.require_exp && c.allow_preflight && !c.strip_token);
    }

    #[test]
    fn token_from_takes_one_source_or_a_list() {
        let c = parse(&format!(
            "{ONE_PROVIDER}token_from = {{ cookie = \"jwt\" }}"
        ))
        .unwrap();
        assert_eq!(c.token_from.0, [TokenSourceConfig::Cookie("jwt".into())]);
        let c = parse(&format!(
            "{ONE_PROVIDER}token_from = [{{ header = \"x-token\" }}, {{ query = \"access_token\" }}]"
        ))
        .unwrap();
        assert_eq!(
            c.token_from.0,
            [
                TokenSourceConfig::Header("x-token".into()),
                TokenSourceConfig::Query("access_token".into())
            ]
        );
    }

    #[test]
    fn token_from_typos_are_errors() {
        let e = parse(&format!("{ONE_PROVIDER}token_from = {{ hedaer = \"x\" }}")).unwrap_err();
        assert!(e.contains("unknown variant `hedaer`"), "{e}");
        let e = parse(&format!("{ONE_PROVIDER}token_from = \"authorization\"")).unwrap_err();
        assert!(e.contains("{ header = \"authorization\" }"), "{e}");
    }

    #[test]
    fn algorithm_names_are_checked_at_their_position() {
        let e = parse("providers = [{ secret_env = \"S\", algorithms = [\"none\"] }]").unwrap_err();
        assert!(e.contains("never accepted"), "{e}");
        let e =
            parse("providers = [{ secret_env = \"S\", algorithms = [\"HS257\"] }]").unwrap_err();
        assert!(e.contains("unknown algorithm `HS257`"), "{e}");
        let src = "providers = [{ secret_env = \"S\", algorithms = [\"rs256\"] }]";
        let err = toml::from_str::<JwtAuthConfig>(src).unwrap_err();
        // The list holding the bad name (toml does not track spans of array items).
        assert_eq!(&src[err.span().unwrap()], "[\"rs256\"]");
    }

    #[test]
    fn the_config_is_shown_in_its_own_syntax_with_url_credentials_redacted() {
        let c = parse(
            "providers = [{ jwks_url = \"https://u:pw@idp.example/jwks\", algorithms = [\"RS256\", \"EdDSA\"] }]\n\
             leeway = \"90s\"\ntoken_from = { cookie = \"jwt\" }",
        )
        .unwrap();
        let shown = serde_json::to_value(&c).unwrap();
        assert_eq!(
            shown["providers"][0]["jwks_url"],
            "https://u:<redacted>@idp.example/jwks"
        );
        assert_eq!(
            shown["providers"][0]["algorithms"],
            serde_json::json!(["RS256", "EdDSA"])
        );
        assert_eq!(shown["leeway"], "1m 30s");
        assert_eq!(shown["token_from"], serde_json::json!([{"cookie": "jwt"}]));
        assert!(shown["providers"][0].get("secret").is_none());
        // What is shown reads back as the same config.
        let again: JwtAuthConfig = serde_json::from_value(shown).unwrap();
        assert_eq!(again.leeway, c.leeway);
        assert_eq!(again.token_from, c.token_from);
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        let e = parse(&format!("{ONE_PROVIDER}leway = \"1s\"")).unwrap_err();
        assert!(e.contains("unknown field `leway`"), "{e}");
        let e = parse(&format!("{ONE_PROVIDER}leeway = \"soon\"")).unwrap_err();
        assert!(e.contains("invalid duration `soon`"), "{e}");
        let e = parse("providers = [{ secret_env = \"S\", jwks_uri = \"x\" }]").unwrap_err();
        assert!(e.contains("unknown field `jwks_uri`"), "{e}");
    }
}
