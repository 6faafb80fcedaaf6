//! Verifying a token: choosing its provider by `iss`, its key by `kid` and `alg`, then the
//! signature and the registered claims (`exp`, `nbf`, `iss`, `aud`).

use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use tollgate_plugin_api::RequestContext;

use crate::cache::TokenCache;
use crate::claims::{Claims, Verified};
use crate::errors::{shown, AuthError};
use crate::jwks::{Refetch, RemoteJwks};
use crate::keys::{names, KeyLookup, KeySet};

/// Where a provider's keys come from.
#[derive(Debug)]
pub(crate) enum KeySource {
    /// A secret, a PEM key or a JWKS file: fixed for the life of the config.
    Fixed(Arc<KeySet>),
    /// A JWKS URL.
    Remote(Arc<RemoteJwks>),
}

/// One issuer of accepted tokens.
#[derive(Debug)]
pub(crate) struct Provider {
    /// `None` only for a sole provider that accepts any (or no) `iss`.
    pub issuer: Option<String>,
    pub keys: KeySource,
    /// The provider's accepted algorithms, each with its ready validation rules.
    pub validations: Vec<(Algorithm, Validation)>,
}

impl Provider {
    fn label(&self) -> String {
        self.issuer.clone().unwrap_or_else(|| "(any)".to_owned())
    }

    /// The generation of the key set a cached verification must still match.
    fn generation(&self) -> u64 {
        match &self.keys {
            KeySource::Fixed(set) => set.generation,
            KeySource::Remote(remote) => remote.generation(),
        }
    }

    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }

    /// The key for a token: for a remote set, an unknown `kid` triggers a (rate-limited) refetch.
    async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        ctx: Option<&RequestContext>,
    ) -> Result<(Arc<KeySet>, usize), AuthError> {
        let remote = match &self.keys {
            KeySource::Fixed(set) => {
                return match set.lookup(kid, alg) {
                    KeyLookup::Found(i) => Ok((set.clone(), i)),
                    other => Err(self.lookup_error(other, kid, alg)),
                }
            }
            KeySource::Remote(remote) => remote,
        };
        // At most two rounds: the set as it is, then after one refetch (or another request's).
        let mut set = remote.keys();
        for round in 0..2 {
            match set.lookup(kid, alg) {
                KeyLookup::Found(i) => return Ok((set, i)),
                found @ (KeyLookup::UnknownKid | KeyLookup::Empty) if round == 0 => {
                    match remote.refetch_for_unknown_kid(set.generation, ctx).await {
                        Refetch::LookAgain => set = remote.keys(),
                        Refetch::TooSoon | Refetch::Failed => {
                            return Err(self.lookup_error_remote(found, &remote.keys(), kid, alg))
                        }
                    }
                }
                other => return Err(self.lookup_error_remote(other, &set, kid, alg)),
            }
        }
        Err(self.lookup_error_remote(set.lookup(kid, alg), &set, kid, alg))
    }

    fn lookup_error_remote(
        &self,
        lookup: KeyLookup,
        set: &KeySet,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> AuthError {
        match (&self.keys, set.generation) {
            // Nothing ever loaded: the client is not at fault.
            (KeySource::Remote(remote), 0) => AuthError::KeysUnavailable {
                issuer: self.label(),
                retry_after_secs: remote.retry_after().as_secs(),
            },
            _ => self.lookup_error(lookup, kid, alg),
        }
    }

    fn lookup_error(&self, lookup: KeyLookup, kid: Option<&str>, alg: Algorithm) -> AuthError {
        match lookup {
            KeyLookup::UnknownKid | KeyLookup::Found(_) | KeyLookup::Empty => {
                AuthError::invalid(format!(
                    "the token's key id `{}` is not a key of issuer `{}`",
                    shown(kid.unwrap_or("")),
                    shown(&self.label())
                ))
            }
            KeyLookup::AlgorithmNotAllowed => AuthError::invalid(format!(
                "algorithm {alg:?} is not accepted for this token's key (the key's type decides \
                 the algorithm)"
            )),
            KeyLookup::Ambiguous => AuthError::invalid(
                "the token names no key id (`kid`) and the issuer has several keys",
            ),
        }
    }
}

/// The providers of a route and the limits every token must meet.
#[derive(Debug)]
pub(crate) struct Verifier {
    pub providers: Vec<Provider>,
    pub max_token_size: usize,
    /// Verified tokens (`cache_size`); `None` when caching is off.
    pub cache: Option<TokenCache>,
    /// The claim that becomes the `consumer` var (`consumer_claim`).
    pub consumer_claim: Option<String>,
}

impl Verifier {
    /// Verifies a token and returns its claims.
    /// `ctx` is the request's, so a JWKS fetch it causes shows in the request's trace.
    pub async fn verify(
        &self,
        token: &str,
        ctx: Option<&RequestContext>,
    ) -> Result<Arc<Verified>, AuthError> {
        if token.len() > self.max_token_size {
            return Err(AuthError::invalid(format!(
                "the token is larger than {} bytes",
                self.max_token_size
            )));
        }
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(token, now) {
                let current = self.providers.get(hit.provider).map(Provider::generation);
                if current == Some(hit.generation) {
                    return Ok(hit.claims);
                }
                cache.remove(token);
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
        let (provider_index, provider) = self.provider_for(token)?;
        let alg = header.alg;
        let Some(validation) = provider.validation(alg) else {
            let accepted: Vec<Algorithm> = provider.validations.iter().map(|(a, _)| *a).collect();
            return Err(AuthError::invalid(format!(
                "algorithm {alg:?} is not accepted for issuer `{}` (accepted: {})",
                shown(&provider.label()),
                names(&accepted)
            )));
        };
        let (set, index) = provider.key_for(header.kid.as_deref(), alg, ctx).await?;
        let key = &set.keys[index].key;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map(|data| Arc::new(Verified::new(data.claims, self.consumer_claim.as_deref())))
            .map_err(|e| claims_error(e.kind()))?;
        if let Some(cache) = &self.cache {
            cache.insert(token, claims.clone(), provider_index, set.generation, now);
        }
        Ok(claims)
    }

    /// The provider of a token, by its `iss` when there is a choice.
    fn provider_for(&self, token: &str) -> Result<(usize, &Provider), AuthError> {
        if let [only] = self.providers.as_slice() {
            // Its validation rules check `iss` (when it has an issuer) after the signature.
            return Ok((0, only));
        }
        #[derive(serde::Deserialize, schemars::JsonSchema)]
        struct Issuer {
            iss: Option<serde_json::Value>,
        }
        // Unverified, only to choose the key: the chosen provider's validation checks `iss`
        // again once the signature holds.
        let peek: Issuer = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| AuthError::invalid("the token's payload is not base64url JSON"))?;
        let iss = match peek.iss {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => {
                return Err(AuthError::invalid(
                    "the token's `iss` claim is not a string",
                ))
            }
            None => return Err(AuthError::invalid("the token has no `iss` claim")),
        };
        self.providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.issuer.as_deref() == Some(iss.as_str()))
            .ok_or_else(|| {
                AuthError::invalid(format!(
                    "tokens of issuer `{}` are not accepted here",
                    shown(&iss)
                ))
            })
    }

    /// The remote key sets, for `prepare` and `background`.
    pub fn remote_sets(&self) -> impl Iterator<Item = &Arc<RemoteJwks>> {
        self.providers.iter().filter_map(|p| match &p.keys {
            KeySource::Remote(r) => Some(r),
            KeySource::Fixed(_) => None,
        })
    }
}

/// Why the header of a token did not decode, as precisely as can be told without trusting it.
fn header_error(token: &str) -> AuthError {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return AuthError::invalid("the token is not a JWT (three base64url parts joined by dots)");
    };
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok());
    let alg = header
        .as_ref()
        .and_then(|h| h.get("alg"))
        .and_then(serde_json::Value::as_str);
    match alg {
        Some(alg) if alg.eq_ignore_ascii_case("none") => {
            AuthError::invalid("unsigned tokens (alg `none`) are never accepted")
        }
        // A known algorithm: something else in the header is wrong (e.g. a `kid` that is not a
        // string).
        Some(alg) if alg.parse::<Algorithm>().is_ok() => {
            AuthError::invalid("the token's header is malformed")
        }
        Some(alg) => AuthError::invalid(format!(
            "the token's algorithm `{}` is not supported",
            shown(alg)
        )),
        None => AuthError::invalid("the token's header is malformed"),
    }
}

/// The message for a failed signature or claim check.
fn claims_error(kind: &ErrorKind) -> AuthError {
    AuthError::Invalid(match kind {
        ErrorKind::InvalidSignature => "the token's signature is not valid".to_owned(),
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => {
            "the token is not valid yet (`nbf` is in the future)".to_owned()
        }
        ErrorKind::InvalidIssuer => "the token's issuer (`iss`) is not accepted here".to_owned(),
        ErrorKind::InvalidAudience => {
            "the token's audience (`aud`) is not accepted here".to_owned()
        }
        ErrorKind::MissingRequiredClaim(c) => {
            format!("the token has no valid `{}` claim", shown(c))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            format!("the token's `{}` claim is malformed", shown(c))
        }
        ErrorKind::InvalidAlgorithm => {
            "the token's algorithm is not accepted for its key".to_owned()
        }
        ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidToken => "the token is malformed".to_owned(),
        _ => "the token could not be verified".to_owned(),
    })
}

/// The validation rules of one algorithm of a provider.
pub(crate) fn validation(
    alg: Algorithm,
    issuer: Option<&str>,
    audiences: &[String],
    leeway_secs: u64,
    require_exp: bool,
) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.required_spec_claims.clear();
    if require_exp {
        v.required_spec_claims.insert("exp".to_owned());
    }
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".to_owned());
    }
    if audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(audiences);
        v.required_spec_claims.insert("aud".to_owned());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::secret_key;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs_provider(issuer: Option<&str>, audiences: &[String]) -> Provider {
        let key = secret_key(SECRET, false, &[Algorithm::HS256], "t").unwrap();
        Provider {
            issuer: issuer.map(str::to_owned),
            keys: KeySource::Fixed(Arc::new(KeySet::single(key))),
            validations: vec![(
                Algorithm::HS256,
                validation(Algorithm::HS256, issuer, audiences, 60, true),
            )],
        }
    }

    fn verifier(providers: Vec<Provider>) -> Verifier {
        Verifier {
            providers,
            max_token_size: 8192,
            cache: None,
            consumer_claim: None,
        }
    }

    fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    async fn err(v: &Verifier, token: &str) -> String {
        match v.verify(token, None).await.unwrap_err() {
            AuthError::Invalid(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_valid_token_yields_its_claims() {
        let v = verifier(vec![hs_provider(Some("me"), &[])]);
        let claims = v
            .verify(
                &hs256(json!({"iss": "me", "sub": "u1", "exp": now() + 60})),
                None,
            )
            .await
            .unwrap();
        assert_eq!(claims["sub"], "u1");
    }

    #[tokio::test]
    async fn time_claims_are_checked_with_leeway() {
        let v = verifier(vec![hs_provider(None, &[])]);
        assert!(
            v.verify(&hs256(json!({"exp": now() - 30})), None)
                .await
                .is_ok(),
            "within leeway"
        );
        let e = err(&v, &hs256(json!({"exp": now() - 120}))).await;
        assert!(e.contains("expired"), "{e}");
        let e = err(&v, &hs256(json!({"exp": now() + 600, "nbf": now() + 300}))).await;
        assert!(e.contains("not valid yet"), "{e}");
        let e = err(&v, &hs256(json!({"sub": "no exp"}))).await;
        assert!(e.contains("no valid `exp` claim"), "{e}");
        let e = err(&v, &hs256(json!({"exp": "tomorrow"}))).await;
        assert!(e.contains("no valid `exp` claim"), "{e}");
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked() {
        let aud = vec!["api".to_owned(), "web".to_owned()];
        let v = verifier(vec![hs_provider(Some("me"), &aud)]);
        let ok = hs256(json!({"iss": "me", "aud": ["other", "web"], "exp": now() + 60}));
        assert!(v.verify(&ok, None).await.is_ok());
        let e = err(
            &v,
            &hs256(json!({"iss": "you", "aud": "api", "exp": now() + 60})),
        )
        .await;
        assert!(e.contains("issuer"), "{e}");
        let e = err(
            &v,
            &hs256(json!({"iss": "me", "aud": "nope", "exp": now() + 60})),
        )
        .await;
        assert!(e.contains("audience"), "{e}");
        let e = err(&v, &hs256(json!({"iss": "me", "exp": now() + 60}))).await;
        assert!(e.contains("no valid `aud` claim"), "{e}");
    }

    #[tokio::test]
    async fn providers_are_chosen_by_iss() {
        let v = verifier(vec![
            hs_provider(Some("a"), &[]),
            hs_provider(Some("b"), &[]),
        ]);
        assert!(v
            .verify(&hs256(json!({"iss": "b", "exp": now() + 60})), None)
            .await
            .is_ok());
        let e = err(&v, &hs256(json!({"iss": "c", "exp": now() + 60}))).await;
        assert!(e.contains("issuer `c` are not accepted"), "{e}");
        let e = err(&v, &hs256(json!({"exp": now() + 60}))).await;
        assert!(e.contains("no `iss`"), "{e}");
        let e = err(&v, &hs256(json!({"iss": ["a"], "exp": now() + 60}))).await;
        assert!(e.contains("not a string"), "{e}");
    }

    #[tokio::test]
    async fn alg_none_and_foreign_algorithms_are_refused() {
        let v = verifier(vec![hs_provider(None, &[])]);
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"exp":9999999999}"#)
        );
        assert!(err(&v, &none).await.contains("alg `none`"));
        let none_upper = format!("{}.{}.", b64(r#"{"alg":"NONE"}"#), b64("{}"));
        assert!(err(&v, &none_upper).await.contains("alg `none`"));
        let es512 = format!("{}.{}.sig", b64(r#"{"alg":"ES512"}"#), b64("{}"));
        assert!(err(&v, &es512).await.contains("`ES512` is not supported"));
        let bad_kid = format!("{}.{}.sig", b64(r#"{"alg":"HS256","kid":5}"#), b64("{}"));
        assert!(err(&v, &bad_kid).await.contains("header is malformed"));
        let rs = format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64("{}"));
        let e = err(&v, &rs).await;
        assert!(e.contains("RS256 is not accepted"), "{e}");
    }

    #[tokio::test]
    async fn tampered_oversize_and_garbage_tokens_are_invalid() {
        let v = verifier(vec![hs_provider(None, &[])]);
        let token = hs256(json!({"sub": "u1", "exp": now() + 60}));
        let (head, sig) = token.rsplit_once('.').unwrap();
        let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"sub": "admin", "exp": now() + 60}).to_string());
        let (h, _) = head.split_once('.').unwrap();
        let e = err(&v, &format!("{h}.{forged_payload}.{sig}")).await;
        assert!(e.contains("signature"), "{e}");
        let big = hs256(json!({"pad": "x".repeat(9000), "exp": now() + 60}));
        assert!(err(&v, &big).await.contains("larger than 8192 bytes"));
        for garbage in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "Bearer",
            "é.é.é",
            "%%%.%%%.%%%",
        ] {
            assert!(
                matches!(v.verify(garbage, None).await, Err(AuthError::Invalid(_))),
                "{garbage}"
            );
        }
    }

    #[tokio::test]
    async fn random_bytes_never_panic() {
        let v = verifier(vec![
            hs_provider(Some("a"), &[]),
            hs_provider(Some("b"), &[]),
        ]);
        let alphabet: Vec<char> = "ABCxyz0189-_.=+/{}\":,eyJhbGciOiJ ".chars().collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..3000 {
            let len = rng.usize(0..120);
            let s: String = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            assert!(v.verify(&s, None).await.is_err());
        }
        // Well-formed parts with hostile contents.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for (h, p) in [
            (r#"{"alg":"HS256"}"#, "[]"),
            (r#"{"alg":"HS256","crit":["x"]}"#, r#"{"iss":"a"}"#),
            (r#"{"alg":"HS256","kid":5}"#, r#"{"iss":"a"}"#),
            (
                r#"{"alg":"HS256"}"#,
                &format!("{}{}", "[".repeat(500), "]".repeat(500)),
            ),
            (r#"{"alg":"HS256"}"#, r#"{"iss":"a","exp":-1,"nbf":1e400}"#),
        ] {
            let token = format!("{}.{}.c2ln", b64(h), b64(p));
            assert!(v.verify(&token, None).await.is_err(), "{h} {p}");
        }
    }
}
