//! Fetching descriptors from an upstream's gRPC server reflection service (v1, falling back to
//! v1alpha): list the services, ask for the file of each, then for every import still missing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use prost::Message;

use super::client::{grpc_request, pool, CallError};
use super::framing::encode;
use super::reader::{MessageReader, ReadError};
use super::rules::RawFile;
use super::status::GrpcStatus;
use super::target::Target;

/// Why a schema could not be loaded by reflection from an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    /// Neither v1 nor v1alpha of the reflection service is there (UNIMPLEMENTED).
    #[error("upstream {0} does not serve gRPC server reflection (v1 or v1alpha)")]
    NotServed(SocketAddr),
    /// A reflection request failed.
    #[error("gRPC reflection from {target} failed: {problem}")]
    Failed {
        /// The upstream asked.
        target: SocketAddr,
        /// What went wrong.
        problem: ReflectionProblem,
    },
    /// `list_services` was answered with something other than a service list.
    #[error("reflection at {0}: unexpected answer to list_services")]
    NotAServiceList(SocketAddr),
    /// A request for the files of a symbol or file name was answered with something else.
    #[error("reflection: unexpected answer for `{0}`")]
    NotFiles(String),
    /// A file descriptor in an answer does not decode.
    #[error("reflection sent a broken descriptor for `{asked}`: {error}")]
    BrokenDescriptor {
        /// The symbol or file name asked for.
        asked: String,
        /// The decoder's error.
        error: prost::DecodeError,
    },
    /// The server sent more files than any real schema has.
    #[error("reflection: more than {MAX_FILES} files")]
    TooManyFiles,
    /// The files arrived but do not make a schema. `detail` stays text: the schema builder
    /// (schema.rs) also words the config report's schema errors, where text is the currency.
    #[error("grpc reflection from {target}: {detail}")]
    Schema {
        /// The upstream asked.
        target: SocketAddr,
        /// Why the files do not make a schema.
        detail: String,
    },
}

/// Why one reflection request failed.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionProblem {
    /// The target and the service path do not make a URI.
    #[error("{0}")]
    Uri(http::Error),
    /// The request could not be built.
    #[error("could not build the request")]
    Request,
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// The upstream could not be reached, or the stream failed.
    #[error("{0}")]
    Call(CallError),
    /// An HTTP status other than 200.
    #[error("HTTP {0}")]
    Http(StatusCode),
    /// The symbol or file is not known to the server (NOT_FOUND), in the server's words.
    #[error("{0}")]
    NotFound(String),
    /// Another gRPC status than OK.
    #[error("grpc-status {code}: {message}")]
    Status {
        /// The status code.
        code: u32,
        /// Its message.
        message: String,
    },
    /// The answer could not be read.
    #[error("{0}")]
    Read(ReadError),
    /// The call ended without an answer message and without a status saying why.
    #[error("empty reflection answer")]
    Empty,
    /// The answer message does not decode.
    #[error("undecodable answer: {0}")]
    Undecodable(prost::DecodeError),
    /// The server answered with an error other than NOT_FOUND.
    #[error("code {code}: {message}")]
    Refused {
        /// Its code.
        code: i32,
        /// Its message.
        message: String,
    },
}

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
) -> Result<Vec<(String, Vec<u8>)>, ReflectionError> {
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
        return Err(ReflectionError::NotAServiceList(target.addr()));
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
                Err(Failure::Failed(ReflectionProblem::NotFound(_))) => {}
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
) -> Result<(), ReflectionError> {
    let Answer::Files(fds) = answer else {
        return Err(ReflectionError::NotFiles(asked.to_string()));
    };
    for bytes in fds.file_descriptor_proto {
        let raw = RawFile::decode(bytes.as_slice()).map_err(|error| {
            ReflectionError::BrokenDescriptor {
                asked: asked.to_string(),
                error,
            }
        })?;
        files.entry(raw.name).or_insert(bytes);
        if files.len() > MAX_FILES {
            return Err(ReflectionError::TooManyFiles);
        }
    }
    Ok(())
}

/// How one reflection request failed. UNIMPLEMENTED is kept apart: on v1 it means "try
/// v1alpha", not a failure.
enum Failure {
    Unimplemented,
    Failed(ReflectionProblem),
}

impl From<ReflectionProblem> for Failure {
    fn from(p: ReflectionProblem) -> Self {
        Failure::Failed(p)
    }
}

impl Failure {
    fn describe(self, target: SocketAddr) -> ReflectionError {
        match self {
            Failure::Unimplemented => ReflectionError::NotServed(target),
            Failure::Failed(problem) => ReflectionError::Failed { target, problem },
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
        let uri = self.target.uri(self.path).map_err(ReflectionProblem::Uri)?;
        let body = buf.freeze();
        let make = || grpc_request(uri.clone(), None, body.clone());
        let req = make().ok_or(ReflectionProblem::Request)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let send = pool().send(self.target, req, &make, self.timeout);
        let resp = tokio::time::timeout_at(deadline, send)
            .await
            .map_err(|_| ReflectionProblem::Timeout)?
            .map_err(ReflectionProblem::Call)?;
        let (head, body) = resp.into_parts();
        if head.status != StatusCode::OK {
            return Err(ReflectionProblem::Http(head.status).into());
        }
        if let Some(s) = GrpcStatus::from_headers(&head.headers) {
            return Err(status_failure(&s));
        }
        let mut reader = MessageReader::new(body, MAX_MESSAGE, Some(deadline));
        let first: Option<Bytes> = reader
            .next_message()
            .await
            .map_err(ReflectionProblem::Read)?;
        let Some(first) = first else {
            // No answer: the trailers say why.
            while reader.next_message().await.ok().flatten().is_some() {}
            return Err(reader
                .trailers()
                .and_then(GrpcStatus::from_headers)
                .map_or_else(|| ReflectionProblem::Empty.into(), |s| status_failure(&s)));
        };
        let answer = ReflectionResponse::decode(first)
            .map_err(ReflectionProblem::Undecodable)?
            .answer
            .ok_or(ReflectionProblem::Empty)?;
        match answer {
            Answer::Error(e) if e.error_code == 5 => {
                Err(ReflectionProblem::NotFound(e.error_message).into())
            }
            Answer::Error(e) => Err(ReflectionProblem::Refused {
                code: e.error_code,
                message: e.error_message,
            }
            .into()),
            a => Ok(a),
        }
    }
}

fn status_failure(s: &GrpcStatus) -> Failure {
    match s.code {
        12 => Failure::Unimplemented,
        5 => ReflectionProblem::NotFound(s.message.clone()).into(),
        code => ReflectionProblem::Status {
            code,
            message: s.message.clone(),
        }
        .into(),
    }
}
