//! Server-streaming responses written as the messages arrive: a JSON array, newline-delimited
//! JSON or Server-Sent Events. A failure after the first message can no longer change the
//! HTTP status, so it is written as a last `{"error": google.rpc.Status}` element.

use bytes::Bytes;
use futures_util::stream;
use prost_reflect::DescriptorPool;
use serde_json::json;

use super::body::{self, ResponseBody};
use super::config::StreamFormat;
use super::reader::{MessageReader, ReadError};
use super::response::JsonWriter;
use super::status::{self, GrpcStatus};

/// The content type of a stream format.
pub fn content_type(format: StreamFormat) -> &'static str {
    match format {
        StreamFormat::JsonArray => "application/json",
        StreamFormat::Ndjson => "application/x-ndjson",
        StreamFormat::Sse => "text/event-stream",
    }
}

/// One element of the stream, framed for the format.
fn element(format: StreamFormat, json: &[u8], first: bool, error: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 16);
    match format {
        StreamFormat::JsonArray => {
            out.extend_from_slice(if first { b"[" } else { b"," });
            out.extend_from_slice(json);
        }
        StreamFormat::Ndjson => {
            out.extend_from_slice(json);
            out.push(b'\n');
        }
        StreamFormat::Sse => {
            if error {
                out.extend_from_slice(b"event: error\n");
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(json);
            out.extend_from_slice(b"\n\n");
        }
    }
    out
}

fn close(format: StreamFormat, nothing_sent: bool) -> &'static [u8] {
    match (format, nothing_sent) {
        (StreamFormat::JsonArray, true) => b"[]",
        (StreamFormat::JsonArray, false) => b"]",
        _ => b"",
    }
}

struct State {
    reader: MessageReader,
    writer: JsonWriter,
    format: StreamFormat,
    pool: DescriptorPool,
    pending: Option<Vec<u8>>,
    sent_any: bool,
    finished: bool,
}

/// The body of a streamed response whose first message (JSON) is `first`; `None` when the
/// stream ended with OK before any message.
pub fn body(
    first: Option<Vec<u8>>,
    reader: MessageReader,
    writer: JsonWriter,
    format: StreamFormat,
    pool: DescriptorPool,
) -> ResponseBody {
    let state = State {
        reader,
        writer,
        format,
        pool,
        sent_any: false,
        finished: first.is_none(),
        pending: first,
    };
    body::streamed(stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        if let Some(json) = st.pending.take() {
            let chunk = element(st.format, &json, !st.sent_any, false);
            st.sent_any = true;
            return Some((Ok(Bytes::from(chunk)), Some(st)));
        }
        if st.finished {
            let tail = close(st.format, !st.sent_any);
            return Some((Ok(Bytes::from_static(tail)), None)).filter(|_| !tail.is_empty());
        }
        let outcome = match st.reader.next_message().await {
            Ok(Some(msg)) => match st.writer.write(msg) {
                Ok(json) => {
                    st.pending = Some(json);
                    None
                }
                Err(e) => Some(GrpcStatus::new(status::INTERNAL, e.to_string())),
            },
            Ok(None) => match st.reader.trailers().and_then(GrpcStatus::from_headers) {
                Some(s) if s.code == status::OK => None,
                Some(s) => Some(s),
                None => Some(GrpcStatus::new(
                    status::INTERNAL,
                    "upstream stream ended without grpc-status",
                )),
            },
            Err(ReadError::Deadline) => Some(GrpcStatus::new(
                status::DEADLINE_EXCEEDED,
                ReadError::Deadline.to_string(),
            )),
            Err(e) => Some(GrpcStatus::new(status::UNAVAILABLE, e.to_string())),
        };
        if st.pending.is_some() {
            let json = st.pending.take().unwrap_or_default();
            let chunk = element(st.format, &json, !st.sent_any, false);
            st.sent_any = true;
            return Some((Ok(Bytes::from(chunk)), Some(st)));
        }
        st.finished = true;
        let mut chunk = Vec::new();
        if let Some(err) = outcome {
            let json = serde_json::to_vec(&json!({"error": err.to_json(Some(&st.pool))}))
                .unwrap_or_default();
            chunk = element(st.format, &json, !st.sent_any, true);
            st.sent_any = true;
        }
        chunk.extend_from_slice(close(st.format, !st.sent_any));
        Some((Ok(Bytes::from(chunk)), None))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_frame_elements() {
        assert_eq!(element(StreamFormat::JsonArray, b"{}", true, false), b"[{}");
        assert_eq!(
            element(StreamFormat::JsonArray, b"{}", false, false),
            b",{}"
        );
        assert_eq!(element(StreamFormat::Ndjson, b"{}", true, false), b"{}\n");
        assert_eq!(
            element(StreamFormat::Sse, b"{}", true, true),
            b"event: error\ndata: {}\n\n"
        );
        assert_eq!(close(StreamFormat::JsonArray, true), b"[]");
    }
}
