//! Why a request was refused, and how that is told to the client: the gateway's JSON error plus
//! an RFC 6750 `WWW-Authenticate: Bearer` challenge.

use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::StatusCode;
use tollgate_plugin_api::PluginError;

/// A refusal of the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No source carried a token: 401 `missing_token`, a challenge without `error` (RFC 6750 §3.1).
    Missing,
    /// The token is malformed, forged, expired or not for this route: 401 `invalid_token`.
    Invalid(String),
    /// The token lacks scopes the route requires: 403 `insufficient_scope`.
    InsufficientScope { missing: Vec<String> },
    /// The token lacks a claim the route requires: 403 `missing_claim`.
    MissingClaim(String),
    /// The issuer's keys could not be loaded yet: 503 `jwks_unavailable`.
    KeysUnavailable {
        issuer: String,
        retry_after_secs: u64,
    },
}

impl AuthError {
    /// Shorthand for `Invalid`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// The error response for this refusal.
    pub fn into_plugin_error(self, realm: &str) -> PluginError {
        match self {
            AuthError::Missing => PluginError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "this route requires a bearer token",
            )
            .with_header(WWW_AUTHENTICATE, challenge(realm, None, None)),
            AuthError::Invalid(message) => {
                let header = challenge(realm, Some(("invalid_token", &message)), None);
                PluginError::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
                    .with_header(WWW_AUTHENTICATE, header)
            }
            AuthError::InsufficientScope { missing } => {
                let message = format!("the token lacks the scope(s) {}", missing.join(" "));
                let scope = missing.join(" ");
                let header = challenge(realm, Some(("insufficient_scope", &message)), Some(&scope));
                PluginError::new(StatusCode::FORBIDDEN, "insufficient_scope", message)
                    .with_header(WWW_AUTHENTICATE, header)
            }
            AuthError::MissingClaim(claim) => {
                let message = format!("the token lacks the required claim `{claim}`");
                // RFC 6750 has no code of its own for this; "insufficient_scope" is its meaning
                // (the token is valid but not enough for this resource).
                let header = challenge(realm, Some(("insufficient_scope", &message)), None);
                PluginError::new(StatusCode::FORBIDDEN, "missing_claim", message)
                    .with_header(WWW_AUTHENTICATE, header)
            }
            AuthError::KeysUnavailable {
                issuer,
                retry_after_secs,
            } => PluginError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "jwks_unavailable",
                format!(
                    "the signing keys of issuer `{issuer}` are not available right now; try again \
                     later"
                ),
            )
            .with_header(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1))),
        }
    }
}

/// `Bearer realm="r", error="e", error_description="d", scope="s"`.
pub(crate) fn challenge(
    realm: &str,
    error: Option<(&str, &str)>,
    scope: Option<&str>,
) -> HeaderValue {
    let mut value = format!("Bearer realm=\"{}\"", quoted(realm, 100));
    if let Some((code, description)) = error {
        value.push_str(&format!(
            ", error=\"{code}\", error_description=\"{}\"",
            quoted(description, 200)
        ));
    }
    if let Some(scope) = scope {
        value.push_str(&format!(", scope=\"{}\"", quoted(scope, 200)));
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// Text safe inside an RFC 6750 quoted-string: printable ASCII without `"` and `\`, cut to `max`
/// characters.
fn quoted(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

/// A value from a token, fit to appear in a message: at most 64 characters, no control characters.
pub(crate) fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn www_authenticate(e: &PluginError) -> String {
        e.headers
            .iter()
            .find(|(n, _)| n == WWW_AUTHENTICATE)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .unwrap()
    }

    #[test]
    fn a_missing_token_gets_a_challenge_without_error() {
        let e = AuthError::Missing.into_plugin_error("api");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.code, "missing_token");
        assert_eq!(www_authenticate(&e), "Bearer realm=\"api\"");
    }

    #[test]
    fn an_invalid_token_names_the_error_and_describes_it() {
        let e = AuthError::invalid("the \"token\" has expired\r\n").into_plugin_error("api");
        assert_eq!(e.code, "invalid_token");
        assert_eq!(
            www_authenticate(&e),
            "Bearer realm=\"api\", error=\"invalid_token\", \
             error_description=\"the 'token' has expired??\""
        );
    }

    #[test]
    fn missing_scopes_are_403_with_the_scopes_named() {
        let e = AuthError::InsufficientScope {
            missing: vec!["orders:write".into(), "admin".into()],
        }
        .into_plugin_error("api");
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.code, "insufficient_scope");
        let h = www_authenticate(&e);
        assert!(h.contains("error=\"insufficient_scope\""), "{h}");
        assert!(h.ends_with("scope=\"orders:write admin\""), "{h}");
        let e = AuthError::MissingClaim("tenant".into()).into_plugin_error("api");
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "missing_claim"));
    }

    #[test]
    fn unavailable_keys_are_503_with_retry_after() {
        let e = AuthError::KeysUnavailable {
            issuer: "https://idp".into(),
            retry_after_secs: 0,
        }
        .into_plugin_error("api");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.headers.iter().any(|(n, v)| n == RETRY_AFTER && v == "1"));
    }

    #[test]
    fn shown_cuts_and_cleans_token_values() {
        assert_eq!(shown("a\nb"), "a?b");
        assert_eq!(shown(&"x".repeat(70)).chars().count(), 65);
    }
}
