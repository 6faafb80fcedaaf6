//! Path templates (`/users/{id}/posts/{post}`) and the segment trie that matches them.
//!
//! The trie is walked depth first with literal children tried before the parameter child, which
//! is exactly the precedence "compare segment by segment, a literal beats a parameter": the first
//! accepted route found is the most specific one, and a route rejected by its method or header
//! filters makes the walk backtrack to the next most specific.

use std::collections::HashMap;

/// One segment of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment<'a> {
    Literal(&'a str),
    Param(&'a str),
}

/// Splits a template into segments, rejecting malformed or duplicate parameters.
pub(crate) fn parse_template(template: &str) -> Result<Vec<Segment<'_>>, String> {
    let body = template
        .strip_prefix('/')
        .ok_or_else(|| format!("template `{template}` must start with `/`"))?;
    let mut segments = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for raw in body.split('/') {
        let inner = raw.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
        match inner {
            Some(name) => {
                if !is_param_name(name) {
                    return Err(format!(
                        "template `{template}`: parameter name `{name}` must match [A-Za-z_][A-Za-z0-9_]*"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!(
                        "template `{template}`: parameter `{name}` appears more than once"
                    ));
                }
                names.push(name);
                segments.push(Segment::Param(name));
            }
            None if raw.contains(['{', '}']) => {
                return Err(format!(
                    "template `{template}`: segment `{raw}` mixes text and braces; a parameter must be a whole segment like `{{name}}`"
                ));
            }
            None => segments.push(Segment::Literal(raw)),
        }
    }
    Ok(segments)
}

/// Lists a template's parameter names in order, so callers can validate rewrites that use them.
pub fn template_param_names(template: &str) -> Result<Vec<String>, String> {
    Ok(parse_template(template)?
        .into_iter()
        .filter_map(|s| match s {
            Segment::Param(name) => Some(name.to_owned()),
            Segment::Literal(_) => None,
        })
        .collect())
}

fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A node of the template trie; `routes` are those whose template ends here, best first.
#[derive(Debug, Default)]
pub(crate) struct TrieNode {
    literals: HashMap<Box<str>, TrieNode>,
    param: Option<Box<TrieNode>>,
    pub(crate) routes: Vec<usize>,
}

impl TrieNode {
    /// Returns the node for `segments`, creating it; routes of the same shape share a node.
    pub(crate) fn insert(&mut self, segments: &[Segment<'_>]) -> &mut TrieNode {
        let mut node = self;
        for segment in segments {
            node = match segment {
                Segment::Literal(text) => node.literals.entry(Box::from(*text)).or_default(),
                Segment::Param(_) => node.param.get_or_insert_with(Box::default),
            };
        }
        node
    }

    /// Visits every node that has routes, so the builder can sort and conflict-check them.
    pub(crate) fn for_each_mut(&mut self, f: &mut impl FnMut(&mut Vec<usize>)) {
        if !self.routes.is_empty() {
            f(&mut self.routes);
        }
        for child in self.literals.values_mut() {
            child.for_each_mut(f);
        }
        if let Some(child) = self.param.as_deref_mut() {
            child.for_each_mut(f);
        }
    }

    /// Finds the most specific route accepting the request; `rest` is the path after its first `/`.
    pub(crate) fn find(&self, rest: &str, accept: &impl Fn(usize) -> bool) -> Option<usize> {
        let (segment, tail) = match rest.split_once('/') {
            Some((segment, tail)) => (segment, Some(tail)),
            None => (rest, None),
        };
        if let Some(child) = self.literals.get(segment) {
            if let Some(found) = child.descend(tail, accept) {
                return Some(found);
            }
        }
        match &self.param {
            Some(child) if !segment.is_empty() => child.descend(tail, accept),
            _ => None,
        }
    }

    fn descend(&self, tail: Option<&str>, accept: &impl Fn(usize) -> bool) -> Option<usize> {
        match tail {
            Some(tail) => self.find(tail, accept),
            None => self.routes.iter().copied().find(|&route| accept(route)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_names_are_listed_in_order() {
        assert_eq!(
            template_param_names("/users/{id}/posts/{post_id}").unwrap(),
            ["id", "post_id"]
        );
        assert!(template_param_names("/static/x").unwrap().is_empty());
        assert!(template_param_names("/").unwrap().is_empty());
    }

    #[test]
    fn malformed_templates_are_rejected_with_reasons() {
        let cases = [
            ("users/{id}", "must start with `/`"),
            ("/users/{id}/{id}", "appears more than once"),
            ("/users/{}", "must match"),
            ("/users/{1d}", "must match"),
            ("/users/{a-b}", "must match"),
            ("/users/x{id}", "whole segment"),
            ("/users/{id}x", "whole segment"),
            ("/users/{id", "whole segment"),
            ("/users/id}", "whole segment"),
            ("/users/{{id}}", "must match"),
        ];
        for (template, expected) in cases {
            let err = template_param_names(template).unwrap_err();
            assert!(err.contains(expected), "{template}: {err}");
        }
    }

    fn trie(templates: &[&str]) -> TrieNode {
        let mut root = TrieNode::default();
        for (i, t) in templates.iter().enumerate() {
            root.insert(&parse_template(t).unwrap()).routes.push(i);
        }
        root
    }

    fn find(root: &TrieNode, path: &str, accept: impl Fn(usize) -> bool) -> Option<usize> {
        root.find(path.strip_prefix('/').unwrap(), &accept)
    }

    #[test]
    fn literal_segment_beats_param_at_the_first_difference() {
        let root = trie(&["/users/{id}/x", "/users/me/{tab}", "/{a}/{b}/{c}"]);
        assert_eq!(find(&root, "/users/me/x", |_| true), Some(1));
        assert_eq!(find(&root, "/users/42/x", |_| true), Some(0));
        assert_eq!(find(&root, "/teams/42/x", |_| true), Some(2));
    }

    #[test]
    fn rejected_route_backtracks_to_next_most_specific() {
        let root = trie(&["/users/{id}/x", "/users/me/{tab}", "/{a}/{b}/{c}"]);
        assert_eq!(find(&root, "/users/me/x", |r| r != 1), Some(0));
        assert_eq!(find(&root, "/users/me/x", |r| r == 2), Some(2));
        assert_eq!(find(&root, "/users/me/x", |_| false), None);
    }

    #[test]
    fn params_match_exactly_one_non_empty_segment() {
        let root = trie(&["/users/{id}", "/files/{name}/"]);
        assert_eq!(find(&root, "/users/1", |_| true), Some(0));
        assert_eq!(find(&root, "/users/1/", |_| true), None);
        assert_eq!(find(&root, "/users/", |_| true), None);
        assert_eq!(find(&root, "/users/1/2", |_| true), None);
        assert_eq!(find(&root, "/users/a%2Fb", |_| true), Some(0));
        assert_eq!(find(&root, "/files/a/", |_| true), Some(1));
        assert_eq!(find(&root, "/files/a", |_| true), None);
    }

    #[test]
    fn root_template_matches_only_root() {
        let root = trie(&["/"]);
        assert_eq!(find(&root, "/", |_| true), Some(0));
        assert_eq!(find(&root, "/a", |_| true), None);
    }
}
