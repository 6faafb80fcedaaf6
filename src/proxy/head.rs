//! An HTTP/1.x request head, read whole before pingora parses it: the head deadline
//! (`request_header_timeout`), a bound on its size, and the RFC 9110/9112 checks that pingora
//! would otherwise answer with an empty `400` (or silently repair) before any tollgate code runs:
//! raw spaces and control characters in the request target, disagreeing `Content-Length`s,
//! transfer codings other than `chunked`, duplicate `Host` lines, a `Host` that contradicts an
//! absolute-form target.
//!
//! Checks that need no raw bytes (Host syntax, `%2F`, backslashes, path normalisation) run in the
//! request pipeline (`prepare`), for HTTP/2 too.

use std::time::Duration;

use bytes::BytesMut;
use http::StatusCode;
use tollgate_plugin_api::PluginError;

/// How many header lines the check parses; pingora's own limit.
const MAX_HEADERS: usize = 256;

/// What a finished head read found.
#[derive(Debug)]
pub enum HeadCheck {
    /// The head is complete (the bytes may go on into the body or a pipelined request); hand
    /// it to pingora.
    Complete,
    /// Not complete yet: read more.
    Partial,
    /// The client's head is refused with this error (and the connection closed).
    Refused(Refusal),
}

/// A refused head: the error and what little is known of the request, for the log.
#[derive(Debug)]
pub struct Refusal {
    /// The answer.
    pub error: PluginError,
    /// Method and target as far as they could be read ("" when not).
    pub method: String,
    /// The raw request target, lossily decoded.
    pub target: String,
    /// The client's `x-request-id`, when it sent a sane one.
    pub request_id: Option<String>,
    /// The client's `content-type`, which decides the error's wire shape.
    pub content_type: Option<Vec<u8>>,
}

impl Refusal {
    fn bare(error: PluginError) -> Self {
        Self {
            error,
            method: String::new(),
            target: String::new(),
            request_id: None,
            content_type: None,
        }
    }
}

/// Error for a head that did not arrive within `timeout`.
pub fn header_timeout(timeout: Duration, partial: &[u8]) -> Refusal {
    let (method, target) = request_line(partial).unwrap_or_default();
    Refusal {
        error: PluginError::new(
            StatusCode::REQUEST_TIMEOUT,
            "client_timeout",
            format!(
                "the request head did not arrive within {} (request_header_timeout)",
                humantime::format_duration(timeout)
            ),
        ),
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        request_id: None,
        content_type: None,
    }
}

/// Error for a head that outgrew `limit` bytes before it ended.
pub fn too_large(limit: usize) -> Refusal {
    Refusal::bare(PluginError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        format!("the request head is larger than {limit} bytes"),
    ))
}

/// Checks the bytes read so far.
pub fn check(buf: &BytesMut) -> HeadCheck {
    // Uninitialised: filling 256 empty headers (8 KiB) first would cost more than the parse.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Partial) => HeadCheck::Partial,
        Ok(httparse::Status::Complete(_)) => match check_parsed(&req) {
            Ok(()) => HeadCheck::Complete,
            Err(error) => HeadCheck::Refused(Refusal {
                error,
                method: req.method.unwrap_or_default().to_owned(),
                target: req.path.unwrap_or_default().to_owned(),
                request_id: header(&req, "x-request-id")
                    .filter(|v| tollgate_plugin_api::is_sane_request_id(v))
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
                content_type: header(&req, "content-type").map(<[u8]>::to_vec),
            }),
        },
        Err(httparse::Error::Token | httparse::Error::Version) => bad_request_line(buf),
        Err(e) => HeadCheck::Refused(Refusal::bare(PluginError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the request head is not valid HTTP/1.1: {e}"),
        ))),
    }
}

/// httparse stops at a request line it cannot read. A target with a raw space or control
/// character is refused (pingora would percent-encode it and go on); other bytes a target may
/// not hold (`<`, `"`, `{`, ...) are left to pingora, which encodes them, once the head is whole.
fn bad_request_line(buf: &[u8]) -> HeadCheck {
    let Some((method, target)) = request_line(buf) else {
        // The line is not complete yet.
        return HeadCheck::Partial;
    };
    if let Some(b) = target.iter().find(|b| is_forbidden_in_target(**b)) {
        let what = match b {
            b' ' => "a space".to_owned(),
            b'\t' => "a tab".to_owned(),
            b => format!("the control character 0x{b:02X}"),
        };
        return HeadCheck::Refused(Refusal {
            error: PluginError::new(
                StatusCode::BAD_REQUEST,
                "bad_path",
                format!("the request target contains {what}; encode it (e.g. `%20`)"),
            ),
            method: String::from_utf8_lossy(method).into_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
            request_id: None,
            content_type: None,
        });
    }
    if !method.iter().all(|b| is_token_byte(*b)) {
        return HeadCheck::Refused(Refusal::bare(PluginError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request line is not `METHOD TARGET HTTP/1.1`",
        )));
    }
    if head_ended(buf) {
        HeadCheck::Complete
    } else {
        HeadCheck::Partial
    }
}

fn is_forbidden_in_target(b: u8) -> bool {
    b <= b' ' || b == 0x7f
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the blank line ending a head is in `buf` (bare LF line ends count, as in httparse).
fn head_ended(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n") || buf.windows(3).any(|w| w == b"\n\r\n")
}

/// Method and target of the first line, once the line is complete: what lies before the first
/// space, and between it and the last space (so a target with spaces is kept whole).
fn request_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|b| *b == b'\n')?;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let first = line.iter().position(|b| *b == b' ')?;
    let last = line.iter().rposition(|b| *b == b' ')?;
    let target = if last > first {
        &line[first + 1..last]
    } else {
        &line[first + 1..]
    };
    Some((&line[..first], target))
}

fn header<'a>(req: &httparse::Request<'_, 'a>, name: &str) -> Option<&'a [u8]> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != b' ' && *b != b'\t');
    let end = v.iter().rposition(|b| *b != b' ' && *b != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// The checks of a complete head (RFC 9112 §3.2, §6.1, §6.3; RFC 9110 §8.6).
fn check_parsed(req: &httparse::Request<'_, '_>) -> Result<(), PluginError> {
    let bad = |code: &'static str, message: String| {
        Err(PluginError::new(StatusCode::BAD_REQUEST, code, message))
    };
    let http11 = req.version == Some(1);
    let mut hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad(
            "bad_host",
            "the request has more than one Host header".to_owned(),
        );
    }
    if host.is_some_and(|h| h.value.contains(&b'@')) {
        // pingora refuses userinfo in Host too (without a body).
        return bad(
            "bad_host",
            "the Host header contains userinfo (`@`)".to_owned(),
        );
    }
    if let (Some(authority), Some(host)) = (absolute_form_authority(req.path), host) {
        // pingora refuses these too (without a body); said here in the JSON shape.
        if authority != host.value {
            return bad(
                "bad_host",
                format!(
                    "Host `{}` differs from the authority `{}` of the request target",
                    String::from_utf8_lossy(host.value).escape_debug(),
                    String::from_utf8_lossy(authority).escape_debug()
                ),
            );
        }
    }
    let mut codings = Vec::new();
    let mut lengths = Vec::new();
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(h.value.split(|b| *b == b',').map(trim));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            lengths.extend(h.value.split(|b| *b == b',').map(trim));
        }
    }
    if !codings.is_empty() {
        if !http11 {
            return bad(
                "bad_request",
                "an HTTP/1.0 request cannot use Transfer-Encoding".to_owned(),
            );
        }
        // `chunked` is the only coding the gateway decodes; a proxy cannot forward a coding it
        // does not understand (RFC 9112 §6.1: 501).
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
            let list: Vec<String> = codings
                .iter()
                .map(|c| String::from_utf8_lossy(c).escape_debug().to_string())
                .collect();
            return Err(PluginError::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_encoding",
                format!(
                    "Transfer-Encoding `{}` is not supported; only `chunked` is",
                    list.join(", ")
                ),
            ));
        }
        // With Transfer-Encoding the length is ignored (and removed by pingora).
        return Ok(());
    }
    let mut length: Option<&[u8]> = None;
    for v in lengths {
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return bad(
                "bad_content_length",
                format!(
                    "Content-Length `{}` is not a number of bytes",
                    String::from_utf8_lossy(v).escape_debug()
                ),
            );
        }
        match length {
            Some(first) if trim_zeros(first) != trim_zeros(v) => {
                return bad(
                    "bad_content_length",
                    "the request has different Content-Length values".to_owned(),
                )
            }
            _ => length = Some(v),
        }
    }
    Ok(())
}

fn trim_zeros(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != b'0').unwrap_or(v.len());
    &v[start..]
}

/// The authority of an absolute-form target (`http://host:port/path`).
fn absolute_form_authority(target: Option<&str>) -> Option<&[u8]> {
    target_authority(target?.as_bytes())
}

/// The authority of an absolute-form request target, `None` for other forms. pingora keeps
/// such a target verbatim (`raw_path`) and puts only its path in the URI.
pub fn target_authority(target: &[u8]) -> Option<&[u8]> {
    let sep = target.windows(3).position(|w| w == b"://")?;
    let scheme = &target[..sep];
    if scheme.is_empty()
        || !scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
    {
        return None;
    }
    let rest = &target[sep + 3..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(head: &str) -> HeadCheck {
        check(&BytesMut::from(head.as_bytes()))
    }

    fn refused(head: &str) -> (u16, &'static str) {
        match run(head) {
            HeadCheck::Refused(r) => (r.error.status.as_u16(), r.error.code),
            other => panic!("not refused: {other:?} for {head:?}"),
        }
    }

    #[test]
    fn ordinary_heads_pass_and_partial_ones_wait() {
        assert!(matches!(
            run("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"),
            HeadCheck::Complete
        ));
        assert!(matches!(
            run("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nContent-Length: 005\r\n\r\nhello"),
            HeadCheck::Complete
        ));
        assert!(matches!(
            run("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadCheck::Complete
        ));
        assert!(matches!(run("GET /a HTTP/1.1\r\nHo"), HeadCheck::Partial));
        assert!(matches!(run("GET /a b"), HeadCheck::Partial));
        // Bytes pingora percent-encodes are left to it.
        assert!(matches!(
            run("GET /a{b} HTTP/1.1\r\nHost: x\r\n\r\n"),
            HeadCheck::Complete
        ));
    }

    #[test]
    fn raw_spaces_and_controls_in_the_target_are_bad_paths() {
        assert_eq!(
            refused("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
            (400, "bad_path")
        );
        assert_eq!(refused("GET /a\tb HTTP/1.1\r\n"), (400, "bad_path"));
        assert_eq!(refused("GET /a\x01b HTTP/1.1\r\n"), (400, "bad_path"));
        assert_eq!(refused("GET /a\x7fb HTTP/1.1\r\n"), (400, "bad_path"));
    }

    #[test]
    fn framing_that_two_parsers_could_read_differently_is_refused() {
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            (400, "bad_content_length")
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n"),
            (400, "bad_content_length")
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
            (400, "bad_content_length")
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
            (501, "unsupported_transfer_encoding")
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            (501, "unsupported_transfer_encoding")
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (501, "unsupported_transfer_encoding")
        );
        assert_eq!(
            refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (400, "bad_request")
        );
    }

    #[test]
    fn host_lines_must_agree_with_each_other_and_the_target() {
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            (400, "bad_host")
        );
        assert_eq!(
            refused("GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n"),
            (400, "bad_host")
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"),
            (400, "bad_host")
        );
        assert!(matches!(
            run("GET http://a:80/x HTTP/1.1\r\nHost: a:80\r\n\r\n"),
            HeadCheck::Complete
        ));
    }

    #[test]
    fn garbage_heads_are_bad_requests_with_a_reason() {
        assert_eq!(
            refused("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            (400, "bad_request")
        );
        assert_eq!(refused("G\x01T / HTTP/1.1\r\n\r\n"), (400, "bad_request"));
    }

    #[test]
    fn a_timed_out_head_keeps_what_was_read_for_the_log() {
        let r = header_timeout(Duration::from_secs(10), b"GET /slow HTTP/1.1\r\nHo");
        assert_eq!(
            (r.error.status.as_u16(), r.error.code),
            (408, "client_timeout")
        );
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/slow"));
    }
}
