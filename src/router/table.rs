//! Compiling route specs into lookup structures (validation, precedence order, conflicts) and
//! matching requests against them. The precedence rules are documented in the module header.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;

use http::{HeaderMap, Method};

use super::conflict::{Filters, Tally, LISTED_CONFLICTS};
use super::host::{has_wildcard_suffix, request_host, with_lowercase, HostMatch};
use super::path::normalize_path;
use super::template::{parse_template, Segment, TrieNode};
use super::{HeaderMatch, PathMatch, RouteError, RouteMatch, RouteSpec};

/// Compiled routes: immutable once built, and shared read-only by every worker thread.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact_hosts: HashMap<Box<str>, PathIndex>,
    /// Sorted by suffix length, longest first, so the first match is the most specific.
    wildcard_hosts: Vec<(Box<str>, PathIndex)>,
    any_host: PathIndex,
}

/// What is left of a spec after compiling: the filters that run once the path has matched.
#[derive(Debug)]
struct Route {
    id: usize,
    methods: Option<Vec<Method>>,
    headers: Vec<HeaderMatch>,
    /// Position of each template parameter among the path's segments, in template order.
    param_segments: Vec<usize>,
}

impl Route {
    fn accepts(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
            && self.headers.iter().all(|h| match &h.value {
                None => headers.contains_key(&h.name),
                Some(want) => headers
                    .get_all(&h.name)
                    .iter()
                    .any(|got| got.as_bytes() == want.as_bytes()),
            })
    }

    fn filters(&self) -> Filters<'_> {
        Filters {
            methods: self.methods.as_deref(),
            headers: &self.headers,
        }
    }

    /// Orders routes sharing a path pattern: more header matchers, then a method list, first.
    fn tie_break_key(&self, position: usize) -> (Reverse<usize>, bool, usize) {
        (
            Reverse(self.headers.len()),
            self.methods.is_none(),
            position,
        )
    }
}

/// The routes of one host group. Each `Vec<usize>` lists routes sharing a path pattern (indices
/// into `RouteTable::routes`), already in tie-break order.
#[derive(Debug, Default)]
struct PathIndex {
    exact: HashMap<Box<str>, Vec<usize>>,
    templates: TrieNode,
    has_templates: bool,
    prefixes: HashMap<Box<str>, Vec<usize>>,
    /// `prefix_lens[n]`: some prefix is `n` bytes long; lets a probe skip hashing needlessly.
    prefix_lens: Vec<bool>,
}

impl PathIndex {
    fn find(
        &self,
        routes: &[Route],
        path: &str,
        accept: &impl Fn(usize) -> bool,
    ) -> Option<RouteMatch> {
        let whole = |route: usize, params| RouteMatch {
            id: routes[route].id,
            params,
            prefix_len: path.len(),
        };
        if let Some(route) = self.exact.get(path).and_then(|c| first_accepted(c, accept)) {
            return Some(whole(route, Vec::new()));
        }
        if self.has_templates {
            if let Some(rest) = path.strip_prefix('/') {
                if let Some(route) = self.templates.find(rest, accept) {
                    return Some(whole(route, template_params(&routes[route], rest)));
                }
            }
        }
        self.find_prefix(path, accept)
            .map(|(route, prefix_len)| RouteMatch {
                id: routes[route].id,
                params: Vec::new(),
                prefix_len,
            })
    }

    /// Probes the path's segment boundaries from the longest candidate prefix to the shortest.
    fn find_prefix(&self, path: &str, accept: &impl Fn(usize) -> bool) -> Option<(usize, usize)> {
        if self.prefixes.is_empty() {
            return None;
        }
        let probe = |len: usize| {
            if !self.prefix_lens.get(len).copied().unwrap_or(false) {
                return None;
            }
            let candidates = self.prefixes.get(path.get(..len)?)?;
            first_accepted(candidates, accept).map(|route| (route, len))
        };
        if let Some(found) = probe(path.len()) {
            return Some(found);
        }
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        while let Some(slash) = bytes[..end].iter().rposition(|&b| b == b'/') {
            // `/api/` (with the slash) only covers what is below it, so it is more specific
            // than `/api`, which covers `/api` itself too.
            if slash + 1 < bytes.len() {
                if let Some(found) = probe(slash + 1) {
                    return Some(found);
                }
            }
            if slash > 0 {
                if let Some(found) = probe(slash) {
                    return Some(found);
                }
            }
            end = slash;
        }
        None
    }
}

fn first_accepted(candidates: &[usize], accept: &impl Fn(usize) -> bool) -> Option<usize> {
    candidates.iter().copied().find(|&route| accept(route))
}

/// Copies the parameter values out of the path (only on a hit, so a miss never allocates).
fn template_params(route: &Route, rest: &str) -> Vec<(usize, String)> {
    let mut params = Vec::with_capacity(route.param_segments.len());
    let mut wanted = route.param_segments.iter().enumerate().peekable();
    for (position, segment) in rest.split('/').enumerate() {
        match wanted.peek() {
            Some(&(index, &at)) if at == position => {
                params.push((index, segment.to_owned()));
                wanted.next();
            }
            Some(_) => {}
            None => break,
        }
    }
    params
}

/// A validated spec, ready to be inserted.
struct Compiled<'a> {
    route: Route,
    host: Option<HostMatch>,
    segments: Vec<Segment<'a>>,
}

impl RouteTable {
    /// Compiles `specs`, or returns every problem found: invalid routes, and conflicting pairs
    /// (the first [`LISTED_CONFLICTS`] in spec order, then one [`RouteError::MoreConflicts`]).
    pub fn build(specs: Vec<RouteSpec>) -> Result<RouteTable, Vec<RouteError>> {
        let mut errors = Vec::new();
        let mut table = RouteTable::default();
        // Parallel to `table.routes`: where each route came from, for conflict messages.
        let mut sources: Vec<(&RouteSpec, Option<HostMatch>)> = Vec::new();
        // Position of each wildcard suffix in `table.wildcard_hosts` (a search per route would
        // make many wildcard hosts quadratic).
        let mut wildcards: HashMap<String, usize> = HashMap::new();
        for spec in &specs {
            let compiled = match compile(spec) {
                Ok(compiled) => compiled,
                Err(mut found) => {
                    errors.append(&mut found);
                    continue;
                }
            };
            let index = table.routes.len();
            let group = table.group_mut(compiled.host.as_ref(), &mut wildcards);
            match &spec.path {
                PathMatch::Exact(path) => group
                    .exact
                    .entry(Box::from(path.as_str()))
                    .or_default()
                    .push(index),
                PathMatch::Prefix(prefix) => {
                    group
                        .prefixes
                        .entry(Box::from(prefix.as_str()))
                        .or_default()
                        .push(index);
                    if group.prefix_lens.len() <= prefix.len() {
                        group.prefix_lens.resize(prefix.len() + 1, false);
                    }
                    group.prefix_lens[prefix.len()] = true;
                }
                PathMatch::Template(_) => {
                    group
                        .templates
                        .insert(&compiled.segments)
                        .routes
                        .push(index);
                    group.has_templates = true;
                }
            }
            table.routes.push(compiled.route);
            sources.push((spec, compiled.host));
        }
        table
            .wildcard_hosts
            .sort_by_key(|(suffix, _)| Reverse(suffix.len()));

        let routes = &table.routes;
        let mut tally = Tally::default();
        let mut finish = |candidates: &mut Vec<usize>| {
            tally.add_group(candidates, |at| routes[at].filters());
            candidates.sort_by_key(|&i| routes[i].tie_break_key(i));
        };
        let groups = table
            .exact_hosts
            .values_mut()
            .chain(table.wildcard_hosts.iter_mut().map(|(_, group)| group))
            .chain(std::iter::once(&mut table.any_host));
        for group in groups {
            group.exact.values_mut().for_each(&mut finish);
            group.prefixes.values_mut().for_each(&mut finish);
            group.templates.for_each_mut(&mut finish);
        }
        errors.extend(conflict_errors(&table.routes, &sources, tally));

        if errors.is_empty() {
            Ok(table)
        } else {
            Err(errors)
        }
    }

    fn group_mut(
        &mut self,
        host: Option<&HostMatch>,
        wildcards: &mut HashMap<String, usize>,
    ) -> &mut PathIndex {
        match host {
            None => &mut self.any_host,
            Some(HostMatch::Exact(host)) => self
                .exact_hosts
                .entry(Box::from(host.as_str()))
                .or_default(),
            Some(HostMatch::Wildcard(suffix)) => {
                let at = *wildcards.entry(suffix.clone()).or_insert_with(|| {
                    self.wildcard_hosts
                        .push((Box::from(suffix.as_str()), PathIndex::default()));
                    self.wildcard_hosts.len() - 1
                });
                &mut self.wildcard_hosts[at].1
            }
        }
    }

    /// Finds the most specific route for a request whose path was already normalised.
    ///
    /// `host` is the raw Host header or `:authority`, port and case as the client sent them.
    pub fn match_request(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<RouteMatch> {
        let accept = |route: usize| self.routes[route].accepts(method, headers);
        if let Some(host) = host.map(request_host) {
            if !self.exact_hosts.is_empty() {
                let group = with_lowercase(host, |host| self.exact_hosts.get(host));
                if let Some(found) = group.and_then(|g| g.find(&self.routes, path, &accept)) {
                    return Some(found);
                }
            }
            for (suffix, group) in &self.wildcard_hosts {
                if has_wildcard_suffix(host, suffix) {
                    if let Some(found) = group.find(&self.routes, path, &accept) {
                        return Some(found);
                    }
                }
            }
        }
        self.any_host.find(&self.routes, path, &accept)
    }

    /// The number of routes in the table.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes (every request is then unmatched).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Validates one spec, collecting every problem with it rather than stopping at the first.
fn compile(spec: &RouteSpec) -> Result<Compiled<'_>, Vec<RouteError>> {
    let (id, name) = (spec.id, spec.name.as_str());
    let mut errors = Vec::new();

    let host = match spec.host.as_ref().map(HostMatch::normalized).transpose() {
        Ok(host) => host,
        Err(message) => {
            let message = format!("route `{name}`: {message}");
            errors.push(RouteError::InvalidHost { id, message });
            None
        }
    };

    if spec.methods.as_ref().is_some_and(Vec::is_empty) {
        let message = format!(
            "route `{name}`: the method list is empty, so no request can match; omit it to accept any method"
        );
        errors.push(RouteError::InvalidMatcher { id, message });
    }
    for header in &spec.headers {
        if let Some(value) = &header.value {
            if http::HeaderValue::from_str(value).is_err() {
                let message = format!(
                    "route `{name}`: header `{}` must equal {value:?}, which is not a valid header value, so no request can match",
                    header.name
                );
                errors.push(RouteError::InvalidMatcher { id, message });
            }
        }
    }

    let mut segments = Vec::new();
    let mut param_segments = Vec::new();
    match &spec.path {
        PathMatch::Exact(path) | PathMatch::Prefix(path) => {
            if let Err(problem) = check_normal(path, "path") {
                let message = format!("route `{name}`: {problem}");
                errors.push(RouteError::InvalidPath { id, message });
            }
        }
        PathMatch::Template(template) => {
            match parse_template(template)
                .and_then(|parsed| check_normal(template, "template").map(|()| parsed))
            {
                Ok(parsed) => segments = parsed,
                Err(problem) => {
                    let message = format!("route `{name}`: {problem}");
                    errors.push(RouteError::InvalidTemplate { id, message });
                }
            }
            param_segments = segments
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s, Segment::Param(_)))
                .map(|(at, _)| at)
                .collect();
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let route = Route {
        id,
        methods: spec.methods.clone(),
        headers: spec.headers.clone(),
        param_segments,
    };
    Ok(Compiled {
        route,
        host,
        segments,
    })
}

/// Requests are normalised before matching, so a pattern that is not in normal form never matches.
fn check_normal(path: &str, what: &str) -> Result<(), String> {
    match normalize_path(path) {
        Ok(Cow::Borrowed(_)) => Ok(()),
        Ok(Cow::Owned(normal)) => Err(format!(
            "{what} `{path}` is not in normal form, so no request can match it; write `{normal}`"
        )),
        Err(problem) => Err(format!("{what} `{path}` is invalid: {problem}")),
    }
}

/// The conflicts to report: the first pairs one by one, then how many more there are.
fn conflict_errors(
    routes: &[Route],
    sources: &[(&RouteSpec, Option<HostMatch>)],
    tally: Tally,
) -> Vec<RouteError> {
    let total = tally.total();
    let first = tally.first_pairs();
    let mut errors: Vec<RouteError> = first
        .iter()
        .take(LISTED_CONFLICTS)
        .map(|&(later, earlier)| conflict_error(routes, sources, later, earlier))
        .collect();
    if let Some(&(later, earlier)) = first.get(LISTED_CONFLICTS) {
        let count = total.saturating_sub(LISTED_CONFLICTS as u64);
        let message = format!(
            "{count} more conflicting pairs of routes are not listed, starting with route `{}` and route `{}`; only the first {LISTED_CONFLICTS} are shown",
            sources[later].0.name, sources[earlier].0.name
        );
        errors.push(RouteError::MoreConflicts {
            id: routes[later].id,
            other: routes[earlier].id,
            count,
            message,
        });
    }
    errors
}

/// Describes one conflicting pair (positions of the later and the earlier route).
fn conflict_error(
    routes: &[Route],
    sources: &[(&RouteSpec, Option<HostMatch>)],
    later: usize,
    earlier: usize,
) -> RouteError {
    let (a, b) = (&routes[earlier], &routes[later]);
    let (spec_a, spec_b) = (sources[earlier].0, sources[later].0);
    let method = match (&a.methods, &b.methods) {
        (Some(ma), Some(mb)) => ma
            .iter()
            .find(|m| mb.contains(m))
            .map_or_else(String::new, |m| format!("{m} ")),
        _ => "any method on ".to_owned(),
    };
    let pattern = match &spec_b.path {
        PathMatch::Exact(path) | PathMatch::Template(path) => path.clone(),
        PathMatch::Prefix(prefix) => format!("prefix {prefix}"),
    };
    let host = match &sources[later].1 {
        Some(host) => format!(" on host `{}`", host.display()),
        None => String::new(),
    };
    let message = format!(
        "route `{}` conflicts with route `{}`: both match {method}{pattern}{host} with equal specificity; give them disjoint methods or distinguishing header matchers, or remove one",
        spec_b.name, spec_a.name
    );
    RouteError::Conflict {
        id: b.id,
        other: a.id,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn spec(id: usize, path: PathMatch) -> RouteSpec {
        RouteSpec {
            id,
            name: format!("r{id}"),
            host: None,
            path,
            methods: None,
            headers: Vec::new(),
        }
    }
    fn exact(id: usize, p: &str) -> RouteSpec {
        spec(id, PathMatch::Exact(p.into()))
    }
    fn prefix(id: usize, p: &str) -> RouteSpec {
        spec(id, PathMatch::Prefix(p.into()))
    }
    fn template(id: usize, p: &str) -> RouteSpec {
        spec(id, PathMatch::Template(p.into()))
    }
    fn on_host(mut s: RouteSpec, host: &str) -> RouteSpec {
        s.host = Some(HostMatch::parse(host));
        s
    }
    fn with_methods(mut s: RouteSpec, methods: &[Method]) -> RouteSpec {
        s.methods = Some(methods.to_vec());
        s
    }
    fn with_header(mut s: RouteSpec, name: &'static str, value: Option<&str>) -> RouteSpec {
        s.headers.push(HeaderMatch {
            name: HeaderName::from_static(name),
            value: value.map(str::to_owned),
        });
        s
    }

    fn table(specs: Vec<RouteSpec>) -> RouteTable {
        match RouteTable::build(specs) {
            Ok(table) => table,
            Err(errors) => panic!("unexpected build errors: {errors:#?}"),
        }
    }

    struct Req<'a> {
        method: Method,
        host: Option<&'a str>,
        headers: HeaderMap,
    }

    fn get() -> Req<'static> {
        Req {
            method: Method::GET,
            host: None,
            headers: HeaderMap::new(),
        }
    }

    impl<'a> Req<'a> {
        fn method(mut self, method: Method) -> Self {
            self.method = method;
            self
        }
        fn host(mut self, host: &'a str) -> Self {
            self.host = Some(host);
            self
        }
        fn header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers.append(
                HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
            self
        }
        fn id(&self, table: &RouteTable, path: &str) -> Option<usize> {
            self.find(table, path).map(|m| m.id)
        }
        fn find(&self, table: &RouteTable, path: &str) -> Option<RouteMatch> {
            table.match_request(&self.method, self.host, path, &self.headers)
        }
    }

    #[test]
    fn exact_beats_template_beats_prefix_regardless_of_order() {
        let t = table(vec![
            prefix(1, "/users"),
            template(2, "/users/{id}"),
            exact(3, "/users/me"),
        ]);
        assert_eq!(get().id(&t, "/users/me"), Some(3));
        assert_eq!(get().id(&t, "/users/42"), Some(2));
        assert_eq!(get().id(&t, "/users/42/posts"), Some(1));
        assert_eq!(get().id(&t, "/users"), Some(1));
        assert_eq!(get().id(&t, "/other"), None);
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let t = table(vec![
            prefix(1, "/"),
            prefix(2, "/api"),
            prefix(3, "/api/v1"),
            prefix(4, "/api/v1/"),
        ]);
        assert_eq!(get().id(&t, "/apix"), Some(1));
        assert_eq!(get().id(&t, "/api"), Some(2));
        assert_eq!(get().id(&t, "/api/"), Some(2));
        assert_eq!(get().id(&t, "/api/x"), Some(2));
        assert_eq!(get().id(&t, "/api/v1"), Some(3));
        assert_eq!(get().id(&t, "/api/v1/"), Some(4));
        assert_eq!(get().id(&t, "/api/v1/users/42"), Some(4));
        assert_eq!(get().id(&t, "/api/v10"), Some(2));
        assert_eq!(get().id(&t, "/"), Some(1));
    }

    #[test]
    fn prefix_with_trailing_slash_does_not_match_the_bare_directory() {
        let t = table(vec![prefix(1, "/api/")]);
        assert_eq!(get().id(&t, "/api"), None);
        assert_eq!(get().id(&t, "/api/"), Some(1));
        assert_eq!(get().id(&t, "/api/x/y"), Some(1));
    }

    #[test]
    fn prefix_len_reports_the_matched_prefix_for_strip_prefix() {
        let t = table(vec![
            prefix(1, "/api"),
            prefix(2, "/static/"),
            prefix(3, "/"),
            exact(4, "/e"),
            template(5, "/t/{x}"),
        ]);
        let len = |p: &str| get().find(&t, p).map(|m| (m.id, m.prefix_len));
        assert_eq!(len("/api/users"), Some((1, 4)));
        assert_eq!(len("/api"), Some((1, 4)));
        assert_eq!(len("/static/css/a.css"), Some((2, 8)));
        assert_eq!(len("/zzz"), Some((3, 1)));
        assert_eq!(len("/e"), Some((4, 2)));
        assert_eq!(len("/t/abc"), Some((5, 6)));
    }

    #[test]
    fn template_params_are_returned_in_template_order() {
        let t = table(vec![template(1, "/orgs/{org}/repos/{repo}/issues/{n}")]);
        let m = get().find(&t, "/orgs/acme/repos/a%2Fb/issues/7").unwrap();
        assert_eq!(
            m.params,
            [(0, "acme".into()), (1, "a%2Fb".into()), (2, "7".into())]
        );
    }

    #[test]
    fn literal_template_segment_beats_param_and_trailing_slash_matters() {
        let t = table(vec![
            template(1, "/users/{id}"),
            template(2, "/users/{id}/"),
            template(3, "/users/me/{tab}"),
            template(4, "/users/{id}/{tab}"),
        ]);
        assert_eq!(get().id(&t, "/users/1"), Some(1));
        assert_eq!(get().id(&t, "/users/1/"), Some(2));
        assert_eq!(get().id(&t, "/users/me/x"), Some(3));
        assert_eq!(get().id(&t, "/users/you/x"), Some(4));
        assert_eq!(get().id(&t, "/users//x"), None);
    }

    #[test]
    fn method_filters_fall_through_to_the_next_candidate() {
        let t = table(vec![
            exact(1, "/x"),
            with_methods(exact(2, "/x"), &[Method::GET]),
            with_methods(template(3, "/x/{id}"), &[Method::POST]),
            prefix(4, "/x"),
        ]);
        assert_eq!(get().id(&t, "/x"), Some(2));
        assert_eq!(get().method(Method::DELETE).id(&t, "/x"), Some(1));
        assert_eq!(get().method(Method::POST).id(&t, "/x/9"), Some(3));
        assert_eq!(get().id(&t, "/x/9"), Some(4));
        assert_eq!(get().method(Method::HEAD).id(&t, "/x/9"), Some(4));
    }

    #[test]
    fn rejected_literal_template_backtracks_to_param_template() {
        let t = table(vec![
            with_methods(template(1, "/a/b/{c}"), &[Method::POST]),
            template(2, "/a/{b}/{c}"),
        ]);
        assert_eq!(get().id(&t, "/a/b/c"), Some(2));
        assert_eq!(get().method(Method::POST).id(&t, "/a/b/c"), Some(1));
    }

    #[test]
    fn more_header_matchers_win_ties() {
        let t = table(vec![
            exact(1, "/x"),
            with_header(exact(2, "/x"), "x-canary", None),
            with_header(
                with_header(exact(3, "/x"), "x-canary", Some("1")),
                "x-tenant",
                None,
            ),
        ]);
        assert_eq!(get().id(&t, "/x"), Some(1));
        assert_eq!(get().header("x-canary", "0").id(&t, "/x"), Some(2));
        assert_eq!(
            get()
                .header("x-canary", "1")
                .header("x-tenant", "a")
                .id(&t, "/x"),
            Some(3)
        );
        assert_eq!(
            get()
                .header("x-canary", "0")
                .header("x-canary", "1")
                .header("x-tenant", "a")
                .id(&t, "/x"),
            Some(3),
            "any value of a repeated header may satisfy the matcher"
        );
    }

    #[test]
    fn header_matchers_beat_method_lists() {
        let t = table(vec![
            with_methods(exact(1, "/x"), &[Method::GET]),
            with_header(exact(2, "/x"), "x-debug", None),
        ]);
        assert_eq!(get().header("x-debug", "1").id(&t, "/x"), Some(2));
        assert_eq!(get().id(&t, "/x"), Some(1));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any_with_fall_through() {
        let t = table(vec![
            prefix(1, "/"),
            on_host(prefix(2, "/"), "*.example.com"),
            on_host(prefix(3, "/"), "*.api.example.com"),
            on_host(exact(4, "/only"), "v1.api.example.com"),
        ]);
        let id = |host: &str, path: &str| get().host(host).id(&t, path);
        assert_eq!(id("v1.api.example.com", "/only"), Some(4));
        // Nothing in the exact group matches, so the longest wildcard group is next.
        assert_eq!(id("v1.api.example.com", "/other"), Some(3));
        assert_eq!(id("x.example.com", "/"), Some(2));
        assert_eq!(id("example.com", "/"), Some(1));
        assert_eq!(id("other.org", "/"), Some(1));
        assert_eq!(get().id(&t, "/only"), Some(1));
    }

    #[test]
    fn request_host_ignores_port_and_case() {
        let t = table(vec![
            on_host(exact(1, "/"), "api.example.com"),
            on_host(exact(2, "/"), "[::1]"),
            on_host(exact(3, "/"), "*.Example.org"),
        ]);
        let id = |host: &str| get().host(host).id(&t, "/");
        assert_eq!(id("API.Example.COM:8443"), Some(1));
        assert_eq!(id("api.example.com."), Some(1));
        assert_eq!(id("[::1]:8080"), Some(2));
        assert_eq!(id("[::1]"), Some(2));
        assert_eq!(id("WWW.EXAMPLE.ORG:80"), Some(3));
        assert_eq!(id("example.org"), None);
        assert_eq!(id("api.example.com.evil"), None);
    }

    #[test]
    fn host_specific_route_beats_more_specific_path_on_any_host() {
        let t = table(vec![
            exact(1, "/users/me"),
            on_host(prefix(2, "/"), "api.example.com"),
        ]);
        assert_eq!(get().host("api.example.com").id(&t, "/users/me"), Some(2));
        assert_eq!(get().host("other").id(&t, "/users/me"), Some(1));
    }

    #[test]
    fn paths_that_were_not_normalised_do_not_panic() {
        let t = table(vec![template(1, "/{a}"), prefix(2, "/a")]);
        for path in ["", "a", "*", "//", "/a//b", "\u{e9}/"] {
            let _ = get().find(&t, path);
        }
    }

    fn build_errors(specs: Vec<RouteSpec>) -> Vec<RouteError> {
        match RouteTable::build(specs) {
            Ok(_) => panic!("build should fail"),
            Err(errors) => errors,
        }
    }

    #[test]
    fn same_shape_templates_conflict_whatever_the_param_names() {
        let mut a = with_methods(template(1, "/users/{id}"), &[Method::GET]);
        a.name = "a".into();
        let mut b = with_methods(template(2, "/users/{user}"), &[Method::GET, Method::PUT]);
        b.name = "b".into();
        let errors = build_errors(vec![a, b]);
        assert_eq!(
            errors,
            [RouteError::Conflict {
                id: 2,
                other: 1,
                message: "route `b` conflicts with route `a`: both match GET /users/{user} with equal specificity; give them disjoint methods or distinguishing header matchers, or remove one".into(),
            }]
        );
    }

    #[test]
    fn every_conflicting_pair_is_reported() {
        let errors = build_errors(vec![
            exact(1, "/x"),
            exact(2, "/x"),
            exact(3, "/x"),
            prefix(4, "/p"),
            prefix(5, "/p"),
            on_host(exact(6, "/h"), "A.example.com"),
            on_host(exact(7, "/h"), "a.example.com."),
        ]);
        let pairs: Vec<_> = errors
            .iter()
            .map(|e| match e {
                RouteError::Conflict { id, other, .. } => (*id, *other),
                other => panic!("not a conflict: {other:?}"),
            })
            .collect();
        assert_eq!(pairs, [(2, 1), (3, 1), (3, 2), (5, 4), (7, 6)]);
    }

    #[test]
    fn a_thousand_identical_routes_list_twenty_conflicts_and_count_the_rest() {
        let errors = build_errors((0..1000).map(|id| prefix(id, "/api")).collect());
        assert_eq!(errors.len(), LISTED_CONFLICTS + 1);
        let pairs = conflict_pairs(&errors[..LISTED_CONFLICTS]);
        assert_eq!(&pairs[..4], [(1, 0), (2, 0), (2, 1), (3, 0)]);
        assert_eq!(pairs[LISTED_CONFLICTS - 1], (6, 4));
        match &errors[LISTED_CONFLICTS] {
            RouteError::MoreConflicts {
                id,
                other,
                count,
                message,
            } => {
                assert_eq!((*id, *other, *count), (6, 5, 499_500 - 20));
                assert_eq!(
                    message,
                    "499480 more conflicting pairs of routes are not listed, starting with route `r6` and route `r5`; only the first 20 are shown"
                );
            }
            other => panic!("no summary: {other:?}"),
        }
    }

    #[test]
    fn conflicts_are_listed_in_spec_order_across_hosts_and_patterns() {
        let errors = build_errors(vec![
            prefix(0, "/b"),
            on_host(exact(1, "/a"), "x.example.com"),
            prefix(2, "/b"),
            on_host(exact(3, "/a"), "x.example.com"),
            prefix(4, "/b"),
        ]);
        assert_eq!(conflict_pairs(&errors), [(2, 0), (3, 1), (4, 0), (4, 2)]);
    }

    fn conflict_pairs(errors: &[RouteError]) -> Vec<(usize, usize)> {
        errors
            .iter()
            .map(|e| match e {
                RouteError::Conflict { id, other, .. } => (*id, *other),
                other => panic!("not a conflict: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn conflict_messages_name_host_and_prefix() {
        let errors = build_errors(vec![
            on_host(prefix(1, "/api"), "*.example.com"),
            on_host(prefix(2, "/api"), "*.EXAMPLE.com"),
        ]);
        let message = errors[0].to_string();
        assert!(
            message.contains("any method on prefix /api on host `*.example.com`"),
            "{message}"
        );
    }

    #[test]
    fn routes_that_filters_or_tie_breaks_separate_do_not_conflict() {
        table(vec![
            // Disjoint methods.
            with_methods(exact(1, "/x"), &[Method::GET]),
            with_methods(exact(2, "/x"), &[Method::POST]),
            // Method list beats any-method.
            exact(3, "/x"),
            // Same header, different required values.
            with_header(exact(4, "/y"), "x-v", Some("1")),
            with_header(exact(5, "/y"), "x-v", Some("2")),
            // Different numbers of header matchers.
            exact(6, "/y"),
            // Different hosts, and different shapes.
            on_host(exact(7, "/x"), "a.example.com"),
            on_host(exact(8, "/x"), "*.example.com"),
            template(9, "/u/{a}/x"),
            template(10, "/u/x/{a}"),
            template(11, "/u/{a}"),
            prefix(12, "/u"),
            prefix(13, "/u/"),
        ]);
    }

    #[test]
    fn overlapping_filters_of_equal_specificity_conflict() {
        let errors = build_errors(vec![
            with_methods(exact(1, "/x"), &[Method::GET, Method::POST]),
            with_methods(exact(2, "/x"), &[Method::POST]),
            with_header(exact(3, "/y"), "x-a", None),
            with_header(exact(4, "/y"), "x-b", Some("1")),
            with_header(exact(5, "/z"), "x-a", Some("1")),
            with_header(exact(6, "/z"), "x-a", None),
        ]);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].to_string().contains("both match POST /x"));
    }

    #[test]
    fn invalid_routes_are_all_reported_with_their_ids() {
        let mut bad_host = exact(1, "/ok");
        bad_host.host = Some(HostMatch::Exact("api.example.com:8080".into()));
        let mut no_methods = exact(6, "/ok2");
        no_methods.methods = Some(Vec::new());
        let errors = build_errors(vec![
            bad_host,
            exact(2, "api"),
            prefix(3, "/a//b"),
            template(4, "/users/{id}/{id}"),
            template(5, "/users/x{id}"),
            no_methods,
            with_header(exact(7, "/ok3"), "x-a", Some("a\nb")),
            template(8, "/a/./{b}"),
            exact(9, "/fine"),
        ]);
        let kinds: Vec<_> = errors
            .iter()
            .map(|e| {
                let kind = match e {
                    RouteError::InvalidHost { .. } => "host",
                    RouteError::InvalidPath { .. } => "path",
                    RouteError::InvalidTemplate { .. } => "template",
                    RouteError::InvalidMatcher { .. } => "matcher",
                    RouteError::Conflict { .. } | RouteError::MoreConflicts { .. } => "conflict",
                };
                (e.id(), kind)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (1, "host"),
                (2, "path"),
                (3, "path"),
                (4, "template"),
                (5, "template"),
                (6, "matcher"),
                (7, "matcher"),
                (8, "template"),
            ]
        );
        assert!(
            errors[2].to_string().contains("write `/a/b`"),
            "{}",
            errors[2]
        );
        assert!(errors[0].to_string().starts_with("route `r1`: "));
    }

    #[test]
    fn empty_table_matches_nothing() {
        let t = table(Vec::new());
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert_eq!(get().host("a").id(&t, "/"), None);
    }

    #[test]
    fn table_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RouteTable>();
    }
}
