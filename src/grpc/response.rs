//! gRPC response messages as JSON, with the route's naming and default-value options, and
//! `response_body` picking one field.

use bytes::Bytes;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};
use serde_json::Value;

use super::config::{JsonNames, Options};

/// Why an upstream's response message could not be written as JSON.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The bytes are not a message of the method's output type.
    #[error("upstream sent an undecodable `{message}`: {error}")]
    Undecodable {
        /// The output type's full name.
        message: String,
        /// The decoder's error.
        error: prost::DecodeError,
    },
    /// The decoded message has no JSON form (e.g. an `Any` of a type the schema lacks).
    #[error("response as JSON: {0}")]
    Json(serde_json::Error),
}

/// Turns encoded response messages into JSON.
#[derive(Debug, Clone)]
pub struct JsonWriter {
    desc: MessageDescriptor,
    field: Option<FieldDescriptor>,
    options: SerializeOptions,
    proto_names: bool,
    enum_numbers: bool,
}

impl JsonWriter {
    /// A writer for messages of `desc`, optionally only the `response_body` field.
    pub fn new(desc: MessageDescriptor, field: Option<FieldDescriptor>, opts: &Options) -> Self {
        let proto_names = opts.json_names == JsonNames::Proto;
        Self {
            desc,
            field,
            options: SerializeOptions::new()
                .stringify_64_bit_integers(true)
                .use_proto_field_name(proto_names)
                .skip_default_fields(!opts.emit_defaults)
                .use_enum_numbers(opts.enums_as_ints),
            proto_names,
            enum_numbers: opts.enums_as_ints,
        }
    }

    /// Decodes one message and writes its JSON.
    pub fn write(&self, encoded: Bytes) -> Result<Vec<u8>, ResponseError> {
        let msg = DynamicMessage::decode(self.desc.clone(), encoded).map_err(|error| {
            ResponseError::Undecodable {
                message: self.desc.full_name().to_string(),
                error,
            }
        })?;
        let Some(field) = &self.field else {
            let mut out = Vec::with_capacity(128);
            let mut ser = serde_json::Serializer::with_formatter(&mut out, JsonFormatter);
            msg.serialize_with_options(&mut ser, &self.options)
                .map_err(ResponseError::Json)?;
            return Ok(out);
        };
        let whole = msg
            .serialize_with_options(serde_json::value::Serializer, &self.options)
            .map_err(ResponseError::Json)?;
        let key = if self.proto_names {
            field.name()
        } else {
            field.json_name()
        };
        let value = match whole {
            Value::Object(mut o) => o.remove(key),
            _ => None,
        }
        .unwrap_or_else(|| default_json(field, self.enum_numbers));
        serde_json::to_vec(&value).map_err(ResponseError::Json)
    }
}

/// The JSON of a field left out because it held its default.
fn default_json(field: &FieldDescriptor, enum_numbers: bool) -> Value {
    if field.is_list() {
        return Value::Array(Vec::new());
    }
    if field.is_map() {
        return Value::Object(Default::default());
    }
    match field.kind() {
        Kind::Bool => Value::Bool(false),
        Kind::String | Kind::Bytes => Value::String(String::new()),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            Value::String("0".into())
        }
        Kind::Enum(e) if !enum_numbers => Value::String(e.default_value().name().to_string()),
        Kind::Message(_) => Value::Null,
        _ => Value::from(0),
    }
}

/// serde_json's compact format, but ±`f32::MAX` written as the f64 it is: its shortest f32 text
/// (`3.4028235e38`) reads back as an f64 just above `f32::MAX`, which the JSON → message side
/// (prost-reflect) refuses as out of range, so the gateway would refuse its own output
/// (fuzz/json_to_protobuf found it).
struct JsonFormatter;

impl serde_json::ser::Formatter for JsonFormatter {
    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f32) -> std::io::Result<()> {
        let mut compact = serde_json::ser::CompactFormatter;
        if v.abs() == f32::MAX {
            compact.write_f64(w, f64::from(v))
        } else {
            compact.write_f32(w, v)
        }
    }
}
