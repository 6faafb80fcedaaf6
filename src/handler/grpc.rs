//! The gRPC transcoding handler: HTTP/JSON and gRPC-Web requests of a route with a `grpc` table
//! are answered by the transcoding engine (src/grpc/), which calls the target this handler picks
//! through the route's `upstream::Attempt` — ring-hash keys, retries and `failure_statuses` hold
//! as on proxied routes.

use std::sync::Arc;

use async_trait::async_trait;

use super::{HandlerRequest, ServeHandler};
use crate::error::GatewayError;
use crate::grpc::{CallFailure, ResponseBody, Transcoder};
use crate::upstream::{FailureKind, Verdict};

/// Serves a transcoding route.
pub struct GrpcHandler {
    transcoder: Arc<Transcoder>,
}

impl GrpcHandler {
    /// The handler of a route's transcoder.
    pub fn new(transcoder: Arc<Transcoder>) -> Self {
        Self { transcoder }
    }
}

#[async_trait]
impl ServeHandler for GrpcHandler {
    /// Native gRPC passes through; everything else on a transcoding route is the engine's (an
    /// unbound path gets its 404 JSON, not a confused gRPC server).
    fn takes(&self, head: &http::request::Parts) -> bool {
        !crate::grpc::is_grpc_request(&head.headers)
    }

    fn max_body_bytes(&self) -> usize {
        self.transcoder.max_body_bytes()
    }

    async fn serve(
        &self,
        req: HandlerRequest<'_>,
    ) -> Result<http::Response<ResponseBody>, GatewayError> {
        let Some(attempt) = req.attempt else {
            return Err(GatewayError::Internal(
                "a transcoding route without an upstream".to_owned(),
            ));
        };
        let request_id = req.ctx.request_id.as_str();
        loop {
            let target = attempt.next_target(req.hash_key).await?;
            let call_target = attempt.cluster().grpc_target(&target).map_err(|detail| {
                GatewayError::UpstreamTlsSetup {
                    upstream: Arc::from(attempt.cluster().name()),
                    detail,
                }
            })?;
            // Boxed, as each level of the call is: rustc lays an awaited future out twice in
            // its caller's state, so inlined levels doubled up to a 66 KB future, copied when
            // moved. The engine borrows the request head: copying it into an `http::Request`
            // header by header cost more than the whole metadata forwarding.
            let response = Box::pin(self.transcoder.handle_read(
                req.head,
                request_id,
                req.body.clone(),
                &call_target,
            ))
            .await;
            let verdict = match response.extensions().get::<CallFailure>() {
                Some(failure) => {
                    attempt.end_try("error");
                    attempt.failed(failure_kind(*failure), req.replay, false)
                }
                None => {
                    attempt.end_try("response");
                    attempt.answered(response.status().as_u16(), req.replay)
                }
            };
            if verdict == Verdict::Stop {
                return Ok(response);
            }
        }
    }
}

fn failure_kind(f: CallFailure) -> FailureKind {
    match f {
        CallFailure::Connect => FailureKind::Connect,
        CallFailure::ConnectTimeout => FailureKind::ConnectTimeout,
        CallFailure::Reset => FailureKind::Reset,
        CallFailure::Timeout => FailureKind::Timeout,
    }
}
