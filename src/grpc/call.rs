//! One upstream call of a transcoded request: send the encoded request with its metadata and
//! deadline, then turn the gRPC response (headers, messages, trailers) into the HTTP answer —
//! whole for unary calls, streamed for server streaming.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

use super::binding::Binding;
use super::body::ResponseBody;
use super::client::{grpc_request, pool, CallError};
use super::config::{Options, StreamFormat};
use super::metadata;
use super::reader::{MessageReader, ReadError};
use super::response::JsonWriter;
use super::schema::Schema;
use super::status::{self, gateway_error, status_response, GrpcStatus};
use super::stream;
use super::target::Target;

/// One upstream call of a transcoded request.
pub struct Call<'a> {
    /// The matched binding.
    pub binding: &'a Binding,
    /// The schema it belongs to (for error details).
    pub schema: &'a Schema,
    /// The route's options.
    pub opts: &'a Options,
    /// For gateway error bodies.
    pub request_id: &'a str,
}

impl Call<'_> {
    fn error(
        &self,
        status: StatusCode,
        code: &'static str,
        msg: impl Into<String>,
    ) -> Response<ResponseBody> {
        gateway_error(status, code, msg, self.request_id)
    }

    /// Makes the call and builds the response.
    pub async fn run(
        &self,
        headers: &HeaderMap,
        payload: Bytes,
        target: &Target,
    ) -> Response<ResponseBody> {
        let timeout = metadata::deadline(headers, self.opts.timeout);
        // Built again only if the upstream turns the stream away unprocessed (client.rs).
        let make = || {
            let uri = target.uri(&self.binding.grpc_path).ok()?;
            let mut req = grpc_request(uri, timeout, payload.clone())?;
            metadata::forward_request(
                headers,
                &self.opts.forward_headers,
                self.request_id,
                req.headers_mut(),
            );
            Some(req)
        };
        let Some(req) = make() else {
            return self.unbuildable();
        };
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let send = pool().send(target, req, &make, self.opts.connect_timeout);
        let sent = match deadline {
            Some(at) => match tokio::time::timeout_at(at, send).await {
                Ok(r) => r,
                Err(_) => return self.timed_out(),
            },
            None => send.await,
        };
        let upstream = match sent {
            Ok(r) => r,
            Err(e) => return self.not_sent(e),
        };
        let (head, incoming) = upstream.into_parts();
        if let Some(refused) = self.not_grpc(&head) {
            return refused;
        }
        let streaming = self.binding.method.is_server_streaming();
        if let Some(s) = GrpcStatus::from_headers(&head.headers) {
            // Trailers-only: the call ended before any message.
            return match s.code {
                status::OK if streaming => {
                    self.stream_response(&head.headers, None, MessageReader::new(incoming, 0, None))
                }
                status::OK => self.no_message(),
                _ => self.with_metadata(
                    status_response(&s, Some(&self.schema.pool)),
                    &[&head.headers],
                ),
            };
        }
        let mut reader = MessageReader::new(incoming, self.opts.max_message_bytes, deadline);
        let first = match reader.next_message().await {
            Ok(m) => m,
            Err(e) => return self.read_failed(e),
        };
        if streaming {
            if let Some(msg) = first {
                return match self.writer().write(msg) {
                    Ok(json) => self.stream_response(&head.headers, Some(json), reader),
                    Err(e) => self.bad_message(e.to_string()),
                };
            }
        } else if first.is_some() {
            match reader.next_message().await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return self.bad_message("upstream sent more than one message for a unary call")
                }
                Err(e) => return self.read_failed(e),
            }
        }
        self.finish(&head.headers, first, reader, streaming)
    }

    /// The answer to a call whose messages are read (the first, or none): by the trailers'
    /// status, with the upstream's metadata.
    fn finish(
        &self,
        headers: &HeaderMap,
        first: Option<Bytes>,
        mut reader: MessageReader,
        streaming: bool,
    ) -> Response<ResponseBody> {
        // A stream keeps its reader (and trailers); a unary call is done with them.
        let trailers = if streaming {
            reader.trailers().cloned()
        } else {
            reader.take_trailers()
        }
        .unwrap_or_default();
        let Some(outcome) = GrpcStatus::from_headers(&trailers) else {
            return self.error(
                StatusCode::BAD_GATEWAY,
                "upstream_no_status",
                "upstream response has no grpc-status",
            );
        };
        let sources = [headers, &trailers];
        if outcome.code != status::OK {
            return self
                .with_metadata(status_response(&outcome, Some(&self.schema.pool)), &sources);
        }
        let resp = match first {
            None if streaming => return self.stream_response(headers, None, reader),
            None => self.no_message(),
            Some(msg) => match self.writer().write(msg) {
                Ok(json) => status::json_response(StatusCode::OK, json),
                Err(e) => self.bad_message(e.to_string()),
            },
        };
        self.with_metadata(resp, &sources)
    }

    /// The answer to a call that never reached the upstream, marked with what failed for the
    /// handler's retry and outlier decisions.
    fn not_sent(&self, e: CallError) -> Response<ResponseBody> {
        let (resp, why) = match e {
            CallError::ConnectTimeout(a) => (
                self.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_connect_timeout",
                    format!("timed out connecting to upstream {a}"),
                ),
                CallFailure::ConnectTimeout,
            ),
            e @ CallError::Connect(..) => (
                self.error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    e.to_string(),
                ),
                CallFailure::Connect,
            ),
            e => (
                self.error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    e.to_string(),
                ),
                CallFailure::Reset,
            ),
        };
        failure(resp, why)
    }

    /// The answer when the upstream's response head is not gRPC's: an HTTP status other than
    /// 200 (mapped as gRPC clients map it), or another content type.
    fn not_grpc(&self, head: &http::response::Parts) -> Option<Response<ResponseBody>> {
        if head.status != StatusCode::OK {
            let s = GrpcStatus::new(
                status::code_for_upstream_http(head.status),
                format!(
                    "upstream answered HTTP {} instead of gRPC",
                    head.status.as_u16()
                ),
            );
            return Some(status_response(&s, Some(&self.schema.pool)));
        }
        let is_grpc = head
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        (!is_grpc).then(|| {
            self.error(
                StatusCode::BAD_GATEWAY,
                "upstream_not_grpc",
                "upstream did not answer with gRPC",
            )
        })
    }

    fn unbuildable(&self) -> Response<ResponseBody> {
        self.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "could not build the upstream request",
        )
    }

    fn no_message(&self) -> Response<ResponseBody> {
        self.error(
            StatusCode::BAD_GATEWAY,
            "upstream_no_message",
            "upstream finished the call without a response message",
        )
    }

    fn bad_message(&self, msg: impl Into<String>) -> Response<ResponseBody> {
        self.error(StatusCode::BAD_GATEWAY, "upstream_bad_message", msg)
    }

    fn writer(&self) -> JsonWriter {
        JsonWriter::new(
            self.binding.method.output(),
            self.binding.response_body.clone(),
            self.opts,
        )
    }

    fn stream_response(
        &self,
        headers: &HeaderMap,
        first: Option<Vec<u8>>,
        reader: MessageReader,
    ) -> Response<ResponseBody> {
        let format = self.opts.stream_format;
        let body = stream::body(
            first,
            reader,
            self.writer(),
            format,
            self.schema.pool.clone(),
        );
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(stream::content_type(format)),
        );
        if format == StreamFormat::Sse {
            resp.headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-cache"));
        }
        self.with_metadata(resp, &[headers])
    }

    fn with_metadata(
        &self,
        mut resp: Response<ResponseBody>,
        sources: &[&HeaderMap],
    ) -> Response<ResponseBody> {
        metadata::response_headers(sources, self.opts, resp.headers_mut());
        resp
    }

    fn timed_out(&self) -> Response<ResponseBody> {
        let s = GrpcStatus::new(
            status::DEADLINE_EXCEEDED,
            "deadline exceeded before the upstream answered",
        );
        failure(
            status_response(&s, Some(&self.schema.pool)),
            CallFailure::Timeout,
        )
    }

    fn read_failed(&self, e: ReadError) -> Response<ResponseBody> {
        match e {
            ReadError::Deadline => self.timed_out(),
            e => self.error(
                StatusCode::BAD_GATEWAY,
                "upstream_bad_response",
                e.to_string(),
            ),
        }
    }
}

/// How a call failed before the upstream answered, marked on the response the engine makes for
/// it (an extension), so that the handler that picked the target can tell an upstream failure
/// (report it, maybe try another target) from an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    /// No connection could be made; nothing was sent.
    Connect,
    /// Connecting timed out; nothing was sent.
    ConnectTimeout,
    /// The stream failed after the call was sent.
    Reset,
    /// No answer before the deadline.
    Timeout,
}

fn failure(mut resp: Response<ResponseBody>, why: CallFailure) -> Response<ResponseBody> {
    resp.extensions_mut().insert(why);
    resp
}
