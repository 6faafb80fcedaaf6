//! The proxy handler's upstream phases: pingora asks for a peer, reports connect and proxy
//! failures and hands over the upstream's response head; each is decided by the request's
//! `upstream::Attempt` (target, retry, outlier report) and `FailureKind` (what it means).

use std::borrow::Cow;

use http::header::HOST;
use http::HeaderValue;
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::context::RequestState;
use super::{chain, forwarded, prepare, rewrite, target, X_REQUEST_ID};
use crate::config::{Algorithm, HashOn};
use crate::error::GatewayError;
use crate::upstream::{build_peer, hash64, Attempt, FailureKind, Verdict};

/// Stops the request: `fail_to_proxy` answers with the error stored in the state.
pub fn reject(st: &mut RequestState, err: GatewayError) -> Box<Error> {
    let status = err.status().as_u16();
    st.error = Some(err);
    Error::new(ErrorType::HTTPStatus(status))
}

/// The proxy handler takes the request: its tries at the route's upstream begin.
pub fn begin(st: &mut RequestState) {
    let attempt = st.route().and_then(|route| {
        let snap = st.snapshot.as_ref()?;
        let cluster = snap.clusters.get(route.upstream?)?.clone();
        Some(Attempt::new(cluster, route.upstream_name.clone()))
    });
    st.attempt = attempt;
}

/// Whether the request may be sent again after some of it reached an upstream: its method is
/// idempotent (or the route says its upstream tolerates it), and its body is still at hand.
pub fn replayable(session: &Session, st: &RequestState) -> bool {
    let method_ok = session.req_header().method.is_idempotent()
        || st.route().is_some_and(|r| r.retry_non_idempotent);
    method_ok && !session.as_ref().retry_buffer_truncated()
}

/// pingora's `upstream_peer`: the target of the next try, as a pingora peer.
pub async fn peer(session: &mut Session, st: &mut RequestState) -> Result<Box<HttpPeer>> {
    let key = hash_key(session, st);
    let Some(attempt) = st.attempt.as_mut() else {
        return Err(Error::new(ErrorType::InternalError));
    };
    let target = match attempt.next_target(key).await {
        Ok(t) => t,
        Err(err) => return Err(reject(st, err)),
    };
    let (Some(route), Some(attempt)) = (st.route(), st.attempt.as_ref()) else {
        return Err(Error::new(ErrorType::InternalError));
    };
    let mut peer = build_peer(&attempt.cluster().config, &target, route);
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
    let tries = attempt.tries();
    if let Some(span) = st.span.as_ref() {
        st.attempt_span = Some(span.start_attempt(target.address, tries as u32));
    }
    Ok(Box::new(peer))
}

/// pingora's `fail_to_connect`: nothing was sent, so another target is always safe to try.
pub fn fail_to_connect(session: &Session, st: &mut RequestState, mut e: Box<Error>) -> Box<Error> {
    end_try(st, "connect_error", None, Some("connect_error"));
    let replay = replayable(session, st);
    let kind = FailureKind::of(&e, true);
    if let Some(attempt) = st.attempt.as_mut() {
        if attempt.failed(kind, replay, false) == Verdict::Retry {
            e.set_retry(true);
        }
    }
    e
}

/// pingora's `error_while_proxy`: a try failed after connecting.
pub fn error_while_proxy(
    session: &mut Session,
    st: &mut RequestState,
    mut e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    let kind = FailureKind::of(&e, session.is_body_done());
    if st.error.is_some() || *e.esource() == ErrorSource::Downstream {
        // The gateway refused the request mid-way (a plugin's body check), or the client failed
        // or went away: nothing to say about the upstream, nothing to send again.
        end_try(st, "client_error", None, None);
        if kind == FailureKind::ClientTimeout && st.error.is_none() {
            st.error = Some(prepare::late_body(st));
        }
        e.set_retry(false);
        return e;
    }
    if kind == FailureKind::ClientTimeout {
        // The upstream timed out waiting for a body the client stopped sending: the client's
        // fault, not reported against the target and never retried.
        end_try(st, "client_timeout", None, Some("client_timeout"));
        st.error = Some(prepare::stalled_body(st));
        e.set_retry(false);
        return e;
    }
    end_try(st, "error", None, Some("upstream_error"));
    if std::mem::take(&mut st.status_retry) {
        // upstream_response_filter already decided this status is retried.
        e.set_retry(true);
        return e;
    }
    let replay = replayable(session, st);
    if let Some(attempt) = st.attempt.as_mut() {
        if attempt.failed(kind, replay, client_reused) == Verdict::Retry {
            e.set_retry(true);
            return e;
        }
    }
    if replay && session.req_header().method.is_idempotent() {
        // pingora's own rule: a request that failed on a reused connection may be resent.
        e.retry.decide_reuse(client_reused);
    } else {
        e.set_retry(false);
    }
    e
}

/// pingora's `upstream_response_filter`: the upstream answered; outlier detection learns of
/// it, and a status the policy retries ends this try for another.
pub fn response(session: &Session, st: &mut RequestState, resp: &ResponseHeader) -> Result<()> {
    let status = resp.status.as_u16();
    end_try(st, "response", Some(status), None);
    let replay = replayable(session, st);
    let Some(attempt) = st.attempt.as_mut() else {
        return Ok(());
    };
    if attempt.answered(status, replay) == Verdict::Retry {
        st.status_retry = true;
        return Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "retrying on another target",
        ));
    }
    Ok(())
}

/// pingora's `upstream_request_filter`: the request as the target gets it — path rewrite,
/// origin form, Host, forwarded headers, request id, trace context, then the plugins' phase.
pub fn request(session: &Session, st: &mut RequestState, up: &mut RequestHeader) -> Result<()> {
    let (Some(snap), Some(route)) = (st.snapshot.clone(), st.route().cloned()) else {
        return Ok(());
    };
    target::upstream_origin_form(up);
    let new_path =
        rewrite::upstream_path(&route.rewrite, up.uri.path(), st.prefix_len, &st.ctx.params);
    if let Cow::Owned(p) = new_path {
        // A template rewrite may carry its own query; the client's query joins it.
        let uri = match up.uri.query() {
            Some(q) if p.contains('?') => format!("{p}&{q}"),
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        match uri.parse::<http::Uri>() {
            Ok(u) => up.set_uri(u),
            Err(_) => {
                let err = GatewayError::BadPath("the rewritten path is not a valid URI".into());
                return Err(reject(st, err));
            }
        }
    }
    let host_header = route
        .upstream
        .and_then(|i| snap.config.upstreams.get(i))
        .and_then(|u| u.host_header.clone());
    if let Some(h) = host_header {
        let _ = up.insert_header(HOST, h);
    } else if up.headers.get(HOST).is_none() {
        // HTTP/1.1 upstreams need a Host: the client's authority (HTTP/2 clients send only
        // `:authority`); an HTTP/1.0 request without any host gets the target's address, as
        // nginx sends its upstream's name.
        let host = session
            .req_header()
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| {
                st.target()
                    .and_then(|t| HeaderValue::from_str(&t.address.to_string()).ok())
            });
        if let Some(h) = host {
            let _ = up.insert_header(HOST, h);
        }
    }
    forwarded::set_upstream_headers(
        session.req_header(),
        up,
        &st.ctx,
        &snap.config.server.trusted_proxies,
    );
    if let Ok(mut v) = HeaderValue::from_str(&st.ctx.request_id) {
        // Never indexed in HPACK on h2 upstreams: unique per request, it would only evict
        // useful entries from the connection's table.
        v.set_sensitive(true);
        let _ = up.insert_header(X_REQUEST_ID, v);
    }
    if let Some(a) = st.attempt_span.as_ref() {
        a.inject(up);
    }
    if let Err(err) = chain::on_upstream_request(st, up) {
        return Err(reject(st, err.into()));
    }
    Ok(())
}

/// Closes the current try: its duration metric and client span.
pub fn end_try(st: &mut RequestState, outcome: &str, status: Option<u16>, error: Option<&str>) {
    if let Some(attempt) = st.attempt.as_mut() {
        attempt.end_try(outcome);
    }
    if let Some(span) = st.attempt_span.take() {
        span.finish(status, error);
    }
}

/// The ring-hash key of a request; `None` (a random pick) when the upstream does not hash or
/// the request lacks the key.
pub fn hash_key(session: &Session, st: &RequestState) -> Option<u64> {
    let balance = &st.attempt.as_ref()?.cluster().config.balance;
    if balance.algorithm != Algorithm::RingHash {
        return None;
    }
    let req = session.req_header();
    match &balance.hash_on {
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
