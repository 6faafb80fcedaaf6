//! Finding the binding of a request path among many templates: a trie of segments, walked
//! literal first, then `*`, then `**`, so that at the first segment where two templates differ
//! the more literal one wins. A template with a custom verb is tried before one without.

use std::borrow::Cow;
use std::collections::HashMap;

use super::template::{Segment, Template};

/// Templates of many bindings, each known by its index.
#[derive(Debug, Default)]
pub struct PathTrie {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<String, Node>,
    star: Option<Box<Node>>,
    /// Bindings whose template ends here.
    ends: Vec<usize>,
    /// Bindings whose template ends with `**` here.
    rest: Vec<usize>,
}

/// A request path cut into segments, with the custom verb split off the last one.
#[derive(Debug)]
pub struct SplitPath<'a> {
    /// Raw (still percent-encoded) segments.
    pub raw: Vec<&'a str>,
    /// The segments decoded for comparing with literals.
    decoded: Vec<Cow<'a, str>>,
}

impl<'a> SplitPath<'a> {
    fn new(raw: Vec<&'a str>) -> Self {
        let decoded = raw
            .iter()
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
            .collect();
        Self { raw, decoded }
    }
}

/// The two readings of a path: with the text after the last `:` of the last segment taken as a
/// verb, and as plain segments.
pub fn split_path(path: &str) -> (Option<(SplitPath<'_>, &str)>, SplitPath<'_>) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let raw: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    let with_verb = raw.last().and_then(|last| {
        let i = last.rfind(':')?;
        let (head, verb) = (&last[..i], &last[i + 1..]);
        let mut segs = raw.clone();
        let n = segs.len() - 1;
        segs[n] = head;
        Some((SplitPath::new(segs), verb))
    });
    (with_verb, SplitPath::new(raw))
}

impl PathTrie {
    /// Adds the template of binding `id`.
    pub fn insert(&mut self, template: &Template, id: usize) {
        let mut node = &mut self.root;
        for seg in &template.segments {
            match seg {
                Segment::Literal(l) => node = node.literals.entry(l.clone()).or_default(),
                Segment::Star => node = node.star.get_or_insert_with(Default::default),
                Segment::DoubleStar => {
                    node.rest.push(id);
                    return;
                }
            }
        }
        node.ends.push(id);
    }

    /// Walks the trie in precedence order, calling `visit` with each binding whose template
    /// matches `path`, until `visit` returns true; returns that binding.
    pub fn find(
        &self,
        path: &SplitPath<'_>,
        visit: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        walk(&self.root, &path.decoded, visit)
    }
}

fn walk(node: &Node, rest: &[Cow<'_, str>], visit: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
    match rest.split_first() {
        None => {
            if let Some(id) = node.ends.iter().copied().find(|id| visit(*id)) {
                return Some(id);
            }
        }
        Some((seg, tail)) => {
            if let Some(child) = node.literals.get(seg.as_ref()) {
                if let Some(id) = walk(child, tail, visit) {
                    return Some(id);
                }
            }
            if let Some(child) = &node.star {
                if let Some(id) = walk(child, tail, visit) {
                    return Some(id);
                }
            }
        }
    }
    node.rest.iter().copied().find(|id| visit(*id))
}

/// Joins `raw` segments of a variable and decodes them as google/api/http.proto says: a
/// single-segment variable decodes everything; a multi-segment one keeps `%2F` encoded so that
/// an encoded slash stays distinguishable from a separator. `None` when the bytes are not UTF-8.
pub fn decode_variable(raw: &[&str], single_segment: bool) -> Option<String> {
    let joined = raw.join("/");
    if single_segment {
        return percent_encoding::percent_decode_str(&joined)
            .decode_utf8()
            .ok()
            .map(Cow::into_owned);
    }
    let mut out = Vec::with_capacity(joined.len());
    let bytes = joined.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let (hi, lo) = (bytes[i + 1], bytes[i + 2]);
            if hi == b'2' && (lo == b'f' || lo == b'F') {
                out.extend_from_slice(&bytes[i..i + 3]);
                i += 3;
                continue;
            }
            if let (Some(h), Some(l)) = (hex(hi), hex(lo)) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie(templates: &[&str]) -> (PathTrie, Vec<Template>) {
        let mut t = PathTrie::default();
        let parsed: Vec<Template> = templates
            .iter()
            .map(|s| Template::parse(s).unwrap())
            .collect();
        for (i, tpl) in parsed.iter().enumerate() {
            t.insert(tpl, i);
        }
        (t, parsed)
    }

    fn lookup(t: &PathTrie, tpls: &[Template], path: &str) -> Option<usize> {
        let (verb, plain) = split_path(path);
        if let Some((p, v)) = verb {
            if let Some(id) = t.find(&p, &mut |id| tpls[id].verb.as_deref() == Some(v)) {
                return Some(id);
            }
        }
        t.find(&plain, &mut |id| tpls[id].verb.is_none())
    }

    #[test]
    fn literal_beats_variable_and_double_star_comes_last() {
        let (t, p) = trie(&["/v1/shelves/{name}", "/v1/shelves/special", "/v1/**"]);
        assert_eq!(lookup(&t, &p, "/v1/shelves/special"), Some(1));
        assert_eq!(lookup(&t, &p, "/v1/shelves/other"), Some(0));
        assert_eq!(lookup(&t, &p, "/v1/elsewhere/a/b"), Some(2));
        assert_eq!(lookup(&t, &p, "/v1"), Some(2));
        assert_eq!(lookup(&t, &p, "/v2"), None);
    }

    #[test]
    fn custom_verbs_select_among_bindings_of_one_path() {
        let (t, p) = trie(&[
            "/v1/{name=shelves/*}:archive",
            "/v1/{name=shelves/*}:restore",
            "/v1/{name=shelves/*}",
        ]);
        assert_eq!(lookup(&t, &p, "/v1/shelves/a:archive"), Some(0));
        assert_eq!(lookup(&t, &p, "/v1/shelves/a:restore"), Some(1));
        // An unknown verb is part of the segment.
        assert_eq!(lookup(&t, &p, "/v1/shelves/a:other"), Some(2));
        assert_eq!(lookup(&t, &p, "/v1/shelves/a"), Some(2));
    }

    #[test]
    fn backtracks_when_the_literal_branch_fails() {
        let (t, p) = trie(&["/v1/a/b", "/v1/{x}/c"]);
        assert_eq!(lookup(&t, &p, "/v1/a/c"), Some(1));
    }

    #[test]
    fn literal_matches_the_decoded_segment() {
        let (t, p) = trie(&["/v1/hello world"]);
        assert_eq!(lookup(&t, &p, "/v1/hello%20world"), Some(0));
    }

    #[test]
    fn single_segment_decodes_all_multi_segment_keeps_encoded_slash() {
        assert_eq!(
            decode_variable(&["a%2Fb%20c"], true).as_deref(),
            Some("a/b c")
        );
        assert_eq!(
            decode_variable(&["dir", "a%2fb%20c"], false).as_deref(),
            Some("dir/a%2fb c")
        );
        assert_eq!(decode_variable(&["%ff"], true), None);
        assert_eq!(
            decode_variable(&["trail%2"], false).as_deref(),
            Some("trail%2")
        );
        assert_eq!(decode_variable(&["%"], false).as_deref(), Some("%"));
    }

    #[test]
    fn arbitrary_templates_and_paths_never_panic() {
        // A small LCG keeps the test deterministic without a fuzzing crate.
        let alphabet: Vec<char> = "/{}*=:.a_b%2Fé9".chars().collect();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let mut trie = PathTrie::default();
        let mut templates = Vec::new();
        for _ in 0..20_000 {
            let len = next() % 14;
            let text: String = (0..len)
                .map(|_| alphabet[next() % alphabet.len()])
                .collect();
            if let Ok(t) = Template::parse(&text) {
                trie.insert(&t, templates.len());
                templates.push(t);
            }
            let (verb, plain) = split_path(&text);
            let _ = lookup(&trie, &templates, &text);
            if let Some((p, _)) = verb {
                let _ = decode_variable(&p.raw, false);
            }
            let _ = decode_variable(&plain.raw, true);
            let _ = decode_variable(&plain.raw, false);
        }
        assert!(!templates.is_empty());
    }
}
