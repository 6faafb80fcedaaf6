//! The one `ProxyHttp` implementation: a thin dispatcher from pingora's phases to the router,
//! the plugin chain and the upstream layer. Features live in those layers, not here.

mod connection;
mod context;
mod forwarded;
mod head;
mod host;
mod log;
mod respond;
mod rewrite;
mod target;

pub use rewrite::upstream_path;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HOST};
use http::{HeaderValue, StatusCode};
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tollgate_plugin_api::{generate_request_id, is_sane_request_id, Flow, PluginError, Scheme};

pub use connection::{BoundListeners, Front};
pub use context::RequestState;

use crate::config::{Algorithm, HashOn};

// Looked up on every request: a constant skips parsing the name each time.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

use crate::router::normalize_path;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::metrics;
use crate::telemetry::trace::RequestSpan;
use crate::upstream::{
    backoff, budget_allows, build_peer, hash64, Cluster, CounterGuard, FailureKind, TargetLoad,
};

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

/// Stops the request: `fail_to_proxy` answers with the error stored in the state.
fn reject(st: &mut RequestState, err: PluginError) -> Box<Error> {
    let status = err.status.as_u16();
    st.error = Some(err);
    Error::new(ErrorType::HTTPStatus(status))
}

/// Size of a request head as it arrived, for the header size limit.
fn header_bytes(req: &RequestHeader) -> usize {
    req.headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

impl Gateway {
    /// Everything of the request phase before plugins: identity, limits, the request target
    /// and host, route.
    fn prepare(&self, session: &mut Session, st: &mut RequestState) -> Result<(), PluginError> {
        let snap = self.snapshot.load_full();
        let server = &snap.config.server;
        // HTTP/1.x requests bring their listener's limits from the connection loop; HTTP/2
        // streams find theirs by the connection's local address.
        if st.head_started.is_none() {
            let local = session.server_addr().and_then(|a| a.as_inet()).copied();
            st.limits = self.listeners.limits(&snap.config, local);
        }
        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let req = session.req_header();
        st.ctx.request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(v) if is_sane_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => generate_request_id(),
        };
        st.ctx.scheme = if tls { Scheme::Https } else { Scheme::Http };
        st.ctx.peer_ip = peer_ip;
        st.ctx.client_ip = forwarded::client_ip(peer_ip, &req.headers, &server.trusted_proxies);
        st.snapshot = Some(snap.clone());
        let version = match req.version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        let host = host::request_host(req);
        let span_host = host.as_ref().ok().copied().flatten();
        st.span = RequestSpan::start(req, st.ctx.client_ip, span_host, version);
        st.ctx.trace = st.span.as_ref().and_then(RequestSpan::plugin_parent);
        let host = host?;
        st.ctx.host = host.map(|h| strip_port(h).to_ascii_lowercase());
        // An HTTP/1.0 absolute-form target without Host: its authority becomes the Host that
        // later phases and the upstream see.
        let host_to_add = match (host, req.headers.contains_key(HOST), req.uri.authority()) {
            (Some(h), false, None) => HeaderValue::from_str(h).ok(),
            _ => None,
        };

        let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > server.max_uri_bytes {
            return Err(PluginError::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!(
                    "the request target is {uri_len} bytes; the limit is {}",
                    server.max_uri_bytes
                ),
            ));
        }
        let head = header_bytes(req);
        if head > server.max_request_header_bytes {
            return Err(PluginError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!(
                    "request headers are {head} bytes; the limit is {}",
                    server.max_request_header_bytes
                ),
            ));
        }
        // pingora keeps a target it cannot place (`x/admin`) whole for the wire and routes it as
        // `/`: such a target would skip every path rule here.
        let raw_target = req.raw_path();
        if !raw_target.starts_with(b"/")
            && head::target_authority(raw_target).is_none()
            && req.method != http::Method::CONNECT
        {
            return Err(PluginError::new(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "the request target is neither a path (`/...`) nor an absolute URL",
            ));
        }
        let raw_path = req.uri.path();
        let unescaped = target::escaped_slashes(raw_path, st.limits.escaped_slashes)?;
        let path = normalize_path(unescaped.as_deref().unwrap_or(raw_path)).map_err(|e| {
            PluginError::new(
                StatusCode::BAD_REQUEST,
                "bad_path",
                format!("invalid request path: {e}"),
            )
        })?;
        let Some(m) = snap
            .config
            .table
            .match_request(&req.method, host, &path, &req.headers)
        else {
            return Err(PluginError::new(
                StatusCode::NOT_FOUND,
                "route_not_found",
                format!("no route matches {} {}", req.method, path),
            ));
        };
        let route = snap.config.routes.get(m.id).ok_or_else(|| {
            PluginError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "route table out of sync",
            )
        })?;
        st.route = Some(m.id);
        if let Some(span) = st.span.as_mut() {
            span.set_route(&route.pattern, &route.name, &route.upstream_name);
        }
        st.prefix_len = m.prefix_len;
        st.ctx.route = route.name.clone();
        st.ctx.upstream = route.upstream_name.clone();
        st.ctx.params = m
            .params
            .into_iter()
            .filter_map(|(i, v)| route.param_names.get(i).map(|n| (n.clone(), v)))
            .collect();
        // Later phases and the upstream see only the normalised path, in origin form (an
        // absolute-form target's authority has served as the host).
        let absolute = head::target_authority(req.raw_path()).is_some();
        if unescaped.is_some() || matches!(path, std::borrow::Cow::Owned(_)) || absolute {
            let uri = target::origin_form(&path, req.uri.query(), &req.uri, absolute)?;
            session.req_header_mut().set_uri(uri);
        }
        if let Some(h) = host_to_add {
            let _ = session.req_header_mut().insert_header(HOST, h);
        }
        target::collapse_content_length(session.req_header_mut());
        self.arm_body_deadline(session, st)?;
        Ok(())
    }

    /// Bounds the wait for each piece of the request body (`client_body_timeout`) and, when
    /// set, for the whole request (`request_timeout`, counted from the head's first byte).
    /// pingora applies the read timeout to HTTP/1.x bodies; an upgraded connection keeps
    /// pingora's own idle timeout, since its "body" is a long-lived tunnel.
    fn arm_body_deadline(
        &self,
        session: &mut Session,
        st: &RequestState,
    ) -> Result<(), PluginError> {
        if session.is_upgrade_req() {
            return Ok(());
        }
        let wait = match st.request_deadline() {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(client_timeout(&st.limits, "request_timeout"));
                }
                left.min(st.limits.client_body_timeout)
            }
            None => st.limits.client_body_timeout,
        };
        session.set_read_timeout(Some(wait));
        Ok(())
    }
}

/// A failure that is the client's doing, not the upstream's: its body did not arrive in time
/// (the gateway's body read timed out, or the upstream timed out waiting while the body was
/// still incomplete — each downstream piece restarts that wait, so only a stalled client lets
/// it run out).
fn client_fault(session: &mut Session, st: &RequestState, e: &Error) -> Option<PluginError> {
    if *e.etype() != ErrorType::ReadTimedout {
        return None;
    }
    match e.esource() {
        ErrorSource::Downstream => Some(late_body(st)),
        ErrorSource::Upstream if !session.is_body_done() => Some(PluginError::new(
            StatusCode::REQUEST_TIMEOUT,
            "client_timeout",
            format!(
                "the request body stopped arriving: upstream `{}` waited for the rest of it \
                 until its read_timeout ran out",
                st.ctx.upstream
            ),
        )),
        _ => None,
    }
}

/// The 408 of a request body that did not arrive in time, naming the limit it ran into.
fn late_body(st: &RequestState) -> PluginError {
    let past_deadline = st
        .request_deadline()
        .is_some_and(|d| d <= std::time::Instant::now());
    let key = if past_deadline {
        "request_timeout"
    } else {
        "client_body_timeout"
    };
    client_timeout(&st.limits, key)
}

/// The 408 of a client that took too long; `key` names the limit it ran into.
fn client_timeout(limits: &crate::config::ClientLimits, key: &str) -> PluginError {
    let limit = match key {
        "request_timeout" => limits.request_timeout.unwrap_or_default(),
        _ => limits.client_body_timeout,
    };
    PluginError::new(
        StatusCode::REQUEST_TIMEOUT,
        "client_timeout",
        format!(
            "the client did not send its request in time ({key} = {})",
            humantime::format_duration(limit)
        ),
    )
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
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

    async fn request_filter(
        &self,
        session: &mut Session,
        st: &mut Box<RequestState>,
    ) -> Result<bool> {
        if let Err(err) = self.prepare(session, st) {
            respond::send_error(session, st, &err).await;
            return Ok(true);
        }
        let Some(plugins) = st.plugins() else {
            return Ok(false);
        };
        for entry in plugins.iter() {
            match entry
                .plugin
                .on_request(session.req_header_mut(), &mut st.ctx)
                .await
            {
                Ok(Flow::Continue) => {}
                Ok(Flow::Respond(resp)) => {
                    respond::send(session, st, resp).await;
                    return Ok(true);
                }
                Err(err) => {
                    respond::send_error(session, st, &err).await;
                    return Ok(true);
                }
            }
        }
        let transcoder = st.route_runtime().and_then(|r| r.transcoder.clone());
        if let Some(t) = transcoder {
            let req = session.req_header();
            // Native gRPC passes through; everything else on a transcoding route is the
            // engine's (an unbound path gets its 404 JSON, not a confused gRPC server).
            if !crate::grpc::is_grpc_request(&req.headers) {
                // Boxed: inlined, the transcoding future would make every request's
                // `request_filter` future (moved on each call) several times larger.
                Box::pin(self.transcode(session, st, &t)).await;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        st: &mut Box<RequestState>,
    ) -> Result<()> {
        if !end_of_stream && st.limits.request_timeout.is_some() {
            // The next read may wait only for what is left of the whole request's time.
            if let Err(err) = self.arm_body_deadline(session, st) {
                return Err(reject(st, err).into_down());
            }
        }
        let Some(plugins) = st.plugins() else {
            return Ok(());
        };
        for entry in plugins.iter() {
            if let Err(err) = entry
                .plugin
                .on_request_body(body, end_of_stream, &mut st.ctx)
            {
                // Marked as the client's side: pingora's h2 upstream loop ignores other errors
                // of the body phase and goes on waiting for an upstream answer that cannot come
                // (the upstream waits for the rest of the body), which hung the request.
                return Err(reject(st, err).into_down());
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        st: &mut Box<RequestState>,
    ) -> Result<Box<HttpPeer>> {
        let (Some(snap), Some(route_idx)) = (st.snapshot.clone(), st.route) else {
            return Err(Error::new(ErrorType::InternalError));
        };
        let Some(route) = snap.config.routes.get(route_idx) else {
            return Err(Error::new(ErrorType::InternalError));
        };
        let Some(cluster) = snap.clusters.get(route.upstream).cloned() else {
            return Err(Error::new(ErrorType::InternalError));
        };
        st.cluster = Some(cluster.clone());
        let limits = &cluster.config.circuit_breaker;
        if st.in_flight.is_none() {
            let Some(guard) =
                CounterGuard::acquire(&cluster.counters, |c| &c.in_flight, limits.max_in_flight)
            else {
                let err = overloaded(&cluster, "requests in flight", limits.max_in_flight);
                return Err(reject(st, err));
            };
            st.in_flight = Some(guard);
        }
        if !st.tried.is_empty() {
            st.retries += 1;
            if let Some(m) = metrics() {
                m.retries.with_label_values(&[cluster.name()]).inc();
            }
            if st.retrying.is_none() && !st.retry_after_connect_failure {
                st.retrying = CounterGuard::acquire(&cluster.counters, |c| &c.retries, None);
            }
            let wait = backoff(&cluster.config.retry, st.retries);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let key = match cluster.config.balance.algorithm {
            Algorithm::RingHash => hash_key(&cluster.config.balance.hash_on, session, st),
            _ => None,
        };
        let Some(target) = cluster.select(key, &st.tried) else {
            let err = st.last_failure.take().unwrap_or_else(|| {
                PluginError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_healthy_target",
                    format!("upstream `{}` has no target available", cluster.name()),
                )
            });
            return Err(reject(st, err));
        };
        let Some(pending) =
            CounterGuard::acquire(&cluster.counters, |c| &c.pending, limits.max_pending)
        else {
            let err = overloaded(
                &cluster,
                "requests waiting for a connection",
                limits.max_pending,
            );
            return Err(reject(st, err));
        };
        st.pending = Some(pending);
        st.tried.push(target.address);
        st.target_load = Some(TargetLoad::new(target.clone()));
        let mut peer = build_peer(&cluster.config, &target, route);
        // pingora's default upstream request policy (strip hop-by-hop and Connection-nominated
        // fields, normalise upgrades) makes ~15 hashed header lookups, ~4k instructions, on every
        // request. It stays for any request that carries such a field; for the others it would
        // change nothing, so it is skipped.
        if !forwarded::has_hop_by_hop(&session.req_header().headers) {
            peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        }
        // A gRPC client's deadline bounds the wait for the upstream (as a read timeout: pingora
        // has no whole-call deadline; the client enforces the rest itself).
        if let Some(deadline) = grpc_timeout(&session.req_header().headers) {
            let read = peer
                .options
                .read_timeout
                .map_or(deadline, |r| r.min(deadline));
            peer.options.read_timeout = Some(read);
        }
        st.attempt_started = Some(std::time::Instant::now());
        if let Some(span) = st.span.as_ref() {
            st.attempt_span = Some(span.start_attempt(target.address, st.retries + 1));
        }
        st.target = Some(target);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        st: &mut Box<RequestState>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        st.pending = None;
        end_attempt(st, "connect_error", None, Some("connect_error"));
        if let (Some(cluster), Some(target)) = (st.cluster.clone(), st.target.clone()) {
            cluster.report_failure(&target, &format!("connect failed: {e}"));
            st.last_failure = respond::classify(&e, &st.ctx.upstream);
            // Nothing was sent yet, so another target is always safe to try.
            if self.may_retry(session, st, FailureKind::Connect) {
                st.retry_after_connect_failure = true;
                e.set_retry(true);
            }
        }
        e
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
        st.pending = None;
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
        let mut e = e.more_context(format!("Peer: {peer}"));
        if st.error.is_some() || *e.esource() == ErrorSource::Downstream {
            // The gateway refused the request mid-way (a plugin's body check), or the client
            // failed or went away: nothing to say about the upstream, nothing to send again.
            end_attempt(st, "client_error", None, None);
            if let Some(err) = client_fault(session, st, &e) {
                st.error = Some(err);
            }
            e.set_retry(false);
            return e;
        }
        if let Some(err) = client_fault(session, st, &e) {
            // The upstream timed out waiting for a body the client stopped sending: the
            // client's fault, not reported against the target and never retried.
            end_attempt(st, "client_timeout", None, Some("client_timeout"));
            st.error = Some(err);
            e.set_retry(false);
            return e;
        }
        end_attempt(st, "error", None, Some("upstream_error"));
        st.retry_after_connect_failure = false;
        if std::mem::take(&mut st.status_retry) {
            // upstream_response_filter already decided this status is retried.
            e.set_retry(true);
            return e;
        }
        let kind = FailureKind::of_proxy_error(&e);
        if let (Some(cluster), Some(target), Some(kind)) =
            (st.cluster.clone(), st.target.clone(), kind)
        {
            // A reused pooled connection that turns out closed says nothing about the target.
            if !(client_reused && kind == FailureKind::Reset) {
                cluster.report_failure(&target, &kind.describe());
            }
            st.last_failure = respond::classify(&e, &st.ctx.upstream);
            if self.may_retry(session, st, kind) {
                e.set_retry(true);
                return e;
            }
        }
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        if replayable {
            // pingora's own rule: a request that failed on a reused connection may be resent.
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        st: &mut Box<RequestState>,
    ) -> Result<()> {
        let (Some(cluster), Some(target)) = (st.cluster.clone(), st.target.clone()) else {
            return Ok(());
        };
        let status = resp.status.as_u16();
        end_attempt(st, "response", Some(status), None);
        let failed = cluster.config.outlier.as_ref().is_some_and(|o| {
            o.failure_statuses
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&status))
        });
        if failed {
            cluster.report_failure(&target, &format!("status {status}"));
        } else {
            cluster.report_success(&target);
        }
        if self.may_retry(session, st, FailureKind::Status(status)) {
            st.status_retry = true;
            st.last_failure = Some(PluginError::new(
                resp.status,
                "upstream_error",
                format!(
                    "upstream `{}` answered {status} and no other target could be tried",
                    cluster.name()
                ),
            ));
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "retrying on another target",
            ));
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        st: &mut Box<RequestState>,
    ) -> Result<()> {
        let Some(snap) = st.snapshot.clone() else {
            return Ok(());
        };
        let Some(route) = st.route() else {
            return Ok(());
        };
        let upstream = snap.config.upstreams.get(route.upstream).cloned();
        target::upstream_origin_form(up);
        let path = up.uri.path();
        let new_path = rewrite::upstream_path(&route.rewrite, path, st.prefix_len, &st.ctx.params);
        if let std::borrow::Cow::Owned(p) = new_path {
            // A template rewrite may carry its own query; the client's query joins it.
            let uri = match up.uri.query() {
                Some(q) if p.contains('?') => format!("{p}&{q}"),
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            match uri.parse::<http::Uri>() {
                Ok(u) => up.set_uri(u),
                Err(_) => {
                    let err = PluginError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_path",
                        "the rewritten path is not a valid URI",
                    );
                    return Err(reject(st, err));
                }
            }
        }
        // HTTP/1.1 upstreams need a Host; h2 clients send only :authority.
        let authority = session
            .req_header()
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(h) = upstream.as_ref().and_then(|u| u.host_header.clone()) {
            let _ = up.insert_header(HOST, h);
        } else if up.headers.get(HOST).is_none() {
            // The client's authority (HTTP/2, or an absolute-form target); an HTTP/1.0 request
            // without any host gets the target's address, as nginx sends its upstream's name:
            // an HTTP/1.1 upstream must not get a request without Host.
            let host = authority.or_else(|| {
                st.target
                    .as_ref()
                    .and_then(|t| HeaderValue::from_str(&t.address.to_string()).ok())
            });
            if let Some(h) = host {
                let _ = up.insert_header(HOST, h);
            }
        }
        self.forwarded_headers(session, up, st, &snap);
        if let Ok(mut v) = HeaderValue::from_str(&st.ctx.request_id) {
            // Never indexed in HPACK on h2 upstreams: unique per request, it would only evict
            // useful entries from the connection's table.
            v.set_sensitive(true);
            let _ = up.insert_header(X_REQUEST_ID, v);
        }
        if let Some(a) = st.attempt_span.as_ref() {
            a.inject(up);
        }
        let Some(plugins) = st.plugins() else {
            return Ok(());
        };
        for entry in plugins.iter() {
            if let Err(err) = entry.plugin.on_upstream_request(up, &mut st.ctx) {
                return Err(reject(st, err));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        st: &mut Box<RequestState>,
    ) -> Result<()> {
        if let Some(plugins) = st.plugins() {
            for entry in plugins.iter() {
                entry.plugin.on_response(resp, &mut st.ctx);
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        st: &mut Box<RequestState>,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(plugins) = st.plugins() {
            for entry in plugins.iter() {
                entry
                    .plugin
                    .on_response_body(body, end_of_stream, &mut st.ctx);
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        st: &mut Box<RequestState>,
    ) -> FailToProxy {
        let upstream = st.ctx.upstream.clone();
        let mut err = st.error.take();
        if err.is_none() {
            err = client_fault(session, st, e).or_else(|| respond::classify(e, &upstream));
        }
        // pingora closes the client connection after a failed proxy attempt whatever we return
        // here, so say so in the response: a client told `Connection: close` won't race us by
        // sending its next request on a connection about to close.
        session.set_keepalive(None);
        let mut code = 0;
        if let Some(err) = err {
            if err.status.is_client_error() {
                // The client's doing: no operator needs a warning per misbehaving client.
                tracing::debug!(request_id = %st.ctx.request_id, route = %st.ctx.route,
                    status = err.status.as_u16(), code = err.code, error = %e, "request refused");
            } else {
                tracing::warn!(
                    request_id = %st.ctx.request_id,
                    route = %st.ctx.route,
                    upstream = %upstream,
                    status = err.status.as_u16(),
                    code = err.code,
                    error = %e,
                    "request failed"
                );
            }
            code = err.status.as_u16();
            if session.response_written().is_none() {
                code = respond::send_error(session, st, &err).await;
            } else {
                respond::end_grpc_stream(session, &err).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, st: &mut Box<RequestState>) {
        let status = session
            .response_written()
            .map_or(st.gateway_status, |r| r.status.as_u16());
        if let Some(plugins) = st.plugins() {
            for entry in plugins.iter() {
                entry.plugin.on_log(&st.ctx, status);
            }
        }
        end_attempt(st, "error", None, e.map(|_| "upstream_error"));
        let elapsed = st.started.elapsed();
        let route_label: &str = if st.ctx.route.is_empty() {
            log::NO_ROUTE
        } else {
            &st.ctx.route
        };
        if let Some(m) = metrics() {
            let req_method = &session.req_header().method;
            match st.route_runtime() {
                Some(route) => {
                    route
                        .metrics
                        .record(m, route_label, req_method, status, elapsed.as_secs_f64())
                }
                None => log::count_unrouted(req_method, status, elapsed),
            }
            match (status, st.gateway_code) {
                (429, Some(code)) if code.contains("rate_limit") => {
                    m.rate_limited.with_label_values(&[route_label]).inc();
                }
                (401 | 403, Some(code)) => {
                    m.auth_failures
                        .with_label_values(&[route_label, code])
                        .inc();
                }
                _ => {}
            }
        }
        let error_type = match (e, st.gateway_code) {
            (_, Some(code)) if status >= 500 => Some(code),
            (Some(_), _) => Some("proxy_error"),
            _ if status >= 500 => Some("upstream_5xx"),
            _ => None,
        };
        // Formatting the trace id costs as much as the metrics above: only for a log line.
        let log = crate::telemetry::access_log::enabled();
        let trace_id = st.span.as_ref().filter(|_| log).and_then(|s| s.trace_id());
        if let Some(span) = st.span.take() {
            span.finish(status, error_type);
        }
        if log {
            self.access_log(session, st, status, elapsed, trace_id, e);
        }
        let req = session.req_header();
        tracing::debug!(
            request_id = %st.ctx.request_id,
            method = %req.method,
            path = %req.uri.path(),
            route = %st.ctx.route,
            upstream = %st.ctx.upstream,
            status,
            error = e.map(|e| e.to_string()),
            duration_ms = st.started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
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

/// Closes the current upstream attempt: its duration metric and client span.
fn end_attempt(st: &mut RequestState, outcome: &str, status: Option<u16>, error: Option<&str>) {
    if let Some(started) = st.attempt_started.take() {
        let took = started.elapsed();
        st.upstream_time += took;
        if let Some(m) = metrics() {
            m.attempt_duration
                .with_label_values(&[&*st.ctx.upstream, outcome])
                .observe(took.as_secs_f64());
        }
    }
    if let Some(span) = st.attempt_span.take() {
        span.finish(status, error);
    }
}

impl Gateway {
    /// Serves a request of a transcoding route: reads the (bounded) body, picks a target,
    /// lets the engine make the gRPC call and writes its answer, streaming the body.
    async fn transcode(
        &self,
        session: &mut Session,
        st: &mut RequestState,
        transcoder: &crate::grpc::Transcoder,
    ) {
        use http_body_util::BodyExt;

        let (Some(snap), Some(route)) = (st.snapshot.clone(), st.route().cloned()) else {
            return;
        };
        let Some(cluster) = snap.clusters.get(route.upstream).cloned() else {
            return;
        };
        let limits = &cluster.config.circuit_breaker;
        let Some(guard) =
            CounterGuard::acquire(&cluster.counters, |c| &c.in_flight, limits.max_in_flight)
        else {
            let err = overloaded(&cluster, "requests in flight", limits.max_in_flight);
            respond::send_error(session, st, &err).await;
            return;
        };
        st.in_flight = Some(guard);
        // Read one byte past the limit so the engine can tell "too large" from "exactly full".
        let limit = transcoder.max_body_bytes().saturating_add(1);
        let mut body = bytes::BytesMut::new();
        loop {
            if let Err(err) = self.arm_body_deadline(session, st) {
                respond::send_error(session, st, &err).await;
                return;
            }
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    let room = limit.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= limit {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if *e.etype() == ErrorType::ReadTimedout => {
                    let err = late_body(st);
                    session.set_keepalive(None);
                    respond::send_error(session, st, &err).await;
                    return;
                }
                Err(e) => {
                    let err = PluginError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request_body",
                        format!("the request body could not be read: {e}"),
                    );
                    respond::send_error(session, st, &err).await;
                    return;
                }
            }
        }
        let Some(target) = cluster.select(None, &[]) else {
            let err = PluginError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_target",
                format!("upstream `{}` has no target available", cluster.name()),
            );
            respond::send_error(session, st, &err).await;
            return;
        };
        st.tried.push(target.address);
        st.target_load = Some(TargetLoad::new(target.clone()));
        st.target = Some(target.clone());
        let call_target = match cluster.grpc_target(&target) {
            Ok(t) => t,
            Err(e) => {
                let err = PluginError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_tls_setup",
                    format!("upstream `{}`: {e}", cluster.name()),
                );
                respond::send_error(session, st, &err).await;
                return;
            }
        };
        st.attempt_started = Some(std::time::Instant::now());
        // Boxed, as each level of the call is: rustc lays an awaited future out twice in its
        // caller's state, so inlined levels doubled up to a 66 KB future, copied when moved.
        // The engine borrows the request head: copying it into an `http::Request` header by
        // header cost more than the whole metadata forwarding.
        let head: &http::request::Parts = session.req_header();
        let response =
            Box::pin(transcoder.handle_read(head, &st.ctx.request_id, body.freeze(), &call_target))
                .await;
        let (parts, mut resp_body) = response.into_parts();
        let status = parts.status.as_u16();
        end_attempt(st, "response", Some(status), None);
        if status >= 502 {
            cluster.report_failure(&target, &format!("transcoded call: status {status}"));
        } else {
            cluster.report_success(&target);
        }
        let has_length = parts.headers.contains_key(http::header::CONTENT_LENGTH);
        // The engine's head becomes pingora's as it is (HTTP/1.1 names go out title-cased):
        // copying header by header into a case-preserving map cost more than building it.
        let mut header = ResponseHeader::from(parts);
        // pingora frames an HTTP/1.1 body by these headers; with neither it would delimit the
        // body by closing the connection while saying keep-alive.
        if !has_length {
            match hyper::body::Body::size_hint(&resp_body).exact() {
                Some(n) => {
                    let _ = header.insert_header(http::header::CONTENT_LENGTH, n);
                }
                None if session.req_header().version < http::Version::HTTP_2 => {
                    let _ = header.insert_header(http::header::TRANSFER_ENCODING, "chunked");
                }
                None => {}
            }
        }
        if let Some(plugins) = st.plugins() {
            for p in plugins.iter() {
                p.plugin.on_response(&mut header, &mut st.ctx);
            }
        }
        st.gateway_status = status;
        if session
            .write_response_header(Box::new(header), false)
            .await
            .is_err()
        {
            return;
        }
        loop {
            match resp_body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        // The last data ends the stream itself: a unary answer then goes out
                        // as one HTTP/2 DATA frame, not a second, empty one.
                        let end = hyper::body::Body::is_end_stream(&resp_body);
                        if session.write_response_body(Some(data), end).await.is_err() || end {
                            return;
                        }
                    }
                }
                Some(Err(e)) => {
                    // The upstream broke off mid-stream: the client's response cannot be
                    // completed, so it is cut rather than ended as if whole.
                    tracing::warn!(request_id = %st.ctx.request_id, route = %st.ctx.route,
                        upstream = %st.ctx.upstream, error = %e, "transcoded stream broken");
                    session.shutdown().await;
                    return;
                }
                None => break,
            }
        }
        let _ = session.write_response_body(None, true).await;
    }

    /// One access log line for a finished request.
    fn access_log(
        &self,
        session: &Session,
        st: &RequestState,
        status: u16,
        elapsed: std::time::Duration,
        trace_id: Option<String>,
        e: Option<&Error>,
    ) {
        let fields: &[String] = st
            .snapshot
            .as_ref()
            .map_or(&[], |s| s.config.access_log.fields.as_slice());
        let req = session.req_header();
        let protocol = format!("{:?}", req.version);
        let error = st.gateway_code.or_else(|| e.map(|e| e.etype().as_str()));
        log::access_log(
            fields,
            &log::Entry {
                request_id: &st.ctx.request_id,
                trace_id,
                client_ip: st.ctx.client_ip,
                method: req.method.as_str(),
                host: st.ctx.host.as_deref(),
                path: req.uri.path(),
                query: req.uri.query(),
                protocol: &protocol,
                route: &st.ctx.route,
                upstream: &st.ctx.upstream,
                target: st.target.as_ref().map(|t| t.address),
                status,
                bytes_sent: session.body_bytes_sent() as u64,
                bytes_received: session.body_bytes_read() as u64,
                duration: elapsed,
                upstream_time: st.upstream_time,
                attempts: st.tried.len(),
                error,
            },
        );
    }

    /// Whether a failed attempt is tried again on another target: the policy retries the
    /// cause, attempts are left, the method may be replayed, another target exists and the
    /// budget has room.
    fn may_retry(&self, session: &Session, st: &RequestState, kind: FailureKind) -> bool {
        let (Some(cluster), Some(route)) = (st.cluster.as_ref(), st.route()) else {
            return false;
        };
        let policy = &cluster.config.retry;
        if st.retries >= policy.attempts || !kind.retried_by(policy) {
            return false;
        }
        if kind != FailureKind::Connect {
            let idempotent = session.req_header().method.is_idempotent();
            if (!idempotent && !route.retry_non_idempotent)
                || session.as_ref().retry_buffer_truncated()
            {
                return false;
            }
        }
        if cluster.len() <= st.tried.len() {
            return false;
        }
        // The budget bounds the extra load retries put on an upstream. A refused connect sent
        // nothing, so sending the request elsewhere adds none: it is always allowed (killing one
        // of three targets under load must cost no client an error). A request already
        // retrying holds its slot in the budget; only a first retry asks.
        if kind != FailureKind::Connect
            && st.retrying.is_none()
            && !budget_allows(policy, &cluster.counters)
        {
            tracing::warn!(upstream = %cluster.name(), "retry budget exhausted; not retrying");
            return false;
        }
        true
    }

    fn forwarded_headers(
        &self,
        session: &Session,
        up: &mut RequestHeader,
        st: &RequestState,
        snap: &Snapshot,
    ) {
        let trusted = st
            .ctx
            .peer_ip
            .is_some_and(|ip| forwarded::is_trusted(ip, &snap.config.server.trusted_proxies));
        let req = session.req_header();
        if let Some(peer) = st.ctx.peer_ip {
            // A trusted proxy's chain may arrive split over several header lines.
            let prev: Vec<&str> = if trusted {
                req.headers
                    .get_all(&forwarded::X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect()
            } else {
                Vec::new()
            };
            let xff = if prev.is_empty() {
                forwarded::ip_header_value(peer)
            } else {
                let peer = peer.to_canonical();
                HeaderValue::from_str(&format!("{}, {peer}", prev.join(", "))).ok()
            };
            if let Some(v) = xff {
                let _ = up.insert_header("x-forwarded-for", v);
            }
        }
        let keep = |name: &HeaderName| trusted && req.headers.contains_key(name);
        if !keep(&forwarded::X_FORWARDED_PROTO) {
            let _ = up.insert_header(
                "x-forwarded-proto",
                HeaderValue::from_static(st.ctx.scheme.as_str()),
            );
        }
        if !keep(&forwarded::X_FORWARDED_HOST) {
            let host = req.headers.get(HOST).cloned().or_else(|| {
                req.uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
            match host {
                Some(h) => {
                    let _ = up.insert_header("x-forwarded-host", h);
                }
                None => {
                    up.remove_header("x-forwarded-host");
                }
            }
        }
    }
}

/// The 503 of a circuit breaker.
fn overloaded(cluster: &Cluster, what: &str, limit: Option<usize>) -> PluginError {
    PluginError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream_overloaded",
        format!(
            "upstream `{}` is at its limit of {} {what}",
            cluster.name(),
            limit.unwrap_or(0)
        ),
    )
}

/// The ring-hash key of a request; `None` (a random pick) when the request lacks it.
fn hash_key(on: &HashOn, session: &Session, st: &RequestState) -> Option<u64> {
    let req = session.req_header();
    match on {
        HashOn::Header(name) => req.headers.get(name).map(|v| hash64(v.as_bytes())),
        HashOn::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash64(v)),
        HashOn::ClientIp => st.ctx.client_ip.map(hash64),
        HashOn::Path => Some(hash64(req.uri.path())),
    }
}

/// The `grpc-timeout` header, when the client sent a valid one.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    crate::grpc::parse_timeout(headers.get(GRPC_TIMEOUT)?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_is_parsed_per_spec() {
        let mut h = http::HeaderMap::new();
        for (v, want) in [
            ("100m", Some(std::time::Duration::from_millis(100))),
            ("2S", Some(std::time::Duration::from_secs(2))),
            ("1H", Some(std::time::Duration::from_secs(3600))),
            ("123456789S", None),
            ("10x", None),
            ("m", None),
            ("-1S", None),
        ] {
            h.insert("grpc-timeout", http::HeaderValue::from_static(v));
            assert_eq!(grpc_timeout(&h), want, "{v}");
        }
    }
}
