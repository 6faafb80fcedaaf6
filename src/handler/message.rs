//! What the handlers that send a request to a broker share (publish, request-reply): the
//! destination filled from the request, the message's headers, the span of the send.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::HandlerRequest;
use crate::broker::template::{self, from_request as template_from_request, render, TemplateError};
use crate::broker::Target;
use crate::config::{Destination, Template};
use crate::error::GatewayError;
use crate::telemetry::trace::MessagingSpan;

/// Whether the request's values choose the destination (an unknown one is then the client's
/// 404): known from the templates once, when a handler is built.
pub(super) fn from_request(destination: &Destination) -> bool {
    match destination {
        Destination::Kafka { topic, .. } => template_from_request(topic),
        Destination::Amqp {
            exchange,
            routing_key,
        } => template_from_request(exchange) || template_from_request(routing_key),
        Destination::Nats { subject } => template_from_request(subject),
    }
}

/// Where the message goes, its templates filled from the request.
pub(super) fn target(
    destination: &Destination,
    req: &HandlerRequest<'_>,
) -> Result<Target, GatewayError> {
    let fill = |t, check| render(t, req.ctx, &req.head.headers, check);
    Ok(match destination {
        Destination::Kafka { topic, key } => Target::Kafka {
            topic: kafka_topic_name(fill(topic, template::kafka_topic)?, topic)?,
            key: key
                .as_ref()
                .map(|k| fill(k, template::any_value))
                .transpose()?,
        },
        Destination::Amqp {
            exchange,
            routing_key,
        } => Target::Amqp {
            exchange: short_string(fill(exchange, template::amqp_name)?, exchange)?,
            routing_key: short_string(fill(routing_key, template::amqp_key)?, routing_key)?,
        },
        Destination::Nats { subject } => Target::Nats {
            subject: nats_subject_name(fill(subject, template::nats_token)?, subject)?,
        },
    })
}

/// The message's headers: the content type, the request id, the trace context and the
/// headers the route names.
pub(super) fn headers(
    req: &HandlerRequest<'_>,
    names: &[HeaderName],
    span: Option<&MessagingSpan>,
) -> Vec<(HeaderName, HeaderValue)> {
    let headers = &req.head.headers;
    let mut out = Vec::with_capacity(names.len() + 4);
    if let Some(v) = headers.get(CONTENT_TYPE) {
        out.push((CONTENT_TYPE, v.clone()));
    }
    if let Ok(v) = HeaderValue::from_str(&req.ctx.request_id) {
        out.push((X_REQUEST_ID, v));
    }
    match span {
        Some(span) => out.extend(span.context_headers()),
        // Not traced here: the client's context goes on as it came.
        None => copy(headers, &[TRACEPARENT, TRACESTATE], &mut out),
    }
    copy(headers, names, &mut out);
    out
}

/// The span of sending the message to `target`, when the request is traced.
pub(super) fn span(req: &HandlerRequest<'_>, target: &Target) -> Option<MessagingSpan> {
    let (system, destination) = match target {
        Target::Kafka { topic, .. } => ("kafka", topic.as_str()),
        Target::Amqp { exchange, .. } => ("rabbitmq", exchange.as_str()),
        Target::Nats { subject } => ("nats", subject.as_str()),
    };
    MessagingSpan::start(req.ctx.trace.as_ref(), system, destination)
}

/// A filled NATS subject of at most 255 bytes. The server closes a connection whose protocol
/// line is over its `max_control_line` (4 KiB by default), and that connection is every
/// request's: one long value must not take the broker away from everyone.
pub(super) fn nats_subject_name(name: String, t: &Template) -> Result<String, TemplateError> {
    if name.len() > 255 {
        return Err(TemplateError::Invalid {
            template: t.source.clone(),
            what: "the filled subject".to_owned(),
            value: format!(
                "{}...",
                name.chars().take(32).collect::<String>().escape_debug()
            ),
            why: "a NATS subject here is at most 255 bytes",
        });
    }
    Ok(name)
}

/// A filled Kafka topic that Kafka takes: not `.` or `..`, at most 249 characters.
pub(super) fn kafka_topic_name(name: String, t: &Template) -> Result<String, TemplateError> {
    if name == "." || name == ".." || name.len() > 249 {
        return Err(TemplateError::Invalid {
            template: t.source.clone(),
            what: "the filled topic".to_owned(),
            value: name.escape_debug().to_string(),
            why: "a Kafka topic is 1 to 249 characters and not `.` or `..`",
        });
    }
    Ok(name)
}

/// A filled AMQP exchange or routing key fits the protocol's short string (255 bytes).
pub(super) fn short_string(name: String, t: &Template) -> Result<String, TemplateError> {
    if name.len() > 255 {
        return Err(TemplateError::Invalid {
            template: t.source.clone(),
            what: "the filled name".to_owned(),
            value: format!(
                "{}...",
                name.chars().take(32).collect::<String>().escape_debug()
            ),
            why: "AMQP names are at most 255 bytes",
        });
    }
    Ok(name)
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(super) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

fn copy(from: &HeaderMap, names: &[HeaderName], out: &mut Vec<(HeaderName, HeaderValue)>) {
    for name in names {
        if out.iter().any(|(n, _)| n == name) {
            continue;
        }
        for v in from.get_all(name) {
            out.push((name.clone(), v.clone()));
        }
    }
}
