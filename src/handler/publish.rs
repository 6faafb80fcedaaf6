//! The publish handler: a route with `[routes.NAME.publish]` sends its request body to a
//! broker (Kafka topic, AMQP exchange, NATS subject) and answers after the broker acknowledged
//! it, with a JSON receipt. The route's plugins (auth, limits, body checks) run before, as on
//! any route.

use std::sync::Arc;

use async_trait::async_trait;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{message, HandlerRequest, ServeHandler};
use crate::broker::idempotency::{self, Answer, Claim, Pending};
use crate::broker::{Broker, Message, PublishError, Receipt};
use crate::config::{PublishConfig, PublishMode};
use crate::error::GatewayError;
use crate::grpc::ResponseBody;

/// Serves a publish route.
pub struct PublishHandler {
    route: Arc<str>,
    config: PublishConfig,
    broker: Arc<Broker>,
    idempotency: Option<Arc<idempotency::Keys>>,
    /// Whether the request's values choose the destination (an unknown one is then the
    /// client's 404): known from the templates once, not per request.
    destination_from_request: bool,
}

impl PublishHandler {
    /// The handler of a route publishing to `broker`.
    pub fn new(
        route: Arc<str>,
        config: PublishConfig,
        broker: Arc<Broker>,
        idempotency: Option<Arc<idempotency::Keys>>,
    ) -> Self {
        let destination_from_request = message::from_request(&config.destination);
        Self {
            route,
            config,
            broker,
            idempotency,
            destination_from_request,
        }
    }

    /// With an `Idempotency-Key` on a route that keeps them: the right to publish for it, or
    /// the first request's answer to give again.
    async fn claim(&self, req: &HandlerRequest<'_>) -> Result<Option<Keyed>, GatewayError> {
        let Some(store) = &self.idempotency else {
            return Ok(None);
        };
        let mut values = req.head.headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let key = value.as_bytes();
        if values.next().is_some() {
            return Err(GatewayError::BadIdempotencyKey(
                "the request has more than one Idempotency-Key".to_owned(),
            ));
        }
        if key.is_empty() || key.len() > 255 || !key.iter().all(|b| (0x21..0x7f).contains(b)) {
            return Err(GatewayError::BadIdempotencyKey(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".to_owned(),
            ));
        }
        // Keys are the client's: two consumers' equal keys are two keys.
        let consumer = req.ctx.vars.get("consumer").unwrap_or_default();
        // One digest names the key everywhere: the store's key (a shared Redis holds the keys
        // of every route) and the broker's de-duplication id.
        let id: [u8; 32] = Sha256::digest(
            format!(
                "{}\n{consumer}\n{}",
                self.route,
                String::from_utf8_lossy(key)
            )
            .as_bytes(),
        )
        .into();
        let id = hex::encode(id);
        let fingerprint = fingerprint(req);
        let broker = self.broker.config();
        let wait = broker.connect_timeout + broker.publish_timeout;
        let claim = store
            .claim(&id, wait)
            .await
            .map_err(|e| GatewayError::IdempotencyStore(e.to_string()))?;
        match claim {
            Some(Claim::Publish(pending)) => Ok(Some(Keyed::Publish {
                pending,
                fingerprint,
                dedup_id: id,
            })),
            Some(Claim::Replay(a)) if a.fingerprint == fingerprint => Ok(Some(Keyed::Replay(a))),
            Some(Claim::Replay(_)) => Err(GatewayError::IdempotencyKeyReused),
            None => Err(GatewayError::IdempotencyKeyInUse),
        }
    }

    fn count(&self, code: Option<&str>) {
        let Some(m) = crate::telemetry::metrics::metrics() else {
            return;
        };
        let broker = self.broker.name();
        match code {
            Some(DEDUPLICATED) => m
                .brokers
                .deduplicated
                .with_label_values(&[&*self.route, broker])
                .inc(),
            None => m
                .brokers
                .published
                .with_label_values(&[&*self.route, broker])
                .inc(),
            Some(code) => m
                .brokers
                .failed
                .with_label_values(&[&*self.route, broker, code])
                .inc(),
        }
    }
}

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What an `Idempotency-Key` means for a request.
enum Keyed {
    /// Publish, then keep the answer under the key.
    Publish {
        pending: Pending,
        fingerprint: [u8; 32],
        /// The broker's de-duplication id for the key (JetStream's `Nats-Msg-Id`).
        dedup_id: String,
    },
    /// Answer the kept answer again.
    Replay(Answer),
}

/// A digest of what the request asks: its method, path (with query) and body.
fn fingerprint(req: &HandlerRequest<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(req.head.method.as_str().as_bytes());
    h.update(b" ");
    h.update(
        req.head
            .uri
            .path_and_query()
            .map_or("", |p| p.as_str())
            .as_bytes(),
    );
    h.update(b"\n");
    h.update(&req.body);
    h.finalize().into()
}

/// The count of a replayed answer (not an error code).
const DEDUPLICATED: &str = "deduplicated";

const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The kept answer of an `Idempotency-Key`, said to be a replay.
fn replay(kept: Answer) -> Response<ResponseBody> {
    let mut resp = Response::new(crate::grpc::body::full(kept.body));
    *resp.status_mut() = kept.status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}

/// The answer's body: the broker's receipt with the request id.
#[derive(Serialize)]
struct ReceiptBody<'a> {
    broker: &'a str,
    #[serde(flatten)]
    receipt: &'a Receipt,
    request_id: &'a str,
}

#[async_trait]
impl ServeHandler for PublishHandler {
    fn takes(&self, _head: &http::request::Parts) -> bool {
        true
    }

    fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    async fn serve(&self, req: HandlerRequest<'_>) -> Result<Response<ResponseBody>, GatewayError> {
        let answer = self.publish(req).await;
        match &answer {
            Ok(resp) if resp.headers().contains_key(REPLAYED) => self.count(Some(DEDUPLICATED)),
            Ok(_) => self.count(None),
            Err(e) => self.count(Some(e.code())),
        }
        answer
    }
}

impl PublishHandler {
    async fn publish(
        &self,
        req: HandlerRequest<'_>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        if req.body.len() > self.config.max_body_bytes {
            return Err(GatewayError::BodyTooLarge(format!(
                "the request body is over {} bytes, the limit of route `{}`",
                self.config.max_body_bytes, self.route
            )));
        }
        let target = message::target(&self.config.destination, &req)?;
        let (pending, dedup_id) = match self.claim(&req).await? {
            Some(Keyed::Replay(kept)) => return Ok(replay(kept)),
            Some(Keyed::Publish {
                pending,
                fingerprint,
                dedup_id,
            }) => (Some((pending, fingerprint)), Some(dedup_id)),
            None => (None, None),
        };
        let span = message::span(&req, &target);
        let message = Message {
            headers: message::headers(&req, &self.config.headers, span.as_ref()),
            target,
            target_from_request: self.destination_from_request,
            payload: req.body.clone(),
            dedup_id,
        };
        let result = self.broker.publish(message, self.config.mode).await;
        if let Some(span) = span {
            span.finish(result.as_ref().err().map(PublishError::code), None);
        }
        let receipt = result?;
        let body = serde_json::to_vec(&ReceiptBody {
            broker: self.broker.name(),
            receipt: &receipt,
            request_id: &req.ctx.request_id,
        })
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let body = bytes::Bytes::from(body);
        if let Some((p, fingerprint)) = pending {
            p.finish(Answer {
                status: self.config.status,
                body: body.clone(),
                fingerprint,
            })
            .await;
        }
        let mut resp = Response::new(crate::grpc::body::full(body));
        *resp.status_mut() = self.config.status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.config.mode == PublishMode::FireAndForget {
            // Said on the wire too: nothing confirmed this message.
            resp.headers_mut().insert(
                HeaderName::from_static("tollgate-publish"),
                HeaderValue::from_static("unconfirmed"),
            );
        }
        Ok(resp)
    }
}
