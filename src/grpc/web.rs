//! gRPC-Web clients (binary `application/grpc-web[+proto]` and base64
//! `application/grpc-web-text[+proto]`) to native gRPC upstreams. Messages pass through
//! unchanged; the upstream's trailers become a final frame flagged 0x80, since browsers cannot
//! read HTTP trailers.

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::stream;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

use super::body::{self, ResponseBody};
use super::client::{grpc_request, pool, UpstreamBody};
use super::config::Options;
use super::framing::{encode, TRAILERS};
use super::metadata;
use super::reader::{MessageReader, ReadError};
use super::status::{self, code_for_upstream_http};
use super::target::Target;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const EXPOSE: &str = "grpc-status, grpc-message, grpc-status-details-bin";

/// Whether the request comes from a gRPC-Web client.
pub fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim()
                .to_ascii_lowercase()
                .starts_with("application/grpc-web")
        })
}

fn is_text(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim()
                .to_ascii_lowercase()
                .starts_with("application/grpc-web-text")
        })
}

/// A grpc-web-text body that is not base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("grpc-web-text body is not base64: {0}")]
pub struct NotBase64(pub base64::DecodeError);

/// Decodes a grpc-web-text body. Clients may send several base64 chunks, each padded on its
/// own, so every 4-character group is decoded by itself.
pub fn decode_text(body: &[u8]) -> Result<Vec<u8>, NotBase64> {
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    let mut groups = clean.chunks_exact(4);
    for g in groups.by_ref() {
        B64.decode_vec(g, &mut out).map_err(NotBase64)?;
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode_vec(rest, &mut out)
            .map_err(NotBase64)?;
    }
    Ok(out)
}

/// Frames for the client, base64 when it speaks text.
#[derive(Clone, Copy)]
struct Encoder {
    text: bool,
}

impl Encoder {
    fn frame(self, flags: u8, payload: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        encode(flags, payload, &mut buf);
        if self.text {
            Bytes::from(B64.encode(&buf))
        } else {
            buf.freeze()
        }
    }

    fn trailers(self, map: &HeaderMap) -> Bytes {
        let mut block = Vec::new();
        for (name, value) in map {
            block.extend_from_slice(name.as_str().as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(value.as_bytes());
            block.extend_from_slice(b"\r\n");
        }
        self.frame(TRAILERS, &block)
    }

    fn status(self, code: u32, message: &str) -> Bytes {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from(code));
        if let Ok(v) = HeaderValue::from_str(&status::encode_message(message)) {
            map.insert("grpc-message", v);
        }
        self.trailers(&map)
    }
}

fn response(text: bool, body: ResponseBody) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if text {
            "application/grpc-web-text+proto"
        } else {
            "application/grpc-web+proto"
        }),
    );
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(EXPOSE),
    );
    resp
}

fn failed(text: bool, code: u32, message: &str) -> Response<ResponseBody> {
    response(text, body::full(Encoder { text }.status(code, message)))
}

/// Proxies one gRPC-Web call to `target`.
pub async fn proxy(
    parts: &http::request::Parts,
    request_id: &str,
    payload: Bytes,
    target: &Target,
    opts: &Options,
) -> Response<ResponseBody> {
    let text = is_text(&parts.headers);
    if parts.method != http::Method::POST {
        return failed(
            text,
            status::UNIMPLEMENTED,
            "gRPC-Web calls are POST requests",
        );
    }
    let payload = if text {
        match decode_text(&payload) {
            Ok(p) => Bytes::from(p),
            Err(e) => return failed(text, status::INVALID_ARGUMENT, &e.to_string()),
        }
    } else {
        payload
    };
    let timeout = metadata::deadline(&parts.headers, opts.timeout);
    // Built again only if the upstream turns the stream away unprocessed (client.rs).
    let make = || {
        let uri = target.uri(parts.uri.path()).ok()?;
        let mut req = grpc_request(uri, timeout, payload.clone())?;
        metadata::forward_web_request(&parts.headers, request_id, req.headers_mut());
        Some(req)
    };
    let Some(req) = make() else {
        return failed(
            text,
            status::INTERNAL,
            "could not build the upstream request",
        );
    };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let send = pool().send(target, req, &make, opts.connect_timeout);
    let sent = match deadline {
        Some(at) => match tokio::time::timeout_at(at, send).await {
            Ok(r) => r,
            Err(_) => {
                return failed(
                    text,
                    status::DEADLINE_EXCEEDED,
                    "deadline exceeded before the upstream answered",
                )
            }
        },
        None => send.await,
    };
    let upstream = match sent {
        Ok(r) => r,
        Err(e) => return failed(text, status::UNAVAILABLE, &e.to_string()),
    };
    relay(text, upstream, opts.max_message_bytes, deadline)
}

/// The gRPC-Web answer to an upstream's gRPC response: its head's metadata, then its messages
/// as they come and its trailers as the last frame.
fn relay(
    text: bool,
    upstream: Response<UpstreamBody>,
    max_message_bytes: usize,
    deadline: Option<tokio::time::Instant>,
) -> Response<ResponseBody> {
    let (head, incoming) = upstream.into_parts();
    if head.status != StatusCode::OK {
        return failed(
            text,
            code_for_upstream_http(head.status),
            &format!("upstream answered HTTP {}", head.status.as_u16()),
        );
    }
    let enc = Encoder { text };
    let mut resp = response(text, body::empty());
    for (name, value) in &head.headers {
        if matches!(
            name.as_str(),
            "content-type" | "content-length" | "trailer" | "te"
        ) {
            continue;
        }
        resp.headers_mut().append(name.clone(), value.clone());
    }
    if head.headers.contains_key("grpc-status") {
        // Trailers-only: the status is already in the headers; repeat it as the trailer frame
        // for clients that only read the body.
        *resp.body_mut() = body::full(enc.trailers(&head.headers));
        return resp;
    }
    let reader = MessageReader::new(incoming, max_message_bytes, deadline);
    *resp.body_mut() = body::streamed(stream::unfold(Some(reader), move |reader| async move {
        let mut reader = reader?;
        match reader.next_message().await {
            Ok(Some(msg)) => Some((Ok(enc.frame(0, &msg)), Some(reader))),
            Ok(None) => {
                let frame = match reader.trailers() {
                    Some(t) if t.contains_key("grpc-status") => enc.trailers(t),
                    _ => enc.status(status::INTERNAL, "upstream ended without grpc-status"),
                };
                Some((Ok(frame), None))
            }
            Err(ReadError::Deadline) => Some((
                Ok(enc.status(status::DEADLINE_EXCEEDED, "deadline exceeded")),
                None,
            )),
            Err(e) => Some((Ok(enc.status(status::UNAVAILABLE, &e.to_string())), None)),
        }
    }));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_body_in_separately_padded_chunks_decodes() {
        let a = B64.encode([0u8, 0, 0, 0, 1, 7]);
        let b = B64.encode([0x80u8]);
        let joined = format!("{a}\r\n{b}");
        assert_eq!(
            decode_text(joined.as_bytes()).unwrap(),
            vec![0, 0, 0, 0, 1, 7, 0x80]
        );
        assert_eq!(
            decode_text(b"!!!!").map_err(|e| e.to_string()),
            Err("grpc-web-text body is not base64: Invalid symbol 33, offset 0.".to_string())
        );
    }

    #[test]
    fn trailer_frame_is_flagged_and_lists_headers() {
        let f = Encoder { text: false }.status(5, "no such book");
        assert_eq!(f[0], TRAILERS);
        let block = std::str::from_utf8(&f[5..]).unwrap();
        assert_eq!(block, "grpc-status: 5\r\ngrpc-message: no such book\r\n");
    }
}
