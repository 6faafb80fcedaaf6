//! gRPC at the gateway: HTTP/JSON → gRPC transcoding after google.api.http rules, gRPC-Web
//! clients to native gRPC upstreams, and gRPC-shaped errors for the proxy. See docs/grpc.md.
//!
//! The proxy builds one [`Transcoder`] per route with a `grpc` table and hands it every request
//! of that route that is not native gRPC ([`Transcoder::handle_read`]: the head borrowed, the
//! body read, the chosen upstream target); the response comes back ready to write, its body
//! streamed.

mod binding;
pub mod body;
mod call;
mod client;
mod config;
mod embedded;
pub mod framing;
mod matcher;
mod metadata;
mod prepass;
mod query;
mod reader;
mod reflection;
mod request;
mod response;
mod rules;
mod schema;
mod status;
mod stream;
mod target;
mod template;
mod transcoder;
mod web;

pub use body::ResponseBody;
pub use call::CallFailure;
pub use config::{GrpcSection, JsonNames, StreamFormat, UnknownFields};
pub use metadata::{format_timeout, parse_timeout};
pub use prepass::TooDeep;
pub use query::{FieldTextError, NotUtf8Param, TextProblem};
pub use reflection::{ReflectionError, ReflectionProblem};
pub use request::{Binder, RequestError};
pub use response::ResponseError;
pub use status::{
    code_for_gateway_status, code_for_upstream_http, code_name, decode_message, defined_code_name,
    encode_message, http_status_for_code, is_grpc_request, trailers_only_error,
    trailers_only_for_status, GrpcStatus,
};
pub use target::{client_config, Target, TargetError};

/// The gRPC status codes by name.
pub mod code {
    pub use super::status::{
        CANCELLED, DEADLINE_EXCEEDED, INTERNAL, INVALID_ARGUMENT, OK, PERMISSION_DENIED,
        RESOURCE_EXHAUSTED, UNAUTHENTICATED, UNAVAILABLE, UNIMPLEMENTED, UNKNOWN,
    };
}
pub use transcoder::{TranscodeError, Transcoder};
pub use web::{is_grpc_web, NotBase64};

/// Internals the fuzz targets in fuzz/ drive directly; not an API, may change at any time.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::framing::{encode, Frame, FrameDecoder, FrameError, HEADER_LEN, TRAILERS};
    pub use super::matcher::{decode_variable, split_path, PathTrie};
    pub use super::status::{decode_message, encode_message};
    pub use super::template::{Segment, Template, Variable};
    pub use super::web::decode_text;
}

/// `.proto` files that do not compile: the compiler's report, `file:line:col: message` (the
/// text a route's `protos` get in the config report).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtoCompileError(pub String);

/// Compiles `.proto` files with the built-in `google/api` and `google/rpc` files available and
/// returns an encoded FileDescriptorSet with imports (for tests, benches and tooling).
pub fn compile_descriptor_set(
    files: &[std::path::PathBuf],
    includes: &[std::path::PathBuf],
) -> Result<Vec<u8>, ProtoCompileError> {
    let base = std::path::Path::new(".");
    let parts = schema::compile_protos(files, includes, base).map_err(ProtoCompileError)?;
    let mut out = Vec::new();
    for (_, bytes) in parts {
        out.push(0x0a);
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}
