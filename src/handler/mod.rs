//! Route handlers: what serves a route's requests once the plugins let them through. Every
//! route ends in exactly one handler.
//!
//! - [`Handler::Proxy`]: pingora proxies the request to the route's upstream, streaming both
//!   ways; the shell's upstream phases (src/proxy/upstream.rs) pick targets and retry through
//!   [`crate::upstream::Attempt`].
//! - [`Handler::Serve`]: the gateway answers itself through a [`ServeHandler`] — today gRPC
//!   transcoding (src/handler/grpc.rs), publishing (src/handler/publish.rs) and request-reply
//!   (src/handler/request_reply.rs) over a broker; a new kind of route adds its own module
//!   here.
//!
//! The contract of a `ServeHandler`, in the order the pipeline calls it:
//! 1. [`ServeHandler::takes`] — after routing and the plugins' request phase: whether this
//!    request is the handler's. `false` sends it to the proxy path instead (a transcoding route
//!    passes native gRPC through).
//! 2. The pipeline reads the request body, whole, at most [`ServeHandler::max_body_bytes`] + 1
//!    bytes (one more than the limit, so the handler can tell "too large" from "exactly full"),
//!    under the listener's body deadlines. A late body is the client's 408; the handler never
//!    sees it.
//! 3. [`ServeHandler::serve`] — with the head, the body and the route's context (its upstream
//!    tries, the request id, the ring-hash key, whether the request may be sent again). It
//!    returns a response whose body the pipeline streams to the client (the plugins' response
//!    phase runs on its head), or a [`GatewayError`] the pipeline renders in the client's
//!    shape. A body that fails mid-stream cuts the client's response off; so does a chunk not
//!    written within the response's [`StallTimeout`], when it carries one. While a body of
//!    unknown length streams, the pipeline watches the client's connection, and drops the body
//!    the moment the client leaves.

pub mod grpc;
mod message;
pub mod publish;
pub mod request_reply;
pub mod subscribe;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tollgate_plugin_api::RequestContext;

use crate::error::GatewayError;
use crate::grpc::ResponseBody;
use crate::upstream::Attempt;

/// Put in a streamed response's extensions by a handler whose client may stop reading (a
/// Server-Sent Events stream): the pipeline cuts the response when one chunk of its body cannot
/// be written within `after`, and sets `stalled`, so the handler knows why its body was dropped.
/// Without it a client that stops reading holds its connection (and what feeds it) for good.
#[derive(Debug, Clone)]
pub struct StallTimeout {
    /// The longest one chunk may wait to be written.
    pub after: std::time::Duration,
    /// Set when the pipeline cut the response for it.
    pub stalled: Arc<std::sync::atomic::AtomicBool>,
}

/// What serves a route's requests.
#[derive(Clone)]
pub enum Handler {
    /// pingora proxies the request to the route's upstream.
    Proxy,
    /// The gateway answers itself.
    Serve(Arc<dyn ServeHandler>),
}

/// What a serving handler gets of a request.
pub struct HandlerRequest<'a> {
    /// The request head.
    pub head: &'a http::request::Parts,
    /// The whole body (at most `max_body_bytes` + 1 bytes).
    pub body: Bytes,
    /// The request's context: its id (logs, error bodies, `x-request-id` upstream), path
    /// parameters and what the plugins set (`jwt.sub`, `consumer`).
    pub ctx: &'a RequestContext,
    /// The tries at the route's upstream; `None` for a route without one.
    pub attempt: Option<&'a mut Attempt>,
    /// The request's ring-hash key, when the upstream balances by one.
    pub hash_key: Option<u64>,
    /// Whether the request may be sent again after it reached an upstream (its method, or the
    /// route's `retry_non_idempotent`).
    pub replay: bool,
}

/// A handler that answers requests itself. See the module documentation for the contract.
#[async_trait]
pub trait ServeHandler: Send + Sync + 'static {
    /// Whether this request is the handler's (else it is proxied).
    fn takes(&self, head: &http::request::Parts) -> bool;

    /// The largest request body the handler takes.
    fn max_body_bytes(&self) -> usize;

    /// Answers the request.
    async fn serve(
        &self,
        req: HandlerRequest<'_>,
    ) -> Result<http::Response<ResponseBody>, GatewayError>;
}
