//! Fetching descriptors from an upstream's gRPC server reflection service (v1, falling back to
//! v1alpha): list the services, ask for the file of each, then for every import still missing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use prost::Message;

use super::client::{grpc_request, pool};
use super::framing::encode;
use super::reader::MessageReader;
use super::rules::RawFile;
use super::status::GrpcStatus;
use super::target::Target;

/// More files than any real schema has; stops a misbehaving server from feeding us forever.
const MAX_FILES: usize = 2000;
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Clone, PartialEq, prost::Message)]
struct ReflectionRequest {
    #[prost(string, tag = "1")]
    host: String,
    #[prost(oneof = "Ask", tags = "3, 4, 7")]
    ask: Option<Ask>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Ask {
    #[prost(string, tag = "3")]
    FileByFilename(String),
    #[prost(string, tag = "4")]
    FileContainingSymbol(String),
    #[prost(string, tag = "7")]
    ListServices(String),
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReflectionResponse {
    #[prost(oneof = "Answer", tags = "4, 6, 7")]
    answer: Option<Answer>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Answer {
    #[prost(message, tag = "4")]
    Files(FileDescriptors),
    #[prost(message, tag = "6")]
    Services(ServiceList),
    #[prost(message, tag = "7")]
    Error(ErrorAnswer),
}

#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptors {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file_descriptor_proto: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceList {
    #[prost(message, repeated, tag = "1")]
    service: Vec<ServiceName>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceName {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ErrorAnswer {
    #[prost(int32, tag = "1")]
    error_code: i32,
    #[prost(string, tag = "2")]
    error_message: String,
}

const V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// One reflection session against one upstream.
struct Session<'a> {
    target: &'a Target,
    path: &'static str,
    timeout: Duration,
}

/// Fetches every file needed by the upstream's services (all but the reflection service
/// itself, or only `services` when given), as `(name, bytes)`.
pub async fn fetch(
    target: &Target,
    services: &[String],
    timeout: Duration,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut session = Session {
        target,
        path: V1,
        timeout,
    };
    let listed = match session.ask(Ask::ListServices(String::new())).await {
        Ok(a) => a,
        Err(Failure::Unimplemented) => {
            session.path = V1ALPHA;
            session
                .ask(Ask::ListServices(String::new()))
                .await
                .map_err(|e| e.describe(target.addr()))?
        }
        Err(e) => return Err(e.describe(target.addr())),
    };
    let Answer::Services(list) = listed else {
        return Err(format!(
            "reflection at {}: unexpected answer to list_services",
            target.addr()
        ));
    };
    let names: Vec<String> = if services.is_empty() {
        list.service
            .into_iter()
            .map(|s| s.name)
            .filter(|n| !n.starts_with("grpc.reflection."))
            .collect()
    } else {
        services.to_vec()
    };
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for name in &names {
        let answer = session
            .ask(Ask::FileContainingSymbol(name.clone()))
            .await
            .map_err(|e| e.describe(target.addr()))?;
        add_files(&mut files, answer, name)?;
    }
    // Servers usually send imports along; ask for any they left out.
    loop {
        let missing: Vec<String> = files
            .values()
            .filter_map(|b| RawFile::decode(b.as_slice()).ok())
            .flat_map(|f| f.dependency)
            .filter(|d| !files.contains_key(d))
            .collect();
        if missing.is_empty() {
            break;
        }
        let before = files.len();
        for dep in missing {
            if files.contains_key(&dep) {
                continue;
            }
            match session.ask(Ask::FileByFilename(dep.clone())).await {
                Ok(answer) => add_files(&mut files, answer, &dep)?,
                // Not served: the embedded files may still provide it (google/api, WKTs).
                Err(Failure::NotFound(_)) => {}
                Err(e) => return Err(e.describe(target.addr())),
            }
        }
        if files.len() == before || files.len() > MAX_FILES {
            break;
        }
    }
    Ok(files.into_iter().collect())
}

fn add_files(
    files: &mut HashMap<String, Vec<u8>>,
    answer: Answer,
    asked: &str,
) -> Result<(), String> {
    let Answer::Files(fds) = answer else {
        return Err(format!("reflection: unexpected answer for `{asked}`"));
    };
    for bytes in fds.file_descriptor_proto {
        let raw = RawFile::decode(bytes.as_slice())
            .map_err(|e| format!("reflection sent a broken descriptor for `{asked}`: {e}"))?;
        files.entry(raw.name).or_insert(bytes);
        if files.len() > MAX_FILES {
            return Err(format!("reflection: more than {MAX_FILES} files"));
        }
    }
    Ok(())
}

enum Failure {
    Unimplemented,
    NotFound(String),
    Other(String),
}

impl Failure {
    fn describe(self, target: SocketAddr) -> String {
        match self {
            Failure::Unimplemented => {
                format!("upstream {target} does not serve gRPC server reflection (v1 or v1alpha)")
            }
            Failure::NotFound(m) | Failure::Other(m) => {
                format!("gRPC reflection from {target} failed: {m}")
            }
        }
    }
}

impl Session<'_> {
    /// One request on its own stream, read to its single answer.
    async fn ask(&mut self, ask: Ask) -> Result<Answer, Failure> {
        let msg = ReflectionRequest {
            host: String::new(),
            ask: Some(ask),
        };
        let mut buf = BytesMut::new();
        encode(0, &msg.encode_to_vec(), &mut buf);
        let uri = self
            .target
            .uri(self.path)
            .map_err(|e| Failure::Other(e.to_string()))?;
        let body = buf.freeze();
        let make = || grpc_request(uri.clone(), None, body.clone());
        let req = make().ok_or_else(|| Failure::Other("could not build the request".into()))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let send = pool().send(self.target, req, &make, self.timeout);
        let resp = tokio::time::timeout_at(deadline, send)
            .await
            .map_err(|_| Failure::Other("timed out".into()))?
            .map_err(|e| Failure::Other(e.to_string()))?;
        let (head, body) = resp.into_parts();
        if head.status != StatusCode::OK {
            return Err(Failure::Other(format!("HTTP {}", head.status)));
        }
        if let Some(s) = GrpcStatus::from_headers(&head.headers) {
            return Err(status_failure(&s));
        }
        let mut reader = MessageReader::new(body, MAX_MESSAGE, Some(deadline));
        let first: Option<Bytes> = reader
            .next_message()
            .await
            .map_err(|e| Failure::Other(e.to_string()))?;
        let Some(first) = first else {
            // No answer: the trailers say why.
            while reader.next_message().await.ok().flatten().is_some() {}
            return Err(reader
                .trailers()
                .and_then(GrpcStatus::from_headers)
                .map_or_else(
                    || Failure::Other("empty reflection answer".into()),
                    |s| status_failure(&s),
                ));
        };
        let answer = ReflectionResponse::decode(first)
            .map_err(|e| Failure::Other(format!("undecodable answer: {e}")))?
            .answer
            .ok_or_else(|| Failure::Other("empty reflection answer".into()))?;
        match answer {
            Answer::Error(e) if e.error_code == 5 => Err(Failure::NotFound(e.error_message)),
            Answer::Error(e) => Err(Failure::Other(format!(
                "code {}: {}",
                e.error_code, e.error_message
            ))),
            a => Ok(a),
        }
    }
}

fn status_failure(s: &GrpcStatus) -> Failure {
    match s.code {
        12 => Failure::Unimplemented,
        5 => Failure::NotFound(s.message.clone()),
        c => Failure::Other(format!("grpc-status {c}: {}", s.message)),
    }
}
