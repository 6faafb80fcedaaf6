//! Checks and rewrites of request JSON before the proto3 JSON parser sees it: the nesting
//! limit, and enum names in any letter case (the parser only knows exact names).

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::Value;

/// JSON nested deeper than the route's `max_depth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the JSON nests deeper than {max} levels")]
pub struct TooDeep {
    /// The limit.
    pub max: usize,
}

/// Errors if `value` nests arrays and objects deeper than `max`.
pub fn check_depth(value: &Value, max: usize) -> Result<(), TooDeep> {
    // Iterative, so the check itself cannot exhaust the stack.
    let mut stack = vec![(value, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth > max {
            return Err(TooDeep { max });
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// Rewrites enum names that match a value of their enum ignoring case to the exact name,
/// through messages, lists, maps and `Any` payloads whose type the pool knows.
pub fn fold_enum_case(value: &mut Value, msg: &MessageDescriptor) {
    let Value::Object(obj) = value else { return };
    if msg.full_name() == "google.protobuf.Any" {
        let ty = obj
            .get("@type")
            .and_then(Value::as_str)
            .and_then(|t| t.rsplit('/').next())
            .and_then(|n| msg.parent_pool().get_message_by_name(n));
        if let Some(inner) = ty {
            if inner.full_name().starts_with("google.protobuf.") {
                return;
            }
            for (k, v) in obj.iter_mut() {
                if let Some(f) = field(&inner, k) {
                    fold_field(v, &f);
                }
            }
        }
        return;
    }
    if msg.full_name().starts_with("google.protobuf.") {
        return;
    }
    for (k, v) in obj.iter_mut() {
        if let Some(f) = field(msg, k) {
            fold_field(v, &f);
        }
    }
}

fn field(msg: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    msg.get_field_by_name(key)
        .or_else(|| msg.get_field_by_json_name(key))
}

fn fold_field(v: &mut Value, f: &FieldDescriptor) {
    let kind = if f.is_map() {
        match f.kind() {
            Kind::Message(entry) => entry.map_entry_value_field().kind(),
            k => k,
        }
    } else {
        f.kind()
    };
    let each = |v: &mut Value| fold_kind(v, &kind);
    match v {
        Value::Array(items) if f.is_list() => items.iter_mut().for_each(each),
        Value::Object(entries) if f.is_map() => entries.values_mut().for_each(each),
        _ if !f.is_list() && !f.is_map() => fold_kind(v, &kind),
        _ => {}
    }
}

fn fold_kind(v: &mut Value, kind: &Kind) {
    match kind {
        Kind::Enum(e) => {
            if let Value::String(s) = v {
                if e.get_value_by_name(s).is_none() {
                    if let Some(found) = e.values().find(|x| x.name().eq_ignore_ascii_case(s)) {
                        *s = found.name().to_string();
                    }
                }
            }
        }
        Kind::Message(m) => fold_enum_case(v, m),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_limit_counts_arrays_and_objects() {
        let v = json!({"a": [{"b": 1}]});
        assert!(check_depth(&v, 3).is_ok());
        assert!(check_depth(&v, 2).is_err());
        assert!(check_depth(&json!(5), 1).is_ok());
    }
}
