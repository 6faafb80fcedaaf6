//! The path a route sends upstream.

use std::borrow::Cow;

use crate::config::{Rewrite, RewritePart};

/// The upstream path for a normalised request path. `prefix_len` is how much of `path` the
/// route's prefix matched; `params` are the template values in template order.
pub fn upstream_path<'a>(
    rewrite: &Rewrite,
    path: &'a str,
    prefix_len: usize,
    params: &[(std::sync::Arc<str>, String)],
) -> Cow<'a, str> {
    match rewrite {
        Rewrite::None => Cow::Borrowed(path),
        Rewrite::Prefix(replacement) => {
            let rest = path.get(prefix_len..).unwrap_or("");
            let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
            out.push_str(replacement);
            if out.ends_with('/') && rest.starts_with('/') {
                out.pop();
            }
            if !out.is_empty() && !out.ends_with('/') && !rest.is_empty() && !rest.starts_with('/')
            {
                out.push('/');
            }
            out.push_str(rest);
            if !out.starts_with('/') {
                out.insert(0, '/');
            }
            Cow::Owned(out)
        }
        Rewrite::Template(parts) => {
            let mut out = String::with_capacity(path.len());
            for part in parts {
                match part {
                    RewritePart::Literal(s) => out.push_str(s),
                    RewritePart::Param(i) => {
                        if let Some((_, v)) = params.get(*i) {
                            out.push_str(v);
                        }
                    }
                }
            }
            Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn prefix(r: &str, path: &str, len: usize) -> String {
        upstream_path(&Rewrite::Prefix(r.into()), path, len, &[]).into_owned()
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        assert_eq!(prefix("", "/api/users/1", 4), "/users/1");
        assert_eq!(prefix("", "/api", 4), "/");
        assert_eq!(prefix("", "/api/", 5), "/");
        assert_eq!(prefix("", "/api/x", 5), "/x");
    }

    #[test]
    fn prefix_rewrite_replaces_the_matched_prefix() {
        assert_eq!(prefix("/v2", "/api/users", 4), "/v2/users");
        assert_eq!(prefix("/v2/", "/api/users", 4), "/v2/users");
        assert_eq!(prefix("/v2", "/api", 4), "/v2");
        assert_eq!(prefix("/", "/api/", 5), "/");
        assert_eq!(prefix("/v2", "/api/x", 5), "/v2/x");
    }

    #[test]
    fn template_rewrite_fills_parameters() {
        let rw = Rewrite::Template(vec![
            RewritePart::Literal("/internal/".into()),
            RewritePart::Param(1),
            RewritePart::Literal("/of/".into()),
            RewritePart::Param(0),
        ]);
        let params = vec![
            (Arc::from("user"), "7".to_string()),
            (Arc::from("post"), "42".to_string()),
        ];
        assert_eq!(
            upstream_path(&rw, "/u/7/p/42", 0, &params),
            "/internal/42/of/7"
        );
    }
}
