//! gRPC status codes both ways (gRPC → HTTP for transcoded errors, HTTP → gRPC for errors the
//! gateway or a non-gRPC upstream makes), `grpc-message` encoding, and the two JSON error
//! bodies: google.rpc.Status for errors of the upstream, the gateway shape for our own.

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Map, Value};
use tollgate_plugin_api::PluginError;

use super::body::{self, ResponseBody};

/// OK.
pub const OK: u32 = 0;
/// CANCELLED.
pub const CANCELLED: u32 = 1;
/// UNKNOWN.
pub const UNKNOWN: u32 = 2;
/// INVALID_ARGUMENT.
pub const INVALID_ARGUMENT: u32 = 3;
/// DEADLINE_EXCEEDED.
pub const DEADLINE_EXCEEDED: u32 = 4;
/// PERMISSION_DENIED.
pub const PERMISSION_DENIED: u32 = 7;
/// RESOURCE_EXHAUSTED.
pub const RESOURCE_EXHAUSTED: u32 = 8;
/// UNIMPLEMENTED.
pub const UNIMPLEMENTED: u32 = 12;
/// INTERNAL.
pub const INTERNAL: u32 = 13;
/// UNAVAILABLE.
pub const UNAVAILABLE: u32 = 14;
/// UNAUTHENTICATED.
pub const UNAUTHENTICATED: u32 = 16;

/// The name of a gRPC code, as google.rpc.Code spells it; UNKNOWN for codes gRPC has not
/// defined.
pub fn code_name(code: u32) -> &'static str {
    defined_code_name(code).unwrap_or("UNKNOWN")
}

/// The name of a gRPC code gRPC has defined, as google.rpc.Code spells it.
pub fn defined_code_name(code: u32) -> Option<&'static str> {
    Some(match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => return None,
    })
}

/// The HTTP status of a transcoded call that ended with gRPC `code` (google.rpc.Code's table).
pub fn http_status_for_code(code: u32) -> StatusCode {
    let n = match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500, // 2 UNKNOWN, 13 INTERNAL, 15 DATA_LOSS and codes gRPC has not defined
    };
    StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The gRPC code of an HTTP response from an upstream that did not speak gRPC, exactly as
/// gRPC's "HTTP to gRPC Status Code Mapping" says.
pub fn code_for_upstream_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// The gRPC code of an error the gateway itself decided on. Follows gRPC's HTTP mapping
/// except where the gateway knows the cause better (see docs/grpc.md): a request the gateway
/// refused as malformed is INVALID_ARGUMENT (not INTERNAL), a size limit or rate limit is
/// RESOURCE_EXHAUSTED (not UNAVAILABLE: retrying at once will not help), and a timeout is
/// DEADLINE_EXCEEDED (not UNAVAILABLE).
pub fn code_for_gateway_status(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 | 414 => INVALID_ARGUMENT,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 | 405 | 501 => UNIMPLEMENTED,
        408 | 504 => DEADLINE_EXCEEDED,
        413 | 429 | 431 => RESOURCE_EXHAUSTED,
        499 => CANCELLED,
        502 | 503 => UNAVAILABLE,
        500..=599 => INTERNAL,
        _ => UNKNOWN,
    }
}

/// Percent-encodes `grpc-message`: every byte outside printable ASCII, and `%` itself.
pub fn encode_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `grpc-message`; a malformed escape is kept as written, as gRPC's spec asks.
pub fn decode_message(raw: &[u8]) -> String {
    let bytes: Vec<u8> = percent_encoding::percent_decode(raw).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `grpc-status`, `grpc-message` and `grpc-status-details-bin` of a finished call.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcStatus {
    /// The code.
    pub code: u32,
    /// The decoded message.
    pub message: String,
    /// The encoded google.rpc.Status of `grpc-status-details-bin`.
    pub details: Option<Bytes>,
}

impl GrpcStatus {
    /// A status made by the gateway.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Reads the status from trailers (or the headers of a trailers-only response); `None`
    /// when `grpc-status` is missing or not a number.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        const STATUS: HeaderName = HeaderName::from_static("grpc-status");
        const MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
        const DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
        let code = headers.get(STATUS)?.to_str().ok()?.trim().parse().ok()?;
        let message = headers
            .get(MESSAGE)
            .map(|v| decode_message(v.as_bytes()))
            .unwrap_or_default();
        // The -bin value is base64, padded or not.
        let details = headers.get(DETAILS).and_then(|v| {
            let s = v.as_bytes();
            let trimmed: Vec<u8> = s.iter().copied().filter(|b| *b != b'=').collect();
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trimmed)
                .ok()
                .map(Bytes::from)
        });
        Some(Self {
            code,
            message,
            details,
        })
    }

    /// The HTTP status of this outcome for a transcoded call.
    pub fn http_status(&self) -> StatusCode {
        http_status_for_code(self.code)
    }

    /// google.rpc.Status as JSON, with details decoded through `pool` (`@type` plus fields);
    /// a detail of a type the schema does not know keeps its bytes as base64 `value`.
    pub fn to_json(&self, pool: Option<&DescriptorPool>) -> Value {
        let mut out = Map::new();
        out.insert("code".into(), Value::from(self.code));
        out.insert("message".into(), Value::from(self.message.clone()));
        let details = self
            .details
            .as_ref()
            .and_then(|b| RawStatus::decode(b.as_ref()).ok())
            .map(|s| s.details)
            .unwrap_or_default();
        out.insert(
            "details".into(),
            Value::Array(details.iter().map(|d| detail_json(d, pool)).collect()),
        );
        Value::Object(out)
    }
}

/// google.rpc.Status on the wire; details are decoded against the schema later.
#[derive(Clone, PartialEq, prost::Message)]
struct RawStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

fn detail_json(any: &prost_types::Any, pool: Option<&DescriptorPool>) -> Value {
    let fallback = || {
        serde_json::json!({
            "@type": any.type_url,
            "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
        })
    };
    let Some(desc) = pool.and_then(|p| p.get_message_by_name("google.protobuf.Any")) else {
        return fallback();
    };
    let mut msg = DynamicMessage::new(desc);
    if msg.transcode_from(any).is_err() {
        return fallback();
    }
    // Serialising an Any whose type is not in the pool fails; that is the fallback's case.
    serde_json::to_value(&msg).unwrap_or_else(|_| fallback())
}

/// The gateway's own error shape `{"error": {"status", "code", "message", "request_id"}}`.
pub fn gateway_error(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
    request_id: &str,
) -> Response<ResponseBody> {
    let err = PluginError::new(status, code, message);
    json_response(status, err.body(request_id).to_json())
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The error response of a transcoded call that ended with a non-OK status.
pub fn status_response(
    status: &GrpcStatus,
    pool: Option<&DescriptorPool>,
) -> Response<ResponseBody> {
    let body = serde_json::to_vec(&status.to_json(pool)).unwrap_or_default();
    json_response(status.http_status(), body)
}

/// Whether a request is a gRPC call (`application/grpc` or `application/grpc+proto` …); gRPC-Web
/// is not, it has its own error framing.
pub fn is_grpc_request(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
}

/// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`, and the outcome
/// in `grpc-status` / `grpc-message`, which is how a gRPC server fails a call before any
/// message. Pass a gRPC code; for an HTTP status use [`trailers_only_for_status`].
pub fn trailers_only_error(code: u32, message: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(body::empty());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&encode_message(message)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// [`trailers_only_error`] for an error the gateway decided on as an HTTP status.
pub fn trailers_only_for_status(status: StatusCode, message: &str) -> Response<ResponseBody> {
    trailers_only_error(code_for_gateway_status(status), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_documented_http_statuses() {
        let table = [
            (0, 200),
            (1, 499),
            (2, 500),
            (3, 400),
            (4, 504),
            (5, 404),
            (6, 409),
            (7, 403),
            (8, 429),
            (9, 400),
            (10, 409),
            (11, 400),
            (12, 501),
            (13, 500),
            (14, 503),
            (15, 500),
            (16, 401),
            (99, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status_for_code(code).as_u16(), http, "code {code}");
        }
    }

    #[test]
    fn gateway_statuses_map_to_grpc_codes() {
        let table = [
            (400, 3),
            (401, 16),
            (403, 7),
            (404, 12),
            (413, 8),
            (429, 8),
            (502, 14),
            (503, 14),
            (504, 4),
            (500, 13),
            (418, 2),
        ];
        for (http, code) in table {
            let s = StatusCode::from_u16(http).unwrap();
            assert_eq!(code_for_gateway_status(s), code, "status {http}");
        }
        assert_eq!(code_for_upstream_http(StatusCode::BAD_REQUEST), INTERNAL);
        assert_eq!(
            code_for_upstream_http(StatusCode::TOO_MANY_REQUESTS),
            UNAVAILABLE
        );
    }

    #[test]
    fn grpc_message_round_trips_through_percent_encoding() {
        let text = "50% off: naïve\r\n";
        let enc = encode_message(text);
        assert_eq!(enc, "50%25 off: na%C3%AFve%0D%0A");
        assert_eq!(decode_message(enc.as_bytes()), text);
    }

    #[test]
    fn trailers_only_error_is_http_200_with_grpc_status() {
        let r = trailers_only_for_status(StatusCode::NOT_FOUND, "no route für /x");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "12");
        assert_eq!(r.headers()["grpc-message"], "no route f%C3%BCr /x");
        assert!(is_grpc_request(r.headers()));
    }

    #[test]
    fn unknown_detail_type_keeps_its_bytes() {
        let status = RawStatus {
            code: 3,
            message: "bad".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/acme.Unknown".into(),
                value: vec![1, 2, 3],
            }],
        };
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("3"));
        h.insert("grpc-message", HeaderValue::from_static("bad%20input"));
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec());
        h.insert(
            "grpc-status-details-bin",
            HeaderValue::from_str(&b64).unwrap(),
        );
        let s = GrpcStatus::from_headers(&h).unwrap();
        assert_eq!(s.message, "bad input");
        let v = s.to_json(None);
        assert_eq!(v["details"][0]["@type"], "type.googleapis.com/acme.Unknown");
        assert_eq!(v["details"][0]["value"], "AQID");
    }
}
