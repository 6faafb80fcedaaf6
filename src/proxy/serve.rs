//! A route whose handler answers itself (`handler::ServeHandler`): the body read whole under
//! the listener's deadlines, the handler called with the route's upstream tries, and its
//! response streamed to the client through the plugins' response phase.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use http_body_util::BodyExt;
use pingora_core::ErrorType;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::context::RequestState;
use super::{chain, prepare, respond, upstream, Gateway};
use crate::error::GatewayError;
use crate::handler::{HandlerRequest, ServeHandler, StallTimeout};

impl Gateway {
    /// Serves the request with `handler`; every outcome, errors included, is answered here.
    pub(super) async fn serve(
        &self,
        session: &mut Session,
        st: &mut RequestState,
        handler: &dyn ServeHandler,
    ) {
        if let Err(err) = self.try_serve(session, st, handler).await {
            respond::send_error(session, st, &err).await;
        }
    }

    async fn try_serve(
        &self,
        session: &mut Session,
        st: &mut RequestState,
        handler: &dyn ServeHandler,
    ) -> Result<(), GatewayError> {
        upstream::begin(st);
        // Admitted before the body is read: an upstream at its limit refuses at once.
        if let Some(attempt) = st.attempt.as_mut() {
            attempt.admit()?;
        }
        let body = self
            .read_body(session, st, handler.max_body_bytes())
            .await?;
        let hash_key = upstream::hash_key(session, st);
        // The body is at hand, so only the method decides whether it may be sent again.
        let replay = session.req_header().method.is_idempotent()
            || st.route().is_some_and(|r| r.retry_non_idempotent);
        let head: &http::request::Parts = session.req_header();
        let request = HandlerRequest {
            head,
            body: body.freeze(),
            ctx: &st.ctx,
            attempt: st.attempt.as_mut(),
            hash_key,
            replay,
        };
        let response = handler.serve(request).await?;
        write_response(session, st, response).await;
        Ok(())
    }

    /// Reads the whole body, at most `max + 1` bytes (one more than the limit, so the handler
    /// can tell "too large" from "exactly full"), under the body deadlines.
    async fn read_body(
        &self,
        session: &mut Session,
        st: &RequestState,
        max: usize,
    ) -> Result<BytesMut, GatewayError> {
        let limit = max.saturating_add(1);
        if let Some(whole) = st.buffered_body.as_ref() {
            // Read for the plugins already; the handler gets what they left.
            return Ok(BytesMut::from(&whole[..whole.len().min(limit)]));
        }
        let mut body = BytesMut::new();
        loop {
            self.arm_body_deadline(session, st)?;
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    let room = limit.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= limit {
                        return Ok(body);
                    }
                }
                Ok(None) => return Ok(body),
                Err(e) if *e.etype() == ErrorType::ReadTimedout => {
                    session.set_keepalive(None);
                    return Err(prepare::late_body(st));
                }
                Err(e) => return Err(GatewayError::BadRequestBody(e.to_string())),
            }
        }
    }
}

/// Streams a handler's response to the client: the head through the plugins' response phase,
/// then the body as it comes; a body that breaks off cuts the client's response.
async fn write_response(
    session: &mut Session,
    st: &mut RequestState,
    response: http::Response<crate::grpc::ResponseBody>,
) {
    let (parts, mut body) = response.into_parts();
    let stall = parts.extensions.get::<StallTimeout>().cloned();
    let status = parts.status.as_u16();
    let has_length = parts.headers.contains_key(http::header::CONTENT_LENGTH);
    // A body of unknown length may stream for as long as the client stays (Server-Sent
    // Events, gRPC server streaming): the connection is watched meanwhile, so a client that
    // left ends the stream (and frees what feeds it) at once, not at the next write.
    let exact = hyper::body::Body::size_hint(&body).exact();
    let watch = exact.is_none();
    // The handler's head becomes pingora's as it is (HTTP/1.1 names go out title-cased):
    // copying header by header into a case-preserving map cost more than building it.
    let mut header = ResponseHeader::from(parts);
    // pingora frames an HTTP/1.1 body by these headers; with neither it would delimit the body
    // by closing the connection while saying keep-alive.
    if !has_length {
        match exact {
            Some(n) => {
                let _ = header.insert_header(http::header::CONTENT_LENGTH, n);
            }
            None if session.req_header().version < http::Version::HTTP_2 => {
                let _ = header.insert_header(http::header::TRANSFER_ENCODING, "chunked");
            }
            None => {}
        }
    }
    chain::on_response(st, &mut header);
    st.gateway_status = status;
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_err()
    {
        return;
    }
    loop {
        let frame = if watch {
            tokio::select! {
                frame = body.frame() => frame,
                read = session.read_body_or_idle(false) => {
                    match read {
                        // Request body the handler did not want, or its end: keep watching.
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(request_id = %st.ctx.request_id, error = %e,
                                "client left a streamed response");
                            session.set_keepalive(None);
                            return;
                        }
                    }
                    continue;
                }
            }
        } else {
            body.frame().await
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    // The last data ends the stream itself: a unary answer then goes out as one
                    // HTTP/2 DATA frame, not a second, empty one.
                    let end = hyper::body::Body::is_end_stream(&body);
                    let write = session.write_response_body(Some(data), end);
                    let written = match &stall {
                        None => write.await,
                        Some(stall) => match tokio::time::timeout(stall.after, write).await {
                            Ok(written) => written,
                            Err(_) => {
                                // The client stopped reading: the rest of the stream would
                                // only queue behind it.
                                stall.stalled.store(true, Ordering::Release);
                                tracing::info!(request_id = %st.ctx.request_id,
                                    route = %st.ctx.route, after = ?stall.after,
                                    "client took no bytes of its stream; cut");
                                session.set_keepalive(None);
                                return;
                            }
                        },
                    };
                    if written.is_err() || end {
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                // The upstream broke off mid-stream: the client's response cannot be completed,
                // so it is cut rather than ended as if whole.
                tracing::warn!(request_id = %st.ctx.request_id, route = %st.ctx.route,
                    upstream = %st.ctx.upstream, error = %e, "handler's response broken off");
                session.shutdown().await;
                return;
            }
            None => break,
        }
    }
    let _ = session.write_response_body(None, true).await;
}
