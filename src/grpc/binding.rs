//! One HTTP binding of a gRPC method, checked against the request and response types when the
//! schema loads, so that a rule naming a missing field fails the config, not a request.

use http::Method;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};

use super::rules::HttpRule;
use super::template::Template;

/// Which part of the request message the HTTP body fills.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body (`body` unset): fields come from the path and the query.
    None,
    /// `body: "*"`: every field not bound by the path.
    All,
    /// `body: "field"`: that top-level field.
    Field(FieldDescriptor),
}

/// A path variable with the field it sets.
#[derive(Debug, Clone)]
pub struct BoundVariable {
    /// The field path, outermost first.
    pub fields: Vec<FieldDescriptor>,
    /// First segment.
    pub start: usize,
    /// Past the last segment, `None` for the rest of the path.
    pub end: Option<usize>,
    /// Covers exactly one segment.
    pub single_segment: bool,
}

/// One compiled binding.
#[derive(Debug, Clone)]
pub struct Binding {
    /// `/pkg.Service/Method`, the gRPC path.
    pub grpc_path: String,
    /// The gRPC method.
    pub method: MethodDescriptor,
    /// The HTTP method; `None` for a custom `*` rule (any method).
    pub http_method: Option<Method>,
    /// The parsed template.
    pub template: Template,
    /// Its variables with their fields.
    pub variables: Vec<BoundVariable>,
    /// The body mapping.
    pub body: BodyRule,
    /// The response field sent as the body.
    pub response_body: Option<FieldDescriptor>,
}

impl Binding {
    /// Compiles `rule` (not its additional bindings) for `method`.
    pub fn compile(method: &MethodDescriptor, rule: &HttpRule) -> Result<Binding, String> {
        let where_ = || format!("method `{}`", method.full_name());
        let (verb, pattern) = rule
            .method_and_path()
            .ok_or_else(|| format!("{}: google.api.http rule has no method and path", where_()))?;
        let http_method = match verb {
            None => None,
            Some(v) => Some(
                Method::from_bytes(v.as_bytes())
                    .map_err(|_| format!("{}: `{v}` is not an HTTP method", where_()))?,
            ),
        };
        let template = Template::parse(pattern).map_err(|e| format!("{}: {e}", where_()))?;
        let input = method.input();
        let mut variables = Vec::new();
        for v in &template.variables {
            let fields = resolve_fields(&input, &v.field_path, false)
                .and_then(|f| check_path_field(&f).map(|_| f))
                .map_err(|e| format!("{}: path `{pattern}`: {e}", where_()))?;
            variables.push(BoundVariable {
                fields,
                start: v.start,
                end: v.end,
                single_segment: v.is_single_segment(),
            });
        }
        let body = match rule.body.as_str() {
            "" => BodyRule::None,
            "*" => BodyRule::All,
            name => BodyRule::Field(input.get_field_by_name(name).ok_or_else(|| {
                format!(
                    "{}: body field `{name}` is not a field of `{}`",
                    where_(),
                    input.full_name()
                )
            })?),
        };
        let output = method.output();
        let response_body = match rule.response_body.as_str() {
            "" => None,
            name => Some(output.get_field_by_name(name).ok_or_else(|| {
                format!(
                    "{}: response_body `{name}` is not a field of `{}`",
                    where_(),
                    output.full_name()
                )
            })?),
        };
        Ok(Binding {
            grpc_path: grpc_path(method),
            method: method.clone(),
            http_method,
            template,
            variables,
            body,
            response_body,
        })
    }

    /// `POST /pkg.Service/Method` with the whole body as the request, for `auto_map`.
    pub fn auto(method: &MethodDescriptor) -> Result<Binding, String> {
        let rule = HttpRule {
            pattern: Some(super::rules::Pattern::Post(grpc_path(method))),
            body: "*".into(),
            ..Default::default()
        };
        Self::compile(method, &rule)
    }

    /// Whether this binding answers `method`.
    pub fn accepts_method(&self, method: &Method) -> bool {
        self.http_method.as_ref().is_none_or(|m| m == method)
    }
}

/// `/pkg.Service/Method`.
pub fn grpc_path(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

/// Resolves `a.b.c` in `msg`. Names are proto field names; with `json_too`, lowerCamel JSON
/// names are accepted as well (query parameters may use either).
pub fn resolve_fields<S: AsRef<str>>(
    msg: &MessageDescriptor,
    path: &[S],
    json_too: bool,
) -> Result<Vec<FieldDescriptor>, String> {
    let mut out = Vec::with_capacity(path.len());
    let mut current = msg.clone();
    for (i, part) in path.iter().enumerate() {
        let part = part.as_ref();
        let field = current
            .get_field_by_name(part)
            .or_else(|| {
                json_too
                    .then(|| current.get_field_by_json_name(part))
                    .flatten()
            })
            .ok_or_else(|| format!("`{part}` is not a field of `{}`", current.full_name()))?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() && !is_wkt(&m) => {
                    current = m
                }
                _ => {
                    return Err(format!(
                        "`{}` is not a singular message field, so `{}` cannot go inside it",
                        field.name(),
                        path[i + 1].as_ref()
                    ))
                }
            }
        }
        out.push(field);
    }
    Ok(out)
}

/// A field a path variable may set: one value of a scalar, an enum, or a well-known type
/// written as a JSON string.
fn check_path_field(fields: &[FieldDescriptor]) -> Result<(), String> {
    let Some(last) = fields.last() else {
        return Err("empty field path".into());
    };
    if last.is_list() || last.is_map() {
        return Err(format!(
            "`{}` is repeated and cannot be a path variable",
            last.name()
        ));
    }
    if let Kind::Message(m) = last.kind() {
        if !is_scalar_wkt(&m) {
            return Err(format!(
                "`{}` is a message and cannot be a path variable",
                last.name()
            ));
        }
    }
    Ok(())
}

/// Well-known types with their own JSON form.
pub fn is_wkt(m: &MessageDescriptor) -> bool {
    m.full_name().starts_with("google.protobuf.")
}

/// Well-known types whose JSON is one string or number, settable from a path or query.
pub fn is_scalar_wkt(m: &MessageDescriptor) -> bool {
    matches!(
        m.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}
