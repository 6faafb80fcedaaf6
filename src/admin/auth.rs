//! The admin API's bearer token check: `Authorization: Bearer <token>` (RFC 6750 §2.1), with
//! the scheme matched in any letter case as RFC 9110 §11.1 says schemes are.

use http::HeaderValue;
use sha2::{Digest, Sha256};
use tollgate_plugin_api::Secret;

/// Whether an `Authorization` value carries the configured token under the `Bearer` scheme
/// (any case, then one or more spaces or tabs).
///
/// The tokens are compared as SHA-256 digests: both digests have the same length whatever the
/// tokens' lengths, and a difference in a digest says nothing about where the tokens differ, so
/// the time taken reveals neither the token's length nor a matching prefix. The digests are
/// still compared without an early exit.
pub(super) fn bearer_matches(authorization: Option<&HeaderValue>, token: &Secret<String>) -> bool {
    let Some(presented) = authorization.and_then(|v| bearer_token(v.as_bytes())) else {
        return false;
    };
    let presented = Sha256::digest(presented);
    let expected = Sha256::digest(token.expose().as_bytes());
    presented
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The token of a `Bearer` credential, or `None` for another scheme or an empty token.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || !matches!(rest.first(), Some(b' ' | b'\t')) {
        return None;
    }
    let is_blank = |b: &u8| matches!(b, b' ' | b'\t');
    let start = rest.iter().position(|b| !is_blank(b))?;
    let end = rest.iter().rposition(|b| !is_blank(b))?;
    Some(&rest[start..=end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(header: &str) -> bool {
        let token = Secret::new("s3cret-token".to_string());
        bearer_matches(Some(&HeaderValue::from_str(header).unwrap()), &token)
    }

    #[test]
    fn the_scheme_is_matched_in_any_case() {
        for h in [
            "Bearer s3cret-token",
            "bearer s3cret-token",
            "BEARER s3cret-token",
            "bEaReR s3cret-token",
        ] {
            assert!(matches(h), "{h}");
        }
    }

    #[test]
    fn spaces_and_tabs_may_separate_scheme_and_token() {
        assert!(matches("Bearer    s3cret-token"));
        assert!(matches("Bearer\ts3cret-token"));
        assert!(matches("Bearer \t s3cret-token "));
        assert!(!matches("Bearers3cret-token"));
    }

    #[test]
    fn a_wrong_token_of_the_same_length_is_refused() {
        assert_eq!("s3cret-tokem".len(), "s3cret-token".len());
        assert!(!matches("Bearer s3cret-tokem"));
        assert!(!matches("Bearer S3CRET-TOKEN"), "tokens are case-sensitive");
    }

    #[test]
    fn a_prefix_or_extension_of_the_token_is_refused() {
        assert!(!matches("Bearer s3cret"));
        assert!(!matches("Bearer s3cret-token2"));
        assert!(!matches("Bearer s3cret-token s3cret-token"));
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_refused() {
        assert!(!matches("Basic s3cret-token"));
        assert!(!matches("s3cret-token"));
        assert!(!matches("Bearer"));
        assert!(!matches("Bearer   "));
        assert!(!bearer_matches(
            None,
            &Secret::new("s3cret-token".to_string())
        ));
    }
}
