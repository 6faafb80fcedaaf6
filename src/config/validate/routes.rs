//! `[routes.NAME]`: what a route matches, where it goes, how its path is rewritten, and the
//! route table compiled from all of them (conflicts are found there).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use super::super::spanned::Spanned;
use http::{HeaderName, Method};
use toml::de::DeTable;

use super::super::built::{PluginEntry, RouteInstances};
use super::super::file::{self, HeaderCondition};
use super::super::model::{BrokerConfig, Rewrite, RewritePart, Route, UpstreamConfig};
use super::Validator;
use crate::router::{self, HeaderMatch, HostMatch, PathMatch, RouteSpec, RouteTable};

/// What validating one route yields.
pub(super) struct RouteParts {
    /// Its entry in the route table.
    pub(super) spec: RouteSpec,
    /// The model's route.
    pub(super) route: Route,
    /// Its plugin chain and transcoder.
    pub(super) instances: RouteInstances,
}

/// Where routes send requests, resolved before them.
pub(super) struct Targets<'a> {
    pub(super) upstreams: &'a [Arc<UpstreamConfig>],
    pub(super) upstream_index: &'a HashMap<String, usize>,
    pub(super) brokers: &'a [Arc<BrokerConfig>],
    pub(super) broker_index: &'a HashMap<String, usize>,
}

/// What routes refer to, resolved before them.
struct Refs<'a> {
    targets: Targets<'a>,
    globals: &'a [PluginEntry],
    /// The `[routes]` table with spans, where route plugin tables are read from.
    route_tables: Option<&'a DeTable<'a>>,
}

/// A mistake that is already in the collector.
struct Reported;

/// Where a route sends what it matches.
enum Target {
    /// An upstream, by index.
    Upstream(usize),
    /// A broker, published to.
    Publish(Box<super::super::model::PublishConfig>),
    /// A broker, streamed from.
    Subscribe(Box<super::super::model::SubscribeConfig>),
    /// A broker, answered by the reply.
    RequestReply(Box<super::super::model::RequestReplyConfig>),
}

impl Validator<'_, '_> {
    /// Every route that is valid; the others are reported.
    pub(super) fn routes(
        &mut self,
        routes: &BTreeMap<Spanned<String>, Spanned<file::RouteSection>>,
        targets: Targets<'_>,
        globals: &[PluginEntry],
    ) -> Vec<RouteParts> {
        let refs = Refs {
            targets,
            globals,
            route_tables: self.root.get("routes").and_then(|v| v.get_ref().as_table()),
        };
        let mut out = Vec::new();
        for (id, (name, r)) in routes.iter().enumerate() {
            out.extend(self.route(id, name.get_ref(), r, &refs));
        }
        out
    }

    /// One route, or `None` when it is wrong (and reported).
    fn route(
        &mut self,
        id: usize,
        name: &str,
        section: &Spanned<file::RouteSection>,
        refs: &Refs<'_>,
    ) -> Option<RouteParts> {
        let r = section.get_ref();
        let path = self.route_path(name, r, section.span());
        let host = r.host.as_ref().and_then(|h| self.host(name, h));
        let methods = self.methods(name, r.methods.as_ref());
        let headers = self.header_matches(name, r);
        let param_names: Vec<Arc<str>> = match &path {
            Some(PathMatch::Template(t)) => router::template_param_names(t)
                .map(|v| v.into_iter().map(|s| Arc::from(s.as_str())).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let plugins = self.route_plugins(name, r, refs.route_tables, refs.globals);
        let target = self.route_target(name, section, &param_names, &refs.targets);
        let rewrite = if r.publish.is_none() && r.subscribe.is_none() && r.request_reply.is_none() {
            self.rewrite(name, r, path.as_ref(), &param_names)
        } else {
            Rewrite::None
        };
        let (Some(path), Some(target), Ok(methods)) = (path, target, methods) else {
            return None;
        };
        let (upstream, upstream_name, publish, subscribe, request_reply, methods) = match target {
            Target::Upstream(u) => (
                Some(u),
                refs.targets.upstreams[u].name.clone(),
                None,
                None,
                None,
                methods,
            ),
            Target::Publish(p) => (
                None,
                Arc::from(""),
                Some(*p),
                None,
                None,
                Some(methods.unwrap_or_else(Self::publish_default_methods)),
            ),
            Target::Subscribe(s) => (
                None,
                Arc::from(""),
                None,
                Some(*s),
                None,
                Some(methods.unwrap_or_else(|| vec![Method::GET])),
            ),
            Target::RequestReply(t) => {
                let methods = Self::request_reply_methods(methods, &t);
                (None, Arc::from(""), None, None, Some(*t), Some(methods))
            }
        };
        // Building the transcoder compiles the schema: its errors are config errors.
        let transcoder = match (&r.grpc, upstream) {
            (Some(g), Some(_)) => {
                match crate::grpc::Transcoder::build(g.get_ref(), self.base_dir) {
                    Ok(t) => Some(Arc::new(t)),
                    Err(m) => {
                        self.c.at(g.span(), format!("route `{name}`: {m}"));
                        return None;
                    }
                }
            }
            _ => None,
        };
        let pattern: Arc<str> = Arc::from(match &path {
            PathMatch::Exact(p) | PathMatch::Template(p) => p.clone(),
            PathMatch::Prefix(p) if p.ends_with('/') => format!("{p}*"),
            PathMatch::Prefix(p) => format!("{p}/*"),
        });
        Some(RouteParts {
            spec: RouteSpec {
                id,
                name: name.to_string(),
                host,
                path,
                methods,
                headers,
            },
            route: Route {
                name: Arc::from(name),
                upstream,
                upstream_name,
                param_names,
                pattern,
                rewrite,
                connect_timeout: r.connect_timeout.as_ref().map(|d| d.get_ref().0),
                read_timeout: r.read_timeout.as_ref().map(|d| d.get_ref().0),
                write_timeout: r.write_timeout.as_ref().map(|d| d.get_ref().0),
                retry_non_idempotent: r
                    .retry_non_idempotent
                    .as_ref()
                    .is_some_and(|b| *b.get_ref()),
                publish,
                subscribe,
                request_reply,
            },
            instances: RouteInstances {
                plugins,
                transcoder,
            },
        })
    }

    /// Where a route sends what it matches: exactly one of `upstream`, `publish`, `subscribe`
    /// and `request_reply`.
    fn route_target(
        &mut self,
        name: &str,
        section: &Spanned<file::RouteSection>,
        params: &[Arc<str>],
        targets: &Targets<'_>,
    ) -> Option<Target> {
        let r = section.get_ref();
        let set: Vec<(&str, Range<usize>)> = [
            ("upstream", r.upstream.as_ref().map(Spanned::span)),
            ("publish", r.publish.as_ref().map(Spanned::span)),
            ("subscribe", r.subscribe.as_ref().map(Spanned::span)),
            ("request_reply", r.request_reply.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(k, s)| Some((k, s?)))
        .collect();
        if set.len() > 1 {
            let (second, span) = set[1].clone();
            self.c.at(
                span,
                format!(
                    "route `{name}`: `{}` and `{second}` cannot both be set (a route has one of \
                     `upstream`, `publish`, `subscribe` and `request_reply`)",
                    set[0].0
                ),
            );
            return None;
        }
        if let Some(u) = &r.upstream {
            return self.upstream_ref(name, u, targets).map(Target::Upstream);
        }
        if let Some(p) = &r.publish {
            return self
                .publish(name, r, p, params, targets)
                .map(|p| Target::Publish(Box::new(p)));
        }
        if let Some(s) = &r.subscribe {
            return self
                .subscribe(name, r, s, params, targets)
                .map(|s| Target::Subscribe(Box::new(s)));
        }
        if let Some(t) = &r.request_reply {
            return self
                .request_reply(name, r, t, params, targets)
                .map(|t| Target::RequestReply(Box::new(t)));
        }
        self.c.at(
            section.span(),
            format!("route `{name}` needs `upstream`, `publish`, `subscribe` or `request_reply`"),
        );
        None
    }

    /// The upstream a route names, which must be defined.
    fn upstream_ref(
        &mut self,
        route: &str,
        u: &Spanned<String>,
        targets: &Targets<'_>,
    ) -> Option<usize> {
        let found = targets.upstream_index.get(u.get_ref()).copied();
        if found.is_none() {
            self.c.at(
                u.span(),
                format!("route `{route}`: upstream `{}` is not defined", u.get_ref()),
            );
        }
        found
    }

    /// `methods`: `None` for any method; an empty list is a mistake, not "no method".
    fn methods(
        &mut self,
        route: &str,
        ms: Option<&Spanned<Vec<Spanned<String>>>>,
    ) -> Result<Option<Vec<Method>>, Reported> {
        let Some(ms) = ms else {
            return Ok(None);
        };
        let mut ok = true;
        if ms.get_ref().is_empty() {
            ok = false;
            self.c.at(
                ms.span(),
                format!("route `{route}`: `methods` must not be empty (leave it out to allow any method)"),
            );
        }
        let mut methods = Vec::new();
        for m in ms.get_ref() {
            let upper = m.get_ref().to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !upper.is_empty() => methods.push(method),
                _ => {
                    ok = false;
                    self.c.at(
                        m.span(),
                        format!("route `{route}`: invalid method `{}`", m.get_ref()),
                    );
                }
            }
        }
        if ok {
            Ok(Some(methods))
        } else {
            Err(Reported)
        }
    }

    /// `headers`: conditions on request headers, all of which must hold.
    fn header_matches(&mut self, route: &str, r: &file::RouteSection) -> Vec<HeaderMatch> {
        let mut headers = Vec::new();
        for (hname, cond) in &r.headers {
            let Ok(header) = HeaderName::from_bytes(hname.get_ref().as_bytes()) else {
                self.c.at(
                    hname.span(),
                    format!("route `{route}`: invalid header name `{}`", hname.get_ref()),
                );
                continue;
            };
            let value = match cond.get_ref() {
                HeaderCondition::Equals(v) => Some(v.clone()),
                HeaderCondition::Present(true) => None,
                HeaderCondition::Present(false) => {
                    self.c.at(
                        cond.span(),
                        format!("route `{route}`: header condition must be a string or `true`"),
                    );
                    continue;
                }
            };
            headers.push(HeaderMatch {
                name: header,
                value,
            });
        }
        headers
    }

    /// The one path match of a route (`exact`, `prefix` or `template`), in normal form.
    fn route_path(
        &mut self,
        route: &str,
        r: &file::RouteSection,
        route_span: Range<usize>,
    ) -> Option<PathMatch> {
        let given: Vec<_> = [
            r.exact.as_ref().map(|p| ("exact", p)),
            r.prefix.as_ref().map(|p| ("prefix", p)),
            r.template.as_ref().map(|p| ("template", p)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let (kind, p) = match given.as_slice() {
            [one] => *one,
            [] => {
                self.c.at(
                    route_span,
                    format!("route `{route}`: set one of `exact`, `prefix` or `template`"),
                );
                return None;
            }
            [_, (kind, p), ..] => {
                self.c.at(
                    p.span(),
                    format!("route `{route}`: `{kind}` cannot be combined with another path match; set only one of `exact`, `prefix`, `template`"),
                );
                return None;
            }
        };
        let value = p.get_ref();
        if !value.starts_with('/') {
            self.c.at(
                p.span(),
                format!("route `{route}`: {kind} path `{value}` must start with `/`"),
            );
            return None;
        }
        match router::normalize_path(value) {
            Ok(n) if n == value.as_str() => {}
            Ok(n) => {
                self.c.at(
                    p.span(),
                    format!("route `{route}`: {kind} path `{value}` is not in normal form (write `{n}`)"),
                );
                return None;
            }
            Err(e) => {
                self.c.at(
                    p.span(),
                    format!("route `{route}`: {kind} path `{value}`: {e}"),
                );
                return None;
            }
        }
        Some(match kind {
            "exact" => PathMatch::Exact(value.clone()),
            "prefix" => PathMatch::Prefix(value.clone()),
            _ => {
                if let Err(m) = router::template_param_names(value) {
                    self.c.at(p.span(), format!("route `{route}`: {m}"));
                    return None;
                }
                PathMatch::Template(value.clone())
            }
        })
    }

    /// `host`: a name or `*.` and a name, matched without letter case.
    fn host(&mut self, route: &str, h: &Spanned<String>) -> Option<HostMatch> {
        let v = h.get_ref().to_ascii_lowercase();
        let (wild, name) = match v.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, v.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            self.c.at(
                h.span(),
                format!("route `{route}`: invalid host `{}` (write a name like \"api.example.com\" or \"*.example.com\", without port)", h.get_ref()),
            );
            return None;
        }
        Some(if wild {
            HostMatch::Wildcard(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_string())
        })
    }

    /// How the path changes on its way upstream: `strip_prefix`, or a `rewrite` that replaces
    /// a prefix route's prefix or fills in a template route's parameters.
    fn rewrite(
        &mut self,
        route: &str,
        r: &file::RouteSection,
        path: Option<&PathMatch>,
        params: &[Arc<str>],
    ) -> Rewrite {
        let strip = r.strip_prefix.as_ref().filter(|s| *s.get_ref());
        let is_prefix = matches!(path, Some(PathMatch::Prefix(_)));
        match (strip, &r.rewrite) {
            (Some(s), Some(_)) => {
                self.c.at(
                    s.span(),
                    format!("route `{route}`: `strip_prefix` and `rewrite` cannot both be set"),
                );
                Rewrite::None
            }
            (Some(s), None) => {
                if !is_prefix && path.is_some() {
                    self.c.at(
                        s.span(),
                        format!("route `{route}`: `strip_prefix` needs a `prefix` route"),
                    );
                }
                Rewrite::Prefix(String::new())
            }
            (None, Some(rw)) => {
                let value = rw.get_ref();
                if !value.starts_with('/') {
                    self.c.at(
                        rw.span(),
                        format!("route `{route}`: rewrite `{value}` must start with `/`"),
                    );
                    return Rewrite::None;
                }
                if is_prefix {
                    if value.contains('{') {
                        self.c.at(
                            rw.span(),
                            format!("route `{route}`: a prefix route's rewrite replaces the prefix and cannot use `{{params}}`"),
                        );
                    }
                    return Rewrite::Prefix(value.clone());
                }
                match parse_rewrite(value, params) {
                    Ok(parts) => Rewrite::Template(parts),
                    Err(m) => {
                        self.c.at(
                            rw.span(),
                            format!("route `{route}`: rewrite `{value}`: {m}"),
                        );
                        Rewrite::None
                    }
                }
            }
            (None, None) => Rewrite::None,
        }
    }

    /// Compiles the route table; conflicts and matcher errors point at the route's path.
    pub(super) fn route_table(
        &mut self,
        routes: &BTreeMap<Spanned<String>, Spanned<file::RouteSection>>,
        specs: impl Iterator<Item = RouteSpec>,
    ) -> Option<RouteTable> {
        let spans: Vec<(Range<usize>, Range<usize>)> = routes
            .iter()
            .map(|(name, r)| {
                let r = r.get_ref();
                let path_span = r
                    .exact
                    .as_ref()
                    .or(r.prefix.as_ref())
                    .or(r.template.as_ref())
                    .map(|p| p.span())
                    .unwrap_or_else(|| name.span());
                (name.span(), path_span)
            })
            .collect();
        match RouteTable::build(specs.collect()) {
            Ok(t) => Some(t),
            Err(errors) => {
                for e in errors {
                    let span = spans.get(e.id()).map(|s| s.1.clone()).unwrap_or(0..0);
                    match e {
                        // The count of unlisted conflicts closes the report.
                        router::RouteError::MoreConflicts { message, .. } => {
                            self.c.at_end(span, message)
                        }
                        router::RouteError::InvalidTemplate { message, .. }
                        | router::RouteError::InvalidHost { message, .. }
                        | router::RouteError::InvalidMatcher { message, .. }
                        | router::RouteError::InvalidPath { message, .. }
                        | router::RouteError::Conflict { message, .. } => self.c.at(span, message),
                    }
                }
                None
            }
        }
    }
}

/// The parts of a whole-path rewrite: literal text and `{param}`s of the route's template.
fn parse_rewrite(value: &str, params: &[Arc<str>]) -> Result<Vec<RewritePart>, String> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(RewritePart::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("unclosed `{`")?;
        let name = &after[..close];
        let idx = params
            .iter()
            .position(|p| &**p == name)
            .ok_or_else(|| format!("`{{{name}}}` is not a parameter of the route's template"))?;
        parts.push(RewritePart::Param(idx));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched `}`".into());
    }
    if !rest.is_empty() {
        parts.push(RewritePart::Literal(rest.to_string()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::super::model::{Rewrite, RewritePart};
    use super::super::testing::{errors, valid, UPSTREAM};

    /// `UPSTREAM` followed by `routes`, whose first line is line 3.
    fn with_upstream(routes: &str) -> String {
        format!("{UPSTREAM}{routes}")
    }

    #[test]
    fn route_with_undefined_upstream_is_reported_at_the_reference() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.r]\nprefix = \"/\"\nupstream = \"user\"\n"
            )),
            ["gateway.toml:5:12: route `r`: upstream `user` is not defined"]
        );
    }

    #[test]
    fn unknown_keys_in_routes_are_reported_at_each_key() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.a]\nprefix = \"/a\"\nupstream = \"u\"\nupsteam = \"u\"\n\
                 [routes]\nb = { prefix = \"/b\", upstream = \"u\", prfix = \"/x\" }\n"
            )),
            [
                "gateway.toml:6:1: unknown field `upsteam`, expected one of `exact`, `prefix`, `template`, `host`, `methods`, `headers`, `upstream`, `strip_prefix`, `rewrite`, `connect_timeout`, `read_timeout`, `write_timeout`, `disable_plugins`, `retry_non_idempotent`, `grpc`, `publish`, `subscribe`, `request_reply`, `plugins`",
                "gateway.toml:8:38: unknown field `prfix`, expected one of `exact`, `prefix`, `template`, `host`, `methods`, `headers`, `upstream`, `strip_prefix`, `rewrite`, `connect_timeout`, `read_timeout`, `write_timeout`, `disable_plugins`, `retry_non_idempotent`, `grpc`, `publish`, `subscribe`, `request_reply`, `plugins`",
            ]
        );
    }

    #[test]
    fn duplicate_exact_routes_are_a_conflict_at_the_second_path() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.a]\nexact = \"/health\"\nupstream = \"u\"\n\
                 [routes.b]\nexact = \"/health\"\nupstream = \"u\"\n"
            )),
            ["gateway.toml:7:9: route `b` conflicts with route `a`: both match any method on /health with equal specificity; give them disjoint methods or distinguishing header matchers, or remove one"]
        );
    }

    #[test]
    fn identical_prefixes_conflict_unless_their_methods_are_disjoint() {
        let twice = |a: &str, b: &str| {
            with_upstream(&format!(
                "[routes.a]\nprefix = \"/api\"\n{a}upstream = \"u\"\n\
                 [routes.b]\nprefix = \"/api\"\n{b}upstream = \"u\"\n"
            ))
        };
        assert_eq!(
            errors(&twice("", "")),
            ["gateway.toml:7:10: route `b` conflicts with route `a`: both match any method on prefix /api with equal specificity; give them disjoint methods or distinguishing header matchers, or remove one"]
        );
        valid(&twice("methods = [\"GET\"]\n", "methods = [\"POST\"]\n"));
    }

    #[test]
    fn templates_differing_only_in_parameter_names_are_a_conflict() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.a]\ntemplate = \"/users/{id}\"\nmethods = [\"GET\", \"PUT\"]\nupstream = \"u\"\n\
                 [routes.b]\ntemplate = \"/users/{name}\"\nmethods = [\"PUT\"]\nupstream = \"u\"\n"
            )),
            ["gateway.toml:8:12: route `b` conflicts with route `a`: both match PUT /users/{name} with equal specificity; give them disjoint methods or distinguishing header matchers, or remove one"]
        );
    }

    /// A thousand copies of one route are half a million conflicting pairs: the first twenty are
    /// described, then one line counts the rest (it was 499,500 lines, 240 MB and 25 s).
    #[test]
    fn a_thousand_identical_routes_report_twenty_conflicts_and_count_the_rest() {
        let mut text = String::from(UPSTREAM);
        for n in 0..1000 {
            text.push_str(&format!(
                "[routes.r{n:04}]\nprefix = \"/api\"\nupstream = \"u\"\n"
            ));
        }
        let errors = errors(&text);
        assert_eq!(errors.len(), 21);
        // Route r0001 is on lines 6-8 (prefix on line 7), r0000 on lines 3-5.
        assert_eq!(
            errors[0],
            "gateway.toml:7:10: route `r0001` conflicts with route `r0000`: both match any method on prefix /api with equal specificity; give them disjoint methods or distinguishing header matchers, or remove one"
        );
        // The summary closes the report, at the first unlisted pair's later route (r0006, line 22).
        assert_eq!(
            errors[20],
            "gateway.toml:22:10: 499480 more conflicting pairs of routes are not listed, starting with route `r0006` and route `r0005`; only the first 20 are shown"
        );
    }

    #[test]
    fn bad_template_parameters_are_reported_once_at_the_template() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.a]\ntemplate = \"/users/{1d}\"\nupstream = \"u\"\n\
                 [routes.b]\ntemplate = \"/users/x{id}\"\nupstream = \"u\"\n"
            )),
            [
                "gateway.toml:4:12: route `a`: template `/users/{1d}`: parameter name `1d` must match [A-Za-z_][A-Za-z0-9_]*",
                "gateway.toml:7:12: route `b`: template `/users/x{id}`: segment `x{id}` mixes text and braces; a parameter must be a whole segment like `{name}`",
            ]
        );
    }

    #[test]
    fn path_matchers_are_checked() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.a]\nprefix = \"/a/../b\"\nupstream = \"u\"\n\
                 [routes.b]\nexact = \"/x\"\nprefix = \"/x\"\nupstream = \"u\"\n\
                 [routes.c]\nupstream = \"u\"\n\
                 [routes.d]\nexact = \"x\"\nupstream = \"u\"\n"
            )),
            [
                "gateway.toml:4:10: route `a`: prefix path `/a/../b` is not in normal form (write `/b`)",
                "gateway.toml:8:10: route `b`: `prefix` cannot be combined with another path match; set only one of `exact`, `prefix`, `template`",
                "gateway.toml:10:1: route `c`: set one of `exact`, `prefix` or `template`",
                "gateway.toml:13:9: route `d`: exact path `x` must start with `/`",
            ]
        );
    }

    #[test]
    fn invalid_host_pattern_is_reported_at_the_host() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.a]\nprefix = \"/\"\nhost = \"api.example.com:8080\"\nupstream = \"u\"\n"
            )),
            ["gateway.toml:5:8: route `a`: invalid host `api.example.com:8080` (write a name like \"api.example.com\" or \"*.example.com\", without port)"]
        );
    }

    #[test]
    fn methods_are_checked_once_each() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.a]\nprefix = \"/a\"\nmethods = []\nupstream = \"u\"\n\
                 [routes.b]\nprefix = \"/b\"\nmethods = [\"GE T\", \"\"]\nupstream = \"u\"\n"
            )),
            [
                "gateway.toml:5:11: route `a`: `methods` must not be empty (leave it out to allow any method)",
                "gateway.toml:9:12: route `b`: invalid method `GE T`",
                "gateway.toml:9:20: route `b`: invalid method ``",
            ]
        );
    }

    #[test]
    fn header_conditions_are_checked() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.a]\nprefix = \"/\"\nupstream = \"u\"\n\
                 headers = { \"x y\" = \"1\", x-beta = false }\n"
            )),
            [
                "gateway.toml:6:13: route `a`: invalid header name `x y`",
                "gateway.toml:6:35: route `a`: header condition must be a string or `true`",
            ]
        );
    }

    #[test]
    fn rewrites_are_checked_against_the_path_match() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.a]\nprefix = \"/api\"\nstrip_prefix = true\nrewrite = \"/v1\"\nupstream = \"u\"\n\
                 [routes.b]\nexact = \"/b\"\nstrip_prefix = true\nupstream = \"u\"\n\
                 [routes.c]\ntemplate = \"/users/{id}\"\nrewrite = \"/u/{uid}\"\nupstream = \"u\"\n\
                 [routes.d]\nprefix = \"/d\"\nrewrite = \"/x/{id}\"\nupstream = \"u\"\n\
                 [routes.e]\nexact = \"/e\"\nrewrite = \"e\"\nupstream = \"u\"\n"
            )),
            [
                "gateway.toml:5:16: route `a`: `strip_prefix` and `rewrite` cannot both be set",
                "gateway.toml:10:16: route `b`: `strip_prefix` needs a `prefix` route",
                "gateway.toml:14:11: route `c`: rewrite `/u/{uid}`: `{uid}` is not a parameter of the route's template",
                "gateway.toml:18:11: route `d`: a prefix route's rewrite replaces the prefix and cannot use `{params}`",
                "gateway.toml:22:11: route `e`: rewrite `e` must start with `/`",
            ]
        );
    }

    #[test]
    fn a_grpc_table_that_does_not_build_is_reported_at_the_table() {
        assert_eq!(
            errors(&with_upstream(
                "[routes.a]\nprefix = \"/\"\nupstream = \"u\"\n[routes.a.grpc]\nauto_map = true\n"
            )),
            ["gateway.toml:6:1: route `a`: grpc: set exactly one schema source: `protos`, `descriptor_set` or `reflection = true`"]
        );
    }

    #[test]
    fn routes_reach_the_model_and_the_table() {
        let built = valid(&with_upstream(
            "[routes.a]\ntemplate = \"/users/{id}/posts/{post}\"\nrewrite = \"/v1/{post}/by/{id}\"\nupstream = \"u\"\n\
             [routes.b]\nprefix = \"/api\"\nstrip_prefix = true\nhost = \"*.Example.com\"\nupstream = \"u\"\n\
             [routes.c]\nexact = \"/health\"\nread_timeout = \"1s\"\nupstream = \"u\"\n",
        ));
        let [a, b, c] = &built.config.routes[..] else {
            panic!("three routes");
        };
        assert_eq!(
            a.param_names,
            [Arc::<str>::from("id"), Arc::<str>::from("post")]
        );
        assert_eq!(&*a.pattern, "/users/{id}/posts/{post}");
        assert_eq!(
            a.rewrite,
            Rewrite::Template(vec![
                RewritePart::Literal("/v1/".into()),
                RewritePart::Param(1),
                RewritePart::Literal("/by/".into()),
                RewritePart::Param(0),
            ])
        );
        assert_eq!(&*b.pattern, "/api/*");
        assert_eq!(b.rewrite, Rewrite::Prefix(String::new()));
        assert_eq!(&*c.upstream_name, "u");
        assert_eq!(c.read_timeout, Some(std::time::Duration::from_secs(1)));
        let get = http::Method::GET;
        let headers = http::HeaderMap::new();
        let table = &built.config.table;
        let m = table
            .match_request(&get, Some("eu.example.com"), "/api/x", &headers)
            .expect("b matches");
        assert_eq!(m.id, 1);
        assert!(table
            .match_request(&get, Some("example.org"), "/api/x", &headers)
            .is_none());
        assert_eq!(built.instances.routes.len(), 3);
    }
}
