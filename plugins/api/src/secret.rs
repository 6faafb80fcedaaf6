//! Config values that must never be shown: [`Secret`] (tokens, keys, passwords, header values)
//! and [`SecretUrl`] (a URL whose credentials are secret and the rest is not).
//!
//! Both read like the value they wrap (serde reads a `Secret<String>` from a plain string), and
//! both write themselves redacted wherever config is shown or logged: `Debug`, `Display` and
//! `Serialize` (the admin `/config` view is serialized from the typed config). The value itself
//! is reached only through an explicit `expose()`, so every use of a secret is visible in review.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a redacted value is shown as.
pub const REDACTED: &str = "<redacted>";

/// A value shown as `<redacted>` by `Debug`, `Display` and `Serialize`.
///
/// `PartialEq` exists to tell whether a config changed; it is not constant-time, so never use it
/// to check a credential a client presents.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself, for the code that must use it (and only there).
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value.
    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

/// A URL whose credentials are secret: the password of its user info (`user:<redacted>@`, or the
/// whole user info when it has no `:`, since services take a token as user name too) and the
/// values of the query parameters the owner names (e.g. Redis' `?pass=`). Everything else is
/// shown, so an operator can still see which server is meant.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    url: String,
    shown: String,
}

impl SecretUrl {
    /// A URL with the password of its user info secret.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_secret_query(url, &[])
    }

    /// A URL with the password of its user info and the values of these query parameters secret.
    pub fn with_secret_query(url: impl Into<String>, params: &[&str]) -> Self {
        let url = url.into();
        let shown = redact_url(&url, params);
        Self { url, shown }
    }

    /// The URL itself, credentials included, for the code that connects with it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL as it may be shown.
    pub fn redacted(&self) -> &str {
        &self.shown
    }

    /// Whether the URL carries user info (`user@` or `user:password@`).
    pub fn has_user_info(&self) -> bool {
        let (_, rest) = split_scheme(&self.url);
        rest[..query_start(rest)].contains('@')
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shown, f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.shown)
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretUrl::new)
    }
}

/// The scheme (when written) and the rest of a URL.
fn split_scheme(url: &str) -> (Option<&str>, &str) {
    match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    }
}

/// Where the query or fragment of `rest` (a URL after `scheme://`) starts.
fn query_start(rest: &str) -> usize {
    rest.find(['?', '#']).unwrap_or(rest.len())
}

/// `url` with the password of its user info and the values of the query parameters `params`
/// replaced by `<redacted>`. Never fails: text that is not a URL is returned with anything
/// before an `@` redacted.
pub fn redact_url(url: &str, params: &[&str]) -> String {
    let (scheme, rest) = split_scheme(url);
    // The user info ends at the last `@` before the query: a password written with a raw `/`
    // (it should be percent-encoded) then still counts as user info, never as a shown path.
    let before_query = query_start(rest);
    let mut out = String::with_capacity(url.len() + REDACTED.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    let after_userinfo = match rest[..before_query].rfind('@') {
        Some(at) => {
            if let Some((user, _)) = rest[..at].split_once(':') {
                out.push_str(user);
                out.push(':');
            }
            out.push_str(REDACTED);
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    let Some(q) = after_userinfo.find('?') else {
        out.push_str(after_userinfo);
        return out;
    };
    out.push_str(&after_userinfo[..=q]);
    let query_and_fragment = &after_userinfo[q + 1..];
    let (query, fragment) = match query_and_fragment.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query_and_fragment, None),
    };
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if params.contains(&name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

// In the file a secret is written as its value.
impl<T: schemars::JsonSchema> schemars::JsonSchema for Secret<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        format!("Secret<{}>", T::schema_id()).into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<T>()
    }
}

impl schemars::JsonSchema for SecretUrl {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretUrl".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Conf {
        token: Secret<String>,
        url: SecretUrl,
    }

    #[test]
    fn a_secret_reads_like_its_value_and_is_written_redacted() {
        let c: Conf =
            toml::from_str("token = \"hunter2\"\nurl = \"redis://app:pa55@cache:6379/0\"").unwrap();
        assert_eq!(c.token.expose(), "hunter2");
        assert_eq!(c.url.expose(), "redis://app:pa55@cache:6379/0");
        for shown in [
            format!("{c:?}"),
            format!("{} {}", c.token, c.url),
            serde_json::to_string(&c).unwrap(),
        ] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("pa55"),
                "{shown}"
            );
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"token": "<redacted>", "url": "redis://app:<redacted>@cache:6379/0"})
        );
    }

    #[test]
    fn only_the_credentials_of_a_url_are_redacted() {
        for (url, shown) in [
            ("redis://cache:6379/0", "redis://cache:6379/0"),
            (
                "redis://user:pw@cache:6379/2",
                "redis://user:<redacted>@cache:6379/2",
            ),
            ("redis://:pw@cache", "redis://:<redacted>@cache"),
            // A bare user name may be a token (https://TOKEN@host): all of it goes.
            (
                "https://tok3n@collector/v1",
                "https://<redacted>@collector/v1",
            ),
            // An unencoded `/` or `@` in the password stays inside what is redacted.
            (
                "redis://u:a/b@c@cache:1/0",
                "redis://u:<redacted>@cache:1/0",
            ),
            (
                "http://c:4318/v1/traces?x=a@b",
                "http://c:4318/v1/traces?x=a@b",
            ),
            ("user:pw@host", "user:<redacted>@host"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url, &[]), shown, "{url}");
        }
    }

    #[test]
    fn named_query_parameters_are_redacted() {
        assert_eq!(
            redact_url(
                "redis+unix:///run/redis.sock?db=1&pass=pw&user=u#x",
                &["pass"]
            ),
            "redis+unix:///run/redis.sock?db=1&pass=<redacted>&user=u#x"
        );
        let url = SecretUrl::with_secret_query("unix:///s?pass=pw", &["pass"]);
        assert_eq!(url.to_string(), "unix:///s?pass=<redacted>");
        assert_eq!(url.expose(), "unix:///s?pass=pw");
    }
}
