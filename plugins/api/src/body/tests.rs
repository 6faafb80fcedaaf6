//! The body phase over small chains of test plugins.

use std::sync::Arc;

use super::*;
use crate::{async_trait, Response, Scheme};

/// Records what it saw; answers or refuses when told to.
#[derive(Default)]
struct Probe {
    name: &'static str,
    access: BodyAccess,
    answer: Option<StatusCode>,
    refuse: bool,
    append: &'static [u8],
}

/// What the probes of one request saw, in order, kept in the context.
#[derive(Debug, Clone, Default)]
struct Seen(Vec<String>);

fn note(ctx: &mut RequestContext, what: String) {
    ctx.extensions.get_or_insert_default::<Seen>().0.push(what);
}

fn seen(ctx: &RequestContext) -> Vec<String> {
    ctx.extensions
        .get::<Seen>()
        .map(|s| s.0.clone())
        .unwrap_or_default()
}

#[async_trait]
impl Plugin for Probe {
    fn name(&self) -> &'static str {
        self.name
    }

    fn body_access(&self) -> BodyAccess {
        self.access
    }

    fn on_request_body(
        &self,
        chunk: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<(), PluginError> {
        let piece = chunk
            .as_ref()
            .map_or("-".to_owned(), |c| String::from_utf8_lossy(c).into_owned());
        note(ctx, format!("{}:piece:{piece}:{end_of_stream}", self.name));
        Ok(())
    }

    async fn on_request_body_buffered(
        &self,
        _req: &mut RequestHeader,
        body: &mut Bytes,
        ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        // An await point, as a plugin doing I/O has.
        tokio::task::yield_now().await;
        note(
            ctx,
            format!("{}:whole:{}", self.name, String::from_utf8_lossy(body)),
        );
        if !self.append.is_empty() {
            let mut longer = body.to_vec();
            longer.extend_from_slice(self.append);
            *body = Bytes::from(longer);
        }
        if self.refuse {
            return Err(PluginError::new(StatusCode::BAD_REQUEST, "refused", "no"));
        }
        Ok(match self.answer {
            Some(status) => Flow::Respond(Response::new(status)),
            None => Flow::Continue,
        })
    }
}

fn buffering(name: &'static str, max_bytes: u64) -> Probe {
    Probe {
        name,
        access: BodyAccess::Buffer { max_bytes },
        ..Probe::default()
    }
}

fn streaming(name: &'static str) -> Probe {
    Probe {
        name,
        ..Probe::default()
    }
}

fn ctx() -> RequestContext {
    RequestContext::new("id".into(), Scheme::Http, Arc::from("r"), Arc::from("u"))
}

fn post(headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("POST", b"/", None).unwrap();
    for (n, v) in headers {
        req.append_header(n.to_string(), *v).unwrap();
    }
    req
}

fn pieces(parts: &[&'static str]) -> Vec<Bytes> {
    parts
        .iter()
        .map(|p| Bytes::from_static(p.as_bytes()))
        .collect()
}

async fn run(
    chain: &[&dyn Plugin],
    req: &mut RequestHeader,
    parts: &[&'static str],
    ctx: &mut RequestContext,
) -> Result<(Flow, Bytes), PluginError> {
    run_request_body(chain.iter().copied(), req, pieces(parts), ctx).await
}

#[test]
fn a_chain_buffers_as_soon_as_one_plugin_asks_and_the_smallest_limit_governs() {
    let (a, b, c) = (streaming("a"), buffering("b", 100), buffering("c", 10));
    assert_eq!(BodyPlan::of_chain([&a as &dyn Plugin]), BodyPlan::Stream);
    assert_eq!(BodyPlan::of_chain(std::iter::empty()), BodyPlan::Stream);
    assert_eq!(
        BodyPlan::of_chain([&a as &dyn Plugin, &b, &c]),
        BodyPlan::Buffer {
            max_bytes: 10,
            plugin: "c"
        }
    );
    assert_eq!(
        BodyPlan::of_chain([&c as &dyn Plugin, &b]),
        BodyPlan::Buffer {
            max_bytes: 10,
            plugin: "c"
        }
    );
}

#[tokio::test]
async fn pieces_stream_first_then_askers_get_the_whole_body_in_chain_order() {
    let (a, b, c) = (buffering("a", 100), streaming("b"), buffering("c", 100));
    let mut ctx = ctx();
    let mut req = post(&[]);
    let (flow, body) = run(&[&a, &b, &c], &mut req, &["he", "llo"], &mut ctx)
        .await
        .unwrap();
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(body, "hello");
    assert_eq!(
        seen(&ctx),
        [
            "a:piece:he:false",
            "b:piece:he:false",
            "c:piece:he:false",
            "a:piece:llo:true",
            "b:piece:llo:true",
            "c:piece:llo:true",
            "a:whole:hello",
            "c:whole:hello",
        ]
    );
}

#[tokio::test]
async fn a_streamed_chain_runs_no_buffered_phase() {
    let a = streaming("a");
    let mut ctx = ctx();
    let (flow, body) = run(&[&a], &mut post(&[]), &["x", "y"], &mut ctx)
        .await
        .unwrap();
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(body, "xy");
    assert_eq!(seen(&ctx), ["a:piece:x:false", "a:piece:y:true"]);
}

#[tokio::test]
async fn a_request_without_body_ends_with_an_empty_piece_and_an_empty_whole_body() {
    let a = buffering("a", 10);
    let mut ctx = ctx();
    let (_, body) = run(&[&a], &mut post(&[]), &[], &mut ctx).await.unwrap();
    assert!(body.is_empty());
    assert_eq!(seen(&ctx), ["a:piece:-:true", "a:whole:"]);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_no_buffered_phase_runs() {
    let (a, b) = (buffering("a", 100), buffering("b", 4));
    let mut ctx = ctx();
    let err = run(&[&a, &b], &mut post(&[]), &["abc", "de", "f"], &mut ctx)
        .await
        .unwrap_err();
    assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(err.code, "body_too_large");
    assert_eq!(
        err.message,
        "request body of 5 bytes or more exceeds the limit of 4 bytes (`max_bytes` of plugin \
         `b`, which reads the body whole)"
    );
    assert!(!seen(&ctx).iter().any(|s| s.contains("whole")));
}

#[tokio::test]
async fn a_body_at_the_limit_is_read() {
    let a = buffering("a", 5);
    let (_, body) = run(&[&a], &mut post(&[]), &["ab", "cde"], &mut ctx())
        .await
        .unwrap();
    assert_eq!(body, "abcde");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_before_any_piece() {
    let a = buffering("a", 4);
    let mut ctx = ctx();
    let mut req = post(&[("content-length", "5")]);
    let err = run(&[&a], &mut req, &["abcde"], &mut ctx)
        .await
        .unwrap_err();
    assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(seen(&ctx).is_empty(), "{:?}", seen(&ctx));
    // A streamed chain leaves the declared length to others (body-limit).
    let s = streaming("s");
    run(&[&s], &mut req, &["abcde"], &mut ctx).await.unwrap();
}

#[tokio::test]
async fn an_answer_stops_the_later_plugins() {
    let a = Probe {
        answer: Some(StatusCode::ACCEPTED),
        ..buffering("a", 10)
    };
    let b = buffering("b", 10);
    let mut ctx = ctx();
    let (flow, _) = run(&[&a, &b], &mut post(&[]), &["x"], &mut ctx)
        .await
        .unwrap();
    assert!(matches!(flow, Flow::Respond(r) if r.status == StatusCode::ACCEPTED));
    assert!(!seen(&ctx).contains(&"b:whole:x".to_owned()));
}

#[tokio::test]
async fn an_error_stops_the_later_plugins() {
    let a = Probe {
        refuse: true,
        ..buffering("a", 10)
    };
    let b = buffering("b", 10);
    let mut ctx = ctx();
    let err = run(&[&a, &b], &mut post(&[]), &["x"], &mut ctx)
        .await
        .unwrap_err();
    assert_eq!(err.code, "refused");
    assert_eq!(seen(&ctx).last().map(String::as_str), Some("a:whole:x"));
}

#[tokio::test]
async fn a_changed_body_is_handed_on_with_its_new_length() {
    let a = Probe {
        append: b"!!",
        ..buffering("a", 10)
    };
    let b = buffering("b", 10);
    let mut ctx = ctx();
    let mut req = post(&[("transfer-encoding", "chunked")]);
    let (_, body) = run(&[&a, &b], &mut req, &["hi"], &mut ctx).await.unwrap();
    assert_eq!(body, "hi!!");
    assert_eq!(seen(&ctx).last().map(String::as_str), Some("b:whole:hi!!"));
    assert_eq!(req.headers["content-length"], "4");
    assert!(req.headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn an_unchanged_body_leaves_the_framing_alone() {
    let a = buffering("a", 10);
    let mut req = post(&[("transfer-encoding", "chunked")]);
    run(&[&a], &mut req, &["hi"], &mut ctx()).await.unwrap();
    assert_eq!(req.headers["transfer-encoding"], "chunked");
    assert!(req.headers.get("content-length").is_none());
}

#[test]
fn a_body_in_one_piece_is_not_copied() {
    let piece = Bytes::from(vec![7u8; 64]);
    let mut buffer = BodyBuffer::new(64, "a");
    buffer.push(piece.clone()).unwrap();
    buffer.push(Bytes::new()).unwrap();
    assert_eq!(buffer.len(), 64);
    assert_eq!(buffer.into_bytes().as_ptr(), piece.as_ptr());
}

#[test]
fn the_phase_futures_can_move_between_threads() {
    fn send<T: Send>(_: &T) {}
    let chain: Vec<Arc<dyn Plugin>> = vec![Arc::new(buffering("a", 1))];
    let (mut req, mut body, mut ctx) = (post(&[]), Bytes::new(), ctx());
    let phase = run_buffered(chain.iter().map(|p| &**p), &mut req, &mut body, &mut ctx);
    send(&phase);
}
