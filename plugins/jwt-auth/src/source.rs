//! Where a request carries its token (`token_from`): finding it, and removing it before the
//! request goes upstream.

use http::header::{HeaderName, HeaderValue, COOKIE};
use tollgate_plugin_api::{decode_query_value, RequestHeader};

use crate::config::TokenSourceConfig;

/// One configured place to look for the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// `Authorization`-style header: only the `Bearer` scheme counts.
    Bearer(HeaderName),
    /// Any other header: its whole value (a leading `Bearer ` is tolerated).
    Header(HeaderName),
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
}

impl TokenSource {
    /// Validates one configured source.
    pub fn compile(config: &TokenSourceConfig) -> Result<Self, String> {
        match config {
            TokenSourceConfig::Header(name) => {
                let header = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("token_from: `{name}` is not a valid header name"))?;
                if header == http::header::AUTHORIZATION
                    || header == http::header::PROXY_AUTHORIZATION
                {
                    Ok(Self::Bearer(header))
                } else {
                    Ok(Self::Header(header))
                }
            }
            TokenSourceConfig::Query(name) if name.is_empty() || name.contains(['&', '=']) => Err(
                format!("token_from: `{name}` is not a query parameter name"),
            ),
            TokenSourceConfig::Query(name) => Ok(Self::Query(name.clone())),
            TokenSourceConfig::Cookie(name)
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)) =>
            {
                Err(format!("token_from: `{name}` is not a cookie name"))
            }
            TokenSourceConfig::Cookie(name) => Ok(Self::Cookie(name.clone())),
        }
    }

    /// The header this source reads, if it is one.
    pub fn header(&self) -> Option<&HeaderName> {
        match self {
            Self::Bearer(h) | Self::Header(h) => Some(h),
            Self::Query(_) | Self::Cookie(_) => None,
        }
    }

    /// The token this source finds in the request; `None` when it carries none (empty values and
    /// other `Authorization` schemes count as none, so the next source is tried).
    pub fn find(&self, req: &RequestHeader) -> Option<String> {
        let token = match self {
            Self::Bearer(name) => {
                let value = req.headers.get(name)?;
                // Tokens are ASCII: the lossy copy is only for refusing garbage with a message.
                match value.to_str() {
                    Ok(v) => bearer_credentials(v)?.to_owned(),
                    Err(_) => {
                        bearer_credentials(&String::from_utf8_lossy(value.as_bytes()))?.to_owned()
                    }
                }
            }
            Self::Header(name) => {
                let value = req.headers.get(name)?;
                let value = String::from_utf8_lossy(value.as_bytes());
                let value = value.trim();
                bearer_credentials(value).unwrap_or(value).to_owned()
            }
            Self::Query(name) => {
                let (_, value) = query_pairs(req.uri.query()?).find(|(k, _)| k == name)?;
                decode_query_value(value)
            }
            Self::Cookie(name) => cookies(req).find(|(k, _)| k == name).map(|(_, v)| {
                // RFC 6265 allows a cookie value in double quotes.
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(&v)
                    .to_owned()
            })?,
        };
        (!token.is_empty()).then_some(token)
    }

    /// Removes this source's token from the request.
    pub fn strip(&self, req: &mut RequestHeader) {
        match self {
            Self::Bearer(name) | Self::Header(name) => {
                req.remove_header(name);
            }
            Self::Query(name) => strip_query_param(req, name),
            Self::Cookie(name) => strip_cookie(req, name),
        }
    }
}

/// The credentials of a `Bearer` authorization value (scheme case-insensitive, RFC 9110 §11.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Every `name=value` pair of the request's `Cookie` headers (HTTP/2 may split them).
fn cookies(req: &RequestHeader) -> impl Iterator<Item = (String, String)> + '_ {
    req.headers.get_all(COOKIE).iter().flat_map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(';')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect::<Vec<_>>()
    })
}

fn strip_query_param(req: &mut RequestHeader, name: &str) {
    let Some(query) = req.uri.query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .collect();
    let path = req.uri.path();
    let path_and_query = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = req.uri.clone().into_parts();
    // The new query is a subset of the old one, so it parses; if it somehow did not, the token
    // would stay in the request, which is only a missed clean-up.
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            req.set_uri(uri);
        }
    }
}

fn strip_cookie(req: &mut RequestHeader, name: &str) {
    let kept: Vec<String> = cookies(req)
        .filter(|(k, _)| k != name)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    req.remove_header(&COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            let _ = req.insert_header(COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(c: TokenSourceConfig) -> TokenSource {
        TokenSource::compile(&c).unwrap()
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        tollgate_plugin_test::request("GET", uri, headers)
    }

    #[test]
    fn authorization_needs_the_bearer_scheme() {
        let s = source(TokenSourceConfig::Header("Authorization".into()));
        assert!(matches!(s, TokenSource::Bearer(_)));
        assert_eq!(
            s.find(&req("/", &[("authorization", "Bearer a.b.c")])),
            Some("a.b.c".into())
        );
        assert_eq!(
            s.find(&req("/", &[("authorization", "bearer   a.b.c ")])),
            Some("a.b.c".into())
        );
        assert_eq!(
            s.find(&req("/", &[("authorization", "Basic dXNlcg==")])),
            None
        );
        assert_eq!(s.find(&req("/", &[("authorization", "Bearer")])), None);
        assert_eq!(s.find(&req("/", &[("authorization", "Bearer ")])), None);
        assert_eq!(s.find(&req("/", &[])), None);
    }

    #[test]
    fn other_headers_hold_the_bare_token() {
        let s = source(TokenSourceConfig::Header("x-token".into()));
        assert_eq!(
            s.find(&req("/", &[("x-token", " a.b.c ")])),
            Some("a.b.c".into())
        );
        assert_eq!(
            s.find(&req("/", &[("x-token", "Bearer a.b.c")])),
            Some("a.b.c".into())
        );
    }

    #[test]
    fn query_tokens_are_found_decoded_and_stripped() {
        let s = source(TokenSourceConfig::Query("access_token".into()));
        let mut r = req("/p?a=1&access_token=a.b%2Ec&b=2", &[]);
        assert_eq!(s.find(&r), Some("a.b.c".into()));
        s.strip(&mut r);
        assert_eq!(r.uri.to_string(), "/p?a=1&b=2");
        let mut r = req("/p?access_token=x", &[]);
        s.strip(&mut r);
        assert_eq!(r.uri.to_string(), "/p");
        assert_eq!(s.find(&req("/p?access_token=", &[])), None);
        assert_eq!(s.find(&req("/p?access_tokens=x", &[])), None);
    }

    #[test]
    fn cookie_tokens_are_found_among_others_and_stripped_alone() {
        let s = source(TokenSourceConfig::Cookie("jwt".into()));
        let mut r = req("/", &[("cookie", "a=1; jwt=\"a.b.c\""), ("cookie", "b=2")]);
        assert_eq!(s.find(&r), Some("a.b.c".into()));
        s.strip(&mut r);
        assert_eq!(r.headers.get_all(COOKIE).iter().count(), 1);
        assert_eq!(r.headers["cookie"], "a=1; b=2");
        let mut only = req("/", &[("cookie", "jwt=x")]);
        s.strip(&mut only);
        assert!(only.headers.get("cookie").is_none());
    }

    #[test]
    fn bad_source_names_are_config_errors() {
        for bad in [
            TokenSourceConfig::Header("bad header".into()),
            TokenSourceConfig::Query("".into()),
            TokenSourceConfig::Query("a=b".into()),
            TokenSourceConfig::Cookie("a;b".into()),
        ] {
            assert!(TokenSource::compile(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percent_decoding_never_panics() {
        assert_eq!(decode_query_value("a%20b+c"), "a b c");
        assert_eq!(decode_query_value("%+1"), "% 1");
        for odd in ["%", "%4", "%zz", "%%%", "\u{e9}%e9"] {
            let _ = decode_query_value(odd);
        }
    }
}
