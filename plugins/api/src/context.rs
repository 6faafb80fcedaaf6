//! What a plugin knows about the request it is working on, beyond its headers.

use std::net::IpAddr;
use std::sync::Arc;

use crate::Count;

/// The scheme the client used to reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (HTTP/1.1 or h2c).
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Per-request state shared by the gateway core and the plugins of the request.
///
/// `vars` carries values one plugin produces for later ones (an authenticated consumer, verified
/// claims); `extensions` holds a plugin's private per-request state, keyed by its own type.
#[derive(Debug)]
pub struct RequestContext {
    /// The request id (kept from the client when sane, generated otherwise).
    pub request_id: String,
    /// The client address, resolved through the trusted proxies' `X-Forwarded-For`.
    pub client_ip: Option<IpAddr>,
    /// The address of the TCP peer (the client, or the last proxy in front of the gateway).
    pub peer_ip: Option<IpAddr>,
    /// The scheme of the client connection.
    pub scheme: Scheme,
    /// The client's verified certificate, on a TLS listener with `client_auth` when the client
    /// presented one; shared by every request of the connection.
    pub client_cert: Option<Arc<crate::ClientCert>>,
    /// The host the client asked for, lower-case and without port.
    pub host: Option<String>,
    /// Name of the matched route.
    pub route: Arc<str>,
    /// Name of the route's upstream.
    pub upstream: Arc<str>,
    /// Path template parameters of the matched route, in template order.
    pub params: Vec<(Arc<str>, String)>,
    /// Values handed from one plugin to the next, e.g. `consumer` or `jwt.sub`.
    pub vars: Vars,
    /// Private per-request state of plugins, keyed by type.
    pub extensions: http::Extensions,
    /// The request's span when the request is traced and sampled; plugins hand it to
    /// [`crate::IoSpan::start`] through the context.
    pub trace: Option<crate::TraceParent>,
    /// What plugins counted for the metrics, read by the core when the request is over.
    counts: Vec<Count>,
}

impl RequestContext {
    /// A context for a routed request; the core fills it before the request phase.
    pub fn new(request_id: String, scheme: Scheme, route: Arc<str>, upstream: Arc<str>) -> Self {
        Self {
            request_id,
            client_ip: None,
            peer_ip: None,
            scheme,
            client_cert: None,
            host: None,
            route,
            upstream,
            params: Vec::new(),
            vars: Vars::default(),
            extensions: http::Extensions::new(),
            trace: None,
            counts: Vec::new(),
        }
    }

    /// Counts `what` for this request's route (e.g. [`Count::RateLimited`] when refusing); the
    /// core records it in the metrics once the request is over, whatever the answer became.
    pub fn count(&mut self, what: Count) {
        self.counts.push(what);
    }

    /// What the plugins of this request counted, in order.
    pub fn counts(&self) -> &[Count] {
        &self.counts
    }

    /// The value of a path template parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Values one plugin hands to later ones: a later write of a name wins over earlier ones.
///
/// Besides single values, a plugin can hand over a whole [`VarSet`] it computed once and keeps
/// (jwt-auth's claims of a cached token): sharing it costs one reference count, not a copy of
/// every value per request.
#[derive(Debug, Default, Clone)]
pub struct Vars {
    // Few entries per request: a list searched from the end beats hashing, and keeps the order
    // that decides which write wins.
    slots: Vec<Slot>,
}

#[derive(Debug, Clone)]
enum Slot {
    One(String, String),
    Set(VarSet),
}

/// An immutable set of named values, cheap to clone and to hand to many requests.
#[derive(Debug, Clone, Default)]
pub struct VarSet(Arc<[(Box<str>, Box<str>)]>);

impl VarSet {
    /// A set of `(name, value)` pairs; for a name given twice the later one wins.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(n, v)| (n.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        )
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }
}

impl Vars {
    /// Sets `name`, replacing what earlier plugins set.
    pub fn insert(&mut self, name: String, value: String) {
        self.slots
            .retain(|slot| !matches!(slot, Slot::One(n, _) if *n == name));
        self.slots.push(Slot::One(name, value));
    }

    /// Sets every name of `set`, replacing what earlier plugins set.
    pub fn extend_shared(&mut self, set: VarSet) {
        if !set.0.is_empty() {
            self.slots.push(Slot::Set(set));
        }
    }

    /// The current value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.slots.iter().rev().find_map(|slot| match slot {
            Slot::One(n, v) => (n == name).then_some(v.as_str()),
            Slot::Set(set) => set.get(name),
        })
    }

    /// Whether `name` is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// `vars["consumer"]`, for tests and code that knows the name is set.
impl std::ops::Index<&str> for Vars {
    type Output = str;

    /// Panics when `name` is not set, like a map's index.
    fn index(&self, name: &str) -> &str {
        match self.get(name) {
            Some(v) => v,
            None => panic!("no var `{name}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_write_of_a_name_wins() {
        let mut vars = Vars::default();
        assert!(vars.is_empty());
        vars.insert("consumer".into(), "key-user".into());
        vars.extend_shared(VarSet::new(vec![
            ("consumer".into(), "jwt-user".into()),
            ("jwt.sub".into(), "jwt-user".into()),
        ]));
        assert_eq!(vars.get("consumer"), Some("jwt-user"));
        assert_eq!(&vars["jwt.sub"], "jwt-user");
        vars.insert("consumer".into(), "later".into());
        assert_eq!(vars.get("consumer"), Some("later"));
        assert_eq!(vars.get("jwt.sub"), Some("jwt-user"));
        assert!(!vars.contains_key("jwt.iss"));
        assert_eq!(vars.get("nope"), None);
    }

    #[test]
    fn counts_are_kept_in_order() {
        let mut ctx = RequestContext::new("id".into(), Scheme::Http, "r".into(), "u".into());
        assert!(ctx.counts().is_empty());
        ctx.count(Count::AuthFailure {
            reason: "invalid_token",
        });
        ctx.count(Count::RateLimited);
        assert_eq!(
            ctx.counts(),
            [
                Count::AuthFailure {
                    reason: "invalid_token"
                },
                Count::RateLimited
            ]
        );
    }

    #[test]
    fn an_empty_set_adds_nothing() {
        let mut vars = Vars::default();
        vars.extend_shared(VarSet::default());
        assert!(vars.is_empty());
    }
}
