//! The response body type the engine hands to the proxy: boxed, so that a streamed body (server
//! streaming, gRPC-Web) and a whole one look the same to the caller.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};

/// A response body: data frames only (trailers of gRPC-Web travel inside the body). An error
/// means the upstream broke off mid-stream; the proxy should then abort the client response.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    full(Bytes::new())
}

/// A body sent chunk by chunk as the stream yields them.
pub fn streamed<S>(chunks: S) -> ResponseBody
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    StreamBody::new(chunks.map(|c| c.map(hyper::body::Frame::data))).boxed_unsync()
}
