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

use crate::error::GatewayError;
use bytes::BytesMut;

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
    pub error: GatewayError,
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
    fn bare(error: GatewayError) -> Self {
        Self {
            error,
            method: String::new(),
            target: String::new(),
            request_id: None,
            content_type: None,
        }
    }

    /// A refusal of the head in `buf`, with whatever of its request line and headers can be
    /// read: a gRPC client still gets its error as a gRPC status, and the log its request id.
    fn of_raw(error: GatewayError, buf: &[u8]) -> Self {
        let (method, target) = request_line(buf).unwrap_or_default();
        let mut r = Self {
            error,
            method: String::from_utf8_lossy(method).into_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
            request_id: None,
            content_type: None,
        };
        r.read_headers(buf);
        r
    }

    fn read_headers(&mut self, buf: &[u8]) {
        self.request_id = raw_header(buf, b"x-request-id")
            .filter(|v| tollgate_plugin_api::is_sane_request_id(v))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        self.content_type = raw_header(buf, b"content-type").map(<[u8]>::to_vec);
    }
}

/// A header's value read from raw head lines, for heads httparse refused; only used to word
/// and shape a refusal, never to decide anything.
fn raw_header<'a>(buf: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    buf.split(|b| *b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|b| *b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| trim(&line[colon + 1..]))
    })
}

/// Error for a head that did not arrive within `timeout`.
pub fn header_timeout(timeout: Duration, partial: &[u8]) -> Refusal {
    let (method, target) = request_line(partial).unwrap_or_default();
    let mut r = Refusal {
        error: GatewayError::ClientTimeout(format!(
            "the request head did not arrive within {} (request_header_timeout)",
            humantime::format_duration(timeout)
        )),
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        request_id: None,
        content_type: None,
    };
    r.read_headers(partial);
    r
}

/// Error for a head that outgrew `limit` bytes before it ended.
pub fn too_large(limit: usize) -> Refusal {
    Refusal::bare(GatewayError::HeadersTooLarge(format!(
        "the request head is larger than {limit} bytes"
    )))
}

/// Checks the bytes read so far.
pub fn check(buf: &BytesMut) -> HeadCheck {
    match glance(buf) {
        Glance::Partial => HeadCheck::Partial,
        Glance::Plain => HeadCheck::Complete,
        Glance::Look => parse_and_check(buf),
    }
}

/// What one pass over a head's bytes shows, before any parse.
#[derive(Debug, PartialEq, Eq)]
enum Glance {
    /// The head has not ended yet (and its request line, if whole, looks plain).
    Partial,
    /// A whole head with nothing the checks care about: an origin-form target of plain URI
    /// bytes, an HTTP/1.x version, no `Transfer-Encoding`, at most one plain `Content-Length`
    /// and one `Host` without `@`, every header line a `name: value`.
    Plain,
    /// Something to look at with the full parse.
    Look,
}

/// The common head costs a glance instead of a second full parse (pingora parses it again):
/// only a head with something unusual goes through httparse and the checks. Lines are found
/// with `memchr`, as httparse splits them (bare LF included), and only the first bytes of a line
/// are read unless it is one of the three fields a check reads; a line httparse would refuse
/// (a folded one, a bad name) reaches pingora, which refuses it itself.
fn glance(buf: &[u8]) -> Glance {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        return Glance::Partial;
    };
    let first = &buf[..end];
    if !plain_request_line(first.strip_suffix(b"\r").unwrap_or(first)) {
        return Glance::Look;
    }
    let (mut host, mut length) = (false, false);
    let mut rest = &buf[end + 1..];
    // Only lines that have ended count; what follows the last line feed is still arriving.
    while let Some(end) = memchr::memchr(b'\n', rest) {
        let line = &rest[..end];
        rest = &rest[end + 1..];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(&first) = line.first() else {
            return Glance::Plain;
        };
        // `name:` with a token name, as httparse reads a field line; anything else (a folded
        // line, a space before the colon) is the parse's to refuse.
        let name_ok = memchr::memchr(b':', line)
            .is_some_and(|colon| colon > 0 && line[..colon].iter().all(|b| is_token_byte(*b)));
        if !name_ok {
            return Glance::Look;
        }
        let field: &[u8] = match first | 0x20 {
            b't' => b"transfer-encoding:",
            b'c' => b"content-length:",
            b'h' => b"host:",
            _ => continue,
        };
        if line.len() < field.len() || !line[..field.len()].eq_ignore_ascii_case(field) {
            continue;
        }
        let value = trim(&line[field.len()..]);
        match field[0] {
            b't' => return Glance::Look,
            b'c' => {
                if length
                    || value.is_empty()
                    || value.len() > 19
                    || !value.iter().all(u8::is_ascii_digit)
                {
                    return Glance::Look;
                }
                length = true;
            }
            _ => {
                if host || value.contains(&b'@') {
                    return Glance::Look;
                }
                host = true;
            }
        }
    }
    Glance::Partial
}

/// `METHOD /target HTTP/1.x` with a token method and a target of plain URI bytes.
fn plain_request_line(line: &[u8]) -> bool {
    let Some(sp) = line.iter().position(|b| *b == b' ') else {
        return false;
    };
    let (method, rest) = (&line[..sp], &line[sp + 1..]);
    let Some(target) = rest
        .strip_suffix(b" HTTP/1.1")
        .or_else(|| rest.strip_suffix(b" HTTP/1.0"))
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(|b| is_token_byte(*b))
        && target.first() == Some(&b'/')
        && target.iter().all(|b| is_uri_byte(*b) && *b != b'#')
}

fn parse_and_check(buf: &[u8]) -> HeadCheck {
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
        Err(e) => HeadCheck::Refused(Refusal::of_raw(
            GatewayError::BadRequest(format!("the request head is not valid HTTP/1.1: {e}")),
            buf,
        )),
    }
}

/// httparse stops at a request line it cannot read: a method that is not a token, a version
/// other than HTTP/1.x, or a target with a byte it does not take (a space, a control character,
/// `<`, `>`, `` ` ``, invalid UTF-8, ...). Each is refused here in the JSON shape; pingora would
/// percent-encode some and answer others with an empty 400.
fn bad_request_line(buf: &[u8]) -> HeadCheck {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        // The line is not complete yet.
        return HeadCheck::Partial;
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let refuse = |error: fn(String) -> GatewayError, message: String| {
        HeadCheck::Refused(Refusal::of_raw(error(message), buf))
    };
    let (Some(first), Some(last)) = (
        line.iter().position(|b| *b == b' '),
        line.iter().rposition(|b| *b == b' '),
    ) else {
        return refuse(
            GatewayError::BadRequest,
            "the request line is not `METHOD TARGET HTTP/1.1`".to_owned(),
        );
    };
    let (method, version) = (&line[..first], &line[last + 1..]);
    if first == last || method.is_empty() || !method.iter().all(|b| is_token_byte(*b)) {
        return refuse(
            GatewayError::BadRequest,
            "the request line is not `METHOD TARGET HTTP/1.1`".to_owned(),
        );
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return refuse(
            GatewayError::BadRequest,
            format!(
                "`{}` is not an HTTP/1.x version (HTTP/2 is spoken with its own preface or \
                 negotiated by TLS)",
                String::from_utf8_lossy(version).escape_debug()
            ),
        );
    }
    let what = first_unfit(&line[first + 1..last]);
    refuse(
        GatewayError::BadPath,
        format!("the request target contains {what}; percent-encode it (e.g. `%20` for a space)"),
    )
}

/// The request target's form and bytes: origin form (`/path?query`) that the URI parser pingora
/// builds the request with accepts; absolute form (`http://host/path`); `*` for `OPTIONS`;
/// authority form for `CONNECT`. pingora would route anything else as `/` while forwarding it
/// as written, and refuse a target its URI parser rejects with an empty 400.
fn check_target(method: &str, target: &str) -> Result<(), GatewayError> {
    let bad = |message: String| Err(GatewayError::BadPath(message));
    if target.starts_with('/') {
        if http::uri::PathAndQuery::try_from(target).is_err() {
            return bad(format!(
                "the request target contains {}; percent-encode it",
                first_unfit(target.as_bytes())
            ));
        }
        return Ok(());
    }
    let fits = match (method, target) {
        ("OPTIONS", "*") | ("CONNECT", _) => true,
        _ => target_authority(target.as_bytes()).is_some() && http::Uri::try_from(target).is_ok(),
    };
    if fits {
        Ok(())
    } else {
        bad(format!(
            "the request target `{}` is neither a path (`/...`) nor an absolute URL",
            target.escape_debug()
        ))
    }
}

/// The first byte of a target that a URI cannot hold as it is, named for a message.
fn first_unfit(target: &[u8]) -> String {
    match target.iter().find(|b| !is_uri_byte(**b)) {
        Some(b' ') => "a space".to_owned(),
        Some(b'\t') => "a tab".to_owned(),
        Some(b'`') => "a backtick".to_owned(),
        Some(b) if *b < 0x20 || *b == 0x7f => format!("the control character 0x{b:02X}"),
        Some(b) if b.is_ascii() => format!("`{}`", char::from(*b)),
        Some(b) => format!("the byte 0x{b:02X}"),
        None => "a character that is not allowed".to_owned(),
    }
}

/// RFC 3986's unreserved and reserved characters and `%`.
fn is_uri_byte(b: u8) -> bool {
    URI[usize::from(b)]
}

fn is_token_byte(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// RFC 9110 `tchar`s, as a table: a request line's bytes are each looked up once.
static TOKEN: [bool; 256] = byte_table(b"!#$%&'*+-.^_`|~");

/// RFC 3986's unreserved and reserved characters and `%`, as a table.
static URI: [bool; 256] = byte_table(b"-._~:/?#[]@!$&'()*+,;=%");

const fn byte_table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
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
fn check_parsed(req: &httparse::Request<'_, '_>) -> Result<(), GatewayError> {
    check_target(req.method.unwrap_or_default(), req.path.unwrap_or_default())?;
    check_host(req)?;
    let mut codings = Vec::new();
    let mut lengths = Vec::new();
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(h.value.split(|b| *b == b',').map(trim));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            lengths.extend(h.value.split(|b| *b == b',').map(trim));
        }
    }
    if codings.is_empty() {
        check_lengths(&lengths)
    } else {
        // With Transfer-Encoding the length is ignored (and removed by pingora).
        check_codings(&codings, req.version == Some(1))
    }
}

/// One Host, without userinfo, equal to an absolute-form target's authority.
fn check_host(req: &httparse::Request<'_, '_>) -> Result<(), GatewayError> {
    let mut hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadHost(
            "the request has more than one Host header".to_owned(),
        ));
    }
    if host.is_some_and(|h| h.value.contains(&b'@')) {
        // pingora refuses userinfo in Host too (without a body).
        return Err(GatewayError::BadHost(
            "the Host header contains userinfo (`@`)".to_owned(),
        ));
    }
    if let (Some(authority), Some(host)) = (absolute_form_authority(req.path), host) {
        // pingora refuses these too (without a body); said here in the JSON shape.
        if authority != host.value {
            return Err(GatewayError::BadHost(format!(
                "Host `{}` differs from the authority `{}` of the request target",
                String::from_utf8_lossy(host.value).escape_debug(),
                String::from_utf8_lossy(authority).escape_debug()
            )));
        }
    }
    Ok(())
}

/// Transfer codings the gateway can forward: `chunked` alone, on HTTP/1.1.
fn check_codings(codings: &[&[u8]], http11: bool) -> Result<(), GatewayError> {
    if !http11 {
        return Err(GatewayError::BadRequest(
            "an HTTP/1.0 request cannot use Transfer-Encoding".to_owned(),
        ));
    }
    // `chunked` is the only coding the gateway decodes; a proxy cannot forward a coding it
    // does not understand (RFC 9112 §6.1: 501).
    if codings.len() != 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
        let list: Vec<String> = codings
            .iter()
            .map(|c| String::from_utf8_lossy(c).escape_debug().to_string())
            .collect();
        return Err(GatewayError::UnsupportedTransferEncoding(format!(
            "Transfer-Encoding `{}` is not supported; only `chunked` is",
            list.join(", ")
        )));
    }
    Ok(())
}

/// Content-Length values that are numbers of bytes and agree with each other.
fn check_lengths(lengths: &[&[u8]]) -> Result<(), GatewayError> {
    let bad = |message: String| Err(GatewayError::BadContentLength(message));
    let mut length: Option<&[u8]> = None;
    for &v in lengths {
        if v.is_empty() {
            return bad("the request has an empty Content-Length value".to_owned());
        }
        if !v.iter().all(u8::is_ascii_digit) {
            return bad(format!(
                "Content-Length `{}` is not a number of bytes",
                String::from_utf8_lossy(v).escape_debug()
            ));
        }
        if std::str::from_utf8(trim_zeros(v))
            .ok()
            .and_then(|n| n.parse::<u64>().ok().or((n.is_empty()).then_some(0)))
            .is_none()
        {
            return bad("the request's Content-Length is too large".to_owned());
        }
        match length {
            Some(first) if trim_zeros(first) != trim_zeros(v) => {
                return bad("the request has different Content-Length values".to_owned())
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
    // Nearly every target is a path: no need to look for a scheme in it.
    if target.first() == Some(&b'/') {
        return None;
    }
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
            HeadCheck::Refused(r) => (r.error.status().as_u16(), r.error.code()),
            other => panic!("not refused: {other:?} for {head:?}"),
        }
    }

    #[test]
    fn a_plain_head_is_passed_by_a_glance_and_anything_else_parsed() {
        assert_eq!(
            glance(b"GET /a?b=c HTTP/1.1\r\nHost: x:80\r\nAccept: */*\r\n\r\n"),
            Glance::Plain
        );
        assert_eq!(
            glance(b"POST /a HTTP/1.0\nContent-Length: 5\n\nhello"),
            Glance::Plain
        );
        assert_eq!(glance(b"GET /a HTTP/1.1\r\nHost: x\r\n"), Glance::Partial);
        assert_eq!(glance(b"GET /a HT"), Glance::Partial);
        for head in [
            &b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET /a HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n",
            b"GET /a HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /a HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 5\r\nContent-length: 5\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: u@a\r\n\r\n",
            b"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n",
            b"GET /a<b HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
        ] {
            assert_eq!(
                glance(head),
                Glance::Look,
                "{}",
                String::from_utf8_lossy(head)
            );
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
    fn bytes_httparse_refuses_in_the_target_are_bad_paths_with_the_byte_named() {
        for (head, named) in [
            (&b"GET /a<b HTTP/1.1\r\nHost: x\r\n\r\n"[..], "`<`"),
            (b"GET /a>b HTTP/1.1\r\nHost: x\r\n\r\n", "`>`"),
            (b"GET /a`b HTTP/1.1\r\nHost: x\r\n\r\n", "a backtick"),
            (b"GET /a?q=\"x\" HTTP/1.1\r\nHost: x\r\n\r\n", "`\"`"),
            (b"GET x/admin HTTP/1.1\r\nHost: x\r\n\r\n", "neither a path"),
            (b"GET a:1%2Fb HTTP/1.1\r\nHost: x\r\n\r\n", "neither a path"),
            (b"GET /a\x80b HTTP/1.1\r\nHost: x\r\n\r\n", "0x80"),
        ] {
            match check(&BytesMut::from(head)) {
                HeadCheck::Refused(r) => {
                    assert_eq!(r.error.code(), "bad_path", "{head:?}");
                    assert!(r.error.to_string().contains(named), "{head:?}: {}", r.error);
                }
                other => panic!("{head:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_http1_versions_are_read_as_heads() {
        assert_eq!(
            refused("GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
            (400, "bad_request")
        );
        assert_eq!(refused("GET /\r\n\r\n"), (400, "bad_request"));
    }

    #[test]
    fn grpc_clients_of_refused_lines_keep_their_content_type() {
        match run(
            "POST /a b HTTP/1.1\r\ncontent-type: application/grpc\r\nx-request-id: r1\r\n\r\n",
        ) {
            HeadCheck::Refused(r) => {
                assert_eq!(r.content_type.as_deref(), Some(&b"application/grpc"[..]));
                assert_eq!(r.request_id.as_deref(), Some("r1"));
            }
            other => panic!("{other:?}"),
        }
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
            refused(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"
            ),
            (400, "bad_content_length")
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5,\r\n\r\n"),
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
            (r.error.status().as_u16(), r.error.code()),
            (408, "client_timeout")
        );
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/slow"));
    }
}
