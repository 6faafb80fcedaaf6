//! The one place where the gateway makes responses itself: errors in the JSON shape, and the
//! answers of plugins. Every such response goes through the plugins' response phase too.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tollgate_plugin_api::{PluginError, Response};

use super::context::RequestState;

/// Sends `err` as the JSON error shape. Returns the status sent.
pub async fn send_error(session: &mut Session, st: &mut RequestState, err: &PluginError) -> u16 {
    st.gateway_code = Some(err.code);
    if crate::grpc::is_grpc_request(&session.req_header().headers) {
        return send_grpc_error(session, st, err).await;
    }
    let body = err.body(&st.ctx.request_id).to_json();
    let mut headers = err.headers.clone();
    headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
    let resp = Response {
        status: err.status,
        headers,
        body: Bytes::from(body),
    };
    send(session, st, resp).await
}

/// A trailers-only gRPC response: HTTP 200 with `grpc-status` and `grpc-message` in the headers,
/// which is how a gRPC server reports a call that fails before any message.
async fn send_grpc_error(session: &mut Session, st: &mut RequestState, err: &PluginError) -> u16 {
    let code = crate::grpc::code_for_gateway_status(err.status);
    let message = format!("{} ({})", err.message, err.code);
    let mut headers = err.headers.clone();
    headers.push((CONTENT_TYPE, HeaderValue::from_static("application/grpc")));
    headers.push((
        http::HeaderName::from_static("grpc-status"),
        HeaderValue::from(code),
    ));
    if let Ok(v) = HeaderValue::from_str(&grpc_message(&message)) {
        headers.push((http::HeaderName::from_static("grpc-message"), v));
    }
    let resp = Response {
        status: StatusCode::OK,
        headers,
        body: Bytes::new(),
    };
    send(session, st, resp).await;
    // The status the client sees is 200; metrics and logs keep the gateway's decision.
    st.gateway_status = err.status.as_u16();
    err.status.as_u16()
}

/// grpc-message is percent-encoded: every byte outside printable ASCII, and `%` itself.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends a response made by a plugin or the gateway. Returns the status sent (0 if the client
/// could not be written to).
pub async fn send(session: &mut Session, st: &mut RequestState, resp: Response) -> u16 {
    let status = resp.status.as_u16();
    let Ok(mut header) = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2)) else {
        return 0;
    };
    for (name, value) in resp.headers {
        // append, not insert: a plugin may send several values of one header.
        let _ = header.append_header(name, value);
    }
    let _ = header.insert_header(CONTENT_LENGTH, resp.body.len());
    if let Some(plugins) = st.plugins() {
        for p in plugins.iter() {
            p.plugin.on_response(&mut header, &mut st.ctx);
        }
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    let end = resp.body.is_empty() || head_only;
    if session
        .write_response_header(Box::new(header), end)
        .await
        .is_err()
    {
        return 0;
    }
    if !end
        && session
            .write_response_body(Some(resp.body), true)
            .await
            .is_err()
    {
        return 0;
    }
    st.gateway_status = status;
    status
}

/// The error a pingora failure means for the client; `None` when the client is gone.
pub fn classify(e: &Error, upstream: &str) -> Option<PluginError> {
    use ErrorType::*;
    let etype = e.etype();
    if *e.esource() == ErrorSource::Downstream {
        return match etype {
            ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout => None,
            _ => Some(PluginError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request could not be read as valid HTTP",
            )),
        };
    }
    let (status, code, message) = match etype {
        HTTPStatus(code) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY);
            (
                status,
                "upstream_error",
                format!("upstream `{upstream}` failed"),
            )
        }
        ConnectTimedout | TLSHandshakeTimedout => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_connect_timeout",
            format!("timed out connecting to upstream `{upstream}`"),
        ),
        ReadTimedout | WriteTimedout => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("upstream `{upstream}` did not answer in time"),
        ),
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError => (
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            format!("could not connect to upstream `{upstream}`"),
        ),
        TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup => (
            StatusCode::BAD_GATEWAY,
            "upstream_tls_error",
            format!("TLS handshake with upstream `{upstream}` failed"),
        ),
        ConnectionClosed | ReadError | WriteError | H1Error | H2Error | InvalidH2 | H2Downgrade
        | InvalidHTTPHeader => (
            StatusCode::BAD_GATEWAY,
            "upstream_reset",
            format!("upstream `{upstream}` closed or broke the connection"),
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the gateway failed to handle the request".to_string(),
        ),
    };
    Some(PluginError::new(status, code, message))
}
