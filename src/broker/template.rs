//! Filling a publish route's templates (topic, key, exchange, routing key, subject) from the
//! request: path parameters, headers and the values plugins set (`jwt.sub`, `consumer`).

use http::HeaderMap;
use tollgate_plugin_api::RequestContext;

use crate::config::{Template, TemplatePart};

/// A placeholder the request has no value for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{template}` needs {what}, which the request does not have")]
pub struct MissingValue {
    /// The template as written.
    pub template: String,
    /// What was missing: `header `x-tenant``, `jwt.sub`, path parameter `id`.
    pub what: String,
}

/// The template with the request's values; a value that is missing (or not text) is an error,
/// never an empty string that would publish somewhere else.
pub fn render(
    template: &Template,
    ctx: &RequestContext,
    headers: &HeaderMap,
) -> Result<String, MissingValue> {
    let missing = |what: String| MissingValue {
        template: template.source.clone(),
        what,
    };
    let mut out = String::with_capacity(template.source.len() + 16);
    for part in &template.parts {
        match part {
            TemplatePart::Literal(s) => out.push_str(s),
            TemplatePart::Param(i) => match ctx.params.get(*i) {
                Some((_, v)) if !v.is_empty() => out.push_str(v),
                Some((name, _)) => return Err(missing(format!("path parameter `{name}`"))),
                None => return Err(missing(format!("path parameter {i}"))),
            },
            TemplatePart::Header(name) => match headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(v) if !v.is_empty() => out.push_str(v),
                _ => return Err(missing(format!("header `{name}`"))),
            },
            TemplatePart::Var(name) => match ctx.vars.get(name) {
                Some(v) if !v.is_empty() => out.push_str(v),
                _ => return Err(missing(format!("`{name}` (set by a plugin)"))),
            },
        }
    }
    Ok(out)
}

/// Whether any part of the template comes from the request.
pub fn from_request(template: &Template) -> bool {
    template
        .parts
        .iter()
        .any(|p| !matches!(p, TemplatePart::Literal(_)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{HeaderName, HeaderValue};
    use tollgate_plugin_api::Scheme;

    use super::*;

    fn ctx() -> RequestContext {
        let mut c = RequestContext::new("r1".into(), Scheme::Http, Arc::from("r"), Arc::from(""));
        c.params = vec![(Arc::from("id"), "42".to_owned())];
        c.vars.insert("jwt.sub".into(), "alice".into());
        c
    }

    fn template(parts: Vec<TemplatePart>) -> Template {
        Template {
            source: "t".into(),
            parts,
        }
    }

    #[test]
    fn every_kind_of_placeholder_is_filled() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        let t = template(vec![
            TemplatePart::Literal("orders.".into()),
            TemplatePart::Header(HeaderName::from_static("x-tenant")),
            TemplatePart::Literal(".".into()),
            TemplatePart::Param(0),
            TemplatePart::Literal(".".into()),
            TemplatePart::Var("jwt.sub".into()),
        ]);
        assert_eq!(
            render(&t, &ctx(), &headers).as_deref(),
            Ok("orders.acme.42.alice")
        );
        assert!(from_request(&t));
        assert!(!from_request(&template(vec![TemplatePart::Literal(
            "x".into()
        )])));
    }

    #[test]
    fn a_missing_or_empty_value_is_an_error_naming_it() {
        let headers = HeaderMap::new();
        let t = template(vec![TemplatePart::Header(HeaderName::from_static(
            "x-tenant",
        ))]);
        let e = render(&t, &ctx(), &headers).expect_err("no header");
        assert_eq!(
            e.to_string(),
            "`t` needs header `x-tenant`, which the request does not have"
        );
        let t = template(vec![TemplatePart::Var("consumer".into())]);
        assert!(render(&t, &ctx(), &headers).is_err());
        let mut c = ctx();
        c.params[0].1.clear();
        let t = template(vec![TemplatePart::Param(0)]);
        assert!(render(&t, &c, &headers).is_err());
    }
}
