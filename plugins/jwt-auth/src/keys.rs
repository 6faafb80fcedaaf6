//! Verification keys: loading them (HMAC secrets, PEM public keys, JWKs), pinning each to the
//! algorithms its type allows, and choosing the key for a token.
//!
//! The key's type decides the algorithm family. A token's `alg` is only ever checked against the
//! algorithms of the key it names, so an HS256 token can never be verified with an RSA public key
//! used as an HMAC secret (algorithm confusion).

use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

/// Most keys kept from one JWKS; real sets hold a handful, and each key costs a lookup.
pub(crate) const MAX_JWKS_KEYS: usize = 100;

/// Shortest RSA modulus accepted (RFC 7518 §3.3: 2048 bits or larger MUST be used).
const MIN_RSA_BITS: usize = 2048;

/// One key and the algorithms it may verify.
pub(crate) struct VerifyKey {
    /// The JWK `kid`; keys from a secret or a PEM file have none.
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// Non-empty; all of `key`'s family.
    pub algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("family", &self.key.family())
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// The keys of a provider at one moment. Immutable; a refreshed JWKS is a new set.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    pub keys: Vec<VerifyKey>,
    /// Counts the sets a remote provider has loaded; 0 for "never loaded".
    pub generation: u64,
    /// A static secret or PEM key: the token's `kid` is not consulted.
    pub ignore_kid: bool,
}

/// The outcome of looking a token's key up in a set.
#[derive(Debug)]
pub(crate) enum KeyLookup {
    /// Index of the key to verify with.
    Found(usize),
    /// No key has the token's `kid` (a remote set may need refetching).
    UnknownKid,
    /// A key fits, but not for the token's algorithm.
    AlgorithmNotAllowed,
    /// The token names no `kid` and more than one key could verify it.
    Ambiguous,
    /// The set has no key at all (a remote set that never loaded).
    Empty,
}

impl KeySet {
    /// A set of one key whose `kid` does not matter.
    pub fn single(key: VerifyKey) -> Self {
        Self {
            keys: vec![key],
            generation: 1,
            ignore_kid: true,
        }
    }

    /// Finds the key for a token's `kid` and `alg`.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup {
        if self.keys.is_empty() {
            return KeyLookup::Empty;
        }
        let fits = |k: &VerifyKey| k.algorithms.contains(&alg);
        if self.ignore_kid {
            return match self.keys.iter().position(fits) {
                Some(i) => KeyLookup::Found(i),
                None => KeyLookup::AlgorithmNotAllowed,
            };
        }
        match kid {
            Some(kid) => match self.keys.iter().position(|k| k.kid.as_deref() == Some(kid)) {
                None => KeyLookup::UnknownKid,
                Some(i) if fits(&self.keys[i]) => KeyLookup::Found(i),
                Some(_) => KeyLookup::AlgorithmNotAllowed,
            },
            // Without a `kid` only an unambiguous key is used: trying several would cost one
            // signature check per key for every forged token.
            None => {
                let mut fitting = self.keys.iter().enumerate().filter(|(_, k)| fits(k));
                match (fitting.next(), fitting.next()) {
                    (Some((i, _)), None) => KeyLookup::Found(i),
                    (Some(_), Some(_)) => KeyLookup::Ambiguous,
                    (None, _) => KeyLookup::AlgorithmNotAllowed,
                }
            }
        }
    }
}

/// The allowed algorithms of a key of `family`, narrowed to the provider's list.
fn pin(family_algs: &[Algorithm], allowed: &[Algorithm]) -> Vec<Algorithm> {
    family_algs
        .iter()
        .copied()
        .filter(|a| allowed.contains(a))
        .collect()
}

fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HMAC secret",
        AlgorithmFamily::Rsa => "RSA key",
        AlgorithmFamily::Ec => "EC key",
        AlgorithmFamily::Ed => "Ed25519 key",
    }
}

/// Shortest secret for an HMAC algorithm (RFC 7518 §3.2: at least the hash's size).
fn min_secret_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

/// Turns the bytes of a secret into an HMAC key for `algorithms` (all of the HMAC family).
pub(crate) fn secret_key(
    raw: &[u8],
    base64: bool,
    algorithms: &[Algorithm],
    origin: &str,
) -> Result<VerifyKey, String> {
    // A secret written with `echo` or an editor ends in a newline that nobody means as key material.
    let trimmed = raw.trim_ascii_end();
    let secret = if base64 {
        let text = std::str::from_utf8(trimmed)
            .map_err(|_| format!("{origin}: the secret is not base64 text"))?;
        decode_base64(text.trim()).ok_or_else(|| {
            format!("{origin}: the secret is not valid base64 (standard or URL-safe alphabet)")
        })?
    } else {
        trimmed.to_vec()
    };
    if secret.is_empty() {
        return Err(format!("{origin}: the secret is empty"));
    }
    for &alg in algorithms {
        let need = min_secret_len(alg);
        if secret.len() < need {
            return Err(format!(
                "{origin}: the secret has {} bytes; {alg:?} needs at least {need} (RFC 7518 \
                 §3.2); generate one with e.g. `openssl rand -base64 {need}` and set \
                 secret_base64 = true",
                secret.len()
            ));
        }
    }
    let key = DecodingKey::from_secret(&secret)
        .map_err(|e| format!("{origin}: the secret cannot be used: {e}"))?;
    Ok(VerifyKey {
        kid: None,
        key,
        algorithms: algorithms.to_vec(),
    })
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// Reads a PEM public key (SPKI `PUBLIC KEY` of RSA, EC P-256/P-384 or Ed25519, or PKCS#1 `RSA
/// PUBLIC KEY`) and pins it to the algorithms of its type among `allowed` (`None`: all of them).
pub(crate) fn pem_public_key(
    pem: &[u8],
    allowed: Option<&[Algorithm]>,
    origin: &str,
) -> Result<VerifyKey, String> {
    let text = String::from_utf8_lossy(pem);
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| format!("{origin}: not a PEM file (no `-----BEGIN ...-----` line)"))?;
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        l if l.contains("PRIVATE") => {
            return Err(format!(
                "{origin}: this is a private key; configure the public key only (e.g. `openssl \
                 pkey -in key.pem -pubout`)"
            ))
        }
        "CERTIFICATE" => {
            return Err(format!(
                "{origin}: this is a certificate; extract its public key (e.g. `openssl x509 \
                 -in cert.pem -pubkey -noout`)"
            ))
        }
        other => {
            return Err(format!(
                "{origin}: unexpected PEM block `{other}`; expected `PUBLIC KEY`"
            ))
        }
    }
    let decoded = DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|_| {
            format!("{origin}: not a valid RSA, EC (P-256, P-384) or Ed25519 public key")
        })?;
    // The JWK form names the curve and exposes the RSA modulus, and building it parses the key,
    // so a broken key fails here rather than on every request.
    let jwk = Jwk::from_decoding_key(&decoded, None)
        .map_err(|_| format!("{origin}: the public key cannot be read (unsupported curve?)"))?;
    let algorithms = key_algorithms(&jwk).map_err(|e| format!("{origin}: {e}"))?;
    check_key(&decoded, &jwk).map_err(|e| format!("{origin}: {e}"))?;
    let family = decoded.family();
    let pinned = match allowed {
        None => algorithms.clone(),
        Some(allowed) => {
            if let Some(bad) = allowed.iter().find(|a| !algorithms.contains(a)) {
                return Err(format!(
                    "{origin}: algorithm {bad:?} cannot be used with this {} (it allows {}); \
                     the key's type decides the algorithm family",
                    family_name(family),
                    names(&algorithms)
                ));
            }
            pin(&algorithms, allowed)
        }
    };
    Ok(VerifyKey {
        kid: None,
        key: decoded,
        algorithms: pinned,
    })
}

/// `"RS256, RS384"`
pub(crate) fn names(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The algorithms a public key can verify, by its type and curve.
fn key_algorithms(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Ok(AlgorithmFamily::Rsa.algorithms().to_vec()),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Ok(vec![Algorithm::ES256]),
            EllipticCurve::P384 => Ok(vec![Algorithm::ES384]),
            _ => Err("EC keys must be on curve P-256 or P-384".to_owned()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Ok(vec![Algorithm::EdDSA]),
            _ => Err("OKP keys must be on curve Ed25519".to_owned()),
        },
        AlgorithmParameters::OctetKey(_) => Err(
            "symmetric (`oct`) keys are not taken from a JWKS; configure the secret with \
             secret_env or secret_file"
                .to_owned(),
        ),
        _ => Err("unsupported key type (expected RSA, EC or OKP)".to_owned()),
    }
}

/// Rejects keys that would fail (or be weak) on every request.
fn check_key(key: &DecodingKey, jwk: &Jwk) -> Result<(), String> {
    match (&jwk.algorithm, key.kind()) {
        (AlgorithmParameters::RSA(p), _) => {
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.n.trim_end_matches('='))
                .map_err(|_| "the RSA modulus `n` is not base64url".to_owned())?;
            let bits = n.iter().position(|&b| b != 0).map_or(0, |first| {
                (n.len() - first) * 8 - n[first].leading_zeros() as usize
            });
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
                ));
            }
            Ok(())
        }
        (_, DecodingKeyKind::SecretOrDer(point)) => {
            // Parsing the point the way every verification will: a key that is not on its curve
            // would fail every token, so it is refused up front.
            use aws_lc_rs::signature as sig;
            let alg: &'static dyn sig::VerificationAlgorithm = match key.family() {
                AlgorithmFamily::Ed => &sig::ED25519,
                _ => match key_algorithms(jwk)?.first() {
                    Some(Algorithm::ES384) => &sig::ECDSA_P384_SHA384_FIXED,
                    _ => &sig::ECDSA_P256_SHA256_FIXED,
                },
            };
            sig::ParsedPublicKey::new(alg, point)
                .map(|_| ())
                .map_err(|_| "the public key is not a valid point of its curve".to_owned())
        }
        _ => Ok(()),
    }
}

/// Why a JWK was left out of a set.
pub(crate) type Skipped = String;

/// Turns one JWK (as JSON) into a key pinned to `allowed`, or says why it is skipped.
pub(crate) fn jwk_key(
    value: &serde_json::Value,
    allowed: &[Algorithm],
) -> Result<VerifyKey, Skipped> {
    let kid_hint = value
        .get("kid")
        .and_then(|k| k.as_str())
        .map(|k| format!("key `{}`", crate::errors::shown(k)))
        .unwrap_or_else(|| "a key without `kid`".to_owned());
    let fail = |why: String| format!("{kid_hint}: {why}");
    let jwk: Jwk = serde_json::from_value(value.clone())
        .map_err(|e| fail(format!("not a valid JWK ({e})")))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err(fail("its `use` is not `sig`".to_owned())),
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err(fail("its `key_ops` do not include `verify`".to_owned()));
        }
    }
    let mut algorithms = key_algorithms(&jwk).map_err(fail)?;
    if let Some(declared) = jwk.common.key_algorithm {
        let alg = Algorithm::try_from(declared)
            .map_err(|_| fail(format!("its `alg` {declared} is not a signature algorithm")))?;
        if !algorithms.contains(&alg) {
            return Err(fail(format!("its `alg` {alg:?} does not fit its key type")));
        }
        algorithms = vec![alg];
    }
    let algorithms = pin(&algorithms, allowed);
    if algorithms.is_empty() {
        return Err(fail(format!(
            "none of the provider's algorithms ({}) fits it",
            names(allowed)
        )));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| fail(format!("unusable ({e})")))?;
    check_key(&key, &jwk).map_err(fail)?;
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}

/// Parses a JWKS document into keys pinned to `allowed`; unusable keys are skipped and reported.
pub(crate) fn parse_jwks(
    body: &[u8],
    allowed: &[Algorithm],
) -> Result<(Vec<VerifyKey>, Vec<Skipped>), String> {
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWKS (expected {{\"keys\": [...]}}): {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for value in &doc.keys {
        match jwk_key(value, allowed) {
            Ok(k) if keys.len() < MAX_JWKS_KEYS => keys.push(k),
            Ok(_) => skipped.push(format!(
                "more than {MAX_JWKS_KEYS} keys; the rest are ignored"
            )),
            Err(why) => skipped.push(why),
        }
    }
    if keys.is_empty() {
        let why = if skipped.is_empty() {
            "the set is empty".to_owned()
        } else {
            skipped.join("; ")
        };
        return Err(format!("no usable signature key: {why}"));
    }
    Ok((keys, skipped))
}

/// Reads a file named in the config, with a message naming the key it came from.
pub(crate) fn read_config_file(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read `{key}` {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/jwt")
            .join(name);
        std::fs::read(path).unwrap()
    }

    fn jwk_json(pem: &str, kid: &str) -> serde_json::Value {
        let key = pem_public_key(&fixture(pem), None, "t").unwrap();
        let mut jwk = Jwk::from_decoding_key(&key.key, None).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        serde_json::to_value(jwk).unwrap()
    }

    #[test]
    fn pem_keys_are_pinned_to_their_family() {
        let rsa = pem_public_key(&fixture("rsa1.pub.pem"), None, "t").unwrap();
        assert_eq!(rsa.algorithms, AlgorithmFamily::Rsa.algorithms());
        let ec = pem_public_key(&fixture("ec256.pub.pem"), None, "t").unwrap();
        assert_eq!(ec.algorithms, [Algorithm::ES256]);
        let ec = pem_public_key(&fixture("ec384.pub.pem"), None, "t").unwrap();
        assert_eq!(ec.algorithms, [Algorithm::ES384]);
        let ed = pem_public_key(&fixture("ed25519.pub.pem"), None, "t").unwrap();
        assert_eq!(ed.algorithms, [Algorithm::EdDSA]);
        let narrowed =
            pem_public_key(&fixture("rsa1.pub.pem"), Some(&[Algorithm::PS256]), "t").unwrap();
        assert_eq!(narrowed.algorithms, [Algorithm::PS256]);
    }

    #[test]
    fn an_hmac_algorithm_for_a_public_key_is_a_config_error() {
        let e = pem_public_key(&fixture("rsa1.pub.pem"), Some(&[Algorithm::HS256]), "k.pem")
            .unwrap_err();
        assert!(e.contains("HS256 cannot be used with this RSA key"), "{e}");
        let e = pem_public_key(
            &fixture("ec256.pub.pem"),
            Some(&[Algorithm::ES384]),
            "k.pem",
        )
        .unwrap_err();
        assert!(e.contains("ES384 cannot be used with this EC key"), "{e}");
    }

    #[test]
    fn private_keys_certificates_and_garbage_are_refused() {
        let e = pem_public_key(&fixture("rsa1.key.pem"), None, "k.pem").unwrap_err();
        assert!(e.contains("private key"), "{e}");
        let e = pem_public_key(b"hello", None, "k.pem").unwrap_err();
        assert!(e.contains("not a PEM file"), "{e}");
        let e = pem_public_key(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            None,
            "k.pem",
        )
        .unwrap_err();
        assert!(e.contains("not a valid RSA, EC"), "{e}");
        let e = pem_public_key(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            None,
            "k.pem",
        )
        .unwrap_err();
        assert!(e.contains("certificate"), "{e}");
    }

    #[test]
    fn secrets_must_be_long_enough_for_their_algorithm() {
        let e = secret_key(b"short\n", false, &[Algorithm::HS256], "env S").unwrap_err();
        assert!(e.contains("5 bytes") && e.contains("at least 32"), "{e}");
        let k = secret_key(&[b'x'; 32], false, &[Algorithm::HS256], "env S").unwrap();
        assert_eq!(k.algorithms, [Algorithm::HS256]);
        assert!(secret_key(&[b'x'; 32], false, &[Algorithm::HS512], "env S").is_err());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 48]);
        let k = secret_key(b64.as_bytes(), true, &[Algorithm::HS384], "f").unwrap();
        assert_eq!(k.algorithms, [Algorithm::HS384]);
        assert!(secret_key(b"%%%not base64%%%", true, &[Algorithm::HS256], "f").is_err());
        assert!(secret_key(b"\n", false, &[Algorithm::HS256], "f")
            .unwrap_err()
            .contains("empty"));
    }

    #[test]
    fn jwks_keys_are_pinned_and_unusable_ones_skipped() {
        let all = [
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
            Algorithm::HS256,
        ];
        let mut enc = jwk_json("rsa2.pub.pem", "enc");
        enc["use"] = "enc".into();
        let doc = serde_json::json!({"keys": [
            jwk_json("rsa1.pub.pem", "r1"),
            jwk_json("ec256.pub.pem", "e1"),
            jwk_json("ed25519.pub.pem", "d1"),
            enc,
            {"kty": "oct", "kid": "s", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "weird", "kid": "w"},
        ]});
        let (keys, skipped) = parse_jwks(doc.to_string().as_bytes(), &all).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["r1", "e1", "d1"]);
        assert_eq!(keys[0].algorithms, [Algorithm::RS256]);
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(skipped.iter().any(|s| s.contains("`oct`")), "{skipped:?}");
    }

    #[test]
    fn a_jwk_alg_narrows_the_key_and_must_fit_its_type() {
        let all = AlgorithmFamily::Rsa.algorithms();
        let mut v = jwk_json("rsa1.pub.pem", "r1");
        v["alg"] = "PS256".into();
        assert_eq!(jwk_key(&v, all).unwrap().algorithms, [Algorithm::PS256]);
        v["alg"] = "HS256".into();
        assert!(jwk_key(&v, all).unwrap_err().contains("does not fit"));
        v["alg"] = "RSA-OAEP".into();
        assert!(jwk_key(&v, all)
            .unwrap_err()
            .contains("not a signature algorithm"));
    }

    #[test]
    fn broken_jwks_documents_are_errors() {
        assert!(parse_jwks(b"{", &[Algorithm::RS256])
            .unwrap_err()
            .contains("not a JWKS"));
        assert!(parse_jwks(b"{\"keys\": []}", &[Algorithm::RS256])
            .unwrap_err()
            .contains("empty"));
        let weak =
            serde_json::json!({"keys": [{"kty": "RSA", "kid": "w", "n": "AQAB", "e": "AQAB"}]});
        let e = parse_jwks(weak.to_string().as_bytes(), &[Algorithm::RS256]).unwrap_err();
        assert!(e.contains("bits"), "{e}");
        let bad_point = serde_json::json!({"keys": [{"kty": "EC", "kid": "p", "crv": "P-256",
            "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "y": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]});
        let e = parse_jwks(bad_point.to_string().as_bytes(), &[Algorithm::ES256]).unwrap_err();
        assert!(e.contains("not a valid point"), "{e}");
    }

    #[test]
    fn lookup_uses_kid_and_alg_and_refuses_to_guess() {
        let all = [Algorithm::RS256, Algorithm::ES256];
        let doc = serde_json::json!({"keys": [
            jwk_json("rsa1.pub.pem", "r1"), jwk_json("ec256.pub.pem", "e1")]});
        let (keys, _) = parse_jwks(doc.to_string().as_bytes(), &all).unwrap();
        let set = KeySet {
            keys,
            generation: 1,
            ignore_kid: false,
        };
        assert!(matches!(
            set.lookup(Some("r1"), Algorithm::RS256),
            KeyLookup::Found(0)
        ));
        assert!(matches!(
            set.lookup(Some("e1"), Algorithm::ES256),
            KeyLookup::Found(1)
        ));
        assert!(matches!(
            set.lookup(Some("r1"), Algorithm::HS256),
            KeyLookup::AlgorithmNotAllowed
        ));
        assert!(matches!(
            set.lookup(Some("zz"), Algorithm::RS256),
            KeyLookup::UnknownKid
        ));
        assert!(matches!(
            set.lookup(None, Algorithm::ES256),
            KeyLookup::Found(1)
        ));
        assert!(matches!(
            KeySet::default().lookup(None, Algorithm::ES256),
            KeyLookup::Empty
        ));
        let doc = serde_json::json!({"keys": [
            jwk_json("rsa1.pub.pem", "r1"), jwk_json("rsa2.pub.pem", "r2")]});
        let (keys, _) = parse_jwks(doc.to_string().as_bytes(), &all).unwrap();
        let two_rsa = KeySet {
            keys,
            generation: 1,
            ignore_kid: false,
        };
        assert!(matches!(
            two_rsa.lookup(None, Algorithm::RS256),
            KeyLookup::Ambiguous
        ));
    }

    #[test]
    fn a_static_key_ignores_the_kid_but_not_the_algorithm() {
        let set = KeySet::single(pem_public_key(&fixture("rsa1.pub.pem"), None, "t").unwrap());
        assert!(matches!(
            set.lookup(Some("any"), Algorithm::RS256),
            KeyLookup::Found(0)
        ));
        assert!(matches!(
            set.lookup(None, Algorithm::HS256),
            KeyLookup::AlgorithmNotAllowed
        ));
    }
}
