//! The end of a request: answering a failed proxy attempt (`fail_to_proxy`), and the logging
//! phase that always runs — plugins' `on_log`, metrics, the server span, the access log.

use pingora_core::Error;
use pingora_proxy::Session;

use super::context::RequestState;
use super::{chain, log, prepare, respond, upstream};
use crate::telemetry::metrics::metrics;
use crate::upstream::FailureKind;

/// Answers a request whose proxying failed; returns the status the gateway decided (0 when
/// nothing could be answered).
pub async fn fail_to_proxy(session: &mut Session, e: &Error, st: &mut RequestState) -> u16 {
    let mut err = st.error.take();
    if err.is_none() {
        err = match FailureKind::of(e, session.is_body_done()) {
            FailureKind::ClientTimeout => Some(prepare::late_body(st)),
            kind => st
                .attempt
                .as_mut()
                .and_then(|a| a.take_failure())
                .filter(|_| kind != FailureKind::ClientGone)
                .or_else(|| kind.error(&st.ctx.upstream)),
        };
    }
    // pingora closes the client connection after a failed proxy attempt whatever we return
    // here, so say so in the response: a client told `Connection: close` won't race us by
    // sending its next request on a connection about to close.
    session.set_keepalive(None);
    let Some(err) = err else {
        return 0;
    };
    if err.status().is_client_error() {
        // The client's doing: no operator needs a warning per misbehaving client.
        tracing::debug!(request_id = %st.ctx.request_id, route = %st.ctx.route,
            status = err.status().as_u16(), code = err.code(), error = %e, "request refused");
    } else {
        tracing::warn!(
            request_id = %st.ctx.request_id,
            route = %st.ctx.route,
            upstream = %st.ctx.upstream,
            status = err.status().as_u16(),
            code = err.code(),
            error = %e,
            "request failed"
        );
    }
    if session.response_written().is_none() {
        respond::send_error(session, st, &err).await
    } else {
        respond::end_grpc_stream(session, &err).await;
        err.status().as_u16()
    }
}

/// The logging phase: once per request, also after errors.
pub fn logging(session: &Session, e: Option<&Error>, st: &mut RequestState) {
    let status = session
        .response_written()
        .map_or(st.gateway_status, |r| r.status.as_u16());
    chain::on_log(st, status);
    upstream::end_try(st, "error", None, e.map(|_| "upstream_error"));
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
        // What the plugins counted (rate-limit refusals, auth failures), as they said it.
        m.record_counts(route_label, st.ctx.counts());
    }
    let error_type = match (e, st.gateway_code) {
        (_, Some(code)) if status >= 500 => Some(code),
        (Some(_), _) => Some("proxy_error"),
        _ if status >= 500 => Some("upstream_5xx"),
        _ => None,
    };
    // Formatting the trace id costs as much as the metrics above: only for a log line.
    let enabled = crate::telemetry::access_log::enabled();
    let trace_id = st
        .span
        .as_ref()
        .filter(|_| enabled)
        .and_then(|s| s.trace_id());
    if let Some(span) = st.span.take() {
        span.finish(status, error_type);
    }
    if enabled {
        access_log(session, st, status, elapsed, trace_id, e);
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

/// One access log line for a finished request.
fn access_log(
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
    let attempt = st.attempt.as_ref();
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
            target: st.target().map(|t| t.address),
            status,
            bytes_sent: session.body_bytes_sent() as u64,
            bytes_received: session.body_bytes_read() as u64,
            duration: elapsed,
            upstream_time: attempt.map_or(std::time::Duration::ZERO, |a| a.upstream_time()),
            attempts: attempt.map_or(0, |a| a.tries()),
            error,
        },
    );
}
