//! A plugin's or a chain's phases run in the gateway's order, without a gateway.

use std::sync::Arc;

use tollgate_plugin_api::body::run_request_body;
use tollgate_plugin_api::{
    Bytes, Flow, Plugin, PluginError, RequestContext, RequestHeader, Response, ResponseHeader,
};

/// The request phase of one plugin, which must answer; returns its answer.
pub async fn answer(
    plugin: &Arc<dyn Plugin>,
    req: &mut RequestHeader,
    ctx: &mut RequestContext,
) -> Response {
    match plugin.on_request(req, ctx).await {
        Ok(Flow::Respond(r)) => r,
        Ok(Flow::Continue) => panic!("`{}` let the request through", plugin.name()),
        Err(e) => panic!("`{}` refused the request: {e}", plugin.name()),
    }
}

/// The request phase of one plugin, which must let the request through.
pub async fn pass(plugin: &Arc<dyn Plugin>, req: &mut RequestHeader, ctx: &mut RequestContext) {
    match plugin.on_request(req, ctx).await {
        Ok(Flow::Continue) => {}
        Ok(Flow::Respond(r)) => panic!("`{}` answered {}", plugin.name(), r.status),
        Err(e) => panic!("`{}` refused the request: {e}", plugin.name()),
    }
}

/// The response phase of every plugin of `chain` on a response of `status`, as the gateway runs
/// it on every answer; returns the response the client gets.
pub fn respond(chain: &[Arc<dyn Plugin>], status: u16, ctx: &mut RequestContext) -> ResponseHeader {
    let mut resp = ResponseHeader::build(status, None).expect("a valid status");
    for plugin in chain {
        plugin.on_response(&mut resp, ctx);
    }
    resp
}

/// The request body phase of `chain` (its buffered and streamed parts) for a body in `pieces`:
/// see [`tollgate_plugin_api::body::run_request_body`].
pub async fn run_body(
    chain: &[Arc<dyn Plugin>],
    req: &mut RequestHeader,
    pieces: &[&[u8]],
    ctx: &mut RequestContext,
) -> Result<(Flow, Bytes), PluginError> {
    let pieces = pieces.iter().map(|p| Bytes::copy_from_slice(p));
    run_request_body(chain.iter().map(|p| &**p), req, pieces, ctx).await
}

/// What a chain made of a request, as the gateway acts on it.
#[derive(Debug)]
pub enum Outcome {
    /// Handed to the handler with this body.
    Forwarded(Bytes),
    /// Answered by a plugin.
    Answered(Response),
    /// Refused by a plugin (or by the gateway for a body over the limit).
    Refused(PluginError),
}

impl Outcome {
    /// The refusal; panics on any other outcome.
    pub fn refusal(self) -> PluginError {
        match self {
            Outcome::Refused(e) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// The body handed on; panics on any other outcome.
    pub fn forwarded(self) -> Bytes {
        match self {
            Outcome::Forwarded(b) => b,
            other => panic!("expected the request to be forwarded, got {other:?}"),
        }
    }
}

/// The request side of `chain` (plugins in the order given, highest priority first) as the
/// gateway runs it: every `on_request` until one answers, then the body phase for a body in
/// `pieces`.
pub async fn run_chain(
    chain: &[Arc<dyn Plugin>],
    req: &mut RequestHeader,
    pieces: &[&[u8]],
    ctx: &mut RequestContext,
) -> Outcome {
    for plugin in chain {
        match plugin.on_request(req, ctx).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Respond(r)) => return Outcome::Answered(r),
            Err(e) => return Outcome::Refused(e),
        }
    }
    match run_body(chain, req, pieces, ctx).await {
        Ok((Flow::Continue, body)) => Outcome::Forwarded(body),
        Ok((Flow::Respond(r), _)) => Outcome::Answered(r),
        Err(e) => Outcome::Refused(e),
    }
}
