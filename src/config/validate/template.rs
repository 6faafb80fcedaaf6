//! The destination templates of publish routes (`topic = "orders.{id}"`): the parser that turns
//! one into the [`TemplatePart`]s the runtime fills per request, and the checks of its literal
//! text for each kind of destination. A placeholder's value is known only per request, so the
//! runtime checks the filled destination again; what can be known here is refused here.

use std::sync::Arc;

use http::HeaderName;

use super::super::model::{Template, TemplatePart};

/// Longest Kafka topic name.
const MAX_TOPIC: usize = 249;
/// Longest AMQP exchange name or routing key (a short string: one length byte).
const MAX_SHORT_STRING: usize = 255;

/// The parts of `source`: literal text and `{...}` placeholders. `{name}` is a parameter of the
/// route's path template (`params`); `{header.NAME}` a request header; `{consumer}`,
/// `{jwt.CLAIM}`, any dotted `{plugin.value}` and `{var.NAME}` a value a plugin set.
///
/// A bare name must be a parameter: a mistyped parameter would otherwise pass as a plugin value
/// that is never set, and every message would go to the same destination.
pub(super) fn parse(source: &str, params: &[Arc<str>]) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = source;
    while let Some(at) = rest.find(['{', '}']) {
        literal.push_str(&rest[..at]);
        if rest[at..].starts_with('}') {
            return Err("unmatched `}` (braces cannot be literal text)".into());
        }
        let after = &rest[at + 1..];
        let close = after
            .find(['{', '}'])
            .filter(|&i| after[i..].starts_with('}'));
        let Some(close) = close else {
            return Err("unclosed `{`".into());
        };
        let part = placeholder(&after[..close], params)?;
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(part);
        rest = &after[close + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    Ok(Template {
        source: source.to_string(),
        parts,
    })
}

/// What one `{inner}` stands for.
fn placeholder(inner: &str, params: &[Arc<str>]) -> Result<TemplatePart, String> {
    if inner.is_empty() {
        return Err(
            "empty `{}`: write a parameter such as `{id}`, `{header.NAME}` or `{jwt.CLAIM}`".into(),
        );
    }
    if let Some(i) = params.iter().position(|p| &**p == inner) {
        return Ok(TemplatePart::Param(i));
    }
    if let Some(name) = inner.strip_prefix("header.") {
        if name.is_empty() {
            return Err(format!("`{{{inner}}}` has an empty name part"));
        }
        return HeaderName::from_bytes(name.as_bytes())
            .map(TemplatePart::Header)
            .map_err(|_| format!("`{{{inner}}}`: `{name}` is not a valid header name"));
    }
    let var = inner.strip_prefix("var.").unwrap_or(inner);
    let var_chars = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    if !var_chars(var) {
        return Err(format!(
            "`{{{inner}}}`: a placeholder name has letters, digits, `_`, `.` and `-` only"
        ));
    }
    if inner.contains('.') {
        if var.split('.').any(str::is_empty) {
            return Err(format!("`{{{inner}}}` has an empty name part"));
        }
        return Ok(TemplatePart::Var(var.to_string()));
    }
    if inner == "consumer" {
        return Ok(TemplatePart::Var(inner.to_string()));
    }
    let why = if params.is_empty() {
        "is not a parameter: the route has no `template` path (such as \"/orders/{id}\")"
            .to_string()
    } else {
        let names: Vec<String> = params.iter().map(|p| format!("`{p}`")).collect();
        format!(
            "is not a parameter of the route's template (it has {})",
            names.join(", ")
        )
    };
    Err(format!(
        "`{{{inner}}}` {why}; a value a plugin set is written `{{consumer}}`, `{{jwt.CLAIM}}` or \
         `{{var.NAME}}`"
    ))
}

/// The literal text of a template, and `x` for each placeholder: the shape a destination
/// has whatever a placeholder is filled with (as long as it is filled with one valid token).
fn shape(t: &Template) -> String {
    t.parts
        .iter()
        .map(|p| match p {
            TemplatePart::Literal(s) => s.as_str(),
            _ => "x",
        })
        .collect()
}

/// The literal text of a template.
fn literals(t: &Template) -> impl Iterator<Item = &str> {
    t.parts.iter().filter_map(|p| match p {
        TemplatePart::Literal(s) => Some(s.as_str()),
        _ => None,
    })
}

/// A Kafka topic: letters, digits, `.`, `_` and `-`, at most 249 of them.
pub(super) fn kafka_topic(t: &Template) -> Result<(), String> {
    if t.parts.is_empty() {
        return Err("must not be empty".into());
    }
    for lit in literals(t) {
        if let Some(c) = lit
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "`{c}` cannot be in a Kafka topic (letters, digits, `.`, `_` and `-` only)"
            ));
        }
    }
    let len: usize = literals(t).map(str::len).sum();
    if len > MAX_TOPIC {
        return Err(format!(
            "a Kafka topic has at most {MAX_TOPIC} characters; this one has {len} without its placeholders"
        ));
    }
    if matches!(t.source.as_str(), "." | "..") {
        return Err("`.` and `..` are not valid Kafka topics".into());
    }
    Ok(())
}

/// A NATS subject to publish to: tokens separated by `.`, none empty, no whitespace and no
/// wildcard.
pub(super) fn nats_subject(t: &Template) -> Result<(), String> {
    if t.parts.is_empty() {
        return Err("must not be empty".into());
    }
    for lit in literals(t) {
        if lit.chars().any(char::is_whitespace) {
            return Err("a NATS subject cannot contain spaces or other whitespace".into());
        }
        if let Some(c) = lit.chars().find(|c| matches!(c, '*' | '>')) {
            return Err(format!(
                "`{c}` is a wildcard; a message is published to one subject, so a subject to \
                 publish to has none"
            ));
        }
    }
    if shape(t).split('.').any(str::is_empty) {
        return Err(
            "a NATS subject has no empty token (no `..`, and no `.` at its start or end)".into(),
        );
    }
    Ok(())
}

/// A NATS subject to subscribe to: as one to publish to, but a token may be the wildcard `*`,
/// and the last one `>`. A placeholder fills one token (its value cannot be a wildcard), so a
/// client cannot widen what it receives.
pub(super) fn nats_subscription(t: &Template) -> Result<(), String> {
    if t.parts.is_empty() {
        return Err("must not be empty".into());
    }
    for lit in literals(t) {
        if lit.chars().any(char::is_whitespace) {
            return Err("a NATS subject cannot contain spaces or other whitespace".into());
        }
    }
    let shape = shape(t);
    let tokens: Vec<&str> = shape.split('.').collect();
    if tokens.iter().any(|t| t.is_empty()) {
        return Err(
            "a NATS subject has no empty token (no `..`, and no `.` at its start or end)".into(),
        );
    }
    for (i, token) in tokens.iter().enumerate() {
        let wild = token.contains(['*', '>']);
        if wild && !(*token == "*" || (*token == ">" && i + 1 == tokens.len())) {
            return Err(format!(
                "`{token}`: a wildcard is a whole token, `*` anywhere and `>` only last"
            ));
        }
    }
    Ok(())
}

/// An AMQP queue name: any text of at most 255 bytes that does not start with `amq.` (the
/// broker's own).
pub(super) fn amqp_queue(t: &Template) -> Result<(), String> {
    if t.parts.is_empty() {
        return Err("must not be empty".into());
    }
    if shape(t).starts_with("amq.") {
        return Err("names starting with `amq.` are the broker's own".into());
    }
    short_string(t, "a queue name")
}

/// An AMQP exchange name: letters, digits, `-`, `_`, `.` and `:`, at most 255 bytes; empty is
/// the default exchange.
pub(super) fn amqp_exchange(t: &Template) -> Result<(), String> {
    for lit in literals(t) {
        if let Some(c) = lit
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(format!(
                "`{c}` cannot be in an exchange name (letters, digits, `-`, `_`, `.` and `:` only)"
            ));
        }
    }
    short_string(t, "an exchange name")
}

/// An AMQP routing key: any text of at most 255 bytes.
pub(super) fn amqp_routing_key(t: &Template) -> Result<(), String> {
    short_string(t, "a routing key")
}

fn short_string(t: &Template, what: &str) -> Result<(), String> {
    let len: usize = literals(t).map(str::len).sum();
    if len > MAX_SHORT_STRING {
        return Err(format!(
            "{what} has at most {MAX_SHORT_STRING} bytes; this one has {len} without its placeholders"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::HeaderName;

    use super::super::super::model::TemplatePart::{self, Header, Literal, Param, Var};
    use super::*;

    fn params() -> Vec<Arc<str>> {
        vec![Arc::from("tenant"), Arc::from("id")]
    }

    fn parts(source: &str) -> Result<Vec<TemplatePart>, String> {
        parse(source, &params()).map(|t| t.parts)
    }

    #[test]
    fn placeholders_become_parameters_headers_and_plugin_values() {
        assert_eq!(
            parts(
                "orders.{tenant}.{id}-{header.X-Region}/{jwt.sub}{consumer}{var.plan}{acme.tier}"
            ),
            Ok(vec![
                Literal("orders.".into()),
                Param(0),
                Literal(".".into()),
                Param(1),
                Literal("-".into()),
                Header(HeaderName::from_static("x-region")),
                Literal("/".into()),
                Var("jwt.sub".into()),
                Var("consumer".into()),
                Var("plan".into()),
                Var("acme.tier".into()),
            ])
        );
        assert_eq!(parts("plain"), Ok(vec![Literal("plain".into())]));
        assert_eq!(parts(""), Ok(vec![]));
        // A route parameter wins over a plugin value of the same name.
        let t = parse("{consumer}", &[Arc::from("consumer")]).map(|t| t.parts);
        assert_eq!(t, Ok(vec![Param(0)]));
    }

    #[test]
    fn malformed_templates_say_what_is_wrong() {
        for (source, want) in [
            ("a{id", "unclosed `{`"),
            ("a{i{d}", "unclosed `{`"),
            ("a}b", "unmatched `}`"),
            ("a{id}}", "unmatched `}`"),
            ("a{}", "empty `{}`"),
            (
                "{header.x y}",
                "`{header.x y}`: `x y` is not a valid header name",
            ),
            ("{header.}", "`{header.}` has an empty name part"),
            ("{jwt.}", "`{jwt.}` has an empty name part"),
            ("{a b}", "a placeholder name has letters, digits"),
            (
                "{ordr}",
                "`{ordr}` is not a parameter of the route's template (it has `tenant`, `id`)",
            ),
        ] {
            let err = parts(source).expect_err(source);
            assert!(err.contains(want), "{source}: {err}");
        }
        let err = parse("{id}", &[]).expect_err("no template");
        assert!(err.contains("the route has no `template` path"), "{err}");
    }

    fn check(f: fn(&Template) -> Result<(), String>, source: &str) -> Result<(), String> {
        f(&parse(source, &params())?)
    }

    #[test]
    fn kafka_topics_are_checked_on_their_literal_text() {
        assert_eq!(check(kafka_topic, "orders.{tenant}_v1-{id}"), Ok(()));
        assert_eq!(check(kafka_topic, &"t".repeat(249)), Ok(()));
        for (source, want) in [
            ("", "must not be empty"),
            ("orders/{id}", "`/` cannot be in a Kafka topic"),
            ("or ders", "` ` cannot be in a Kafka topic"),
            ("..", "`.` and `..` are not valid"),
        ] {
            let err = check(kafka_topic, source).expect_err(source);
            assert!(err.contains(want), "{source}: {err}");
        }
        let long = format!("{}{{id}}", "t".repeat(250));
        assert_eq!(
            check(kafka_topic, &long),
            Err("a Kafka topic has at most 249 characters; this one has 250 without its placeholders".into())
        );
    }

    #[test]
    fn nats_subjects_have_tokens_and_no_wildcards() {
        assert_eq!(check(nats_subject, "orders.{tenant}.{id}"), Ok(()));
        assert_eq!(check(nats_subject, "{id}"), Ok(()));
        for (source, want) in [
            ("", "must not be empty"),
            ("orders..{id}", "no empty token"),
            (".orders", "no empty token"),
            ("orders.{id}.", "no empty token"),
            ("orders.*", "`*` is a wildcard"),
            ("orders.>", "`>` is a wildcard"),
            ("orders new", "cannot contain spaces"),
        ] {
            let err = check(nats_subject, source).expect_err(source);
            assert!(err.contains(want), "{source}: {err}");
        }
    }

    #[test]
    fn amqp_names_are_short_strings() {
        assert_eq!(check(amqp_exchange, ""), Ok(()));
        assert_eq!(check(amqp_exchange, "amq.topic"), Ok(()));
        assert_eq!(check(amqp_exchange, "events:{tenant}"), Ok(()));
        let err = check(amqp_exchange, "my exchange").expect_err("space");
        assert!(err.contains("` ` cannot be in an exchange name"), "{err}");
        assert_eq!(check(amqp_routing_key, "orders created #{id}"), Ok(()));
        assert_eq!(check(amqp_routing_key, &"k".repeat(255)), Ok(()));
        assert_eq!(
            check(amqp_routing_key, &"k".repeat(256)),
            Err(
                "a routing key has at most 255 bytes; this one has 256 without its placeholders"
                    .into()
            )
        );
    }
}
