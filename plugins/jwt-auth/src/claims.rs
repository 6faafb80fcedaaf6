//! Reading verified claims: dotted paths into nested objects, the text form a claim takes in a
//! header or a `ctx.vars` entry, and the scopes a token grants.

use serde_json::{Map, Value};
use tollgate_plugin_api::VarSet;

/// The verified payload of a token.
pub(crate) type Claims = Map<String, Value>;

/// A verified token's claims and the `ctx.vars` they become, computed once per verification: a
/// cached token hands the same set to every request that presents it.
#[derive(Debug)]
pub(crate) struct Verified {
    pub claims: Claims,
    /// `jwt.<claim>` for every top-level claim with a text form, and `consumer`.
    pub vars: VarSet,
}

impl Verified {
    pub fn new(claims: Claims, consumer_claim: Option<&str>) -> Self {
        let mut pairs: Vec<(String, String)> = claims
            .iter()
            .filter_map(|(name, value)| Some((format!("jwt.{name}"), to_text(value)?)))
            .collect();
        if let Some(consumer) = consumer_claim
            .and_then(|path| lookup(&claims, path))
            .and_then(to_text)
        {
            pairs.push(("consumer".to_owned(), consumer));
        }
        Self {
            vars: VarSet::new(pairs),
            claims,
        }
    }
}

impl std::ops::Deref for Verified {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.claims
    }
}

/// The claim at `path`: a top-level name, or names joined by dots into nested objects
/// (`realm_access.roles`). A claim whose own name contains dots (`https://example.com/roles`) is
/// found too: at each level the longest name present wins.
pub(crate) fn lookup<'a>(claims: &'a Claims, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    // Longest prefix first, so `a.b.c` prefers a claim named `a.b` over one named `a`.
    let dots: Vec<usize> = path.match_indices('.').map(|(i, _)| i).collect();
    dots.iter().rev().find_map(|&i| {
        let (head, rest) = (&path[..i], &path[i + 1..]);
        match claims.get(head) {
            Some(Value::Object(inner)) => lookup(inner, rest),
            _ => None,
        }
    })
}

/// A claim as text: strings as they are, numbers and booleans as JSON writes them, arrays as
/// their items joined by commas, objects as compact JSON; `null` has no text.
pub(crate) fn to_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) | Value::Object(_) => Some(value.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|item| match item {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

/// Every scope the token grants: from `scope` (RFC 8693: space-separated), `scp` (Azure AD,
/// Okta: a string or an array) and `scopes` (an array or a string).
pub(crate) fn scopes(claims: &Claims) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp", "scopes"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_ascii_whitespace()),
            Some(Value::Array(items)) => {
                out.extend(items.iter().filter_map(Value::as_str));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn dotted_paths_reach_nested_claims() {
        let c = claims(json!({
            "sub": "u1",
            "realm_access": {"roles": ["admin", "user"]},
            "https://example.com/tenant": "acme",
            "a": {"b": {"c": 1}},
            "a.b": {"c": 2}
        }));
        assert_eq!(lookup(&c, "sub"), Some(&json!("u1")));
        assert_eq!(
            lookup(&c, "realm_access.roles"),
            Some(&json!(["admin", "user"]))
        );
        assert_eq!(
            lookup(&c, "https://example.com/tenant"),
            Some(&json!("acme"))
        );
        assert_eq!(lookup(&c, "a.b.c"), Some(&json!(2)), "longest name wins");
        assert_eq!(lookup(&c, "a.x"), None);
        assert_eq!(lookup(&c, "sub.x"), None);
        assert_eq!(lookup(&c, ""), None);
        assert_eq!(lookup(&c, "..."), None);
    }

    #[test]
    fn claims_become_text_by_their_type() {
        assert_eq!(to_text(&json!("x y")), Some("x y".into()));
        assert_eq!(to_text(&json!(42)), Some("42".into()));
        assert_eq!(to_text(&json!(1.5)), Some("1.5".into()));
        assert_eq!(to_text(&json!(true)), Some("true".into()));
        assert_eq!(
            to_text(&json!(["a", 1, false, null])),
            Some("a,1,false".into())
        );
        assert_eq!(to_text(&json!({"k": "v"})), Some("{\"k\":\"v\"}".into()));
        assert_eq!(to_text(&json!(null)), None);
    }

    #[test]
    fn scopes_come_from_scope_scp_and_scopes() {
        let c = claims(json!({"scope": "read  write", "scp": ["admin"], "scopes": "x"}));
        assert_eq!(scopes(&c), ["read", "write", "admin", "x"]);
        let c = claims(json!({"scope": 5, "scp": "a b"}));
        assert_eq!(scopes(&c), ["a", "b"]);
    }
}
