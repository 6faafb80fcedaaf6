//! The transcoding engine against a real tonic server on an ephemeral port: every HttpRule
//! feature and the proto3 JSON mapping for each schema source (.proto via protox, a descriptor
//! set file, server reflection), streaming, errors, metadata, gRPC-Web, and bad input.

#[path = "common/mod.rs"]
pub mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tollgate::grpc::{GrpcSection, Target, Transcoder};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{
    ClientStreamingService, Grpc, NamedService, ServerStreamingService, UnaryService,
};
use tonic::{Status, Streaming};

pub const SERVICE: &str = "tollgate.test.v1.TestService";
pub const PKG: &str = "tollgate.test.v1";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The encoded descriptor set of the test proto, annotations kept.
pub fn descriptor_set() -> Vec<u8> {
    tollgate::grpc::compile_descriptor_set(
        &[PathBuf::from("tollgate/test/v1/test.proto")],
        &[root().join("proto")],
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The upstream: a tonic server whose methods work on dynamic messages.

#[derive(Clone)]
struct DynCodec(MessageDescriptor);

struct DynEncoder;
struct DynDecoder(MessageDescriptor);

impl Codec for DynCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynEncoder;
    type Decoder = DynDecoder;
    fn encoder(&mut self) -> DynEncoder {
        DynEncoder
    }
    fn decoder(&mut self) -> DynDecoder {
        DynDecoder(self.0.clone())
    }
}

impl Encoder for DynEncoder {
    type Item = DynamicMessage;
    type Error = Status;
    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for DynDecoder {
    type Item = DynamicMessage;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

#[derive(Clone)]
struct TestService {
    pool: DescriptorPool,
    /// Streams with `hold` wait for this after their first message.
    release: Arc<Notify>,
}

impl TestService {
    fn msg(&self, name: &str, v: Value) -> DynamicMessage {
        let desc = self
            .pool
            .get_message_by_name(&format!("{PKG}.{name}"))
            .unwrap();
        DynamicMessage::deserialize(desc, v).unwrap()
    }
}

pub fn to_json(m: &DynamicMessage) -> Value {
    serde_json::to_value(m).unwrap()
}

impl NamedService for TestService {
    const NAME: &'static str = SERVICE;
}

/// google.rpc.Status and BadRequest as the server encodes them into grpc-status-details-bin.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BadRequest {
    #[prost(message, repeated, tag = "1")]
    field_violations: Vec<FieldViolation>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FieldViolation {
    #[prost(string, tag = "1")]
    field: String,
    #[prost(string, tag = "2")]
    description: String,
}

struct Unary(TestService, String);

impl UnaryService<DynamicMessage> for Unary {
    type Response = DynamicMessage;
    type Future = BoxFuture<Result<tonic::Response<DynamicMessage>, Status>>;

    fn call(&mut self, req: tonic::Request<DynamicMessage>) -> Self::Future {
        let svc = self.0.clone();
        let method = self.1.clone();
        Box::pin(async move {
            let seen_headers = req.metadata().clone().into_headers();
            let input = to_json(req.get_ref());
            let name = input["name"].as_str().unwrap_or_default().to_string();
            let reply = match method.as_str() {
                "Echo" | "Unannotated" => req.into_inner(),
                "GetBook" | "GetBookTitle" => svc.msg(
                    "Book",
                    json!({"name": name, "title": format!("Title of {name}"),
                           "pages": "9007199254740993", "color": "COLOR_GREEN",
                           "published": "2023-11-14T22:13:20Z"}),
                ),
                "GetFile" => svc.msg("FileReply", json!({"path": input["path"]})),
                "ArchiveShelf" | "RestoreShelf" | "GetShelf" | "GetSpecialShelf" => svc.msg(
                    "ShelfReply",
                    json!({"name": name, "action": method, "reason": input["reason"]}),
                ),
                "Fail" => {
                    let code = input["code"].as_i64().unwrap_or(2) as i32;
                    let message = input["message"].as_str().unwrap_or("").to_string();
                    if input["withDetails"] == json!(true) {
                        let details = RpcStatus {
                            code,
                            message: message.clone(),
                            details: vec![prost_types::Any {
                                type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
                                value: BadRequest {
                                    field_violations: vec![FieldViolation {
                                        field: "name".into(),
                                        description: "must not be empty".into(),
                                    }],
                                }
                                .encode_to_vec(),
                            }],
                        };
                        return Err(Status::with_details(
                            tonic::Code::from_i32(code),
                            message,
                            Bytes::from(details.encode_to_vec()),
                        ));
                    }
                    return Err(Status::new(tonic::Code::from_i32(code), message));
                }
                "Metadata" => {
                    let mut seen = serde_json::Map::new();
                    // Repeated names are joined, so a test can tell one value from two.
                    for (k, v) in &seen_headers {
                        let v = v.to_str().unwrap_or("?");
                        let joined = match seen.get(k.as_str()).and_then(|p| p.as_str()) {
                            Some(prev) => format!("{prev}, {v}"),
                            None => v.to_string(),
                        };
                        seen.insert(k.to_string(), json!(joined));
                    }
                    let mut resp =
                        tonic::Response::new(svc.msg("MetadataReply", json!({"seen": seen})));
                    resp.metadata_mut()
                        .insert("x-served-by", "test".parse().unwrap());
                    return Ok(resp);
                }
                other => return Err(Status::unimplemented(other.to_string())),
            };
            Ok(tonic::Response::new(reply))
        })
    }
}

struct Lister(TestService);

type BookStream = Pin<Box<dyn futures_util::Stream<Item = Result<DynamicMessage, Status>> + Send>>;

impl ServerStreamingService<DynamicMessage> for Lister {
    type Response = DynamicMessage;
    type ResponseStream = BookStream;
    type Future = BoxFuture<Result<tonic::Response<BookStream>, Status>>;

    fn call(&mut self, req: tonic::Request<DynamicMessage>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let input = to_json(req.get_ref());
            let count = input["count"].as_i64().unwrap_or(0);
            let fail = input["failCode"].as_i64().unwrap_or(0) as i32;
            let hold = input["hold"] == json!(true);
            let shelf = input["shelf"].as_str().unwrap_or_default().to_string();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                for i in 0..count {
                    let book = svc.msg("Book", json!({"name": format!("{shelf}/{i}"), "pages": i}));
                    if tx.send(Ok(book)).await.is_err() {
                        return;
                    }
                    if hold && i == 0 {
                        svc.release.notified().await;
                    }
                }
                if fail != 0 {
                    let _ = tx
                        .send(Err(Status::new(
                            tonic::Code::from_i32(fail),
                            "stream failed",
                        )))
                        .await;
                }
            });
            let stream: BookStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(tonic::Response::new(stream))
        })
    }
}

struct Collector(TestService);

impl ClientStreamingService<DynamicMessage> for Collector {
    type Response = DynamicMessage;
    type Future = BoxFuture<Result<tonic::Response<DynamicMessage>, Status>>;

    fn call(&mut self, req: tonic::Request<Streaming<DynamicMessage>>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let mut stream = req.into_inner();
            let mut names = Vec::new();
            while let Some(book) = stream.message().await? {
                names.push(to_json(&book)["name"].clone());
            }
            Ok(tonic::Response::new(svc.msg(
                "CreateBooksReply",
                json!({"count": names.len(), "names": names}),
            )))
        })
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for TestService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            let method = req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            let desc = svc
                .pool
                .get_service_by_name(SERVICE)
                .unwrap()
                .methods()
                .find(|m| m.name() == method);
            let Some(desc) = desc else {
                return Ok(Status::unimplemented(method).into_http());
            };
            let mut grpc = Grpc::new(DynCodec(desc.input()));
            Ok(match method.as_str() {
                "ListBooks" => grpc.server_streaming(Lister(svc.clone()), req).await,
                "CreateBooks" => grpc.client_streaming(Collector(svc.clone()), req).await,
                _ => grpc.unary(Unary(svc.clone(), method), req).await,
            })
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Reflection {
    None,
    V1,
    V1Alpha,
}

pub struct Upstream {
    pub addr: SocketAddr,
    release: Arc<Notify>,
}

pub async fn start_upstream(reflection: Reflection) -> Upstream {
    let fds = descriptor_set();
    let pool = DescriptorPool::decode(fds.as_slice()).unwrap();
    let release = Arc::new(Notify::new());
    let svc = TestService {
        pool,
        release: release.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = tonic::transport::Server::builder();
    let router = match reflection {
        Reflection::None => builder.add_service(svc),
        Reflection::V1 => builder.add_service(svc).add_service(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(&fds)
                .build_v1()
                .unwrap(),
        ),
        Reflection::V1Alpha => builder.add_service(svc).add_service(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(&fds)
                .build_v1alpha()
                .unwrap(),
        ),
    };
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Upstream { addr, release }
}

// ---------------------------------------------------------------------------------------------
// The engine.

fn section(toml_text: &str) -> GrpcSection {
    toml::from_str(toml_text).unwrap()
}

const PROTO_SOURCE: &str =
    "protos = [\"tollgate/test/v1/test.proto\"]\ninclude_paths = [\"proto\"]\n";

fn proto_engine(extra: &str) -> Transcoder {
    Transcoder::build(&section(&format!("{PROTO_SOURCE}{extra}")), &root()).unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn send(
    t: &Transcoder,
    addr: SocketAddr,
    method: &str,
    uri: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = t.handle(req, addr, None).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(t: &Transcoder, addr: SocketAddr, uri: &str) -> Reply {
    send(t, addr, "GET", uri, Bytes::new(), &[]).await
}

async fn post(t: &Transcoder, addr: SocketAddr, uri: &str, body: Value) -> Reply {
    send(
        t,
        addr,
        "POST",
        uri,
        body.to_string(),
        &[("content-type", "application/json")],
    )
    .await
}

/// Every HttpRule feature and JSON mapping case; run once per schema source.
async fn exercise_rules(t: &Transcoder, addr: SocketAddr) {
    // body "*" with every JSON-mapped kind, echoed back.
    let everything = json!({
        "name": "n", "i32": -5, "i64": "9007199254740993", "u64": "18446744073709551615",
        "dbl": 1.5, "flt": 2.5, "flag": true, "blob": "aGk=", "color": "COLOR_RED",
        "tags": ["a", "b"], "numbers": ["1", "-2"],
        "nested": {"id": "x", "depth": 2, "child": {"id": "y", "labels": ["l"]}},
        "counts": {"a": 1}, "children": {"k": {"id": "c"}},
        "at": "2024-01-02T03:04:05Z", "ttl": "1.500s", "mask": "displayName,nested.id",
        "meta": {"k": [1.0, "two", null, true], "o": {"p": "q"}},
        "maybeI32": 0, "maybeStr": "s", "maybeBool": false,
        "extra": {"@type": "type.googleapis.com/tollgate.test.v1.Book", "name": "b1", "pages": "3"},
        "colors": ["COLOR_GREEN", "COLOR_RED"], "loose": "x", "displayName": "D"
    });
    let r = post(t, addr, "/v1/echo", everything.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json(), everything);

    // Numbers may come as JSON numbers or strings; int64 always goes out as a string.
    let r = post(
        t,
        addr,
        "/v1/echo",
        json!({"i64": 12, "i32": "7", "colors": [1]}),
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"i64": "12", "i32": 7, "colors": ["COLOR_RED"]})
    );

    // GET with a path variable and query parameters: repeated, nested, well-known types.
    let r = get(
        t,
        addr,
        "/v1/echo/n%20m?i64=12&tags=a&tags=b+c&nested.child.id=c&nested.labels=x&color=COLOR_GREEN\
         &at=2024-01-02T03:04:05Z&ttl=2s&maybeI32=7&maybe_str=x&mask=a.b,c&flag=true\
         &colors=COLOR_RED&colors=2&displayName=D&blob=aGk%3D&maybeBool=true&dbl=NaN",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"name": "n m", "i64": "12", "tags": ["a", "b c"],
               "nested": {"child": {"id": "c"}, "labels": ["x"]}, "color": "COLOR_GREEN",
               "at": "2024-01-02T03:04:05Z", "ttl": "2s", "maybeI32": 7, "maybeStr": "x",
               "mask": "a.b,c", "flag": true, "colors": ["COLOR_RED", "COLOR_GREEN"],
               "displayName": "D", "blob": "aGk=", "maybeBool": true, "dbl": "NaN"})
    );

    // Nested fields in the path, converted to their types.
    let r = get(t, addr, "/v1/nested/abc/depth/3").await;
    assert_eq!(r.json(), json!({"nested": {"id": "abc", "depth": 3}}));

    // body: "nested" — the body is one field; others come from the path.
    let r = send(
        t,
        addr,
        "PATCH",
        "/v1/echo/n",
        json!({"id": "i", "depth": 4}).to_string(),
        &[],
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"name": "n", "nested": {"id": "i", "depth": 4}})
    );

    // DELETE and a custom method.
    let r = send(t, addr, "DELETE", "/v1/echo/gone", Bytes::new(), &[]).await;
    assert_eq!(r.json(), json!({"name": "gone"}));
    let r = send(
        t,
        addr,
        "SEARCH",
        "/v1/search/q",
        json!({"i32": 1}).to_string(),
        &[],
    )
    .await;
    assert_eq!(r.json(), json!({"name": "q", "i32": 1}));

    // A variable over several segments; int64 beyond 2^53 stays exact as a string.
    let r = get(t, addr, "/v1/shelves/s1/books/b2").await;
    assert_eq!(
        r.json(),
        json!({"name": "shelves/s1/books/b2", "title": "Title of shelves/s1/books/b2",
               "pages": "9007199254740993", "color": "COLOR_GREEN",
               "published": "2023-11-14T22:13:20Z"})
    );

    // `**` keeps %2F encoded and decodes the rest; a single segment decodes everything.
    let r = get(t, addr, "/v1/files/a/b%2Fc/d%20e").await;
    assert_eq!(r.json(), json!({"path": "a/b%2Fc/d e"}));
    let r = get(t, addr, "/v1/files").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({}));
    let r = get(t, addr, "/v1/shelves/a%2Fb").await;
    assert_eq!(r.json(), json!({"name": "a/b", "action": "GetShelf"}));

    // Custom verbs pick the method; a literal segment beats a variable.
    let r = post(t, addr, "/v1/shelves/s1:archive", json!({"reason": "old"})).await;
    assert_eq!(
        r.json(),
        json!({"name": "shelves/s1", "action": "ArchiveShelf", "reason": "old"})
    );
    let r = post(t, addr, "/v1/shelves/s1:restore", json!({})).await;
    assert_eq!(r.json()["action"], "RestoreShelf");
    let r = get(t, addr, "/v1/shelves/special").await;
    assert_eq!(r.json(), json!({"action": "GetSpecialShelf"}));

    // response_body: only the title, as a JSON string.
    let r = get(t, addr, "/v1/titles/b1").await;
    assert_eq!(r.json(), json!("Title of b1"));

    // Server streaming: a JSON array.
    let r = get(t, addr, "/v1/shelves/s/books?count=3").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!([{"name": "s/0"}, {"name": "s/1", "pages": "1"}, {"name": "s/2", "pages": "2"}])
    );
    let r = get(t, addr, "/v1/shelves/s/books").await;
    assert_eq!(r.json(), json!([]));

    // Client streaming: a JSON array body.
    let r = post(
        t,
        addr,
        "/v1/books:batchCreate",
        json!([{"name": "a"}, {"name": "b"}]),
    )
    .await;
    assert_eq!(r.json(), json!({"count": 2, "names": ["a", "b"]}));

    // An error with details: google.rpc.Status JSON, details with @type.
    let r = post(
        t,
        addr,
        "/v1/fail",
        json!({"code": 5, "message": "nope", "withDetails": true}),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"code": 5, "message": "nope", "details": [{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "name", "description": "must not be empty"}]}]})
    );

    // No binding: 404; a bound path with another method: 405 with Allow.
    let r = get(t, addr, "/v1/nothing").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "no_grpc_binding");
    let r = send(t, addr, "PUT", "/v1/echo/x", Bytes::new(), &[]).await;
    assert_eq!(r.status, 405);
    let allow = r.headers["allow"].to_str().unwrap().to_string();
    for m in ["GET", "PATCH", "DELETE"] {
        assert!(allow.contains(m), "{allow}");
    }
    assert!(t.matches_request(
        &Method::GET,
        &"/v1/echo/x".parse().unwrap(),
        &HeaderMap::new()
    ));
    assert!(!t.matches_request(&Method::GET, &"/v2/x".parse().unwrap(), &HeaderMap::new()));
}

#[tokio::test]
async fn rules_work_with_protos_compiled_by_protox() {
    let up = start_upstream(Reflection::None).await;
    exercise_rules(&proto_engine(""), up.addr).await;
}

#[tokio::test]
async fn rules_work_with_a_descriptor_set_file() {
    let up = start_upstream(Reflection::None).await;
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("test.pb");
    std::fs::write(&pb, descriptor_set()).unwrap();
    let t = Transcoder::build(&section("descriptor_set = \"test.pb\""), dir.path()).unwrap();
    exercise_rules(&t, up.addr).await;
}

#[tokio::test]
async fn rules_work_with_server_reflection_v1() {
    let up = start_upstream(Reflection::V1).await;
    let t = Transcoder::build(&section("reflection = true"), &root()).unwrap();
    assert!(!t.is_ready());
    let r = get(&t, up.addr, "/v1/echo/x").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "grpc_schema_unavailable");
    t.prepare(up.addr).await.unwrap();
    assert!(t.is_ready());
    exercise_rules(&t, up.addr).await;
}

#[tokio::test]
async fn reflection_falls_back_to_v1alpha() {
    let up = start_upstream(Reflection::V1Alpha).await;
    let t = Transcoder::build(&section("reflection = true"), &root()).unwrap();
    t.prepare(up.addr).await.unwrap();
    let r = get(&t, up.addr, "/v1/shelves/s1/books/b2").await;
    assert_eq!(r.json()["pages"], "9007199254740993");
}

#[tokio::test]
async fn reflection_endpoint_down_is_a_clear_error() {
    let closed = closed_port().await;
    let t = Transcoder::build(
        &section("reflection = true\nconnect_timeout = \"1s\""),
        &root(),
    )
    .unwrap();
    let err = t.prepare(closed).await.unwrap_err().to_string();
    assert!(
        err.contains("could not connect") && err.contains(&closed.to_string()),
        "{err}"
    );
    // An upstream without the reflection service says so.
    let up = start_upstream(Reflection::None).await;
    let err = t.prepare(up.addr).await.unwrap_err().to_string();
    assert!(
        err.contains("does not serve gRPC server reflection"),
        "{err}"
    );
    assert!(!t.is_ready());
}

async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

#[tokio::test]
async fn unannotated_methods_need_auto_map() {
    let up = start_upstream(Reflection::None).await;
    let uri = format!("/{SERVICE}/Unannotated");
    let r = post(&proto_engine(""), up.addr, &uri, json!({"name": "a"})).await;
    assert_eq!(r.status, 404);
    let r = post(
        &proto_engine("auto_map = true"),
        up.addr,
        &uri,
        json!({"name": "a"}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"name": "a"}));
}

#[tokio::test]
async fn json_options_change_names_defaults_and_enums() {
    let up = start_upstream(Reflection::None).await;
    let t = proto_engine("json_names = \"proto\"\nemit_defaults = true\nenums_as_ints = true");
    let r = post(
        &t,
        up.addr,
        "/v1/echo",
        json!({"displayName": "D", "color": "COLOR_RED"}),
    )
    .await;
    let v = r.json();
    assert_eq!(v["display_name"], "D");
    assert_eq!(v["color"], 1);
    assert_eq!(v["i64"], "0");
    assert_eq!(v["tags"], json!([]));
    assert_eq!(v["flag"], false);

    let strict = proto_engine("");
    let r = post(&strict, up.addr, "/v1/echo", json!({"color": "color_red"})).await;
    assert_eq!(r.status, 400);
    let folded = proto_engine("case_insensitive_enums = true");
    let r = post(
        &folded,
        up.addr,
        "/v1/echo",
        json!({"color": "color_red", "colors": ["Color_Green"], "nested": {"color": "COLOR_green"},
               "extra": {"@type": "type.googleapis.com/tollgate.test.v1.Book", "color": "color_red"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["color"], "COLOR_RED");
    assert_eq!(v["colors"], json!(["COLOR_GREEN"]));
    assert_eq!(v["nested"]["color"], "COLOR_GREEN");
    assert_eq!(v["extra"]["color"], "COLOR_RED");
    let r = get(&folded, up.addr, "/v1/echo/x?color=color_green").await;
    assert_eq!(r.json()["color"], "COLOR_GREEN");
}

#[tokio::test]
async fn unknown_fields_are_rejected_or_ignored_as_configured() {
    let up = start_upstream(Reflection::None).await;
    let strict = proto_engine("");
    let r = post(
        &strict,
        up.addr,
        "/v1/echo",
        json!({"name": "a", "nmae": "b"}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nmae"));
    let r = get(&strict, up.addr, "/v1/echo/x?bogus=1").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bogus"));
    // A query parameter for a field the path already sets is refused too.
    let r = get(&strict, up.addr, "/v1/echo/x?name=y").await;
    assert_eq!(r.status, 400);

    let lax = proto_engine("unknown_fields = \"ignore\"");
    let r = post(&lax, up.addr, "/v1/echo", json!({"name": "a", "nmae": "b"})).await;
    assert_eq!(r.json(), json!({"name": "a"}));
    let r = get(&lax, up.addr, "/v1/echo/x?bogus=1&name=y").await;
    assert_eq!(r.json(), json!({"name": "x"}));
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_problem() {
    let up = start_upstream(Reflection::None).await;
    let t = proto_engine("max_body_bytes = 2048\nmax_depth = 8");
    let cases: Vec<(Bytes, &str)> = vec![
        (Bytes::from_static(b"{\"name\": "), "not valid JSON"),
        (Bytes::from_static(b"{\"i32\": \"abc\"}"), "i32"),
        (Bytes::from_static(b"{\"i32\": 3000000000}"), "i32"),
        (Bytes::from_static(b"{\"u64\": -1}"), "u64"),
        (Bytes::from_static(b"{\"flag\": \"yes\"}"), "flag"),
        (Bytes::from_static(b"{\"at\": \"yesterday\"}"), "at"),
        (Bytes::from_static(b"{\"ttl\": \"5 minutes\"}"), "ttl"),
        (
            Bytes::from_static(b"{\"nested\": {\"depth\": 1.5}}"),
            "nested.depth",
        ),
        (Bytes::from_static(b"{\"tags\": \"a\"}"), "tags"),
        (
            Bytes::from_static(b"{\"extra\": {\"@type\": \"type.googleapis.com/no.Such\"}}"),
            "extra",
        ),
        (Bytes::from_static(b"[1, 2]"), "invalid request"),
        (
            Bytes::from_static(b"{\"name\": \"\xff\xfe\"}"),
            "not valid JSON",
        ),
        (
            Bytes::from(format!(
                "{}{}",
                "{\"meta\":{\"a\":".repeat(10),
                "1".to_string() + &"}}".repeat(10)
            )),
            "deeper than 8",
        ),
        (
            Bytes::from(format!("{}1{}", "[".repeat(200), "]".repeat(200))),
            "deeper",
        ),
    ];
    for (body, needle) in cases {
        let r = send(&t, up.addr, "POST", "/v1/echo", body.clone(), &[]).await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(&body));
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
        assert_eq!(r.json()["error"]["status"], 400);
    }
    // Path and query values of the wrong type.
    let r = get(&t, up.addr, "/v1/nested/a/depth/deep").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nested.depth"));
    let r = get(&t, up.addr, "/v1/echo/x?flag=maybe").await;
    assert_eq!(r.status, 400);
    let r = get(&t, up.addr, "/v1/echo/x?nested=1").await;
    assert_eq!(r.status, 400);
    let r = get(&t, up.addr, "/v1/echo/%ff").await;
    assert_eq!(r.status, 400);
    let r = get(&t, up.addr, "/v1/echo/x?tags=%ff").await;
    assert_eq!(r.status, 400);
    // Over the body limit: 413, by declared length or by counting.
    let big = Bytes::from(format!("{{\"name\": \"{}\"}}", "x".repeat(4096)));
    let r = send(&t, up.addr, "POST", "/v1/echo", big.clone(), &[]).await;
    assert_eq!(r.status, 413);
    let r = send(
        &t,
        up.addr,
        "POST",
        "/v1/echo",
        big,
        &[("content-length", "5000")],
    )
    .await;
    assert_eq!(r.status, 413);
    // Client streaming wants an array.
    let r = post(&t, up.addr, "/v1/books:batchCreate", json!("book")).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn build_errors_are_actionable() {
    let err = Transcoder::build(
        &section("protos = [\"missing.proto\"]\ninclude_paths = [\"proto\"]"),
        &root(),
    )
    .unwrap_err();
    assert!(err.contains("missing.proto"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.proto"),
        "syntax = \"proto3\";\nmessage M {\n  int32 = 1;\n}\n",
    )
    .unwrap();
    let err = Transcoder::build(&section("protos = [\"bad.proto\"]"), dir.path()).unwrap_err();
    assert!(err.starts_with("bad.proto:3:"), "{err}");

    std::fs::write(
        dir.path().join("rule.proto"),
        "syntax = \"proto3\";\nimport \"google/api/annotations.proto\";\n\
         service S { rpc M(R) returns (R) { option (google.api.http) = { get: \"/v1/{missing}\" }; } }\n\
         message R { string name = 1; }\n",
    )
    .unwrap();
    let err = Transcoder::build(&section("protos = [\"rule.proto\"]"), dir.path()).unwrap_err();
    assert!(err.contains("`missing` is not a field of `R`"), "{err}");

    std::fs::write(dir.path().join("junk.pb"), b"\x0a\xff\xff").unwrap();
    let err = Transcoder::build(&section("descriptor_set = \"junk.pb\""), dir.path()).unwrap_err();
    assert!(err.contains("junk.pb"), "{err}");
    let err = Transcoder::build(&section("descriptor_set = \"none.pb\""), dir.path()).unwrap_err();
    assert!(err.contains("none.pb"), "{err}");
    let err = Transcoder::build(
        &section(&format!("{PROTO_SOURCE}services = [\"x.Nope\"]")),
        &root(),
    )
    .unwrap_err();
    assert!(err.contains("x.Nope"), "{err}");
}

/// Reads a streamed response chunk by chunk.
async fn chunks_of(
    t: &Transcoder,
    addr: SocketAddr,
    uri: &str,
) -> (http::response::Parts, hyper_body::Body) {
    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    let (parts, body) = t.handle(req, addr, None).await.into_parts();
    (parts, hyper_body::Body(body))
}

mod hyper_body {
    use bytes::Bytes;
    use http_body_util::BodyExt;

    pub struct Body(pub tollgate::grpc::ResponseBody);

    impl Body {
        pub async fn next(&mut self) -> Option<Bytes> {
            loop {
                let frame = self.0.frame().await?.ok()?;
                if let Ok(d) = frame.into_data() {
                    return Some(d);
                }
            }
        }

        pub async fn rest(mut self) -> String {
            let mut out = String::new();
            while let Some(b) = self.next().await {
                out.push_str(&String::from_utf8_lossy(&b));
            }
            out
        }
    }
}

#[tokio::test]
async fn server_stream_is_sent_as_messages_arrive() {
    let up = start_upstream(Reflection::None).await;
    let t = proto_engine("");
    let (parts, mut body) = chunks_of(&t, up.addr, "/v1/shelves/s/books?count=2&hold=true").await;
    assert_eq!(parts.status, 200);
    // The first book arrives while the upstream is still holding the second one back.
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"[{\"name\":\"s/0\"}");
    up.release.notify_one();
    assert_eq!(body.rest().await, ",{\"name\":\"s/1\",\"pages\":\"1\"}]");
}

#[tokio::test]
async fn stream_formats_ndjson_and_sse() {
    let up = start_upstream(Reflection::None).await;
    let nd = proto_engine("stream_format = \"ndjson\"");
    let (parts, body) = chunks_of(&nd, up.addr, "/v1/shelves/s/books?count=2").await;
    assert_eq!(parts.headers["content-type"], "application/x-ndjson");
    assert_eq!(
        body.rest().await,
        "{\"name\":\"s/0\"}\n{\"name\":\"s/1\",\"pages\":\"1\"}\n"
    );

    let sse = proto_engine("stream_format = \"sse\"");
    let (parts, body) = chunks_of(&sse, up.addr, "/v1/shelves/s/books?count=1&failCode=8").await;
    assert_eq!(parts.headers["content-type"], "text/event-stream");
    assert_eq!(
        body.rest().await,
        "data: {\"name\":\"s/0\"}\n\nevent: error\ndata: {\"error\":{\"code\":8,\"details\":[],\"message\":\"stream failed\"}}\n\n"
    );
}

#[tokio::test]
async fn stream_errors_before_and_after_the_first_message() {
    let up = start_upstream(Reflection::None).await;
    let t = proto_engine("");
    // Before any message: a normal error response with the mapped status.
    let r = get(&t, up.addr, "/v1/shelves/s/books?failCode=7").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], 7);
    // After: the array ends with an error element.
    let r = get(&t, up.addr, "/v1/shelves/s/books?count=1&failCode=14").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!([{"name": "s/0"}, {"error": {"code": 14, "message": "stream failed", "details": []}}])
    );
}

#[tokio::test]
async fn grpc_codes_map_to_http_statuses() {
    let up = start_upstream(Reflection::None).await;
    let t = proto_engine("");
    for (code, http) in [
        (3, 400),
        (4, 504),
        (6, 409),
        (8, 429),
        (12, 501),
        (14, 503),
        (16, 401),
        (1, 499),
    ] {
        let r = post(
            &t,
            up.addr,
            "/v1/fail",
            json!({"code": code, "message": "m"}),
        )
        .await;
        assert_eq!(r.status.as_u16(), http, "code {code}");
        assert_eq!(
            r.json(),
            json!({"code": code, "message": "m", "details": []})
        );
    }
}

#[tokio::test]
async fn metadata_is_forwarded_by_allowlist_and_returned_with_a_prefix() {
    let up = start_upstream(Reflection::None).await;
    let t = proto_engine("timeout = \"5s\"");
    let r = send(
        &t,
        up.addr,
        "GET",
        "/v1/metadata",
        Bytes::new(),
        &[
            ("authorization", "Bearer t"),
            ("x-request-id", "rid-1"),
            ("x-custom", "no"),
            ("traceparent", "00-abc-def-01"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = &r.json()["seen"];
    assert_eq!(seen["authorization"], "Bearer t");
    assert_eq!(seen["x-request-id"], "rid-1");
    assert_eq!(seen["traceparent"], "00-abc-def-01");
    assert!(seen.get("x-custom").is_none(), "{seen}");
    assert!(seen["grpc-timeout"].as_str().is_some(), "{seen}");
    assert_eq!(r.headers["grpc-metadata-x-served-by"], "test");

    let custom = proto_engine(
        "forward_headers = [\"x-custom\"]\nresponse_headers = [\"x-served-by\"]\nresponse_header_prefix = \"\"",
    );
    let r = send(
        &custom,
        up.addr,
        "GET",
        "/v1/metadata",
        Bytes::new(),
        &[("x-custom", "yes"), ("authorization", "a")],
    )
    .await;
    let seen = &r.json()["seen"];
    assert_eq!(seen["x-custom"], "yes");
    assert!(seen.get("authorization").is_none());
    assert_eq!(r.headers["x-served-by"], "test");
}

#[tokio::test]
async fn gateway_errors_for_upstream_trouble() {
    let t = proto_engine("connect_timeout = \"1s\"");
    let closed = closed_port().await;
    let r = send(
        &t,
        closed,
        "GET",
        "/v1/echo/x",
        Bytes::new(),
        &[("x-request-id", "r1")],
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_unreachable");
    assert_eq!(r.json()["error"]["request_id"], "r1");

    let r = get(&t, start_fake_upstream(200).await, "/v1/echo/x").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_no_status");
    let r = get(&t, start_fake_upstream(404).await, "/v1/echo/x").await;
    assert_eq!(r.status, 501);
    assert_eq!(r.json()["code"], 12);
}

/// An HTTP/2 server that misbehaves: with `status` 200 a gRPC reply without grpc-status, else a
/// plain HTTP error.
async fn start_fake_upstream(status: u16) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        let mut frame = BytesMut::new();
                        frame.put_u8(0);
                        frame.put_u32(0);
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/grpc");
                        Ok::<_, Infallible>(resp.body(Full::new(frame.freeze())).unwrap())
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// gRPC-Web.

pub fn web_frame(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.push(flags);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// Splits a gRPC-Web body into (messages, trailer block).
pub fn web_frames(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let mut msgs = Vec::new();
    let mut trailers = String::new();
    while body.len() >= 5 {
        let flags = body[0];
        let len = (&body[1..5]).get_u32() as usize;
        let payload = &body[5..5 + len];
        if flags & 0x80 != 0 {
            trailers.push_str(std::str::from_utf8(payload).unwrap());
        } else {
            msgs.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    (msgs, trailers)
}

pub fn book_request(pool: &DescriptorPool, name: &str) -> Vec<u8> {
    let desc = pool
        .get_message_by_name(&format!("{PKG}.GetBookRequest"))
        .unwrap();
    DynamicMessage::deserialize(desc, json!({"name": name}))
        .unwrap()
        .encode_to_vec()
}

#[tokio::test]
async fn grpc_web_binary_reaches_the_grpc_server() {
    let up = start_upstream(Reflection::None).await;
    let pool = DescriptorPool::decode(descriptor_set().as_slice()).unwrap();
    let t = proto_engine("");
    let uri = format!("/{SERVICE}/GetBook");
    let ct = [
        ("content-type", "application/grpc-web+proto"),
        ("x-grpc-web", "1"),
    ];
    assert!(t.matches_request(&Method::POST, &uri.parse().unwrap(), &{
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/grpc-web+proto".parse().unwrap(),
        );
        h
    }));
    let r = send(
        &t,
        up.addr,
        "POST",
        &uri,
        web_frame(0, &book_request(&pool, "b")),
        &ct,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/grpc-web+proto");
    assert!(r.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("grpc-status"));
    let (msgs, trailers) = web_frames(&r.body);
    assert_eq!(msgs.len(), 1);
    let book = DynamicMessage::decode(
        pool.get_message_by_name(&format!("{PKG}.Book")).unwrap(),
        msgs[0].as_slice(),
    )
    .unwrap();
    assert_eq!(to_json(&book)["title"], "Title of b");
    assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers}");

    // A failing call: the status travels in the trailer frame.
    let fail_desc = pool
        .get_message_by_name(&format!("{PKG}.FailRequest"))
        .unwrap();
    let fail =
        DynamicMessage::deserialize(fail_desc, json!({"code": 5, "message": "no book"})).unwrap();
    let r = send(
        &t,
        up.addr,
        "POST",
        &format!("/{SERVICE}/Fail"),
        web_frame(0, &fail.encode_to_vec()),
        &ct,
    )
    .await;
    let (msgs, trailers) = web_frames(&r.body);
    assert!(msgs.is_empty());
    assert!(trailers.contains("grpc-status: 5"), "{trailers}");
    assert!(
        trailers.contains("grpc-message: no book") || trailers.contains("grpc-message: no%20book"),
        "{trailers}"
    );

    // Server streaming over gRPC-Web.
    let list_desc = pool
        .get_message_by_name(&format!("{PKG}.ListBooksRequest"))
        .unwrap();
    let list = DynamicMessage::deserialize(list_desc, json!({"shelf": "s", "count": 3})).unwrap();
    let r = send(
        &t,
        up.addr,
        "POST",
        &format!("/{SERVICE}/ListBooks"),
        web_frame(0, &list.encode_to_vec()),
        &ct,
    )
    .await;
    let (msgs, trailers) = web_frames(&r.body);
    assert_eq!(msgs.len(), 3);
    assert!(trailers.contains("grpc-status: 0"));

    // The upstream down: a trailer frame with UNAVAILABLE, still HTTP 200.
    let r = send(
        &t,
        closed_port().await,
        "POST",
        &uri,
        web_frame(0, &book_request(&pool, "b")),
        &ct,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(web_frames(&r.body).1.contains("grpc-status: 14"));
}

#[tokio::test]
async fn grpc_web_text_with_chunked_base64() {
    let up = start_upstream(Reflection::None).await;
    let pool = DescriptorPool::decode(descriptor_set().as_slice()).unwrap();
    let t = proto_engine("");
    let frame = web_frame(0, &book_request(&pool, "text"));
    let b64 = base64::engine::general_purpose::STANDARD;
    // Two separately padded chunks, as a streaming client sends them.
    let (a, b) = frame.split_at(4);
    let body = format!("{}{}", b64.encode(a), b64.encode(b));
    let r = send(
        &t,
        up.addr,
        "POST",
        &format!("/{SERVICE}/GetBook"),
        body,
        &[
            ("content-type", "application/grpc-web-text"),
            ("accept", "application/grpc-web-text"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/grpc-web-text+proto");
    // The response is base64 per frame; decode it group by group.
    let text: Vec<u8> = r.body.iter().copied().collect();
    let mut raw = Vec::new();
    for group in text.chunks(4) {
        raw.extend(b64.decode(group).unwrap());
    }
    let (msgs, trailers) = web_frames(&raw);
    let book = DynamicMessage::decode(
        pool.get_message_by_name(&format!("{PKG}.Book")).unwrap(),
        msgs[0].as_slice(),
    )
    .unwrap();
    assert_eq!(to_json(&book)["name"], "text");
    assert!(trailers.contains("grpc-status: 0"));

    let r = send(
        &t,
        up.addr,
        "POST",
        &format!("/{SERVICE}/GetBook"),
        "@@@@",
        &[("content-type", "application/grpc-web-text")],
    )
    .await;
    assert!(!r.body.is_empty());
    let mut raw = Vec::new();
    for group in r.body.chunks(4) {
        raw.extend(b64.decode(group).unwrap());
    }
    assert!(web_frames(&raw).1.contains("grpc-status: 3"));
}

#[tokio::test]
async fn deadline_from_the_route_ends_a_slow_stream() {
    let up = start_upstream(Reflection::None).await;
    // Long enough for the first book on a loaded machine (the deadline covers the whole call).
    let t = proto_engine("timeout = \"3s\"");
    // The upstream holds the stream after the first book and is never released.
    let r = get(&t, up.addr, "/v1/shelves/s/books?count=2&hold=true").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v[0]["name"], "s/0");
    assert_eq!(v[1]["error"]["code"], 4, "{v}");
}

#[test]
fn trailers_only_helper_for_the_proxy() {
    let r = tollgate::grpc::trailers_only_for_status(StatusCode::TOO_MANY_REQUESTS, "slow down");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "8");
    assert_eq!(r.headers()["grpc-message"], "slow down");
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/grpc+proto".parse().unwrap());
    assert!(tollgate::grpc::is_grpc_request(&h));
    h.insert("content-type", "application/grpc-web".parse().unwrap());
    assert!(!tollgate::grpc::is_grpc_request(&h));
    assert!(tollgate::grpc::is_grpc_web(&h));
}

// ---------------------------------------------------------------------------------------------
// h2 over TLS: a TLS terminator (ALPN h2) in front of the tonic server.

async fn start_tls_front(backend: SocketAddr) -> (SocketAddr, Arc<rustls::ClientConfig>) {
    let (addr, der, _) = common::tls_front(backend).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    (addr, Arc::new(client))
}

#[tokio::test]
async fn h2_over_tls_upstream_with_reflection() {
    let up = start_upstream(Reflection::V1).await;
    let (front, client) = start_tls_front(up.addr).await;
    let target = Target::h2(front, client.clone(), "localhost")
        .unwrap()
        .with_authority("books.internal");
    let t = Transcoder::build(&section("reflection = true"), &root()).unwrap();
    t.prepare_with(&target).await.unwrap();
    let req = Request::get("/v1/shelves/s1/books/b2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = t.handle_with(req, &target).await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["name"], "shelves/s1/books/b2");

    // A certificate for another name is refused: 502, naming the TLS failure.
    let wrong = Target::h2(front, client, "other.example").unwrap();
    let req = Request::get("/v1/echo/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = t.handle_with(req, &wrong).await;
    assert_eq!(resp.status(), 502);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("TLS handshake"));
}
