//! The one error value of a request: plugins and the gateway core return it, and the proxy turns it
//! into the one JSON shape in one place.

use http::{HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

/// A request error: the status, a stable machine-readable code, a message a client can act on,
/// and headers to add to the error response (e.g. `WWW-Authenticate`, `Retry-After`).
#[derive(Debug, Clone)]
pub struct PluginError {
    /// HTTP status of the error response.
    pub status: StatusCode,
    /// Stable snake_case code, e.g. `rate_limited`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Extra headers for the error response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl PluginError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header to the error response.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The JSON body of this error, as every gateway-made error looks.
    pub fn body<'a>(&'a self, request_id: &'a str) -> ErrorBody<'a> {
        ErrorBody {
            error: ErrorDetail {
                status: self.status.as_u16(),
                code: self.code,
                message: &self.message,
                request_id,
            },
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for PluginError {}

/// `{"error": {"status": 429, "code": "rate_limited", "message": "...", "request_id": "..."}}`
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

impl<'a> ErrorBody<'a> {
    /// The body of any error the gateway answers with, in the one shape.
    pub fn new(status: u16, code: &'a str, message: &'a str, request_id: &'a str) -> Self {
        ErrorBody {
            error: ErrorDetail {
                status,
                code,
                message,
                request_id,
            },
        }
    }

    /// Serialises the body. Serialising this shape cannot fail; the fallback keeps the signature
    /// infallible without an unwrap.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_documented_shape() {
        let e = PluginError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "slow \"down\"",
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body("abc").to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"status": 429, "code": "rate_limited",
                "message": "slow \"down\"", "request_id": "abc"}})
        );
    }
}
