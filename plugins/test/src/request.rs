//! Requests, contexts and header lookups as plugins see them.

use std::sync::Arc;

use tollgate_plugin_api::http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_plugin_api::{RequestContext, RequestHeader, ResponseHeader, Scheme};

/// A context as the core makes it for a routed request: id `id`, plain HTTP, route `r`, upstream
/// `u`, no client address. Its fields are public: set what a test needs.
pub fn ctx() -> RequestContext {
    RequestContext::new(
        "id".to_owned(),
        Scheme::Http,
        Arc::from("r"),
        Arc::from("u"),
    )
}

/// [`ctx`] with the client address `ip` (the one resolved through trusted proxies).
pub fn ctx_from(ip: &str) -> RequestContext {
    let mut c = ctx();
    c.client_ip = Some(
        ip.parse()
            .unwrap_or_else(|e| panic!("test address `{ip}`: {e}")),
    );
    c
}

/// A request head with `method`, `uri` (path and query) and `headers`, appended in order.
pub fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build(method, uri.as_bytes(), None)
        .unwrap_or_else(|e| panic!("test request `{method} {uri}`: {e}"));
    for (name, value) in headers {
        req.append_header(name.to_string(), *value)
            .unwrap_or_else(|e| panic!("test header `{name}: {value}`: {e}"));
    }
    req
}

/// Every value of header `name` in a header map, in order, as text.
pub fn header_values<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    map.get_all(name)
        .iter()
        .map(|v| v.to_str().expect("a text header value"))
        .collect()
}

/// Every value of header `name` in a header list (a plugin's `Response`, a `PluginError`).
pub fn header_list<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().expect("a text header value"))
        .collect()
}

/// The first value of header `name` of a response, as text.
pub fn response_header(resp: &ResponseHeader, name: &str) -> Option<String> {
    resp.headers
        .get(name)
        .map(|v| v.to_str().expect("a text header value").to_owned())
}
