//! The `[routes.X.grpc]` table as the config file spells it, and its validation into the
//! [`Options`] the engine runs on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tollgate_plugin_api::ByteSize;

/// The route's `grpc` table: where the schema comes from and how JSON is mapped.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcSection {
    /// `.proto` files to compile at start-up, relative to the config file's folder or to an
    /// include path.
    #[serde(default)]
    pub protos: Vec<PathBuf>,
    /// Folders searched for `.proto` files and their imports.
    #[serde(default)]
    pub include_paths: Vec<PathBuf>,
    /// A binary `FileDescriptorSet` (`protoc --include_imports --descriptor_set_out`).
    pub descriptor_set: Option<PathBuf>,
    /// Fetch the schema from the upstream's server reflection service.
    #[serde(default)]
    pub reflection: bool,
    /// Serve only these services (full names); all services when empty.
    #[serde(default)]
    pub services: Vec<String>,
    /// Methods without a `google.api.http` annotation answer `POST /pkg.Service/Method`.
    #[serde(default)]
    pub auto_map: bool,
    /// Field names in response JSON.
    #[serde(default)]
    pub json_names: JsonNames,
    /// Write fields that hold their default value.
    #[serde(default)]
    pub emit_defaults: bool,
    /// Write enums as numbers instead of names.
    #[serde(default)]
    pub enums_as_ints: bool,
    /// Accept enum names in any letter case.
    #[serde(default)]
    pub case_insensitive_enums: bool,
    /// What an unknown JSON field or query parameter does.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// How a server-streaming response is written.
    #[serde(default)]
    pub stream_format: StreamFormat,
    /// The largest request body accepted (413 above it).
    #[schemars(extend("default" = DEFAULT_MAX_BODY))]
    pub max_body_bytes: Option<ByteSize>,
    /// The largest single message accepted from the upstream.
    #[schemars(extend("default" = DEFAULT_MAX_BODY))]
    pub max_message_bytes: Option<ByteSize>,
    /// The deepest JSON nesting accepted in a request.
    #[schemars(extend("default" = DEFAULT_MAX_DEPTH))]
    pub max_depth: Option<usize>,
    /// Deadline of a call when the client sends no `grpc-timeout`.
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "write_duration"
    )]
    #[schemars(schema_with = "duration_schema")]
    pub timeout: Option<Duration>,
    /// Time to open the HTTP/2 connection to the upstream.
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "write_duration"
    )]
    #[schemars(schema_with = "duration_schema", extend("default" = "5s"))]
    pub connect_timeout: Option<Duration>,
    /// Request headers sent on as gRPC metadata.
    #[schemars(extend("default" = DEFAULT_FORWARD_HEADERS))]
    pub forward_headers: Option<Vec<String>>,
    /// Response metadata names returned as HTTP headers; all non-reserved ones when unset.
    pub response_headers: Option<Vec<String>>,
    /// Prefix put before response metadata names in HTTP headers.
    #[schemars(extend("default" = DEFAULT_RESPONSE_PREFIX))]
    pub response_header_prefix: Option<String>,
    /// Accept gRPC-Web clients on this route.
    #[serde(default = "yes")]
    pub grpc_web: bool,
}

fn yes() -> bool {
    true
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    humantime::parse_duration(s.trim()).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration `{s}`: {e} (write e.g. \"250ms\", \"5s\")"
        ))
    })
}

fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    tollgate_plugin_api::schema::duration()
}

/// Written as humantime writes it (`"1m 30s"`), which reads back the same.
fn write_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(&humantime::format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// Field names of response JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JsonNames {
    /// `displayName`, as the proto3 JSON mapping says.
    #[default]
    LowerCamel,
    /// `display_name`, as written in the .proto file.
    Proto,
}

/// What an unknown JSON field or query parameter does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    /// 400 naming the field.
    #[default]
    Reject,
    /// Dropped silently.
    Ignore,
}

/// How server-streaming responses are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// `[{...},{...}]`, each element sent as its message arrives.
    #[default]
    JsonArray,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
    /// Server-Sent Events, one `data:` event per message.
    Sse,
}

/// Where the descriptors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaSource {
    /// `.proto` files compiled with protox.
    Protos {
        /// Files to compile.
        files: Vec<PathBuf>,
        /// Include paths, resolved against the config folder.
        includes: Vec<PathBuf>,
    },
    /// A binary `FileDescriptorSet`.
    DescriptorSet(PathBuf),
    /// The upstream's server reflection service.
    Reflection,
}

/// The validated options of one route's transcoder.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the descriptors come from.
    pub source: SchemaSource,
    /// Services served; all when empty.
    pub services: Vec<String>,
    /// Map unannotated methods to `POST /pkg.Service/Method`.
    pub auto_map: bool,
    /// Response field names.
    pub json_names: JsonNames,
    /// Write default values.
    pub emit_defaults: bool,
    /// Enums as numbers.
    pub enums_as_ints: bool,
    /// Case-insensitive enum names in requests.
    pub case_insensitive_enums: bool,
    /// Unknown fields and parameters.
    pub unknown_fields: UnknownFields,
    /// Server-streaming format.
    pub stream_format: StreamFormat,
    /// Request body limit.
    pub max_body_bytes: usize,
    /// Upstream message limit.
    pub max_message_bytes: usize,
    /// JSON nesting limit.
    pub max_depth: usize,
    /// Default deadline.
    pub timeout: Option<Duration>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Forwarded request headers, lower case.
    pub forward_headers: Vec<HeaderName>,
    /// Response metadata allowlist, lower case; `None` for all.
    pub response_headers: Option<Vec<String>>,
    /// Prefix of response metadata headers.
    pub response_header_prefix: String,
    /// Accept gRPC-Web.
    pub grpc_web: bool,
}

/// Default request body limit: gRPC's own default message limit.
pub const DEFAULT_MAX_BODY: usize = 4 << 20;
/// Default JSON nesting limit; serde_json refuses beyond 128 anyway.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// The headers forwarded as metadata when `forward_headers` is not set.
pub const DEFAULT_FORWARD_HEADERS: &[&str] = &[
    "authorization",
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "accept-language",
];
/// The prefix of response metadata headers when none is set, as grpc-gateway writes them.
pub const DEFAULT_RESPONSE_PREFIX: &str = "grpc-metadata-";

impl GrpcSection {
    /// Checks the table and resolves paths against `base_dir` (the config file's folder).
    pub fn validate(&self, base_dir: &Path) -> Result<Options, String> {
        let resolve = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base_dir.join(p)
            }
        };
        let chosen = [
            !self.protos.is_empty(),
            self.descriptor_set.is_some(),
            self.reflection,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if chosen != 1 {
            return Err(
                "grpc: set exactly one schema source: `protos`, `descriptor_set` or `reflection = true`"
                    .into(),
            );
        }
        if !self.include_paths.is_empty() && self.protos.is_empty() {
            return Err("grpc: `include_paths` is only used with `protos`".into());
        }
        let source = if let Some(set) = &self.descriptor_set {
            SchemaSource::DescriptorSet(resolve(set))
        } else if self.reflection {
            SchemaSource::Reflection
        } else {
            let mut includes: Vec<PathBuf> = self.include_paths.iter().map(resolve).collect();
            if includes.is_empty() {
                includes.push(base_dir.to_path_buf());
            }
            SchemaSource::Protos {
                files: self.protos.clone(),
                includes,
            }
        };
        let max_depth = self.max_depth.unwrap_or(DEFAULT_MAX_DEPTH);
        if !(1..=128).contains(&max_depth) {
            return Err(format!(
                "grpc: max_depth must be between 1 and 128, not {max_depth}"
            ));
        }
        let size = |v: Option<ByteSize>, name: &str| -> Result<usize, String> {
            let n = v.map_or(DEFAULT_MAX_BODY as u64, ByteSize::as_u64);
            if n == 0 || n > u32::MAX as u64 {
                return Err(format!(
                    "grpc: {name} must be between 1 byte and 4GiB, not {n}"
                ));
            }
            usize::try_from(n).map_err(|_| format!("grpc: {name} is too large"))
        };
        let forward_headers = match &self.forward_headers {
            Some(list) => list.as_slice().iter().map(String::as_str).collect(),
            None => DEFAULT_FORWARD_HEADERS.to_vec(),
        }
        .into_iter()
        .map(|name| {
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("grpc-") || lower.starts_with(':') {
                return Err(format!(
                    "grpc: forward_headers: `{name}` is reserved by gRPC and cannot be forwarded"
                ));
            }
            HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| format!("grpc: forward_headers: `{name}` is not a header name"))
        })
        .collect::<Result<Vec<_>, _>>()?;
        let prefix = self
            .response_header_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_RESPONSE_PREFIX.to_string())
            .to_ascii_lowercase();
        if !prefix.is_empty() && HeaderName::from_bytes(prefix.as_bytes()).is_err() {
            return Err(format!(
                "grpc: response_header_prefix `{prefix}` cannot start a header name"
            ));
        }
        Ok(Options {
            source,
            services: self.services.clone(),
            auto_map: self.auto_map,
            json_names: self.json_names,
            emit_defaults: self.emit_defaults,
            enums_as_ints: self.enums_as_ints,
            case_insensitive_enums: self.case_insensitive_enums,
            unknown_fields: self.unknown_fields,
            stream_format: self.stream_format,
            max_body_bytes: size(self.max_body_bytes, "max_body_bytes")?,
            max_message_bytes: size(self.max_message_bytes, "max_message_bytes")?,
            max_depth,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(5)),
            forward_headers,
            response_headers: self
                .response_headers
                .as_ref()
                .map(|l| l.iter().map(|h| h.to_ascii_lowercase()).collect()),
            response_header_prefix: prefix,
            grpc_web: self.grpc_web,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<GrpcSection, String> {
        toml::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = parse("reflection = true\nauto_mapp = true").unwrap_err();
        assert!(err.contains("auto_mapp"), "{err}");
    }

    #[test]
    fn exactly_one_source_is_required() {
        let none = parse("auto_map = true").unwrap();
        assert!(none.validate(Path::new("/etc")).is_err());
        let two = parse("reflection = true\ndescriptor_set = \"a.pb\"").unwrap();
        assert!(two.validate(Path::new("/etc")).is_err());
    }

    #[test]
    fn defaults_and_paths_resolve_against_the_config_folder() {
        let s =
            parse("protos = [\"a.proto\"]\ninclude_paths = [\"proto\"]\ntimeout = \"2s\"").unwrap();
        let o = s.validate(Path::new("/etc/tollgate")).unwrap();
        assert_eq!(
            o.source,
            SchemaSource::Protos {
                files: vec![PathBuf::from("a.proto")],
                includes: vec![PathBuf::from("/etc/tollgate/proto")],
            }
        );
        assert_eq!(o.timeout, Some(Duration::from_secs(2)));
        assert_eq!(o.max_body_bytes, DEFAULT_MAX_BODY);
        assert!(o.grpc_web);
        assert_eq!(o.response_header_prefix, "grpc-metadata-");
        assert!(o.forward_headers.iter().any(|h| h == "x-request-id"));
    }

    #[test]
    fn reserved_forward_header_is_refused() {
        let s = parse("reflection = true\nforward_headers = [\"grpc-timeout\"]").unwrap();
        assert!(s.validate(Path::new(".")).unwrap_err().contains("reserved"));
    }

    #[test]
    fn enums_of_the_file_format_are_snake_case() {
        let s = parse(
            "reflection = true\njson_names = \"proto\"\nstream_format = \"sse\"\nunknown_fields = \"ignore\"\nmax_body_bytes = \"1MiB\"",
        )
        .unwrap();
        let o = s.validate(Path::new(".")).unwrap();
        assert_eq!(o.json_names, JsonNames::Proto);
        assert_eq!(o.stream_format, StreamFormat::Sse);
        assert_eq!(o.unknown_fields, UnknownFields::Ignore);
        assert_eq!(o.max_body_bytes, 1 << 20);
    }
}
