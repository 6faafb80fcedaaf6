//! Filling a publish route's templates (topic, key, exchange, routing key, subject) from the
//! request: path parameters, headers and the values plugins set (`jwt.sub`, `consumer`).

use http::HeaderMap;
use tollgate_plugin_api::RequestContext;

use crate::config::{Template, TemplatePart};

/// A placeholder the request has no usable value for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The request has no value (or an empty one, or one that is not text).
    #[error("`{template}` needs {what}, which the request does not have (or has empty)")]
    Missing {
        /// The template as written.
        template: String,
        /// What was missing: header `x-tenant`, `jwt.sub`, path parameter `id`.
        what: String,
    },
    /// The value cannot be part of this destination (it would change which one is meant).
    #[error("{what} = `{value}` cannot be part of `{template}`: {why}")]
    Invalid {
        /// The template as written.
        template: String,
        /// Where the value came from.
        what: String,
        /// The value, escaped for the message.
        value: String,
        /// Why not.
        why: &'static str,
    },
}

impl TemplateError {
    /// The stable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            TemplateError::Missing { .. } => "missing_value",
            TemplateError::Invalid { .. } => "bad_destination",
        }
    }
}

/// What a request's value may hold where it goes: `Err(why)` refuses it.
pub type ValueCheck = fn(&str) -> Result<(), &'static str>;

/// Any value (message keys).
pub fn any_value(_: &str) -> Result<(), &'static str> {
    Ok(())
}

/// One token of a NATS subject: a value with `.` would address another subject, `*` and `>`
/// are wildcards.
pub fn nats_token(v: &str) -> Result<(), &'static str> {
    if v.bytes().any(|b| {
        matches!(b, b'.' | b'*' | b'>') || b.is_ascii_whitespace() || b < 0x20 || b == 0x7f
    }) {
        return Err("a NATS subject token holds no `.`, `*`, `>`, spaces or control characters");
    }
    Ok(())
}

/// Characters of a Kafka topic name.
pub fn kafka_topic(v: &str) -> Result<(), &'static str> {
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a Kafka topic is made of ASCII letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

/// Characters of an AMQP exchange name.
pub fn amqp_name(v: &str) -> Result<(), &'static str> {
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return Err(
            "an AMQP exchange name is made of ASCII letters, digits, `.`, `_`, `-` and `:`",
        );
    }
    Ok(())
}

/// Text of an AMQP routing key: no control characters.
pub fn amqp_key(v: &str) -> Result<(), &'static str> {
    if v.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("a routing key holds no control characters");
    }
    Ok(())
}

/// The template with the request's values; a value that is missing (or not text) is an error,
/// never an empty string that would publish somewhere else, and each value must pass `check`.
pub fn render(
    template: &Template,
    ctx: &RequestContext,
    headers: &HeaderMap,
    check: ValueCheck,
) -> Result<String, TemplateError> {
    let missing = |what: String| TemplateError::Missing {
        template: template.source.clone(),
        what,
    };
    let checked = |what: String, v: &str| {
        check(v).map_err(|why| TemplateError::Invalid {
            template: template.source.clone(),
            what,
            value: v.escape_debug().to_string(),
            why,
        })
    };
    let mut out = String::with_capacity(template.source.len() + 16);
    for part in &template.parts {
        match part {
            TemplatePart::Literal(s) => out.push_str(s),
            TemplatePart::Param(i) => match ctx.params.get(*i) {
                Some((name, v)) if !v.is_empty() => {
                    checked(format!("path parameter `{name}`"), v)?;
                    out.push_str(v)
                }
                Some((name, _)) => return Err(missing(format!("path parameter `{name}`"))),
                None => return Err(missing(format!("path parameter {i}"))),
            },
            TemplatePart::Header(name) => match headers.get(name).map(|v| v.to_str()) {
                Some(Ok(v)) if !v.is_empty() => {
                    checked(format!("header `{name}`"), v)?;
                    out.push_str(v)
                }
                Some(Err(_)) => {
                    return Err(TemplateError::Invalid {
                        template: template.source.clone(),
                        what: format!("header `{name}`"),
                        value: "(bytes that are not visible ASCII)".to_owned(),
                        why: "a value that goes into a destination or filter is text",
                    })
                }
                _ => return Err(missing(format!("header `{name}`"))),
            },
            TemplatePart::Var(name) => match ctx.vars.get(name) {
                Some(v) if !v.is_empty() => {
                    checked(format!("`{name}`"), v)?;
                    out.push_str(v)
                }
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
            render(&t, &ctx(), &headers, nats_token).as_deref(),
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
        let e = render(&t, &ctx(), &headers, any_value).expect_err("no header");
        assert_eq!(
            e.to_string(),
            "`t` needs header `x-tenant`, which the request does not have (or has empty)"
        );
        // Present, but not text: said so, not called missing.
        let mut latin1 = HeaderMap::new();
        latin1.insert(
            "x-tenant",
            HeaderValue::from_bytes(b"caf\xe9").expect("an obs-text header value"),
        );
        let e = render(&t, &ctx(), &latin1, any_value).expect_err("not text");
        assert_eq!(e.code(), "bad_destination");
        assert!(e.to_string().contains("is text"), "{e}");
        let t = template(vec![TemplatePart::Var("consumer".into())]);
        assert!(render(&t, &ctx(), &headers, any_value).is_err());
        let mut c = ctx();
        c.params[0].1.clear();
        let t = template(vec![TemplatePart::Param(0)]);
        assert!(render(&t, &c, &headers, any_value).is_err());
    }

    #[test]
    fn a_value_that_would_change_the_destination_is_refused() {
        let headers = HeaderMap::new();
        let t = template(vec![
            TemplatePart::Literal("events.".into()),
            TemplatePart::Param(0),
        ]);
        for bad in ["a.b", "*", ">", "a b", "x\u{1}"] {
            let mut c = ctx();
            c.params[0].1 = bad.to_owned();
            let e = render(&t, &c, &headers, nats_token).expect_err(bad);
            assert_eq!(e.code(), "bad_destination", "{bad}");
        }
        let mut c = ctx();
        c.params[0].1 = "..".to_owned();
        assert!(
            render(&t, &c, &headers, kafka_topic).is_ok(),
            "dots are topic characters"
        );
        c.params[0].1 = "a/b".to_owned();
        assert!(render(&t, &c, &headers, kafka_topic).is_err());
        c.params[0].1 = "a#b".to_owned();
        assert!(render(&t, &c, &headers, amqp_name).is_err());
        assert!(render(&t, &c, &headers, amqp_key).is_ok());
        assert!(render(&t, &c, &headers, any_value).is_ok());
    }
}
