//! The plugin chain's phases, run in the chain's order (globals merged in, by priority).

use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use tollgate_plugin_api::{Flow, PluginError};

use super::context::RequestState;
use super::respond;

/// The request phase. `true` when a plugin answered the request (the answer is sent).
pub async fn on_request(session: &mut Session, st: &mut RequestState) -> bool {
    let Some(plugins) = st.plugins() else {
        return false;
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
                return true;
            }
            Err(err) => {
                respond::send_error(session, st, &err.into()).await;
                return true;
            }
        }
    }
    false
}

/// The streamed request body phase, for every piece of the body.
pub fn on_request_body(
    st: &mut RequestState,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
) -> Result<(), PluginError> {
    let Some(plugins) = st.plugins() else {
        return Ok(());
    };
    for entry in plugins.iter() {
        entry
            .plugin
            .on_request_body(body, end_of_stream, &mut st.ctx)?;
    }
    Ok(())
}

/// The upstream request phase: the request as the target will get it, once per try.
pub fn on_upstream_request(
    st: &mut RequestState,
    up: &mut RequestHeader,
) -> Result<(), PluginError> {
    let Some(plugins) = st.plugins() else {
        return Ok(());
    };
    for entry in plugins.iter() {
        entry.plugin.on_upstream_request(up, &mut st.ctx)?;
    }
    Ok(())
}

/// The response header phase: every response, the upstream's or the gateway's.
pub fn on_response(st: &mut RequestState, resp: &mut ResponseHeader) {
    if let Some(plugins) = st.plugins() {
        for entry in plugins.iter() {
            entry.plugin.on_response(resp, &mut st.ctx);
        }
    }
}

/// The response body phase, for every piece of the body.
pub fn on_response_body(st: &mut RequestState, body: &mut Option<Bytes>, end_of_stream: bool) {
    if let Some(plugins) = st.plugins() {
        for entry in plugins.iter() {
            entry
                .plugin
                .on_response_body(body, end_of_stream, &mut st.ctx);
        }
    }
}

/// The logging phase, once the request is over.
pub fn on_log(st: &RequestState, status: u16) {
    if let Some(plugins) = st.plugins() {
        for entry in plugins.iter() {
            entry.plugin.on_log(&st.ctx, status);
        }
    }
}
