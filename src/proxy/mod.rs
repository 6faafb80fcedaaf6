//! The one `ProxyHttp` implementation: a thin shell that maps pingora's phases, in the order a
//! request meets them, onto the request pipeline:
//!
//! 1. prepare (prepare.rs): identity, host and target rules, limits, the route;
//! 2. the plugin chain's request phase (chain.rs);
//! 3. the route's handler (src/handler/): a `ServeHandler` answers the request itself
//!    (serve.rs), or pingora proxies it, the upstream phases (upstream.rs) picking targets and
//!    retrying through `upstream::Attempt`;
//! 4. the response phase (plugins' `on_response`, `on_response_body`);
//! 5. the end (finish.rs): the answer of a failed proxy attempt, and the logging phase.
//!
//! Every error the gateway makes is a `GatewayError`, rendered by respond.rs; every failure of
//! an upstream try is classified once, by `FailureKind::of`.

mod body;
mod chain;
mod connection;
mod context;
mod finish;
mod forwarded;
mod head;
mod host;
mod log;
mod prepare;
mod respond;
mod rewrite;
mod serve;
mod target;
pub mod tls;
mod upstream;

pub use rewrite::upstream_path;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::HeaderName;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

pub use connection::{BoundListeners, Front};
pub use context::RequestState;

use crate::handler::Handler;
use crate::snapshot::Snapshot;

// Looked up on every request: a constant skips parsing the name each time.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The gateway's proxy logic: the pointer to the current snapshot, and the listeners as bound
/// (whose limits HTTP/2 streams look up).
pub struct Gateway {
    snapshot: Arc<ArcSwap<Snapshot>>,
    listeners: Arc<BoundListeners>,
}

impl Gateway {
    /// A gateway serving whatever snapshot `snapshot` points at, at each request's start.
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, listeners: Arc<BoundListeners>) -> Self {
        Self {
            snapshot,
            listeners,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    // Boxed: pingora keeps the CTX inside its per-request futures, which are moved (memcpy'd)
    // several times per request; a pointer moves cheaper than ~900 bytes.
    type CTX = Box<RequestState>;

    fn new_ctx(&self) -> Box<RequestState> {
        Box::new(RequestState::new())
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        st: &mut Box<RequestState>,
        from_connection: Box<dyn std::any::Any + Send + Sync>,
    ) {
        // The connection loop says when this request's head began to arrive, and on which
        // listener's terms.
        if let Ok(from) = from_connection.downcast::<connection::FromConnection>() {
            st.head_started = Some(from.started);
            st.limits = from.limits;
        }
    }

    // pingora's default adds its response-compression module switched off: a context built,
    // consulted and dropped on every request (~1k instructions) for nothing. The gateway
    // compresses nothing; a future compression feature adds its module here.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    /// Prepare, route, the plugins' request phase, then the route's handler: `Ok(true)` when
    /// the request is answered here, `Ok(false)` when pingora proxies it.
    async fn request_filter(
        &self,
        session: &mut Session,
        st: &mut Box<RequestState>,
    ) -> Result<bool> {
        if let Err(err) = self.prepare(session, st) {
            respond::send_error(session, st, &err).await;
            return Ok(true);
        }
        if chain::on_request(session, st).await {
            return Ok(true);
        }
        // Boxed: only routes whose plugins read the body take this path; inlined, its future
        // would make every request's `request_filter` future larger.
        if Box::pin(self.buffer_for_plugins(session, st)).await {
            return Ok(true);
        }
        let handler = st.route_runtime().map(|r| r.handler.clone());
        match handler {
            Some(Handler::Serve(h)) if h.takes(session.req_header()) => {
                // Boxed: inlined, a handler's future would make every request's
                // `request_filter` future (moved on each call) several times larger.
                Box::pin(self.serve(session, st, &*h)).await;
                Ok(true)
            }
            _ => {
                upstream::begin(st);
                Ok(false)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        st: &mut Box<RequestState>,
    ) -> Result<()> {
        if body::replace_replayed(st, body) {
            // Read and seen by the plugins before the handler: pingora replays it, the plugins'
            // version goes instead.
            return Ok(());
        }
        if !end_of_stream && st.limits.request_timeout.is_some() {
            // The next read may wait only for what is left of the whole request's time.
            if let Err(err) = self.arm_body_deadline(session, st) {
                return Err(upstream::reject(st, err).into_down());
            }
        }
        if let Err(err) = chain::on_request_body(st, body, end_of_stream) {
            // Marked as the client's side: pingora's h2 upstream loop ignores other errors of
            // the body phase and goes on waiting for an upstream answer that cannot come (the
            // upstream waits for the rest of the body), which hung the request.
            return Err(upstream::reject(st, err.into()).into_down());
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        st: &mut Box<RequestState>,
    ) -> Result<Box<HttpPeer>> {
        upstream::peer(session, st).await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        st: &mut Box<RequestState>,
        e: Box<Error>,
    ) -> Box<Error> {
        upstream::fail_to_connect(session, st, e)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        st: &mut Box<RequestState>,
    ) -> Result<()> {
        if let Some(attempt) = st.attempt.as_mut() {
            attempt.connected();
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        st: &mut Box<RequestState>,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        upstream::error_while_proxy(session, st, e, client_reused)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        st: &mut Box<RequestState>,
    ) -> Result<()> {
        upstream::response(session, st, resp)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        st: &mut Box<RequestState>,
    ) -> Result<()> {
        upstream::request(session, st, up)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        st: &mut Box<RequestState>,
    ) -> Result<()> {
        chain::on_response(st, resp);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        st: &mut Box<RequestState>,
    ) -> Result<Option<std::time::Duration>> {
        chain::on_response_body(st, body, end_of_stream);
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        st: &mut Box<RequestState>,
    ) -> FailToProxy {
        let code = finish::fail_to_proxy(session, e, st).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, st: &mut Box<RequestState>) {
        finish::logging(session, e, st);
    }

    fn suppress_error_log(
        &self,
        _session: &Session,
        _st: &Box<RequestState>,
        _error: &Error,
    ) -> bool {
        // fail_to_proxy logs every failure once, with route and upstream names.
        true
    }
}
