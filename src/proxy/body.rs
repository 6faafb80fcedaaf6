//! The plugins' body phase, before the handler: when a plugin of the route asks for the whole
//! request body (`BodyAccess::Buffer`), it is read here, each piece through the streaming phase,
//! then handed to the plugins that asked (`on_request_body_buffered`), which may change it or
//! answer. The handler then gets the body the plugins left: a serving handler directly, the
//! proxy handler through pingora's replay buffer (see `buffer`).

use bytes::Bytes;
use pingora_proxy::Session;
use tollgate_plugin_api::{body, BodyPlan, Flow, Plugin};

use super::context::RequestState;
use super::{prepare, respond, Gateway};
use crate::config::PluginEntry;
use crate::error::GatewayError;
use crate::handler::Handler;

/// The largest body pingora replays to an upstream once the gateway has read it (its retry
/// buffer): a proxied route buffers at most this much for its plugins.
const PROXY_BUFFER_LIMIT: u64 = 64 * 1024;

impl Gateway {
    /// Runs the body phase when the route's plugins ask for it. `true` when the request was
    /// answered here (by a plugin, or with an error).
    pub(super) async fn buffer_for_plugins(
        &self,
        session: &mut Session,
        st: &mut RequestState,
    ) -> bool {
        let Some((plan, proxied)) = st
            .route_runtime()
            .map(|r| (r.body_plan, matches!(r.handler, Handler::Proxy)))
        else {
            return false;
        };
        // An upgraded connection's "body" is a tunnel, not a request body.
        if !plan.buffers() || session.is_upgrade_req() {
            return false;
        }
        let plan = match plan {
            // pingora can send a body it did not read itself only from its replay buffer.
            BodyPlan::Buffer { max_bytes, plugin } if proxied => BodyPlan::Buffer {
                max_bytes: max_bytes.min(PROXY_BUFFER_LIMIT),
                plugin,
            },
            plan => plan,
        };
        match self.buffer(session, st, plan, proxied).await {
            Ok(Flow::Continue) => false,
            Ok(Flow::Respond(resp)) => {
                respond::send(session, st, resp).await;
                true
            }
            Err(err) => {
                session.set_keepalive(None);
                respond::send_error(session, st, &err).await;
                true
            }
        }
    }

    async fn buffer(
        &self,
        session: &mut Session,
        st: &mut RequestState,
        plan: BodyPlan,
        proxied: bool,
    ) -> Result<Flow, GatewayError> {
        let Some(plugins) = st.plugins() else {
            return Ok(Flow::Continue);
        };
        plan.check_declared(session.req_header())?;
        let Some(mut buffer) = plan.buffer() else {
            return Ok(Flow::Continue);
        };
        if proxied {
            // What is read here, pingora replays to the upstream (and to a retry's target).
            session.as_mut().enable_retry_buffering();
        }
        loop {
            self.arm_body_deadline(session, st)?;
            let piece = match session.read_request_body().await {
                Ok(p) => p,
                Err(e) if *e.etype() == pingora_core::ErrorType::ReadTimedout => {
                    return Err(prepare::late_body(st));
                }
                Err(e) => return Err(GatewayError::BadRequestBody(e.to_string())),
            };
            let end = piece.is_none() || session.is_body_done();
            let mut piece = piece;
            if piece.is_some() || end {
                body::stream_piece(chain(&plugins), &mut piece, end, &mut st.ctx)?;
            }
            if let Some(p) = piece {
                buffer.push(p)?;
            }
            if end {
                break;
            }
        }
        let mut whole = buffer.into_bytes();
        let flow = body::run_buffered(
            chain(&plugins),
            session.req_header_mut(),
            &mut whole,
            &mut st.ctx,
        )
        .await?;
        st.buffered_body = Some(whole);
        Ok(flow)
    }
}

/// The plugins of a chain, as the body phase takes them.
fn chain(plugins: &[PluginEntry]) -> impl Iterator<Item = &dyn Plugin> + Clone {
    plugins.iter().map(plugin_of)
}

fn plugin_of(entry: &PluginEntry) -> &dyn Plugin {
    &*entry.plugin
}

/// The body the plugins left, in place of the bytes pingora replays to the upstream; `true`
/// when the request's body was buffered (its plugins have already seen every piece).
pub fn replace_replayed(st: &RequestState, data: &mut Option<Bytes>) -> bool {
    let Some(whole) = st.buffered_body.as_ref() else {
        return false;
    };
    if data.is_some() {
        *data = Some(whole.clone());
    }
    true
}
