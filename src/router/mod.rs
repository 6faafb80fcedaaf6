//! The compiled route table: which route a request belongs to, and the path normalisation that
//! must run before it so that every spelling of a path routes the same way.
//!
//! This module depends only on `std` and `http` (no other part of tollgate), so it can be built,
//! tested and benchmarked on its own.
//!
//! # Matching semantics
//!
//! The caller normalises the path with [`normalize_path`] first; matching is byte-exact and
//! case-sensitive on that normal form. Precedence is by specificity and never by the order of the
//! routes in the configuration:
//!
//! 1. **Host.** Routes for the exact request host (port stripped, ASCII case ignored) are tried
//!    first, then wildcard hosts from the longest suffix to the shortest, then routes with no host.
//!    A group is left for the next only when none of its routes matches the request.
//!    `*.example.com` matches any strict subdomain (`a.example.com`, `a.b.example.com`), not
//!    `example.com` itself. A request without a host only sees routes with no host.
//! 2. **Path**, within a host group: exact path, then templates, then the longest prefix.
//!    - Templates are compared segment by segment from the left: at the first segment where two
//!      differ, a literal beats a `{param}`. A parameter matches exactly one non-empty segment, and
//!      its value is the segment as written in the normalised path (still percent-encoded).
//!    - A prefix matches on segment boundaries: `/api` matches `/api`, `/api/` and `/api/x` but
//!      not `/apix`; `/api/` matches `/api/` and everything below it; `/` matches everything.
//!    - A trailing slash is significant for exact and template routes: `/users/1/` does not
//!      match `/users/{id}`.
//! 3. **Ties** between routes with the same host and path pattern: more header matchers first,
//!    then a route with a method list before an any-method route.
//!
//! Methods and headers are filters, not part of the lookup: when a route's path matches but its
//! filters do not, the next candidate in the order above is tried, so a GET-only `/x` and an
//! any-method `/x` can coexist. A method list matches the request method exactly (`GET` does not
//! imply `HEAD`). A header matcher with a value matches when any of the request's values for that
//! header is byte-for-byte equal to it; without a value the header must merely be present.
//!
//! # Conflicts
//!
//! Two routes conflict, and [`RouteTable::build`] rejects them, when nothing above orders them
//! and one request could match both: same host match, same path pattern (same exact path, same
//! prefix, or templates of the same shape whatever their parameter names), same number of header
//! matchers, both with or both without a method list, methods not disjoint, and no header that
//! both require with different values. The first [`LISTED_CONFLICTS`] conflicting pairs (in spec
//! order) are described one by one and the rest only counted, so that a thousand copies of one
//! route (half a million pairs) give a short report, in time and memory linear in the routes.

mod conflict;
mod host;
mod path;
mod table;
mod template;

pub use conflict::LISTED_CONFLICTS;
pub use host::HostMatch;
pub use path::{normalize_path, PathError};
pub use table::RouteTable;
pub use template::template_param_names;

use std::fmt;

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// This normalised path only.
    Exact(String),
    /// This path and everything below it, split on segment boundaries.
    Prefix(String),
    /// A template such as `/users/{id}/posts/{post}`.
    Template(String),
}

/// A request header a route requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// The header's name.
    pub name: http::HeaderName,
    /// The exact value required, or `None` when the header only has to be present.
    pub value: Option<String>,
}

/// One route as configured; the table compiles a list of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The caller's identifier, returned in [`RouteMatch::id`] and in errors.
    pub id: usize,
    /// The route's name, used in error messages.
    pub name: String,
    /// The host the route is limited to, or `None` for any host.
    pub host: Option<HostMatch>,
    /// How the path is matched.
    pub path: PathMatch,
    /// The methods accepted, or `None` for any method.
    pub methods: Option<Vec<http::Method>>,
    /// Headers that must all be present (and equal, when a value is given).
    pub headers: Vec<HeaderMatch>,
}

/// The route a request matched, with what the proxy needs to rewrite the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The [`RouteSpec::id`] of the matched route.
    pub id: usize,
    /// Template parameters as (index in [`template_param_names`], value as written in the path).
    pub params: Vec<(usize, String)>,
    /// Bytes of the path matched by a prefix route (for strip-prefix); the whole path otherwise.
    pub prefix_len: usize,
}

/// Why a set of routes could not be compiled; every message names the route(s) involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The host can never match a request (has a port, is empty, contains `/`, ...).
    InvalidHost {
        /// The offending route's id.
        id: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The exact or prefix path is not absolute or not in normal form, so it could never match.
    InvalidPath {
        /// The offending route's id.
        id: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The template is malformed (bad parameter name, duplicate name, brace inside a literal, ...).
    InvalidTemplate {
        /// The offending route's id.
        id: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A method list or header matcher can never match (e.g. an empty method list).
    InvalidMatcher {
        /// The offending route's id.
        id: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Two routes can match the same request and nothing decides between them.
    Conflict {
        /// The later of the two routes in the specs.
        id: usize,
        /// The earlier route it conflicts with.
        other: usize,
        /// Which request both match.
        message: String,
    },
    /// The conflicting pairs after the first [`LISTED_CONFLICTS`], counted but not described.
    MoreConflicts {
        /// The later route of the first pair not described.
        id: usize,
        /// The earlier route of that pair.
        other: usize,
        /// How many pairs are not described.
        count: u64,
        /// How many, and where they start.
        message: String,
    },
}

impl RouteError {
    /// The id of the route the error is reported against.
    pub fn id(&self) -> usize {
        match self {
            RouteError::InvalidHost { id, .. }
            | RouteError::InvalidPath { id, .. }
            | RouteError::InvalidTemplate { id, .. }
            | RouteError::InvalidMatcher { id, .. }
            | RouteError::Conflict { id, .. }
            | RouteError::MoreConflicts { id, .. } => *id,
        }
    }

    /// The human-readable explanation, also what `Display` prints.
    pub fn message(&self) -> &str {
        match self {
            RouteError::InvalidHost { message, .. }
            | RouteError::InvalidPath { message, .. }
            | RouteError::InvalidTemplate { message, .. }
            | RouteError::InvalidMatcher { message, .. }
            | RouteError::Conflict { message, .. }
            | RouteError::MoreConflicts { message, .. } => message,
        }
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for RouteError {}
