//! The request phase before the plugins: the request's identity (id, client address, trace),
//! its host and target under the listener's rules, the size limits, the route, and the body's
//! deadlines.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::HOST;
use http::HeaderValue;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use tollgate_plugin_api::{generate_request_id, is_sane_request_id, Scheme};

use super::context::RequestState;
use super::{forwarded, head, host, target, Gateway, X_REQUEST_ID};
use crate::config::{ClientLimits, ServerSettings};
use crate::error::GatewayError;
use crate::router::normalize_path;
use crate::snapshot::Snapshot;
use crate::telemetry::trace::RequestSpan;

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
    pub(super) fn prepare(
        &self,
        session: &mut Session,
        st: &mut RequestState,
    ) -> Result<(), GatewayError> {
        let snap = self.snapshot.load_full();
        self.identify(session, st, &snap);
        // Before any plugin or handler sees the request, so that nothing downstream can take a
        // client's copy for the gateway's.
        forwarded::remove_gateway_only(session.req_header_mut());
        let req = session.req_header();
        // The span starts before the host is judged, so that a refused host is traced too.
        let host = host::request_host(req);
        let span_host = host.as_ref().ok().copied().flatten();
        st.span = RequestSpan::start(req, st.ctx.client_ip, span_host, http_version(req));
        st.ctx.trace = st.span.as_ref().and_then(RequestSpan::plugin_parent);
        let host = host?;
        st.ctx.host = host.map(|h| strip_port(h).to_ascii_lowercase());
        // An HTTP/1.0 absolute-form target without Host: its authority becomes the Host that
        // later phases and the upstream see.
        let host_to_add = match (host, req.headers.contains_key(HOST), req.uri.authority()) {
            (Some(h), false, None) => HeaderValue::from_str(h).ok(),
            _ => None,
        };
        check_head(req, &snap.config.server)?;
        let raw_path = req.uri.path();
        let unescaped = target::escaped_slashes(raw_path, st.limits.escaped_slashes)?;
        let path = normalize_path(unescaped.as_deref().unwrap_or(raw_path))
            .map_err(|e| GatewayError::BadPath(format!("invalid request path: {e}")))?;
        route(req, host, &path, &snap, st)?;
        // Later phases and the upstream see only the normalised path, in origin form (an
        // absolute-form target's authority has served as the host).
        let absolute = head::target_authority(req.raw_path()).is_some();
        if unescaped.is_some() || matches!(path, Cow::Owned(_)) || absolute {
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

    /// Who is asking, through which listener, under which config: the listener's limits, the
    /// request id, scheme and client address.
    fn identify(&self, session: &Session, st: &mut RequestState, snap: &Arc<Snapshot>) {
        // Requests with a whole-request deadline bring their listener's limits (and the head's
        // start) from the connection loop; the others find them by the local address.
        if st.head_started.is_none() {
            let local = session.server_addr().and_then(|a| a.as_inet()).copied();
            st.limits = self.listeners.limits(&snap.config, local);
        }
        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let ssl = session.digest().and_then(|d| d.ssl_digest.as_deref());
        let tls = ssl.is_some();
        st.ctx.client_cert = ssl.and_then(super::tls::client_cert);
        let req = session.req_header();
        st.ctx.request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(v) if is_sane_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => generate_request_id(),
        };
        st.ctx.scheme = if tls { Scheme::Https } else { Scheme::Http };
        st.ctx.peer_ip = peer_ip;
        let trusted = &snap.config.server.trusted_proxies;
        st.ctx.client_ip = forwarded::client_ip(peer_ip, &req.headers, trusted);
        st.snapshot = Some(snap.clone());
    }

    /// Bounds the wait for each piece of the request body (`client_body_timeout`) and, when
    /// set, for the whole request (`request_timeout`, counted from the head's first byte).
    /// pingora applies the read timeout to HTTP/1.x bodies; an upgraded connection keeps
    /// pingora's own idle timeout, since its "body" is a long-lived tunnel.
    pub(super) fn arm_body_deadline(
        &self,
        session: &mut Session,
        st: &RequestState,
    ) -> Result<(), GatewayError> {
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

/// The 408 of a request body that did not arrive in time, naming the limit it ran into.
pub fn late_body(st: &RequestState) -> GatewayError {
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

/// The 408 of a body the client stopped sending while the upstream waited for it, until the
/// upstream's read timeout ran out (before the gateway's own body wait did).
pub fn stalled_body(st: &RequestState) -> GatewayError {
    GatewayError::ClientTimeout(format!(
        "the request body stopped arriving: upstream `{}` waited for the rest of it until its \
         read_timeout ran out",
        st.ctx.upstream
    ))
}

/// The 408 of a client that took too long; `key` names the limit it ran into.
fn client_timeout(limits: &ClientLimits, key: &str) -> GatewayError {
    let limit = match key {
        "request_timeout" => limits.request_timeout.unwrap_or_default(),
        _ => limits.client_body_timeout,
    };
    GatewayError::ClientTimeout(format!(
        "the client did not send its request in time ({key} = {})",
        humantime::format_duration(limit)
    ))
}

/// The URI and head size limits, and a target that is a path or an absolute URL.
fn check_head(req: &RequestHeader, server: &ServerSettings) -> Result<(), GatewayError> {
    let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > server.max_uri_bytes {
        return Err(GatewayError::UriTooLong {
            len: uri_len,
            limit: server.max_uri_bytes,
        });
    }
    let head = header_bytes(req);
    if head > server.max_request_header_bytes {
        return Err(GatewayError::HeadersTooLarge(format!(
            "request headers are {head} bytes; the limit is {}",
            server.max_request_header_bytes
        )));
    }
    // pingora keeps a target it cannot place (`x/admin`) whole for the wire and routes it as
    // `/`: such a target would skip every path rule here.
    let raw_target = req.raw_path();
    if !raw_target.starts_with(b"/")
        && head::target_authority(raw_target).is_none()
        && req.method != http::Method::CONNECT
    {
        return Err(GatewayError::BadPath(
            "the request target is neither a path (`/...`) nor an absolute URL".to_owned(),
        ));
    }
    Ok(())
}

/// Finds the request's route and puts what it names (route, upstream, path parameters, the
/// prefix to strip) into the request's state.
fn route(
    req: &RequestHeader,
    host: Option<&str>,
    path: &str,
    snap: &Snapshot,
    st: &mut RequestState,
) -> Result<(), GatewayError> {
    let Some(m) = snap
        .config
        .table
        .match_request(&req.method, host, path, &req.headers)
    else {
        return Err(GatewayError::RouteNotFound {
            method: req.method.clone(),
            path: path.to_owned(),
        });
    };
    let route = snap
        .config
        .routes
        .get(m.id)
        .ok_or_else(|| GatewayError::Internal("route table out of sync".to_owned()))?;
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
    Ok(())
}

fn http_version(req: &RequestHeader) -> &'static str {
    match req.version {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}

/// The host without its port (and an IPv6 literal without its brackets). A byte scan from the
/// end: this runs on every request, and `rsplit_once` cost ten times as much.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    let bytes = host.as_bytes();
    let digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    match bytes.len().checked_sub(digits + 1) {
        Some(colon) if bytes[colon] == b':' => &host[..colon],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn strip_port_takes_off_a_numeric_port_only() {
        for (host, want) in [
            ("example.com", "example.com"),
            ("example.com:8080", "example.com"),
            ("example.com:", "example.com"),
            ("example.com:80a", "example.com:80a"),
            ("8080", "8080"),
            (":80", ""),
            ("[::1]:443", "::1"),
            ("[::1]", "::1"),
            ("", ""),
        ] {
            assert_eq!(strip_port(host), want, "{host}");
        }
    }
}
