//! The request target as the pipeline passes it on: what `%2F` / `%5C` in a path get
//! (`escaped_slashes`), the origin form every upstream receives, and one `Content-Length`.

use http::header::CONTENT_LENGTH;
use http::Uri;
use pingora_http::RequestHeader;

use crate::config::EscapedSlashes;
use crate::error::GatewayError;

fn bad_path(message: impl Into<String>) -> GatewayError {
    GatewayError::BadPath(message.into())
}

/// Applies the listener's `escaped_slashes` rule to a raw path. `Ok(Some(_))` is the path to
/// route on instead of the raw one.
///
/// An encoded slash or backslash hides a separator from the router: `/admin%2Fsecret` is one
/// segment to a `prefix = "/admin"` rule but `/admin/secret` to a backend that decodes it. So
/// by default such a path is refused; `decode` routes (and forwards) the decoded path; `keep`
/// passes it as written for backends that treat `%2F` as data. `%5C` is refused unless kept,
/// since a decoded backslash is refused anyway.
pub fn escaped_slashes(path: &str, mode: EscapedSlashes) -> Result<Option<String>, GatewayError> {
    if mode == EscapedSlashes::Keep || !path.contains('%') {
        return Ok(None);
    }
    let b = path.as_bytes();
    let mut slash = false;
    for i in 0..b.len().saturating_sub(2) {
        if b[i] != b'%' {
            continue;
        }
        match (b[i + 1], b[i + 2].to_ascii_uppercase()) {
            (b'2', b'F') => slash = true,
            (b'5', b'C') => {
                return Err(bad_path(
                    "the path contains an encoded backslash (`%5C`); this listener refuses \
                     it (escaped_slashes)",
                ))
            }
            _ => {}
        }
    }
    if !slash {
        return Ok(None);
    }
    match mode {
        EscapedSlashes::Reject => Err(bad_path(
            "the path contains an encoded slash (`%2F`); this listener refuses it \
             (escaped_slashes = \"reject\")",
        )),
        _ => Ok(Some(path.replace("%2F", "/").replace("%2f", "/"))),
    }
}

/// The request's URI with `path` (and the query): origin form, or keeping the scheme and
/// authority of an HTTP/2 request, which carries its host only in `:authority`.
pub fn origin_form(
    path: &str,
    query: Option<&str>,
    uri: &Uri,
    origin_only: bool,
) -> Result<Uri, GatewayError> {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let pq = pq.parse().map_err(|_| bad_path("invalid request path"))?;
    let mut parts = uri.clone().into_parts();
    if origin_only {
        parts.scheme = None;
        parts.authority = None;
    }
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).map_err(|_| bad_path("invalid request path"))
}

/// Several equal `Content-Length` values (`5, 5`, or two lines) become one: pingora frames the
/// body by their common value (it refuses differing ones) but would forward them as they came,
/// and a strict upstream refuses those (RFC 9110 §8.6).
pub fn collapse_content_length(req: &mut RequestHeader) {
    let mut values = req.headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return;
    };
    if values.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let one = first.as_bytes().split(|b| *b == b',').next().map(|v| {
        String::from_utf8_lossy(v)
            .trim()
            .trim_start_matches('0')
            .to_owned()
    });
    if let Some(n) = one {
        let n = if n.is_empty() { "0".to_owned() } else { n };
        let _ = req.insert_header(CONTENT_LENGTH, n);
    }
}

/// The upstream request's target in origin form (`/path?query`): HTTP/1.1 upstreams get no
/// absolute form, and pingora's HTTP/2 client takes `:authority` from `Host` when the URI has
/// none (with an authority in the URI it would insist that `Host` equal it, which a configured
/// `host_header` does not).
pub fn upstream_origin_form(up: &mut RequestHeader) {
    let absolute_raw = super::head::target_authority(up.raw_path()).is_some();
    if up.uri.authority().is_none() && up.uri.scheme().is_none() && !absolute_raw {
        return;
    }
    let pq = up
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    if let Ok(uri) = pq.parse::<Uri>() {
        up.set_uri(uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_slashes_follow_the_listener_rule() {
        use EscapedSlashes::*;
        let code = |r: Result<Option<String>, GatewayError>| r.map_err(|e| e.code());
        assert_eq!(
            code(escaped_slashes("/admin%2Fsecret", Reject)),
            Err("bad_path")
        );
        assert_eq!(
            code(escaped_slashes("/admin%2fsecret", Reject)),
            Err("bad_path")
        );
        assert_eq!(
            code(escaped_slashes("/admin%2Fsecret%2f", Decode)),
            Ok(Some("/admin/secret/".to_owned()))
        );
        assert_eq!(code(escaped_slashes("/admin%2Fsecret", Keep)), Ok(None));
        assert_eq!(code(escaped_slashes("/a%5Cb", Decode)), Err("bad_path"));
        assert_eq!(code(escaped_slashes("/a%5cb", Reject)), Err("bad_path"));
        assert_eq!(code(escaped_slashes("/a%5Cb", Keep)), Ok(None));
        assert_eq!(code(escaped_slashes("/a%20b%2", Reject)), Ok(None));
        assert_eq!(code(escaped_slashes("/plain", Reject)), Ok(None));
    }

    #[test]
    fn equal_lengths_collapse_to_one() {
        let mut r = RequestHeader::build("POST", b"/", None).expect("head");
        r.append_header(CONTENT_LENGTH, "5, 5").expect("cl");
        r.append_header(CONTENT_LENGTH, "05").expect("cl");
        collapse_content_length(&mut r);
        let all: Vec<_> = r.headers.get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(all, vec!["5"]);
    }

    #[test]
    fn upstream_targets_are_origin_form() {
        let mut r =
            RequestHeader::build("GET", b"http://a.example:8080/x?y=1", None).expect("head");
        upstream_origin_form(&mut r);
        assert_eq!(r.raw_path(), b"/x?y=1");
        let parts = http::Request::get("https://b.example/y")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let mut r = RequestHeader::from(parts);
        upstream_origin_form(&mut r);
        assert_eq!((r.raw_path(), r.uri.authority()), (&b"/y"[..], None));
    }
}
