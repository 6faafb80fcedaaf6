//! Spans for the I/O a plugin does (a JWKS fetch, a Redis round trip), so a trace shows where a
//! request's time went even when it never reached the upstream.
//!
//! The plugin API knows nothing of OpenTelemetry: the gateway installs a [`SpanSink`] once, and
//! puts the request's span into [`RequestContext::trace`] when the request is sampled. A plugin
//! wraps its I/O in an [`IoSpan`]; the span ends when the value is dropped.
//!
//! Sampling follows the request: an I/O span is a child of a sampled request's span, none is made
//! for an unsampled request, and I/O outside any request (background refreshes) starts a new
//! trace that the gateway's sampler decides on.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use crate::RequestContext;

/// The request's span, opaque to plugins.
#[derive(Clone)]
pub struct TraceParent(Arc<dyn Any + Send + Sync>);

impl TraceParent {
    /// Wraps the gateway's span context.
    pub fn new<T: Any + Send + Sync>(inner: T) -> Self {
        Self(Arc::new(inner))
    }

    /// The gateway's span context, for the sink.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceParent")
    }
}

/// What the gateway provides to make spans.
pub trait SpanSink: Send + Sync {
    /// Starts a client span named `name`, a child of `parent` or the root of a new trace;
    /// `None` when tracing is off or the span is not sampled.
    fn start(
        &self,
        parent: Option<&TraceParent>,
        name: &str,
        attributes: Vec<(&'static str, String)>,
    ) -> Option<Box<dyn ActiveSpan>>;
}

/// A span being recorded; it ends when dropped.
pub trait ActiveSpan: Send {
    /// Adds an attribute.
    fn set_attribute(&mut self, key: &'static str, value: String);
    /// Adds an integer attribute.
    fn set_int(&mut self, key: &'static str, value: i64);
    /// Marks the span failed (`error.type` and the error status).
    fn set_error(&mut self, error_type: &str, message: &str);
}

static SINK: OnceLock<Box<dyn SpanSink>> = OnceLock::new();

/// Installs the process's span sink (the gateway does, once; later calls are ignored).
pub fn install_span_sink(sink: Box<dyn SpanSink>) {
    let _ = SINK.set(sink);
}

/// One traced I/O operation of a plugin; a no-op when not traced.
pub struct IoSpan(Option<Box<dyn ActiveSpan>>);

impl IoSpan {
    /// A span for I/O done for `ctx`'s request (`None`: outside any request, e.g. a
    /// background refresh). `name` follows the semantic conventions of the protocol (`GET`,
    /// `EVALSHA`); `attributes` are set at the start and only built when the span is recorded,
    /// so an untraced request pays nothing for them.
    pub fn start(
        ctx: Option<&RequestContext>,
        name: &str,
        attributes: impl FnOnce() -> Vec<(&'static str, String)>,
    ) -> Self {
        let Some(sink) = SINK.get() else {
            return Self(None);
        };
        let parent = match ctx {
            Some(c) => match &c.trace {
                Some(p) => Some(p),
                // Part of an unsampled (or untraced) request: nothing to record.
                None => return Self(None),
            },
            None => None,
        };
        Self(sink.start(parent, name, attributes()))
    }

    /// A span that records nothing.
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether the span is being recorded (to skip building costly attributes).
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Adds an attribute.
    pub fn attribute(&mut self, key: &'static str, value: impl Into<String>) {
        if let Some(s) = self.0.as_mut() {
            s.set_attribute(key, value.into());
        }
    }

    /// Adds an integer attribute.
    pub fn int(&mut self, key: &'static str, value: i64) {
        if let Some(s) = self.0.as_mut() {
            s.set_int(key, value);
        }
    }

    /// Marks the operation failed: `error_type` is a short class (`timeout`, `io`, an HTTP
    /// status), `message` the detail.
    pub fn error(&mut self, error_type: &str, message: &str) {
        if let Some(s) = self.0.as_mut() {
            s.set_error(error_type, message);
        }
    }
}
