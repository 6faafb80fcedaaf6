//! The plugin contract of tollgate.
//!
//! A reader learns the whole contract here: a [`Plugin`] is one value per configured use, built
//! once per config snapshot by its [`PluginFactory`] from a typed config, and called at the phases
//! of a request it cares about. The phases, in the order they run:
//!
//! 0. Lifecycle, not per request: [`Plugin::prepare`] once before the plugin's config serves,
//!    [`Plugin::background`] for as long as it does. [`Plugin::body_access`] is read once per
//!    snapshot too: it decides, for every route the plugin is on, whether the body is buffered.
//! 1. [`Plugin::on_request`] — after routing, before anything of the body is read and before an
//!    upstream target is chosen. May change the request head, refuse it (`Err`) or answer it
//!    (`Flow::Respond`).
//! 2. The request body, in one of two ways, decided per route by its chain ([`BodyPlan`]):
//!    - **Buffered**, when a plugin of the route asks ([`BodyAccess::Buffer`]): after every
//!      `on_request`, before the handler, the gateway reads the whole body, passing each piece
//!      through [`Plugin::on_request_body`] as it arrives; then every plugin that asked gets
//!      [`Plugin::on_request_body_buffered`] with the whole body, in chain order. It may change
//!      the head and the body, await I/O, refuse or answer; the upstream has seen nothing yet.
//!      A body over the smallest `max_bytes` of the plugins that asked is refused with 413
//!      `body_too_large` by the gateway (a declared `Content-Length` before any of it is read).
//!    - **Streamed**, otherwise (the default, and always the case for gRPC and other streaming
//!      calls unless a plugin on the route asks): the handler starts on the head, and
//!      [`Plugin::on_request_body`] sees every piece as it is forwarded, after the upstream has
//!      the head. An error stops the stream; a check that must run before the upstream sees
//!      anything belongs in `on_request` (e.g. a declared `Content-Length`) or the buffered
//!      phase.
//!
//!    Either way `on_request_body` sees every piece exactly once. A request that switches
//!    protocols (WebSocket) has no request body: its body phase does not run.
//! 3. The route's handler (proxy, gRPC, a broker). [`Plugin::on_upstream_request`] runs on the
//!    request about to be sent upstream (after the path rewrite and the forwarded headers), once
//!    per attempt.
//! 4. [`Plugin::on_response`] — on the response headers, for every response: from the upstream, or
//!    made by the gateway (errors, answers of plugins).
//! 5. [`Plugin::on_response_body`] — for every piece of the response body.
//! 6. [`Plugin::on_log`] — once, when the request is over, also after errors.
//!
//! After an answer or an error in phase 1 or 2, the later plugins' request and body phases do
//! not run, the handler does not run, and every plugin of the chain still gets phases 4 and 6.
//!
//! Plugins of a request run in descending [`PluginFactory::PRIORITY`]; global plugins and route
//! plugins are merged into one list (a route's config of a plugin replaces the global one).
//! A plugin counts what the metrics should show with [`RequestContext::count`]. Its factory is
//! registered from its own crate's Cargo.toml (docs/plugins.md, "Registration").

#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod body;
mod byte_size;
mod client_cert;
mod context;
mod count;
mod error;
mod error_chain;
mod registry;
pub mod schema;
mod secret;
pub mod trace;
pub mod util;

pub use async_trait::async_trait;
pub use body::{BodyAccess, BodyPlan};
pub use byte_size::ByteSize;
pub use bytes::Bytes;
pub use client_cert::ClientCert;
pub use context::{RequestContext, Scheme, VarSet, Vars};
pub use count::Count;
pub use error::{ErrorBody, PluginError};
pub use error_chain::error_chain;
pub use http;
pub use pingora_http::{RequestHeader, ResponseHeader};
pub use registry::{
    BuildContext, BuildError, BuildErrorKind, PluginFactory, PluginRegistry, PluginSpec,
};
pub use schemars;
pub use secret::{redact_url, Secret, SecretUrl, REDACTED};
pub use trace::{IoSpan, TraceParent};
pub use util::{decode_query_value, generate_request_id, is_sane_request_id, push_ip};

/// What a request or buffered body phase decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next plugin, then the handler.
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

    /// Request phase: runs after the route is matched, before anything of the body is read and
    /// before an upstream target is chosen.
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

    /// Body declaration: what this plugin needs of the request body. [`BodyAccess::Buffer`]
    /// makes the gateway read the whole body of every request on the plugin's routes before
    /// the handler, and call [`Plugin::on_request_body_buffered`]. Read once per config
    /// snapshot, so it must not change for the life of the plugin.
    fn body_access(&self) -> BodyAccess {
        BodyAccess::Streamed
    }

    /// Buffered body phase: called once per request, with the whole body, when this plugin asked
    /// for it ([`Plugin::body_access`]); after every plugin's `on_request` and after earlier
    /// plugins' buffered phase, before the handler. `body` is empty for a request without one.
    ///
    /// The plugin may change `req` and `body` (the gateway fixes `Content-Length`) and await
    /// I/O. `Ok(Flow::Continue)` goes on; `Ok(Flow::Respond(_))` answers at the edge;
    /// `Err(_)` answers with the JSON error shape. Either answer stops the later plugins and
    /// the handler: the upstream never sees the request.
    async fn on_request_body_buffered(
        &self,
        _req: &mut RequestHeader,
        _body: &mut Bytes,
        _ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        Ok(Flow::Continue)
    }

    /// Streamed body phase: called for every piece of the body, exactly once, in the order it
    /// arrives; `chunk` is `None` at the end of a body that had no final data piece, and may be
    /// changed or emptied. When the route buffers the body this runs as the gateway reads it,
    /// before any buffered phase; otherwise as the body is forwarded, after the upstream has
    /// the head. An error aborts the request (413 and the like when the response has not
    /// started yet).
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
