//! Text from the URL (path variables and query parameters) as the JSON value of a field, so
//! that the proto3 JSON parser does the typing for path, query and body alike.

use prost_reflect::{FieldDescriptor, Kind};
use serde_json::Value;

use super::binding::is_scalar_wkt;

/// A query parameter's name or value that is not UTF-8 once percent-decoded; it holds the text
/// as sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter `{0}` is not valid UTF-8 once decoded")]
pub struct NotUtf8Param(pub String);

/// Text from the URL that cannot be the value of a field: the field's name and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct FieldTextError {
    /// The field's proto name.
    pub field: String,
    /// Why the text does not fit it.
    pub problem: TextProblem,
}

/// Why text does not fit a field's kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextProblem {
    /// A bool field given something other than `true`, `false`, `1` or `0`.
    #[error("`{0}` is not true or false")]
    NotBool(String),
    /// A message field (not a well-known scalar type), named by its full type name: the URL
    /// sets its fields one by one.
    #[error("`{0}` is a message; set its fields one by one (`field.subfield=...`)")]
    Message(String),
}

/// Splits a query string into decoded `(key, value)` pairs (`+` is a space, as in HTML forms).
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, NotUtf8Param> {
    let decode = |s: &str| -> Result<String, NotUtf8Param> {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| NotUtf8Param(s.to_string()))
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// The JSON value of `text` for one element of `field`, checked as far as the kind allows
/// here; numbers stay strings, which the proto3 JSON parser accepts and range-checks.
pub fn text_to_json(field: &FieldDescriptor, text: &str) -> Result<Value, FieldTextError> {
    kind_json(&field.kind(), text).map_err(|problem| FieldTextError {
        field: field.name().to_string(),
        problem,
    })
}

fn kind_json(kind: &Kind, text: &str) -> Result<Value, TextProblem> {
    Ok(match kind {
        Kind::Bool => match text {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(TextProblem::NotBool(text.to_string())),
        },
        Kind::Enum(_) => match text.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(text.to_string()),
        },
        Kind::Message(m) if is_scalar_wkt(m) => {
            let inner = m.get_field_by_name("value").map(|f| f.kind());
            match inner {
                // Wrappers: the JSON of their one field.
                Some(k) if m.full_name().ends_with("Value") => kind_json(&k, text)?,
                _ => Value::String(text.to_string()),
            }
        }
        Kind::Message(m) if m.full_name() == "google.protobuf.Value" => {
            Value::String(text.to_string())
        }
        Kind::Message(m) => return Err(TextProblem::Message(m.full_name().to_string())),
        _ => Value::String(text.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_form_decoded() {
        let q = parse_query("a=1&b=x+y%21&c&&d=%E2%9C%93").unwrap();
        assert_eq!(
            q,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y!".into()),
                ("c".into(), "".into()),
                ("d".into(), "✓".into())
            ]
        );
        assert_eq!(
            parse_query("a=%ff").map_err(|e| e.to_string()),
            Err("query parameter `%ff` is not valid UTF-8 once decoded".to_string())
        );
    }
}
