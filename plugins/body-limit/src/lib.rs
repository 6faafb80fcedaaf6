//! The `body-limit` plugin: refuses request bodies larger than a limit with 413 `body_too_large`.
//!
//! Config keys:
//! - `max_bytes` (required, > 0): the largest body let through, as a number of bytes or a size
//!   such as `"10MB"` or `"512KiB"`.
//!
//! A declared `Content-Length` over the limit is refused before the upstream is contacted; the
//! body itself is counted as it streams, which catches chunked bodies and lying lengths.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use http::{header, StatusCode};
use serde::{Deserialize, Serialize};
use tollgate_plugin_api::{
    async_trait, BuildContext, ByteSize, Flow, Plugin, PluginError, PluginFactory, RequestContext,
    RequestHeader,
};

/// Configuration of the `body-limit` plugin.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct BodyLimitConfig {
    /// The largest request body let through.
    pub max_bytes: ByteSize,
}

/// Factory of the `body-limit` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyLimitPlugin;

impl PluginFactory for BodyLimitPlugin {
    const NAME: &'static str = "body-limit";
    // After the access checks (an unauthenticated client gets 401/403, not 413), and before the
    // plugins that would read or transform the body.
    const PRIORITY: i32 = 5000;
    type Config = BodyLimitConfig;

    fn config_schema(
        generator: &mut tollgate_plugin_api::schemars::SchemaGenerator,
    ) -> tollgate_plugin_api::schemars::Schema {
        generator.subschema_for::<Self::Config>()
    }

    fn build(config: Self::Config, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, String> {
        if config.max_bytes.as_u64() == 0 {
            return Err(
                "max_bytes must be greater than 0 (a route that takes no body is better \
                 restricted by method)"
                    .to_owned(),
            );
        }
        Ok(Arc::new(BodyLimit {
            max_bytes: config.max_bytes.as_u64(),
        }))
    }
}

/// A built `body-limit` plugin.
#[derive(Debug)]
struct BodyLimit {
    max_bytes: u64,
}

/// Bytes of the request body seen so far, kept in the request's extensions.
#[derive(Debug, Clone, Copy, Default)]
struct BodyBytesSeen(u64);

impl BodyLimit {
    fn too_large(&self, message: String) -> PluginError {
        PluginError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
    }
}

/// The declared body length: `Ok(None)` without a `Content-Length`, `Err` when a value is not a
/// plain decimal number or several values disagree.
fn content_length(req: &RequestHeader) -> Result<Option<u64>, String> {
    let mut declared = None;
    for value in req.headers.get_all(header::CONTENT_LENGTH) {
        let bytes = value.as_bytes();
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "Content-Length `{}` is not a number of bytes",
                String::from_utf8_lossy(bytes)
            ));
        }
        // All digits, so a parse failure can only be an overflow: bigger than any limit.
        let n = std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        match declared {
            Some(d) if d != n => {
                return Err("the request has several different Content-Length values".to_owned())
            }
            _ => declared = Some(n),
        }
    }
    Ok(declared)
}

#[async_trait]
impl Plugin for BodyLimit {
    fn name(&self) -> &'static str {
        BodyLimitPlugin::NAME
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        _ctx: &mut RequestContext,
    ) -> Result<Flow, PluginError> {
        match content_length(req) {
            Ok(Some(n)) if n > self.max_bytes => Err(self.too_large(format!(
                "request body of {n} bytes exceeds the limit of {} bytes",
                self.max_bytes
            ))),
            Ok(_) => Ok(Flow::Continue),
            Err(message) => Err(PluginError::new(
                StatusCode::BAD_REQUEST,
                "bad_content_length",
                message,
            )),
        }
    }

    fn on_request_body(
        &self,
        chunk: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<(), PluginError> {
        let Some(chunk) = chunk else {
            return Ok(());
        };
        let seen = ctx.extensions.get_or_insert_default::<BodyBytesSeen>();
        seen.0 = seen.0.saturating_add(chunk.len() as u64);
        if seen.0 > self.max_bytes {
            return Err(self.too_large(format!(
                "request body exceeds the limit of {} bytes ({} bytes received so far)",
                self.max_bytes, seen.0
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tollgate_plugin_api::{BuildError, BuildErrorKind};
    use tollgate_plugin_test::ctx;

    fn build(toml_src: &str) -> Result<Arc<dyn Plugin>, BuildError> {
        tollgate_plugin_test::build::<BodyLimitPlugin>(toml_src)
    }

    fn build_err(toml_src: &str) -> BuildError {
        tollgate_plugin_test::build_err::<BodyLimitPlugin>(toml_src)
    }

    async fn check_lengths(p: &Arc<dyn Plugin>, lengths: &[&str]) -> Result<(), PluginError> {
        let headers: Vec<_> = lengths.iter().map(|l| ("content-length", *l)).collect();
        let mut req = tollgate_plugin_test::request("POST", "/upload", &headers);
        p.on_request(&mut req, &mut ctx()).await.map(|_| ())
    }

    #[tokio::test]
    async fn declared_length_within_the_limit_passes() {
        let p = build("{ max_bytes = 100 }").unwrap();
        check_lengths(&p, &["100"]).await.unwrap();
        check_lengths(&p, &["0"]).await.unwrap();
        check_lengths(&p, &[]).await.unwrap();
        check_lengths(&p, &["100", "100"]).await.unwrap();
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_rejected_with_413() {
        let p = build(r#"{ max_bytes = "1KiB" }"#).unwrap();
        let err = check_lengths(&p, &["1025"]).await.unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.code, "body_too_large");
        assert_eq!(
            err.message,
            "request body of 1025 bytes exceeds the limit of 1024 bytes"
        );
    }

    #[tokio::test]
    async fn huge_declared_length_is_too_large_not_bad() {
        let p = build("{ max_bytes = 10 }").unwrap();
        let err = check_lengths(&p, &["99999999999999999999999"])
            .await
            .unwrap_err();
        assert_eq!(err.code, "body_too_large");
    }

    #[tokio::test]
    async fn unparsable_content_length_is_rejected_with_400() {
        let p = build("{ max_bytes = 100 }").unwrap();
        for bad in [
            &["abc"][..],
            &["-1"],
            &["+5"],
            &["1, 1"],
            &[""],
            &["5", "6"],
        ] {
            let err = check_lengths(&p, bad).await.unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert_eq!(err.code, "bad_content_length");
        }
    }

    #[test]
    fn streamed_body_over_the_limit_is_rejected_with_413() {
        let p = build("{ max_bytes = 10 }").unwrap();
        let mut ctx = ctx();
        let mut chunk = Some(Bytes::from_static(b"123456"));
        p.on_request_body(&mut chunk, false, &mut ctx).unwrap();
        let mut chunk = Some(Bytes::from_static(b"7890"));
        p.on_request_body(&mut chunk, false, &mut ctx).unwrap();
        let mut end = None;
        p.on_request_body(&mut end, true, &mut ctx).unwrap();
        let mut chunk = Some(Bytes::from_static(b"!"));
        let err = p.on_request_body(&mut chunk, true, &mut ctx).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.code, "body_too_large");
        assert!(err.message.contains("11 bytes received"), "{}", err.message);
    }

    #[test]
    fn body_counts_are_per_request() {
        let p = build("{ max_bytes = 10 }").unwrap();
        for _ in 0..3 {
            let mut ctx = ctx();
            let mut chunk = Some(Bytes::from_static(b"0123456789"));
            p.on_request_body(&mut chunk, true, &mut ctx).unwrap();
        }
    }

    #[test]
    fn zero_max_bytes_is_rejected() {
        let err = build_err("{ max_bytes = 0 }");
        assert_eq!(err.kind, BuildErrorKind::Invalid);
        assert!(err.message.contains("greater than 0"), "{}", err.message);
        let err = build_err(r#"{ max_bytes = "0MB" }"#);
        assert!(err.message.contains("greater than 0"), "{}", err.message);
    }

    #[test]
    fn bad_size_is_rejected_with_a_span() {
        let err = build_err(r#"{ max_bytes = "10 megs" }"#);
        assert_eq!(err.kind, BuildErrorKind::Config);
        assert!(
            err.message.contains("invalid size `10 megs`"),
            "{}",
            err.message
        );
        assert_eq!(err.span, Some(14..23));
        let err = build_err("{ max_bytes = -1 }");
        assert!(err.message.contains("negative"), "{}", err.message);
    }

    #[test]
    fn missing_max_bytes_is_rejected() {
        let err = build_err("{}");
        assert_eq!(err.kind, BuildErrorKind::Config);
        assert!(err.message.contains("max_bytes"), "{}", err.message);
    }

    #[test]
    fn unknown_key_is_rejected_with_a_span() {
        let err = build_err("{ max_bytes = 10, max_size = 5 }");
        assert_eq!(err.kind, BuildErrorKind::Config);
        assert!(err.message.contains("max_size"), "{}", err.message);
        assert_eq!(err.span, Some(18..26));
    }
}
