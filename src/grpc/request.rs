//! The gRPC request message(s) of an HTTP request: the body, path variables and query
//! parameters merged into one JSON value per message, then parsed by the proto3 JSON mapping.
//! Every failure is a [`RequestError`], answered with a 400 naming the field and the reason.

use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, MessageDescriptor};
use serde_json::{Map, Value};

use super::binding::{resolve_fields, Binding, BodyRule};
use super::config::{Options, UnknownFields};
use super::matcher::decode_variable;
use super::prepass::{check_depth, fold_enum_case, TooDeep};
use super::query::{parse_query, text_to_json, FieldTextError, NotUtf8Param};

/// Why an HTTP request does not make a gRPC request message.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A client-streaming method given a body that is neither an array nor one object.
    #[error("a client-streaming call takes a JSON array of messages")]
    NotAnArray,
    /// One element of a client-streaming array, by its index.
    #[error("message [{index}]: {error}")]
    InMessage {
        /// Its index in the array.
        index: usize,
        /// What is wrong with it.
        error: Box<RequestError>,
    },
    /// The body nests deeper than the route allows.
    #[error(transparent)]
    TooDeep(#[from] TooDeep),
    /// The body does not parse as JSON.
    #[error("the body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    /// The request path has fewer segments than a path variable takes.
    #[error("the path does not fit its template")]
    PathMismatch,
    /// A path variable that is not UTF-8 once percent-decoded.
    #[error("a path segment is not valid UTF-8 once decoded")]
    PathNotUtf8,
    /// A query parameter that is not UTF-8 once percent-decoded.
    #[error(transparent)]
    QueryNotUtf8(#[from] NotUtf8Param),
    /// A path variable or query parameter whose text cannot be its field's value.
    #[error(transparent)]
    FieldText(#[from] FieldTextError),
    /// A query parameter that names no field, with unknown fields rejected. `reason` is the
    /// text of `binding::resolve_fields`, which also words the config report's errors about
    /// rule field paths.
    #[error("unknown query parameter `{key}`: {reason}")]
    UnknownParam {
        /// The parameter's name.
        key: String,
        /// Why it names no field.
        reason: String,
    },
    /// A query parameter for a field the path or the body already sets, with unknown fields
    /// rejected.
    #[error("query parameter `{key}` sets a field already bound by {by}")]
    AlreadyBound {
        /// The parameter's name.
        key: String,
        /// What sets the field.
        by: Binder,
    },
    /// A query parameter for a map field.
    #[error("query parameter `{0}`: map fields cannot be set from the query")]
    MapParam(String),
    /// A value from the URL that must go inside a body that is not an object.
    #[error("the body must be a JSON object to hold `{0}`")]
    NotAnObject(String),
    /// The merged JSON is not a message of the input type (the error is at its root).
    #[error("invalid request: {0}")]
    Invalid(serde_json::Error),
    /// The merged JSON has a wrong value at `path`.
    #[error("invalid value for field `{path}`: {error}")]
    InvalidField {
        /// The field path, as serde_path_to_error writes it.
        path: String,
        /// The parser's error.
        error: serde_json::Error,
    },
}

/// What else sets a field a query parameter names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binder {
    /// A path variable.
    Path,
    /// The body (`body: "field"`).
    Body,
}

impl std::fmt::Display for Binder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Binder::Path => "the path",
            Binder::Body => "the body",
        })
    }
}

/// The parts of an HTTP request that make the gRPC request.
pub struct HttpInput<'a> {
    /// Raw path segments the variables read from.
    pub segments: &'a [&'a str],
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// Field values from the URL, as `(field path, JSON value, append)`.
type UrlValues = Vec<(Vec<FieldDescriptor>, Value, bool)>;

/// Builds the request messages: one, or one per element of a JSON array for client streaming.
pub fn build_messages(
    binding: &Binding,
    input: &HttpInput<'_>,
    opts: &Options,
) -> Result<Vec<DynamicMessage>, RequestError> {
    let desc = binding.method.input();
    if let Some(msg) = straight_from_body(binding, &desc, input, opts) {
        return Ok(vec![msg]);
    }
    let url = url_values(binding, input, opts)?;
    let body = parse_body(input.body, opts)?;
    if binding.method.is_client_streaming() {
        let items = match body {
            None => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other @ Value::Object(_)) => vec![other],
            Some(_) => return Err(RequestError::NotAnArray),
        };
        return items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                build_one(binding, &desc, Some(item), &url, opts).map_err(|e| {
                    RequestError::InMessage {
                        index: i,
                        error: Box::new(e),
                    }
                })
            })
            .collect();
    }
    Ok(vec![build_one(binding, &desc, body, &url, opts)?])
}

/// The common case — the whole body is the message, nothing comes from the URL, enum names are
/// exact — parsed straight from the bytes into the message. `None` when the request is not that
/// case or the body fails to parse: the general path then runs and words the error, so both
/// paths answer alike.
fn straight_from_body(
    binding: &Binding,
    desc: &MessageDescriptor,
    input: &HttpInput<'_>,
    opts: &Options,
) -> Option<DynamicMessage> {
    if !matches!(binding.body, BodyRule::All)
        || !binding.variables.is_empty()
        || binding.method.is_client_streaming()
        || opts.case_insensitive_enums
        || nests_deeper(input.body, opts.max_depth)
    {
        return None;
    }
    let de_opts =
        DeserializeOptions::new().deny_unknown_fields(opts.unknown_fields == UnknownFields::Reject);
    let mut de = serde_json::Deserializer::from_slice(input.body);
    let msg = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &de_opts).ok()?;
    de.end().ok()?;
    Some(msg)
}

/// Whether JSON text nests arrays and objects deeper than `max` (counted as [`check_depth`]
/// counts them). Exact for valid JSON; for anything else the parser has the last word.
fn nests_deeper(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn parse_body(body: &[u8], opts: &Options) -> Result<Option<Value>, RequestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        // serde_json's own nesting limit (128) can stop the parse before check_depth sees
        // the tree; it is the same problem, said the route's way.
        if e.to_string().contains("recursion limit") {
            RequestError::TooDeep(TooDeep {
                max: opts.max_depth,
            })
        } else {
            RequestError::NotJson(e)
        }
    })?;
    check_depth(&value, opts.max_depth)?;
    Ok(Some(value))
}

fn url_values(
    binding: &Binding,
    input: &HttpInput<'_>,
    opts: &Options,
) -> Result<UrlValues, RequestError> {
    let mut out = UrlValues::new();
    for v in &binding.variables {
        let end = v.end.unwrap_or(input.segments.len());
        let raw = input
            .segments
            .get(v.start..end)
            .ok_or(RequestError::PathMismatch)?;
        let text = decode_variable(raw, v.single_segment).ok_or(RequestError::PathNotUtf8)?;
        let Some(last) = v.fields.last() else {
            continue;
        };
        out.push((v.fields.clone(), text_to_json(last, &text)?, false));
    }
    let Some(query) = input.query else {
        return Ok(out);
    };
    // With `body: "*"` every field comes from the body; parameters can only be noise such as
    // cache busters, so they are not read at all.
    if matches!(binding.body, BodyRule::All) {
        return Ok(out);
    }
    let reject = opts.unknown_fields == UnknownFields::Reject;
    let input_desc = binding.method.input();
    for (key, value) in parse_query(query)? {
        let parts: Vec<&str> = key.split('.').collect();
        let fields = match resolve_fields(&input_desc, &parts, true) {
            Ok(f) => f,
            Err(reason) if reject => return Err(RequestError::UnknownParam { key, reason }),
            Err(_) => continue,
        };
        let conflict = if let BodyRule::Field(b) = &binding.body {
            fields.first().is_some_and(|f| f.number() == b.number())
        } else {
            false
        };
        let bound = binding
            .variables
            .iter()
            .any(|v| same_path(&v.fields, &fields));
        if conflict || bound {
            if reject {
                let by = if bound { Binder::Path } else { Binder::Body };
                return Err(RequestError::AlreadyBound { key, by });
            }
            continue;
        }
        let Some(last) = fields.last() else { continue };
        if last.is_map() {
            return Err(RequestError::MapParam(key));
        }
        let json = text_to_json(last, &value)?;
        let append = last.is_list();
        out.push((fields, json, append));
    }
    Ok(out)
}

fn same_path(a: &[FieldDescriptor], b: &[FieldDescriptor]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.number() == y.number())
}

fn build_one(
    binding: &Binding,
    desc: &MessageDescriptor,
    body: Option<Value>,
    url: &UrlValues,
    opts: &Options,
) -> Result<DynamicMessage, RequestError> {
    let mut root = match (&binding.body, body) {
        (BodyRule::All, Some(v)) => v,
        (BodyRule::Field(f), Some(v)) => {
            let mut m = Map::new();
            m.insert(f.name().to_string(), v);
            Value::Object(m)
        }
        // No body mapping: a body sent anyway is not part of the call.
        _ => Value::Object(Map::new()),
    };
    for (fields, value, append) in url {
        set_path(&mut root, fields, value.clone(), *append)?;
    }
    if opts.case_insensitive_enums {
        fold_enum_case(&mut root, desc);
    }
    parse_message(desc, root, opts)
}

/// Sets `fields` (a path from the root) to `value` in the JSON tree, replacing whatever the body
/// had there under either the proto or the JSON name; `append` adds to a repeated field.
fn set_path(
    root: &mut Value,
    fields: &[FieldDescriptor],
    value: Value,
    append: bool,
) -> Result<(), RequestError> {
    let mut node = root;
    for (i, f) in fields.iter().enumerate() {
        let Value::Object(obj) = node else {
            return Err(RequestError::NotAnObject(f.name().to_string()));
        };
        // One key per field, so the parser never sees the field twice.
        if f.json_name() != f.name() {
            if let Some(v) = obj.remove(f.json_name()) {
                obj.entry(f.name()).or_insert(v);
            }
        }
        let last = i + 1 == fields.len();
        if !last {
            let child = obj
                .entry(f.name())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            node = child;
            continue;
        }
        if append {
            let slot = obj
                .entry(f.name())
                .or_insert_with(|| Value::Array(Vec::new()));
            match slot {
                Value::Array(a) => a.push(value),
                other => *other = Value::Array(vec![value]),
            }
        } else {
            obj.insert(f.name().to_string(), value);
        }
        return Ok(());
    }
    Ok(())
}

/// Parses JSON into a message; the error names the field path where parsing failed.
pub fn parse_message(
    desc: &MessageDescriptor,
    json: Value,
    opts: &Options,
) -> Result<DynamicMessage, RequestError> {
    let de_opts =
        DeserializeOptions::new().deny_unknown_fields(opts.unknown_fields == UnknownFields::Reject);
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(json, &mut track);
    DynamicMessage::deserialize_with_options(desc.clone(), de, &de_opts).map_err(|e| {
        let path = track.path().to_string();
        if path == "." || path.is_empty() {
            RequestError::Invalid(e)
        } else {
            RequestError::InvalidField { path, error: e }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::{GrpcSection, Transcoder};
    use http::Method;

    /// `Everything.dbl` (field 5, fixed64) of the first framed message, after `name` (field 1,
    /// a short string) when the path set it.
    fn dbl_of(framed: &[u8]) -> f64 {
        let mut msg = &framed[5..];
        if msg[0] == 0x0a {
            msg = &msg[2 + usize::from(msg[1])..];
        }
        assert_eq!(msg[0], 0x29, "field 5 with wire type fixed64");
        f64::from_le_bytes(msg[1..9].try_into().unwrap())
    }

    #[test]
    fn json_doubles_reach_the_message_exactly() {
        // serde_json's default float parser can be one ulp off; found by fuzz/json_to_protobuf
        // as a double that changed on a JSON -> protobuf -> JSON -> protobuf round trip.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let section: GrpcSection = toml::from_str(
            "protos = [\"tollgate/test/v1/test.proto\"]\ninclude_paths = [\"proto\"]",
        )
        .unwrap();
        let t = Transcoder::build(&section, root).unwrap();
        for text in ["7.777777777777777e+120", "0.1", "2.2250738585072014e-308"] {
            let body = format!("{{\"dbl\": {text}}}");
            let want: f64 = text.parse().unwrap();
            // Straight from the body, and through the general path (a path variable).
            for path in ["/v1/echo", "/v1/search/q"] {
                let method = if path == "/v1/echo" {
                    Method::POST
                } else {
                    Method::from_bytes(b"SEARCH").unwrap()
                };
                let (_, framed) = t.encode_request(&method, path, body.as_bytes()).unwrap();
                assert_eq!(dbl_of(&framed), want, "{text} via {path}");
            }
        }
    }

    /// The 400 texts, pinned: clients and docs read them.
    #[test]
    fn each_refusal_reads_as_it_always_has() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let section: GrpcSection = toml::from_str(
            "protos = [\"tollgate/test/v1/test.proto\"]\ninclude_paths = [\"proto\"]",
        )
        .unwrap();
        let t = Transcoder::build(&section, root).unwrap();
        let refusal = |method: &str, path: &str, body: &str| {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            match t.encode_request(&method, path, body.as_bytes()) {
                Err(crate::grpc::TranscodeError::Request(e)) => e.to_string(),
                other => panic!("{method} {path}: {other:?}"),
            }
        };
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        for (method, path, body, text) in [
            ("POST", "/v1/books:batchCreate", "5", "a client-streaming call takes a JSON array of messages"),
            ("SEARCH", "/v1/search/x", &deep, "the JSON nests deeper than 64 levels"),
            ("GET", "/v1/echo/%FF", "", "a path segment is not valid UTF-8 once decoded"),
            ("GET", "/v1/echo/x?a=%FF", "", "query parameter `%FF` is not valid UTF-8 once decoded"),
            ("GET", "/v1/echo/x?flag=maybe", "", "field `flag`: `maybe` is not true or false"),
            ("GET", "/v1/echo/x?nested=1", "", "field `nested`: `tollgate.test.v1.Nested` is a message; set its fields one by one (`field.subfield=...`)"),
            ("GET", "/v1/echo/x?nope=1", "", "unknown query parameter `nope`: `nope` is not a field of `tollgate.test.v1.Everything`"),
            ("GET", "/v1/echo/x?name=y", "", "query parameter `name` sets a field already bound by the path"),
            ("PATCH", "/v1/echo/x?nested.id=3", "{}", "query parameter `nested.id` sets a field already bound by the body"),
            ("GET", "/v1/echo/x?counts=1", "", "query parameter `counts`: map fields cannot be set from the query"),
            ("SEARCH", "/v1/search/x", "[1]", "the body must be a JSON object to hold `name`"),
        ] {
            assert_eq!(refusal(method, path, body), text, "{method} {path} {body}");
        }
        for (method, path, body, start) in [
            (
                "POST",
                "/v1/books:batchCreate",
                "[{}, 5]",
                "message [1]: invalid request: ",
            ),
            (
                "SEARCH",
                "/v1/search/x",
                "{",
                "the body is not valid JSON: ",
            ),
            (
                "GET",
                "/v1/echo/x?i32=abc",
                "",
                "invalid value for field `i32`: ",
            ),
        ] {
            let text = refusal(method, path, body);
            assert!(text.starts_with(start), "{method} {path} {body}: {text}");
        }
    }

    #[test]
    fn text_depth_scan_agrees_with_the_parsed_tree() {
        let samples = [
            r#"{"a": [{"b": 1}]}"#,
            r#"{"a": "[[[{{{", "b": {"c": []}}"#,
            r#"{"a": "quote \" then [[[", "b": "\\"}"#,
            r#"[[[[[]]]]]"#,
            r#"{"a": {"b": {"c": {"d": {}}}}}"#,
            "7",
            r#""just a string with { inside""#,
        ];
        for text in samples {
            let value: Value = serde_json::from_str(text).unwrap();
            for max in 1..8 {
                assert_eq!(
                    nests_deeper(text.as_bytes(), max),
                    check_depth(&value, max).is_err(),
                    "{text} with max {max}"
                );
            }
        }
    }
}
