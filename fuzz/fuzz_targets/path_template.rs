//! Path templates: the router's `{param}` templates and the gRPC HttpRule templates
//! (google/api/http.proto) with the trie that matches requests against them.
//!
//! Input (text): line 1 is a request path, every further line a template.
//!
//! Properties:
//! - an HttpRule template that parses is well formed (`**` last, variables inside the segments
//!   and in order, non-empty field paths and verb) and parses back to itself from its printed form;
//! - the trie finds a template for a path exactly when one matches it by the grammar's rules, and
//!   what it finds does match (decoded literals, `*` one segment, `**` the rest, the verb);
//! - a router template that builds matches the path made by filling its parameters, with those
//!   values as parameters.
#![no_main]

use std::borrow::Cow;

use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use tollgate::grpc::fuzzing::{decode_variable, split_path, PathTrie, Segment, Template};
use tollgate::router::{normalize_path, template_param_names, PathMatch, RouteSpec, RouteTable};

const MAX_TEMPLATES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or_default();
    let mut trie = PathTrie::default();
    let mut templates = Vec::new();
    for line in lines.take(MAX_TEMPLATES) {
        check_router_template(line);
        if let Ok(t) = Template::parse(line) {
            check_well_formed(line, &t);
            trie.insert(&t, templates.len());
            templates.push(t);
        }
    }
    let (verb, plain) = split_path(path);
    let mut found = None;
    if let Some((segments, v)) = &verb {
        found = trie.find(segments, &mut |id| {
            templates[id].verb.as_deref() == Some(*v)
        });
        let _ = decode_variable(&segments.raw, false);
    }
    if found.is_none() {
        found = trie.find(&plain, &mut |id| templates[id].verb.is_none());
    }
    let _ = decode_variable(&plain.raw, true);
    let _ = decode_variable(&plain.raw, false);
    let matches = |t: &Template| {
        let with_verb = verb
            .as_ref()
            .is_some_and(|(s, v)| t.verb.as_deref() == Some(*v) && fits(t, &s.raw));
        with_verb || (t.verb.is_none() && fits(t, &plain.raw))
    };
    match found {
        Some(id) => assert!(
            matches(&templates[id]),
            "{path:?} is not {:?}",
            templates[id]
        ),
        None => assert!(
            !templates.iter().any(matches),
            "{path:?} matches one of {templates:#?} but was not found"
        ),
    }
});

fn check_well_formed(text: &str, t: &Template) {
    let n = t.segments.len();
    if let Some(i) = t.segments.iter().position(|s| *s == Segment::DoubleStar) {
        assert_eq!(i + 1, n, "{text:?}: `**` not last");
    }
    let mut next_free = 0;
    for v in &t.variables {
        assert!(v.start >= next_free, "{text:?}: variables overlap");
        match v.end {
            Some(end) => {
                assert!(v.start < end && end <= n, "{text:?}: {v:?}");
                next_free = end;
            }
            None => {
                assert_eq!(t.segments.last(), Some(&Segment::DoubleStar), "{text:?}");
                assert!(v.start < n, "{text:?}: {v:?}");
                next_free = n;
            }
        }
        assert!(
            v.field_path.iter().all(|p| !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')),
            "{text:?}: {v:?}"
        );
    }
    if let Some(verb) = &t.verb {
        assert!(!verb.is_empty(), "{text:?}");
    }
    let printed = print(t);
    match Template::parse(&printed) {
        Ok(again) => assert_eq!(&again, t, "{text:?} printed as {printed:?}"),
        Err(e) => panic!("{text:?} printed as {printed:?} does not parse: {e}"),
    }
}

/// The template's canonical text: every variable as `{path=segments}`.
fn print(t: &Template) -> String {
    let segment = |s: &Segment| match s {
        Segment::Literal(l) => l.clone(),
        Segment::Star => "*".to_owned(),
        Segment::DoubleStar => "**".to_owned(),
    };
    let mut parts = Vec::new();
    let mut i = 0;
    while i < t.segments.len() {
        match t.variables.iter().find(|v| v.start == i) {
            Some(v) => {
                let end = v.end.unwrap_or(t.segments.len());
                let inner: Vec<String> = t.segments[i..end].iter().map(segment).collect();
                parts.push(format!(
                    "{{{}={}}}",
                    v.field_path.join("."),
                    inner.join("/")
                ));
                i = end;
            }
            None => {
                parts.push(segment(&t.segments[i]));
                i += 1;
            }
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if let Some(verb) = &t.verb {
        out.push(':');
        out.push_str(verb);
    }
    out
}

/// Whether `raw` path segments match the template's segments (literals compared decoded).
fn fits(t: &Template, raw: &[&str]) -> bool {
    let decoded: Vec<Cow<'_, str>> = raw
        .iter()
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
        .collect();
    let mut i = 0;
    for s in &t.segments {
        match s {
            Segment::DoubleStar => return true,
            Segment::Star if i < decoded.len() => {}
            Segment::Literal(l) if decoded.get(i).is_some_and(|d| d == l) => {}
            _ => return false,
        }
        i += 1;
    }
    i == decoded.len()
}

/// A router template that builds must match the path made by filling in its parameters.
fn check_router_template(text: &str) {
    let Ok(names) = template_param_names(text) else {
        return;
    };
    let spec = RouteSpec {
        id: 0,
        name: "t".to_owned(),
        host: None,
        path: PathMatch::Template(text.to_owned()),
        methods: None,
        headers: Vec::new(),
    };
    let Ok(table) = RouteTable::build(vec![spec]) else {
        return;
    };
    let mut values = Vec::new();
    let filled: Vec<String> = text[1..]
        .split('/')
        .map(|s| {
            if s.starts_with('{') {
                let v = format!("v{}", values.len());
                values.push((values.len(), v.clone()));
                v
            } else {
                s.to_owned()
            }
        })
        .collect();
    assert_eq!(values.len(), names.len(), "{text:?}: {names:?}");
    let path = format!("/{}", filled.join("/"));
    // The table only accepted the template in normal form, and the values are plain words.
    assert!(
        matches!(normalize_path(&path), Ok(Cow::Borrowed(_))),
        "{text:?} -> {path:?}"
    );
    let found = table.match_request(&Method::GET, None, &path, &HeaderMap::new());
    let found = found.unwrap_or_else(|| panic!("{text:?} does not match {path:?}"));
    assert_eq!(found.params, values, "{text:?} against {path:?}");
}
