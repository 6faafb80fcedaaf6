//! The request-reply handler: a route with `[routes.NAME.request_reply]` sends its request body
//! to a broker as a request (with a correlation id and where to reply), waits up to the route's
//! timeout for the correlated reply, and answers with it: the reply's payload is the body, its
//! `http-status` header the status, its other headers (but the transport's) the headers.
//!
//! With `respond_async = true`, a request with `Prefer: respond-async` is answered at once with
//! 202 and a `Location` to poll (`GET` on the request's path with `?reply_id=ID`); the reply is
//! kept for polling for `async_ttl`, at most `async_max_replies` of them per route.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode};

use super::{message, HandlerRequest, ServeHandler};
use crate::broker::{Broker, Message, Reply, RequestError};
use crate::config::{AsyncReplies, RequestReplyConfig};
use crate::error::GatewayError;
use crate::grpc::ResponseBody;

/// The reply header whose value is the HTTP status of the answer (200 without it).
pub const STATUS_HEADER: &str = "http-status";

/// The query parameter of a poll for an asynchronous reply.
const REPLY_ID: &str = "reply_id";

/// Reply headers that are about the message's transport or the gateway's correlation, not
/// the answer: never passed to the client.
const NOT_PASSED: [&str; 15] = [
    STATUS_HEADER,
    "correlation-id",
    "reply-to",
    "traceparent",
    "tracestate",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
    "date",
];

/// Serves a request-reply route.
pub struct RequestReplyHandler {
    route: Arc<str>,
    config: RequestReplyConfig,
    broker: Arc<Broker>,
    /// Whether the request's values choose the destination.
    destination_from_request: bool,
    /// The kept replies of `Prefer: respond-async` requests, when the route offers it.
    kept: Option<Arc<KeptReplies>>,
}

impl RequestReplyHandler {
    /// The handler of a route sending requests to `broker`; `kept` holds its asynchronous
    /// replies (kept across reloads by the snapshot while the route's settings do not change).
    pub fn new(
        route: Arc<str>,
        config: RequestReplyConfig,
        broker: Arc<Broker>,
        kept: Option<Arc<KeptReplies>>,
    ) -> Self {
        Self {
            destination_from_request: message::from_request(&config.destination),
            route,
            config,
            broker,
            kept,
        }
    }

    fn count(&self, outcome: &str) {
        count(&self.route, self.broker.name(), outcome);
    }

    /// The message of a request, and the span of sending it.
    fn message(
        &self,
        req: &HandlerRequest<'_>,
    ) -> Result<(Message, Option<crate::telemetry::trace::MessagingSpan>), GatewayError> {
        if req.body.len() > self.config.max_body_bytes {
            return Err(GatewayError::BodyTooLarge(format!(
                "the request body is over {} bytes, the limit of route `{}`",
                self.config.max_body_bytes, self.route
            )));
        }
        let target = message::target(&self.config.destination, req)?;
        let span = message::span(req, &target);
        let message = Message {
            headers: message::headers(req, &self.config.headers, span.as_ref()),
            target,
            target_from_request: self.destination_from_request,
            payload: req.body.clone(),
            dedup_id: None,
        };
        Ok((message, span))
    }

    /// Sends the request and answers with its reply.
    async fn exchange(
        &self,
        req: HandlerRequest<'_>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let (message, span) = self.message(&req)?;
        let reply = self
            .broker
            .request(
                message,
                self.config.reply_topic.as_deref(),
                self.config.timeout,
            )
            .await;
        if let Some(span) = span {
            span.finish(reply.as_ref().err().map(RequestError::code), None);
        }
        answer(reply?)
    }

    /// Sends the request in the background and answers 202 with where to poll for its reply.
    async fn respond_async(
        &self,
        req: HandlerRequest<'_>,
        kept: &Arc<KeptReplies>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let (message, span) = self.message(&req)?;
        // A broker that is down or busy is said now, not at the first poll.
        let admitted = self.broker.admit_request().await?;
        let consumer = consumer(&req);
        let id = kept.wait(
            consumer,
            self.config.timeout + self.broker.config().publish_timeout,
        );
        let location = format!("{}?{REPLY_ID}={id}", req.head.uri.path());
        let (broker, kept, reply_topic) = (
            self.broker.clone(),
            kept.clone(),
            self.config.reply_topic.clone(),
        );
        let (route, timeout, task_id) = (self.route.clone(), self.config.timeout, id.clone());
        tokio::spawn(async move {
            let reply = broker
                .request_admitted(admitted, message, reply_topic.as_deref(), deadline, timeout)
                .await;
            if let Some(span) = span {
                span.finish(reply.as_ref().err().map(RequestError::code), None);
            }
            let answer = reply.map_err(GatewayError::from).and_then(|r| {
                // Checked now, so that a poll is answered as the request would have been.
                status(&r).map(|_| r)
            });
            count(
                &route,
                broker.name(),
                answer.as_ref().err().map_or("replied", GatewayError::code),
            );
            kept.finish(&task_id, answer);
        });
        let body = serde_json::json!({
            "reply_id": id,
            "location": location,
            "request_id": req.ctx.request_id,
        });
        let mut resp = Response::new(crate::grpc::body::full(body.to_string()));
        *resp.status_mut() = StatusCode::ACCEPTED;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            HeaderName::from_static("preference-applied"),
            HeaderValue::from_static("respond-async"),
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            headers.insert(LOCATION, v);
        }
        Ok(resp)
    }

    /// A poll: the kept reply, 202 while it is awaited, 404 when unknown.
    fn poll(
        &self,
        req: &HandlerRequest<'_>,
        kept: &KeptReplies,
        id: &str,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        match kept.get(id, &consumer(req)) {
            // The id is the client's: said back escaped, and no longer than an id is.
            None => Err(GatewayError::ReplyNotFound(
                id.chars()
                    .take(32)
                    .collect::<String>()
                    .escape_debug()
                    .to_string(),
            )),
            Some(None) => {
                let body = serde_json::json!({ "reply_id": id, "status": "pending" });
                let mut resp = Response::new(crate::grpc::body::full(body.to_string()));
                *resp.status_mut() = StatusCode::ACCEPTED;
                let headers = resp.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
                if let Ok(v) =
                    HeaderValue::from_str(&format!("{}?{REPLY_ID}={id}", req.head.uri.path()))
                {
                    headers.insert(LOCATION, v);
                }
                Ok(resp)
            }
            Some(Some(Ok(reply))) => answer(reply),
            Some(Some(Err(e))) => Err(e),
        }
    }
}

fn count(route: &str, broker: &str, outcome: &str) {
    if let Some(m) = crate::telemetry::metrics::metrics() {
        m.brokers
            .requests
            .with_label_values(&[route, broker, outcome])
            .inc();
    }
}

/// Who asks: replies are the consumer's (as a plugin named it), so that another client cannot
/// poll them even with the id.
fn consumer(req: &HandlerRequest<'_>) -> String {
    req.ctx.vars.get("consumer").unwrap_or_default().to_owned()
}

/// Whether the request prefers an asynchronous answer (RFC 7240 `Prefer: respond-async`).
fn prefers_async(head: &http::request::Parts) -> bool {
    head.headers
        .get_all(HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            let token = p.split([';', '=']).next().unwrap_or_default();
            token.trim().eq_ignore_ascii_case("respond-async")
        })
}

/// The `reply_id` a poll asks for.
fn reply_id(head: &http::request::Parts) -> Option<&str> {
    head.uri
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(REPLY_ID)?.strip_prefix('='))
}

/// The status a reply asks for: its `http-status` header (200 without one); anything but a
/// final status (200 to 599) is the responder's mistake, a 502.
fn status(reply: &Reply) -> Result<StatusCode, GatewayError> {
    let Some((_, value)) = reply
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(STATUS_HEADER))
    else {
        return Ok(StatusCode::OK);
    };
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            GatewayError::BadReply(format!(
                "the reply's `{STATUS_HEADER}` header is `{}`, not an HTTP status from 200 to 599",
                String::from_utf8_lossy(value).escape_debug()
            ))
        })
}

/// The answer a reply makes: its status, its headers (but the transport's, and those that are
/// not valid HTTP), its payload.
fn answer(reply: Reply) -> Result<Response<ResponseBody>, GatewayError> {
    let status = status(&reply)?;
    let mut resp = Response::new(crate::grpc::body::full(reply.payload));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    for (name, value) in &reply.headers {
        let lower = name.to_ascii_lowercase();
        if NOT_PASSED.contains(&lower.as_str()) || lower.starts_with("nats-") {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    Ok(resp)
}

#[async_trait]
impl ServeHandler for RequestReplyHandler {
    fn takes(&self, _head: &http::request::Parts) -> bool {
        true
    }

    fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    async fn serve(&self, req: HandlerRequest<'_>) -> Result<Response<ResponseBody>, GatewayError> {
        if let Some(kept) = &self.kept {
            let head = req.head;
            let get = head.method == Method::GET || head.method == Method::HEAD;
            if let (true, Some(id)) = (get, reply_id(head)) {
                return self.poll(&req, kept, id);
            }
            if get && !self.config.get_is_request {
                return Err(GatewayError::BadRequest(format!(
                    "a GET on route `{}` polls for a reply: add `?{REPLY_ID}=ID` from the \
                     `Location` of the answer to a `Prefer: respond-async` request",
                    self.route
                )));
            }
            if prefers_async(head) {
                let answer = self.respond_async(req, kept).await;
                if let Err(e) = &answer {
                    self.count(e.code());
                }
                return answer;
            }
        }
        let answer = self.exchange(req).await;
        match &answer {
            Ok(_) => self.count("replied"),
            Err(e) => self.count(e.code()),
        }
        answer
    }
}

/// The replies of one route's asynchronous requests, for polling: bounded in count (the
/// oldest goes first) and in time (`async_ttl` after the reply, or after the request could
/// last have been answered).
pub struct KeptReplies {
    config: AsyncReplies,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<String, Kept>,
    /// Ids in the order they were made: the oldest is forgotten first.
    order: VecDeque<String>,
}

struct Kept {
    consumer: String,
    /// When it is forgotten.
    expires: Instant,
    /// `None` while awaited.
    answer: Option<Result<Reply, GatewayError>>,
}

impl KeptReplies {
    /// An empty store.
    pub fn new(config: AsyncReplies) -> Self {
        Self {
            config,
            table: Mutex::new(Table::default()),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &AsyncReplies {
        &self.config
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every statement leaves the table consistent: a panic elsewhere leaves it usable.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new awaited reply of `consumer`'s, answered within `longest`; its id.
    fn wait(&self, consumer: String, longest: Duration) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let now = Instant::now();
        let mut t = self.table();
        t.forget_expired(now);
        while t.entries.len() >= self.config.max_replies {
            let Some(oldest) = t.order.pop_front() else {
                break;
            };
            t.entries.remove(&oldest);
        }
        t.entries.insert(
            id.clone(),
            Kept {
                consumer,
                expires: now + longest + self.config.ttl,
                answer: None,
            },
        );
        t.order.push_back(id.clone());
        id
    }

    /// The answer of `id` came; kept for `ttl` from now (unless forgotten already).
    fn finish(&self, id: &str, answer: Result<Reply, GatewayError>) {
        let now = Instant::now();
        let mut t = self.table();
        if let Some(k) = t.entries.get_mut(id) {
            k.expires = now + self.config.ttl;
            k.answer = Some(answer);
        }
    }

    /// `None`: unknown (or expired, or another consumer's); `Some(None)`: still awaited.
    fn get(&self, id: &str, consumer: &str) -> Option<Option<Result<Reply, GatewayError>>> {
        let now = Instant::now();
        let mut t = self.table();
        t.forget_expired(now);
        let k = t
            .entries
            .get(id)
            .filter(|k| k.consumer == consumer && k.expires > now)?;
        Some(k.answer.clone())
    }

    /// Replies kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().entries.len()
    }
}

impl Table {
    /// Forgets the expired replies at the front of the order (others are refused when asked
    /// for, and forgotten when they reach the front or the count bound).
    fn forget_expired(&mut self, now: Instant) {
        while let Some(front) = self.order.front() {
            match self.entries.get(front) {
                Some(k) if k.expires > now => break,
                _ => {
                    if let Some(id) = self.order.pop_front() {
                        self.entries.remove(&id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn reply(headers: &[(&str, &str)], body: &'static str) -> Reply {
        Reply {
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            payload: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn the_status_header_sets_the_status_and_a_bad_one_is_a_502() {
        let ok = answer(reply(&[], "x")).expect("answer");
        assert_eq!(ok.status(), StatusCode::OK);
        let created = answer(reply(&[("HTTP-Status", " 201 ")], "x")).expect("answer");
        assert_eq!(created.status(), StatusCode::CREATED);
        for bad in ["abc", "99", "600", "1000", "", "101"] {
            let e = answer(reply(&[("http-status", bad)], "x")).err();
            assert!(
                matches!(&e, Some(GatewayError::BadReply(m)) if m.contains("http-status")),
                "{bad}: {e:?}"
            );
            assert_eq!(
                e.map(|e| (e.status(), e.code())),
                Some((StatusCode::BAD_GATEWAY, "bad_reply"))
            );
        }
    }

    #[test]
    fn reply_headers_pass_but_the_transports_and_invalid_ones() {
        let resp = answer(reply(
            &[
                ("content-type", "application/json"),
                ("X-Quote", "1"),
                ("x-quote", "2"),
                ("http-status", "404"),
                ("correlation-id", "abc"),
                ("Nats-Msg-Id", "n"),
                ("content-length", "99"),
                ("transfer-encoding", "chunked"),
                ("traceparent", "00-0-0-00"),
                ("bad name", "v"),
                ("x-bad-value", "a\nb"),
            ],
            "{}",
        ))
        .expect("answer");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let names: Vec<(&str, &str)> = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("?")))
            .collect();
        assert_eq!(
            names,
            [
                ("content-type", "application/json"),
                ("x-quote", "1"),
                ("x-quote", "2")
            ]
        );
    }

    #[test]
    fn prefer_and_reply_id_are_read_from_the_request() {
        let head = |prefer: &str, uri: &str| {
            let (parts, ()) = http::Request::get(uri)
                .header("prefer", prefer)
                .body(())
                .expect("request")
                .into_parts();
            parts
        };
        assert!(prefers_async(&head("respond-async", "/q")));
        assert!(prefers_async(&head("wait=10, Respond-Async", "/q")));
        assert!(!prefers_async(&head("return=minimal", "/q")));
        assert!(!prefers_async(&head("respond-asyncx", "/q")));
        assert_eq!(reply_id(&head("", "/q?a=1&reply_id=abc")), Some("abc"));
        assert_eq!(reply_id(&head("", "/q?reply_idx=abc")), None);
        assert_eq!(reply_id(&head("", "/q")), None);
    }

    #[test]
    fn kept_replies_are_bounded_by_count_and_belong_to_their_consumer() {
        let kept = KeptReplies::new(AsyncReplies {
            ttl: Duration::from_secs(60),
            max_replies: 2,
        });
        let a = kept.wait("alice".into(), Duration::from_secs(1));
        assert!(matches!(kept.get(&a, "alice"), Some(None)));
        assert!(kept.get(&a, "bob").is_none());
        kept.finish(&a, Ok(reply(&[], "for a")));
        assert!(matches!(kept.get(&a, "alice"), Some(Some(Ok(r))) if r.payload == "for a"));
        let b = kept.wait(String::new(), Duration::from_secs(1));
        let c = kept.wait(String::new(), Duration::from_secs(1));
        assert_eq!(kept.len(), 2);
        assert!(kept.get(&a, "alice").is_none(), "the oldest is forgotten");
        kept.finish(&a, Ok(reply(&[], "late")));
        assert_eq!(kept.len(), 2, "a forgotten reply is not kept again");
        kept.finish(&b, Err(GatewayError::ReplyNotFound("x".into())));
        assert!(matches!(kept.get(&b, ""), Some(Some(Err(_)))));
        assert!(matches!(kept.get(&c, ""), Some(None)));
    }

    #[test]
    fn kept_replies_expire() {
        let kept = KeptReplies::new(AsyncReplies {
            ttl: Duration::ZERO,
            max_replies: 10,
        });
        let a = kept.wait(String::new(), Duration::ZERO);
        kept.finish(&a, Ok(reply(&[], "gone")));
        assert!(kept.get(&a, "").is_none());
        assert_eq!(kept.len(), 0);
    }
}
