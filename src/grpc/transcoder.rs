//! [`Transcoder`]: the engine one route calls. It matches an HTTP/JSON request to a binding,
//! calls the gRPC method on the upstream, and answers with JSON; gRPC-Web requests are relayed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message;

use super::body::ResponseBody;
use super::call::Call;
use super::config::{GrpcSection, Options, SchemaSource};
use super::framing::encode;
use super::metadata::X_REQUEST_ID;
use super::reflection::{self, ReflectionError};
use super::request::{build_messages, HttpInput, RequestError};
use super::response::{JsonWriter, ResponseError};
use super::schema::{self, Lookup, Schema, Selection};
use super::status::{self, gateway_error};
use super::target::Target;
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

/// Why [`Transcoder::encode_request`] or [`Transcoder::decode_response`] could not transcode.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The schema is to come by reflection and has not yet.
    #[error("schema not loaded")]
    NotReady,
    /// The path and query do not parse as a URI.
    #[error("bad path `{path}`: {error}")]
    BadPath {
        /// The path and query as given.
        path: String,
        /// The URI parser's error.
        error: http::uri::InvalidUri,
    },
    /// No method is bound to this HTTP method and path.
    #[error("no binding for {method} {path}")]
    NoBinding {
        /// The HTTP method.
        method: Method,
        /// The path.
        path: String,
    },
    /// The request does not make the method's request message(s).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The message is not one of the method's response type, or has no JSON form.
    #[error(transparent)]
    Response(#[from] ResponseError),
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
            SchemaSource::Protos { files, includes } => Some(schema::guarded(|| {
                schema::compile_protos(files, includes, base_dir)
            })?),
            SchemaSource::DescriptorSet(path) => Some(schema::read_descriptor_set(path)?),
            SchemaSource::Reflection => None,
        };
        let loaded = match files {
            Some(f) => Some(Arc::new(
                schema::guarded(|| Schema::from_files(f, &selection(&opts)))
                    .map_err(|e| format!("grpc: {e}"))?,
            )),
            None => None,
        };
        Ok(Transcoder {
            opts,
            schema: ArcSwapOption::new(loaded),
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
    pub async fn prepare(&self, target: SocketAddr) -> Result<(), ReflectionError> {
        self.prepare_with(&Target::h2c(target)).await
    }

    /// [`Self::prepare`] for any [`Target`] (h2 over TLS, another `:authority`).
    pub async fn prepare_with(&self, target: &Target) -> Result<(), ReflectionError> {
        if !self.needs_reflection() || self.is_ready() {
            return Ok(());
        }
        let timeout = self.opts.timeout.unwrap_or(Duration::from_secs(10));
        let files = reflection::fetch(
            target,
            &self.opts.services,
            timeout.max(self.opts.connect_timeout),
        )
        .await?;
        let schema =
            schema::guarded(|| Schema::from_files(schema::dedup(files), &selection(&self.opts)))
                .map_err(|detail| ReflectionError::Schema {
                    target: target.addr(),
                    detail,
                })?;
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

    /// Handles one request: `target` is the upstream address the proxy picked (h2c) and
    /// `authority` the `:authority` to send (the address when `None`). For h2 over TLS use
    /// [`Self::handle_with`].
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
        let mut t = Target::h2c(target);
        if let Some(a) = authority {
            t = t.with_authority(a);
        }
        self.handle_with(req, &t).await
    }

    /// Handles one request sent to `target`, the upstream the proxy picked. Never fails:
    /// every problem is a response (gateway JSON errors, google.rpc.Status JSON for gRPC
    /// errors, gRPC-Web trailer frames for gRPC-Web clients).
    pub async fn handle_with<B>(&self, req: Request<B>, target: &Target) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let request_id = parts
            .headers
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let body = self.read_body(&parts.headers, body);
        self.serve(&parts, request_id, body, target).await
    }

    /// [`Self::handle_with`] for a request whose body the proxy has already read, at most
    /// [`Self::max_body_bytes`] + 1 bytes of it: the request head is borrowed, not copied.
    /// `request_id` is sent upstream as `x-request-id` (when that header is forwarded) in place
    /// of any the client sent.
    pub async fn handle_read(
        &self,
        head: &http::request::Parts,
        request_id: &str,
        body: Bytes,
        target: &Target,
    ) -> Response<ResponseBody> {
        let body = if body.len() > self.opts.max_body_bytes {
            Err(BodyError::TooLarge)
        } else {
            Ok(body)
        };
        self.serve(head, request_id, std::future::ready(body), target)
            .await
    }

    async fn serve(
        &self,
        parts: &http::request::Parts,
        request_id: &str,
        body: impl Future<Output = Result<Bytes, BodyError>>,
        target: &Target,
    ) -> Response<ResponseBody> {
        let err = |status, code, msg: String| gateway_error(status, code, msg, request_id);
        if self.opts.grpc_web && web::is_grpc_web(&parts.headers) {
            return match body.await {
                // Boxed: gRPC-Web is the rare path; inlined it would grow every call.
                Ok(bytes) => {
                    Box::pin(web::proxy(parts, request_id, bytes, target, &self.opts)).await
                }
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
        let (binding, segments) = match schema.lookup(Some(&parts.method), parts.uri.path()) {
            Lookup::Found(b, s) => (b, s),
            missing => return no_binding(missing, parts, request_id),
        };
        let body = match body.await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body is over {} bytes", self.opts.max_body_bytes),
                )
            }
            Err(BodyError::Unreadable(e)) => return err(StatusCode::BAD_REQUEST, "bad_request", e),
        };
        let input = HttpInput {
            segments: &segments,
            query: parts.uri.query(),
            body: &body,
        };
        let messages = match build_messages(binding, &input, &self.opts) {
            Ok(m) => m,
            Err(e) => return err(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
        };
        let mut payload = BytesMut::new();
        for m in &messages {
            encode(0, &m.encode_to_vec(), &mut payload);
        }
        let call = Call {
            binding,
            schema: &schema,
            opts: &self.opts,
            request_id,
        };
        Box::pin(call.run(&parts.headers, payload.freeze(), target)).await
    }

    /// Transcodes a request without calling anyone: the gRPC path and the framed request
    /// messages the engine would send for `method`, `path_and_query` and the JSON `body`.
    /// For tooling (an admin "explain"), tests and benches.
    pub fn encode_request(
        &self,
        method: &Method,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(String, Bytes), TranscodeError> {
        let schema = self.schema.load_full().ok_or(TranscodeError::NotReady)?;
        let uri: Uri = path_and_query
            .parse()
            .map_err(|error| TranscodeError::BadPath {
                path: path_and_query.to_string(),
                error,
            })?;
        let (binding, segments) = match schema.lookup(Some(method), uri.path()) {
            Lookup::Found(b, s) => (b, s),
            _ => {
                return Err(TranscodeError::NoBinding {
                    method: method.clone(),
                    path: uri.path().to_string(),
                })
            }
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
    pub fn decode_response(
        &self,
        method: &Method,
        path: &str,
        message: Bytes,
    ) -> Result<Vec<u8>, TranscodeError> {
        let schema = self.schema.load_full().ok_or(TranscodeError::NotReady)?;
        let Lookup::Found(b, _) = schema.lookup(Some(method), path) else {
            return Err(TranscodeError::NoBinding {
                method: method.clone(),
                path: path.to_string(),
            });
        };
        let writer = JsonWriter::new(b.method.output(), b.response_body.clone(), &self.opts);
        Ok(writer.write(message)?)
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

/// The answer to a request whose method and path have no binding: 404, or 405 with the
/// methods the path has.
fn no_binding(
    missing: Lookup<'_>,
    parts: &http::request::Parts,
    request_id: &str,
) -> Response<ResponseBody> {
    let path = parts.uri.path();
    match missing {
        Lookup::WrongMethod(allowed) => {
            let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            let mut resp = gateway_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} accepts {}", list.join(", ")),
                request_id,
            );
            if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
                resp.headers_mut().insert(ALLOW, v);
            }
            resp
        }
        Lookup::Found(..) | Lookup::NotFound => gateway_error(
            StatusCode::NOT_FOUND,
            "no_grpc_binding",
            format!("no gRPC method is bound to {} {path}", parts.method),
            request_id,
        ),
    }
}
