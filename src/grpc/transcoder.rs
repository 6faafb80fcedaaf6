//! [`Transcoder`]: the engine one route calls. It matches an HTTP/JSON request to a binding,
//! calls the gRPC method on the upstream, and answers with JSON; gRPC-Web requests are relayed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use prost::Message;

use super::binding::Binding;
use super::body::ResponseBody;
use super::client::{pool, CallError};
use super::config::{GrpcSection, Options, SchemaSource};
use super::framing::encode;
use super::metadata;
use super::reader::{MessageReader, ReadError};
use super::reflection;
use super::request::{build_messages, HttpInput};
use super::response::JsonWriter;
use super::schema::{self, Lookup, Schema, Selection};
use super::status::{self, gateway_error, status_response, GrpcStatus};
use super::stream;
use super::web;

/// The transcoding engine of one route, built once per config snapshot.
pub struct Transcoder {
    opts: Options,
    schema: ArcSwapOption<Schema>,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("source", &self.opts.source)
            .field("ready", &self.is_ready())
            .finish()
    }
}

/// What reading the request body can end in.
enum BodyError {
    TooLarge,
    Unreadable(String),
}

impl Transcoder {
    /// Validates the route's `grpc` table and loads the schema (`.proto` files compiled with
    /// protox, or a descriptor set). A reflection schema is loaded later by [`Self::prepare`].
    /// Errors are for the user: protox errors carry `file:line:col`.
    pub fn build(section: &GrpcSection, base_dir: &Path) -> Result<Transcoder, String> {
        let opts = section.validate(base_dir)?;
        let files = match &opts.source {
            SchemaSource::Protos { files, includes } => {
                Some(schema::compile_protos(files, includes, base_dir)?)
            }
            SchemaSource::DescriptorSet(path) => Some(schema::read_descriptor_set(path)?),
            SchemaSource::Reflection => None,
        };
        let loaded = match files {
            Some(f) => Some(Arc::new(
                Schema::from_files(f, &selection(&opts)).map_err(|e| format!("grpc: {e}"))?,
            )),
            None => None,
        };
        Ok(Transcoder {
            opts,
            schema: ArcSwapOption::new(loaded),
        })
    }

    /// A transcoder over an already built schema (tests and benches).
    pub fn from_schema(schema: Schema, section: &GrpcSection) -> Result<Transcoder, String> {
        let mut section = section.clone();
        if section.protos.is_empty() && section.descriptor_set.is_none() {
            section.reflection = true;
        }
        Ok(Transcoder {
            opts: section.validate(Path::new("."))?,
            schema: ArcSwapOption::new(Some(Arc::new(schema))),
        })
    }

    /// Whether the schema must come from the upstream's reflection service.
    pub fn needs_reflection(&self) -> bool {
        self.opts.source == SchemaSource::Reflection
    }

    /// Whether the schema is loaded; until then transcoded requests get 503.
    pub fn is_ready(&self) -> bool {
        self.schema.load().is_some()
    }

    /// Loads the schema by reflection from `target` (a no-op for other sources and once
    /// loaded). Call it before the config serves and retry in the background until it succeeds.
    pub async fn prepare(&self, target: SocketAddr) -> Result<(), String> {
        if !self.needs_reflection() || self.is_ready() {
            return Ok(());
        }
        let timeout = self.opts.timeout.unwrap_or(Duration::from_secs(10));
        let files =
            reflection::fetch(target, None, &self.opts.services, timeout.max(self.opts.connect_timeout))
                .await?;
        let schema = Schema::from_files(schema::dedup(files), &selection(&self.opts))
            .map_err(|e| format!("grpc reflection from {target}: {e}"))?;
        self.schema.store(Some(Arc::new(schema)));
        Ok(())
    }

    /// The request body limit; a proxy that reads the body itself should read at most one
    /// byte more and let [`Self::handle`] answer 413.
    pub fn max_body_bytes(&self) -> usize {
        self.opts.max_body_bytes
    }

    /// Whether this request is for the engine: a gRPC-Web call, or a path some binding has
    /// (whatever the method, so that the engine can answer 405). Native gRPC requests are not:
    /// the proxy passes them through. Before a reflection schema is loaded every non-gRPC
    /// request is, and gets 503.
    pub fn matches_request(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        let _ = method;
        if status::is_grpc_request(headers) {
            return false;
        }
        if self.opts.grpc_web && web::is_grpc_web(headers) {
            return true;
        }
        match self.schema.load().as_ref() {
            Some(s) => s.has_path(uri.path()),
            None => true,
        }
    }

    /// Handles one request: `target` is the upstream address chosen by the proxy and
    /// `authority` the `:authority` to send (the target address when `None`). Never fails:
    /// every problem is a response (gateway JSON errors, google.rpc.Status JSON for gRPC
    /// errors, gRPC-Web trailer frames for gRPC-Web clients).
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        target: SocketAddr,
        authority: Option<&str>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let authority = authority
            .filter(|a| a.parse::<http::uri::Authority>().is_ok())
            .map_or_else(|| target.to_string(), str::to_string);
        let err = |status, code, msg: String| gateway_error(status, code, msg, &request_id);
        if self.opts.grpc_web && web::is_grpc_web(&parts.headers) {
            return match self.read_body(&parts.headers, body).await {
                Ok(bytes) => web::proxy(&parts, bytes, target, &authority, &self.opts).await,
                Err(BodyError::TooLarge) => status::trailers_only_error(
                    status::RESOURCE_EXHAUSTED,
                    "request body over the limit",
                ),
                Err(BodyError::Unreadable(e)) => {
                    status::trailers_only_error(status::INVALID_ARGUMENT, &e)
                }
            };
        }
        let Some(schema) = self.schema.load_full() else {
            return err(
                StatusCode::SERVICE_UNAVAILABLE,
                "grpc_schema_unavailable",
                "the gRPC schema of this route has not been loaded from the upstream yet".into(),
            );
        };
        let path = parts.uri.path();
        let (binding, segments) = match schema.lookup(Some(&parts.method), path) {
            Lookup::Found(b, s) => (b, s),
            Lookup::NotFound => {
                return err(
                    StatusCode::NOT_FOUND,
                    "no_grpc_binding",
                    format!("no gRPC method is bound to {} {path}", parts.method),
                )
            }
            Lookup::WrongMethod(allowed) => {
                let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                let mut resp = err(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{path} accepts {}", list.join(", ")),
                );
                if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
                    resp.headers_mut().insert(ALLOW, v);
                }
                return resp;
            }
        };
        let body = match self.read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body is over {} bytes", self.opts.max_body_bytes),
                )
            }
            Err(BodyError::Unreadable(e)) => {
                return err(StatusCode::BAD_REQUEST, "bad_request", e)
            }
        };
        let input = HttpInput {
            segments: &segments,
            query: parts.uri.query(),
            body: &body,
        };
        let messages = match build_messages(binding, &input, &self.opts) {
            Ok(m) => m,
            Err(e) => return err(StatusCode::BAD_REQUEST, "invalid_request", e),
        };
        let mut payload = BytesMut::new();
        for m in &messages {
            encode(0, &m.encode_to_vec(), &mut payload);
        }
        let call = Call {
            binding,
            schema: &schema,
            opts: &self.opts,
            request_id: &request_id,
        };
        call.run(&parts.headers, payload.freeze(), target, &authority)
            .await
    }

    /// Transcodes a request without calling anyone: the gRPC path and the framed request
    /// messages the engine would send for `method`, `path_and_query` and the JSON `body`.
    /// For tooling (an admin "explain"), tests and benches.
    pub fn encode_request(
        &self,
        method: &Method,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(String, Bytes), String> {
        let schema = self.schema.load_full().ok_or("schema not loaded")?;
        let uri: Uri = path_and_query
            .parse()
            .map_err(|e| format!("bad path `{path_and_query}`: {e}"))?;
        let (binding, segments) = match schema.lookup(Some(method), uri.path()) {
            Lookup::Found(b, s) => (b, s),
            _ => return Err(format!("no binding for {method} {}", uri.path())),
        };
        let input = HttpInput {
            segments: &segments,
            query: uri.query(),
            body,
        };
        let mut payload = BytesMut::new();
        for m in build_messages(binding, &input, &self.opts)? {
            encode(0, &m.encode_to_vec(), &mut payload);
        }
        Ok((binding.grpc_path.clone(), payload.freeze()))
    }

    /// The JSON the engine would answer for one encoded (unframed) response message of the
    /// method bound to `method` and `path` (`response_body` applied).
    pub fn decode_response(&self, method: &Method, path: &str, message: Bytes) -> Result<Vec<u8>, String> {
        let schema = self.schema.load_full().ok_or("schema not loaded")?;
        match schema.lookup(Some(method), path) {
            Lookup::Found(b, _) => {
                JsonWriter::new(b.method.output(), b.response_body.clone(), &self.opts).write(message)
            }
            _ => Err(format!("no binding for {method} {path}")),
        }
    }

    async fn read_body<B>(&self, headers: &HeaderMap, body: B) -> Result<Bytes, BodyError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.opts.max_body_bytes;
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(BodyError::TooLarge);
        }
        match Limited::new(body, limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
            Err(e) => Err(BodyError::Unreadable(format!(
                "the request body could not be read: {e}"
            ))),
        }
    }
}

fn selection(opts: &Options) -> Selection<'_> {
    Selection {
        services: &opts.services,
        auto_map: opts.auto_map,
    }
}

/// One upstream call of a transcoded request.
struct Call<'a> {
    binding: &'a Binding,
    schema: &'a Schema,
    opts: &'a Options,
    request_id: &'a str,
}

impl Call<'_> {
    fn error(&self, status: StatusCode, code: &'static str, msg: impl Into<String>) -> Response<ResponseBody> {
        gateway_error(status, code, msg, self.request_id)
    }

    async fn run(
        &self,
        headers: &HeaderMap,
        payload: Bytes,
        target: SocketAddr,
        authority: &str,
    ) -> Response<ResponseBody> {
        let uri = format!("http://{authority}{}", self.binding.grpc_path);
        let timeout = metadata::deadline(headers, self.opts.timeout);
        let mut builder = Request::post(uri)
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers");
        if let Some(t) = timeout {
            builder = builder.header("grpc-timeout", metadata::format_timeout(t));
        }
        let Ok(mut req) = builder.body(Full::new(payload)) else {
            return self.error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "could not build the upstream request");
        };
        metadata::forward_request(headers, &self.opts.forward_headers, req.headers_mut());
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let send = pool().send(target, req, self.opts.connect_timeout);
        let sent = match deadline {
            Some(at) => match tokio::time::timeout_at(at, send).await {
                Ok(r) => r,
                Err(_) => return self.timed_out(),
            },
            None => send.await,
        };
        let upstream = match sent {
            Ok(r) => r,
            Err(CallError::ConnectTimeout(a)) => {
                return self.error(StatusCode::GATEWAY_TIMEOUT, "upstream_connect_timeout", format!("timed out connecting to upstream {a}"))
            }
            Err(e) => return self.error(StatusCode::BAD_GATEWAY, "upstream_unreachable", e.to_string()),
        };
        let (head, incoming) = upstream.into_parts();
        if head.status != StatusCode::OK {
            let s = GrpcStatus::new(
                status::code_for_upstream_http(head.status),
                format!("upstream answered HTTP {} instead of gRPC", head.status.as_u16()),
            );
            return status_response(&s, Some(&self.schema.pool));
        }
        let is_grpc = head
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        if !is_grpc {
            return self.error(StatusCode::BAD_GATEWAY, "upstream_not_grpc", "upstream did not answer with gRPC");
        }
        let streaming = self.binding.method.is_server_streaming();
        if let Some(s) = GrpcStatus::from_headers(&head.headers) {
            // Trailers-only: the call ended before any message.
            return match s.code {
                status::OK if streaming => self.stream_response(&head.headers, None, MessageReader::new(incoming, 0, None)),
                status::OK => self.error(StatusCode::BAD_GATEWAY, "upstream_no_message", "upstream finished the call without a response message"),
                _ => self.with_metadata(status_response(&s, Some(&self.schema.pool)), &[&head.headers]),
            };
        }
        let mut reader = MessageReader::new(incoming, self.opts.max_message_bytes, deadline);
        let writer = self.writer();
        let first = match reader.next_message().await {
            Ok(m) => m,
            Err(e) => return self.read_failed(e),
        };
        if streaming {
            if let Some(msg) = first {
                return match writer.write(msg) {
                    Ok(json) => self.stream_response(&head.headers, Some(json), reader),
                    Err(e) => self.error(StatusCode::BAD_GATEWAY, "upstream_bad_message", e),
                };
            }
        } else if first.is_some() {
            match reader.next_message().await {
                Ok(None) => {}
                Ok(Some(_)) => return self.error(StatusCode::BAD_GATEWAY, "upstream_bad_message", "upstream sent more than one message for a unary call"),
                Err(e) => return self.read_failed(e),
            }
        }
        let trailers = reader.trailers().cloned().unwrap_or_default();
        let Some(outcome) = GrpcStatus::from_headers(&trailers) else {
            return self.error(StatusCode::BAD_GATEWAY, "upstream_no_status", "upstream response has no grpc-status");
        };
        let sources = [&head.headers, &trailers];
        if outcome.code != status::OK {
            return self.with_metadata(status_response(&outcome, Some(&self.schema.pool)), &sources);
        }
        let resp = match first {
            None if streaming => return self.stream_response(&head.headers, None, reader),
            None => self.error(StatusCode::BAD_GATEWAY, "upstream_no_message", "upstream finished the call without a response message"),
            Some(msg) => match writer.write(msg) {
                Ok(json) => status::json_response(StatusCode::OK, json),
                Err(e) => self.error(StatusCode::BAD_GATEWAY, "upstream_bad_message", e),
            },
        };
        self.with_metadata(resp, &sources)
    }

    fn writer(&self) -> JsonWriter {
        JsonWriter::new(
            self.binding.method.output(),
            self.binding.response_body.clone(),
            self.opts,
        )
    }

    fn stream_response(&self, headers: &HeaderMap, first: Option<Vec<u8>>, reader: MessageReader) -> Response<ResponseBody> {
        let format = self.opts.stream_format;
        let body = stream::body(first, reader, self.writer(), format, self.schema.pool.clone());
        let mut resp = Response::new(body);
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(stream::content_type(format)));
        if format == super::config::StreamFormat::Sse {
            resp.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
        }
        self.with_metadata(resp, &[headers])
    }

    fn with_metadata(&self, mut resp: Response<ResponseBody>, sources: &[&HeaderMap]) -> Response<ResponseBody> {
        for (name, value) in metadata::response_headers(sources, self.opts) {
            resp.headers_mut().append(name, value);
        }
        resp
    }

    fn timed_out(&self) -> Response<ResponseBody> {
        let s = GrpcStatus::new(status::DEADLINE_EXCEEDED, "deadline exceeded before the upstream answered");
        status_response(&s, Some(&self.schema.pool))
    }

    fn read_failed(&self, e: ReadError) -> Response<ResponseBody> {
        match e {
            ReadError::Deadline => self.timed_out(),
            e => self.error(StatusCode::BAD_GATEWAY, "upstream_bad_response", e.to_string()),
        }
    }
}
