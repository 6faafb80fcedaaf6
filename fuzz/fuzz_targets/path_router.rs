//! Path normalisation and route matching, checked against a brute-force model of the rules in
//! src/router/mod.rs.
//!
//! Input (text): line 1 is the request path, line 2 `METHOD [HOST]`, every further line a route:
//! `e|p|t PATTERN [HOST] [METHOD,METHOD...]` for an exact path, a prefix or a template.
//!
//! Properties:
//! - a normalised path is a fixed point, starts with `/`, and has no `//`, dot segments, lower-case
//!   or needless escapes, or `%00`;
//! - when the routes build into a table, the route it picks is the one the model picks: host
//!   group first (exact, longest wildcard suffix, any), then exact path, template (literal beats
//!   parameter, segment by segment), longest prefix, and a method list before any method; the
//!   template parameters and the prefix length are the ones of that route.
#![no_main]

use std::borrow::Cow;

use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use tollgate::router::{normalize_path, HostMatch, PathError, PathMatch, RouteSpec, RouteTable};

const MAX_ROUTES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let raw = lines.next().unwrap_or_default();
    let Some(path) = check_normalisation(raw) else {
        return;
    };
    let mut request = lines.next().unwrap_or_default().split(' ');
    let Ok(method) = Method::from_bytes(request.next().unwrap_or("GET").as_bytes()) else {
        return;
    };
    let host = request.next().filter(|h| is_request_host(h));
    let specs: Vec<RouteSpec> = lines
        .take(MAX_ROUTES)
        .enumerate()
        .filter_map(|(id, line)| route(id, line))
        .collect();
    let Ok(table) = RouteTable::build(specs.clone()) else {
        return;
    };
    let found = table.match_request(&method, host, &path, &HeaderMap::new());
    let expected = specs
        .iter()
        .filter_map(|s| rank(s, &method, host, &path).map(|r| (r, s.id)))
        .min();
    assert_eq!(
        found.as_ref().map(|m| m.id),
        expected.as_ref().map(|(_, id)| *id),
        "{path:?} {method} {host:?} in {specs:#?}"
    );
    let Some(found) = found else { return };
    let Some(spec) = specs.iter().find(|s| s.id == found.id) else {
        panic!("matched route {} is not one of the specs", found.id)
    };
    match &spec.path {
        PathMatch::Prefix(prefix) => assert_eq!(found.prefix_len, prefix.len()),
        _ => assert_eq!(found.prefix_len, path.len()),
    }
    if let PathMatch::Template(template) = &spec.path {
        let wanted: Vec<(usize, String)> = template_segments(template)
            .zip(path_segments(&path))
            .filter(|(t, _)| is_param(t))
            .enumerate()
            .map(|(i, (_, value))| (i, value.to_owned()))
            .collect();
        assert_eq!(found.params, wanted, "{path:?} against {template:?}");
    }
});

/// Normalises `raw` and checks the normal form; `None` when the path is refused.
fn check_normalisation(raw: &str) -> Option<String> {
    let normal = match normalize_path(raw) {
        Ok(n) => n,
        Err(e) => {
            assert_eq!(
                e == PathError::NotAbsolute,
                !raw.starts_with('/'),
                "{raw:?}: {e}"
            );
            return None;
        }
    };
    if let Cow::Borrowed(b) = &normal {
        assert_eq!(*b, raw, "a borrowed normal form is the input itself");
    }
    let n = normal.as_ref();
    assert!(n.starts_with('/'), "{raw:?} -> {n:?}");
    assert!(!n.contains("//"), "{raw:?} -> {n:?}");
    for segment in n[1..].split('/') {
        assert!(segment != "." && segment != "..", "{raw:?} -> {n:?}");
    }
    let bytes = n.as_bytes();
    for (i, _) in n.match_indices('%') {
        let escape = &bytes[i + 1..i + 3];
        assert!(
            escape
                .iter()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
            "{raw:?} -> {n:?}: escapes are upper-case"
        );
        let value = u8::from_str_radix(std::str::from_utf8(escape).unwrap_or("zz"), 16);
        let value = value.unwrap_or_else(|_| panic!("{raw:?} -> {n:?}: bad escape"));
        assert!(value != 0, "{raw:?} -> {n:?}: %00 kept");
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "{raw:?} -> {n:?}: unreserved {value:#x} left encoded"
        );
    }
    assert!(!bytes.iter().any(|&b| b < 0x20 || b == 0x7f), "{raw:?}");
    match normalize_path(n) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, n),
        other => panic!("{raw:?} -> {n:?} is not a fixed point: {other:?}"),
    }
    Some(n.to_owned())
}

/// A request host the model below can reason about: a name, perhaps with a port.
fn is_request_host(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
}

/// A route host in its normal form already (lower case, no port, no trailing dot).
fn is_route_domain(h: &str) -> bool {
    !h.is_empty()
        && !h.starts_with('.')
        && !h.ends_with('.')
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
}

fn route(id: usize, line: &str) -> Option<RouteSpec> {
    let mut words = line.split(' ');
    let kind = words.next()?;
    let pattern = words.next()?.to_owned();
    let path = match kind {
        "e" => PathMatch::Exact(pattern),
        "p" => PathMatch::Prefix(pattern),
        "t" => PathMatch::Template(pattern),
        _ => return None,
    };
    let mut host = None;
    let mut methods = None;
    for word in words {
        if let Some(list) = word.strip_prefix("m=") {
            methods = Some(
                list.split(',')
                    .map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect::<Option<Vec<_>>>()?,
            );
        } else if is_route_domain(word.strip_prefix("*.").unwrap_or(word)) {
            host = Some(HostMatch::parse(word));
        } else {
            return None;
        }
    }
    Some(RouteSpec {
        id,
        name: format!("r{id}"),
        host,
        path,
        methods,
        headers: Vec::new(),
    })
}

/// Host group, wildcard suffix, path class (exact, template, prefix), prefix length, template
/// shape (`true` for a parameter), any-method: compared in this order, smaller wins.
type Rank = (usize, usize, usize, usize, Vec<bool>, bool);

/// The model's precedence key of a route that matches the request (smaller is more specific),
/// or `None` when it does not match.
fn rank(spec: &RouteSpec, method: &Method, host: Option<&str>, path: &str) -> Option<Rank> {
    if spec.methods.as_ref().is_some_and(|m| !m.contains(method)) {
        return None;
    }
    let request_host = host.map(|h| {
        let h = match h.split_once(':') {
            Some((name, port)) if !port.contains(':') => name,
            _ => h,
        };
        h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
    });
    // Host group: exact (0), wildcards longest suffix first (1, then by length), any host (2).
    let (group, suffix_rank) = match (&spec.host, &request_host) {
        (None, _) => (2, 0),
        (Some(HostMatch::Exact(h)), Some(r)) if h == r => (0, 0),
        (Some(HostMatch::Wildcard(s)), Some(r)) => {
            let suffix = format!(".{}", s.trim_start_matches('.'));
            if r.len() > suffix.len() && r.ends_with(&suffix) {
                (1, usize::MAX - suffix.len())
            } else {
                return None;
            }
        }
        _ => return None,
    };
    let (class, length_rank, shape) = match &spec.path {
        PathMatch::Exact(p) if p == path => (0, 0, Vec::new()),
        PathMatch::Template(t) => {
            let template: Vec<&str> = template_segments(t).collect();
            let segments: Vec<&str> = path_segments(path).collect();
            let fits = template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| {
                    if is_param(t) {
                        !s.is_empty()
                    } else {
                        t == s
                    }
                });
            if !fits {
                return None;
            }
            (1, 0, template.iter().map(|t| is_param(t)).collect())
        }
        PathMatch::Prefix(p) => {
            let below = path.starts_with(p.as_str())
                && (path.len() == p.len() || p.ends_with('/') || path.as_bytes()[p.len()] == b'/');
            if !below {
                return None;
            }
            (2, usize::MAX - p.len(), Vec::new())
        }
        PathMatch::Exact(_) => return None,
    };
    Some((
        group,
        suffix_rank,
        class,
        length_rank,
        shape,
        spec.methods.is_none(),
    ))
}

fn template_segments(template: &str) -> impl Iterator<Item = &str> {
    template[1..].split('/')
}

fn path_segments(path: &str) -> impl Iterator<Item = &str> {
    path[1..].split('/')
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}
