//! Text from the URL (path variables and query parameters) as the JSON value of a field, so
//! that the proto3 JSON parser does the typing for path, query and body alike.

use prost_reflect::{FieldDescriptor, Kind};
use serde_json::Value;

use super::binding::is_scalar_wkt;

/// Splits a query string into decoded `(key, value)` pairs (`+` is a space, as in HTML forms).
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    let decode = |s: &str| -> Result<String, String> {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| format!("query parameter `{s}` is not valid UTF-8 once decoded"))
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
pub fn text_to_json(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    kind_json(&field.kind(), text).map_err(|why| format!("field `{}`: {why}", field.name()))
}

fn kind_json(kind: &Kind, text: &str) -> Result<Value, String> {
    Ok(match kind {
        Kind::Bool => match text {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(format!("`{text}` is not true or false")),
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
        Kind::Message(m) => {
            return Err(format!(
                "`{}` is a message; set its fields one by one (`field.subfield=...`)",
                m.full_name()
            ))
        }
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
        assert!(parse_query("a=%ff").is_err());
    }
}
