//! The plugin contract of tollgate.
//!
//! A reader learns the whole contract here: a [`Plugin`] is one value per configured use, built
//! once per config snapshot by its [`PluginFactory`] from a typed config, and called at the phases
//! of a request it cares about, in this order:
//!
//! 0. [`Plugin::prepare`] once before the plugin's config serves, and [`Plugin::background`]
//!    for as long as it does (lifecycle, not per request).
//! 1. [`Plugin::on_request`] — after routing, before an upstream target is chosen. May change the
//!    request, stop it with an error, or answer it itself.
//! 2. [`Plugin::on_upstream_request`] — on the request about to be sent upstream (after the path
//!    rewrite and the forwarded headers), once per attempt.
//! 3. [`Plugin::on_request_body`] — for every piece of the request body as it streams through,
//!    after the upstream has the request head (bodies are never buffered whole). An error here
//!    stops the stream; a check that must run before the upstream sees anything belongs in
//!    `on_request` (e.g. a declared `Content-Length`).
//! 4. [`Plugin::on_response`] — on the response headers, for every response: from the upstream, or
//!    made by the gateway (errors, answers of plugins).
//! 5. [`Plugin::on_response_body`] — for every piece of the response body.
//! 6. [`Plugin::on_log`] — once, when the request is over, also after errors.
//!
//! Plugins of a request run in descending [`PluginFactory::PRIORITY`]; global plugins and route
//! plugins are merged into one list (a route's config of a plugin replaces the global one).

#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod byte_size;
mod context;
mod error;
mod registry;
mod secret;
pub mod trace;
pub mod util;

pub use async_trait::async_trait;
pub use byte_size::ByteSize;
pub use bytes::Bytes;
pub use context::{RequestContext, Scheme, VarSet, Vars};
pub use error::{ErrorBody, PluginError};
pub use http;
pub use pingora_http::{RequestHeader, ResponseHeader};
pub use registry::{
    BuildContext, BuildError, BuildErrorKind, PluginFactory, PluginRegistry, PluginSpec,
};
pub use secret::{redact_url, Secret, SecretUrl, REDACTED};
pub use trace::{IoSpan, TraceParent};
pub use util::{decode_query_value, generate_request_id, is_sane_request_id, push_ip};

/// What the request phase decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next plugin, then proxy the request.
    Continue,
    /// Answer the request at the edge with this response; the upstream is not contacted.
    Respond(Response),
}

/// A response made by a plugin (not an error: errors are [`PluginError`]s).
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: http::StatusCode,
    /// Headers, in order.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// A response with a status and no headers nor body.
    pub fn new(status: http::StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// One configured plugin, shared by all requests of a snapshot and all worker threads.
///
/// Every method has a default that does nothing, so a plugin implements only its phases.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The name the plugin is registered under (for logs).
    fn name(&self) -> &'static str;

    /// Lifecycle: called once per config snapshot before it takes traffic, on a runtime that
    /// ends after the call (so spawn nothing here). For work that must be done before the first
    /// request, e.g. fetching a JWKS. An error is logged and the snapshot goes live anyway: the
    /// plugin must answer requests sensibly (e.g. 401/503) until `background` repairs it.
    async fn prepare(&self) -> Result<(), String> {
        Ok(())
    }

    /// Lifecycle: long-running work of the plugin (refreshing keys, flushing counters), run on
    /// the gateway's background runtime while the plugin's snapshot is live. Return when `stop`
    /// turns `true` (or its sender is dropped).
    async fn background(&self, _stop: tokio::sync::watch::Receiver<bool>) {}

    /// Request phase: runs after the route is matched, before an upstream target is chosen.
    ///
    /// `Ok(Flow::Continue)` goes on; `Ok(Flow::Respond(_))` answers at the edge and stops the
    /// plugins after this one; `Err(_)` answers with the gateway's JSON error shape.
    async fn on_request(
        &self,
        _req: &mut RequestHeader,
        _ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        Ok(Flow::Continue)
    }

    /// Request body phase: called for every piece of the body; `chunk` is `None` at the end of a
    /// body that had no final data piece. An error aborts the request (413 and the like when the
    /// response has not started yet).
    fn on_request_body(
        &self,
        _chunk: &mut Option<Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestContext,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Upstream request phase: the request as it will be sent to the upstream target.
    fn on_upstream_request(
        &self,
        _req: &mut RequestHeader,
        _ctx: &mut RequestContext,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Response header phase: every response, from the upstream or made by the gateway.
    fn on_response(&self, _resp: &mut ResponseHeader, _ctx: &mut RequestContext) {}

    /// Response body phase: every piece of the response body.
    fn on_response_body(
        &self,
        _chunk: &mut Option<Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestContext,
    ) {
    }

    /// Logging phase: once per request when it is over, also after errors. `status` is the status
    /// sent to the client (0 when none could be sent).
    fn on_log(&self, _ctx: &RequestContext, _status: u16) {}
}
