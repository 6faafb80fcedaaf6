//! The admin listener: operational endpoints, on loopback by default, optionally behind a bearer
//! token (`[admin] token_env`; `/healthz` and `/readyz` stay open for probes).
//!
//! `/healthz` live · `/readyz` ready (listeners bound, a snapshot live, required brokers
//! connected; reload status) · `/brokers` message brokers and their connection state ·
//! `/metrics` Prometheus · `/upstreams` targets and their health · `/config` the loaded file,
//! secrets redacted by type (`config/view.rs`) · `/routes/explain?method=&host=&path=` which
//! route, plugins and upstream a request would get · `POST /reload` reload the config file.

mod auth;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderMap, Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::config::PluginEntry;
use crate::reload::Reloader;
use crate::router::normalize_path;
use crate::snapshot::Snapshot;

/// The admin HTTP app.
pub struct AdminApp {
    snapshot: Arc<ArcSwap<Snapshot>>,
    reloader: Arc<Reloader>,
}

impl AdminApp {
    /// An admin app reporting on the current snapshot.
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, reloader: Arc<Reloader>) -> Self {
        Self { snapshot, reloader }
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", body.to_string().into_bytes())
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn error(status: StatusCode, code: &str, message: String) -> Response<Vec<u8>> {
    json(
        status,
        serde_json::json!({"error": {"status": status.as_u16(), "code": code, "message": message}}),
    )
}

/// Decodes one query parameter (percent escapes and `+`).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let q = query?;
    q.split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

impl AdminApp {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let snap = self.snapshot.load();
        match snap.config.admin.as_ref().and_then(|a| a.token.as_ref()) {
            None => true,
            Some(token) => auth::bearer_matches(headers.get(http::header::AUTHORIZATION), token),
        }
    }

    fn explain(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let snap = self.snapshot.load();
        let method = query_param(query, "method").unwrap_or_else(|| "GET".into());
        let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_method",
                format!("invalid method `{method}`"),
            );
        };
        let host = query_param(query, "host");
        let Some(raw_path) = query_param(query, "path") else {
            return error(
                StatusCode::BAD_REQUEST,
                "missing_path",
                "give the request as ?method=GET&host=example.com&path=/a/b".into(),
            );
        };
        let path = match normalize_path(&raw_path) {
            Ok(p) => p.into_owned(),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_path",
                    format!("invalid path: {e}"),
                )
            }
        };
        let headers = HeaderMap::new();
        let found = snap
            .config
            .table
            .match_request(&method, host.as_deref(), &path, &headers);
        let Some(m) = found else {
            return json(
                StatusCode::OK,
                serde_json::json!({"matched": false, "normalized_path": path,
                    "plugins": plugin_views(snap.global_plugins())}),
            );
        };
        let Some((route, runtime)) = snap.route(m.id) else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "route table out of sync".into(),
            );
        };
        let params: Vec<(std::sync::Arc<str>, String)> = m
            .params
            .iter()
            .filter_map(|(i, v)| route.param_names.get(*i).map(|n| (n.clone(), v.clone())))
            .collect();
        let upstream_path =
            crate::proxy::upstream_path(&route.rewrite, &path, m.prefix_len, &params);
        json(
            StatusCode::OK,
            serde_json::json!({
                "matched": true,
                "route": &*route.name,
                "normalized_path": path,
                "upstream": &*route.upstream_name,
                "upstream_path": upstream_path,
                "params": params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                "plugins": plugin_views(&runtime.plugins),
                "note": "header matchers are not evaluated here (no headers are given)",
            }),
        )
    }

    fn config_view(&self) -> Response<Vec<u8>> {
        let snap = self.snapshot.load();
        json(
            StatusCode::OK,
            serde_json::json!({
                "generation": snap.generation,
                "file": self.reloader.path().display().to_string(),
                "config": &*snap.config.view,
            }),
        )
    }
}

/// A chain of plugins as `/routes/explain` shows it, the same shape whether a route matched
/// (its chain) or not (the global plugins).
fn plugin_views(plugins: &[PluginEntry]) -> Vec<serde_json::Value> {
    plugins
        .iter()
        .map(|p| serde_json::json!({"name": &*p.name, "priority": p.priority, "global": p.global}))
        .collect()
}

impl AdminApp {
    /// Ready: listeners bound, a snapshot live, and every broker that `required_for_readiness`
    /// connected.
    fn readyz(&self) -> Response<Vec<u8>> {
        let status = self.reloader.status();
        let snap = self.snapshot.load();
        let brokers_down: Vec<&str> = snap
            .brokers
            .iter()
            .filter(|b| b.config().required_for_readiness && !b.is_up())
            .map(|b| b.name())
            .collect();
        let ready = self.reloader.is_ready() && brokers_down.is_empty();
        json(
            if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            serde_json::json!({
                "ready": ready,
                "generation": status.generation,
                "last_reload_error": status.last_error,
                "pending_restart": status.pending_restart,
                "brokers_down": brokers_down,
            }),
        )
    }

    /// Every broker: its kind, connection state and since when.
    fn brokers(&self) -> Response<Vec<u8>> {
        let snap = self.snapshot.load();
        let brokers: Vec<serde_json::Value> = snap
            .brokers
            .iter()
            .map(|b| {
                let (state, since) = b.state();
                let since = humantime::format_rfc3339_seconds(since).to_string();
                let mut v = serde_json::json!({
                    "name": b.name(),
                    "kind": b.config().kind.as_str(),
                    "since": since,
                    "in_flight": b.in_flight(),
                    "required_for_readiness": b.config().required_for_readiness,
                });
                if let (Some(obj), Ok(serde_json::Value::Object(s))) =
                    (v.as_object_mut(), serde_json::to_value(&state))
                {
                    obj.extend(s);
                }
                v
            })
            .collect();
        json(
            StatusCode::OK,
            serde_json::json!({"generation": snap.generation, "brokers": brokers}),
        )
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let method = req.method.clone();
        if !matches!(path.as_str(), "/healthz" | "/readyz") && !self.authorized(&req.headers) {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin API needs `Authorization: Bearer <token>`".into(),
            );
            if let Ok(v) = http::HeaderValue::from_str("Bearer realm=\"tollgate-admin\"") {
                resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
            }
            return resp;
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => {
                let snap = self.snapshot.load();
                json(
                    StatusCode::OK,
                    serde_json::json!({"status": "ok", "generation": snap.generation}),
                )
            }
            ("GET", "/readyz") => self.readyz(),
            ("GET", "/brokers") => self.brokers(),
            ("GET", "/certificates") => {
                let snap = self.snapshot.load();
                let certificates =
                    crate::certificates::in_use(&snap.config, std::time::SystemTime::now());
                json(
                    StatusCode::OK,
                    serde_json::json!({"generation": snap.generation, "certificates": certificates}),
                )
            }
            ("GET", "/metrics") => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                {
                    let snap = self.snapshot.load();
                    crate::telemetry::metrics::render(
                        snap.generation,
                        snap.target_availability(),
                        snap.brokers.iter().map(|b| (b.name(), b.is_up())),
                        crate::certificates::in_use(&snap.config, std::time::SystemTime::now())
                            .iter()
                            .map(|c| crate::telemetry::metrics::CertificateExpiry {
                                kind: c.kind.as_str(),
                                name: &c.name,
                                serial: &c.serial,
                                expires_in_seconds: c.expires_in_seconds,
                            }),
                    )
                    .into_bytes()
                },
            ),
            ("GET", "/upstreams") => {
                let snap = self.snapshot.load();
                let upstreams: Vec<serde_json::Value> =
                    snap.clusters.iter().map(|c| c.view()).collect();
                json(
                    StatusCode::OK,
                    serde_json::json!({"generation": snap.generation, "upstreams": upstreams}),
                )
            }
            ("GET", "/config") => self.config_view(),
            ("GET", "/routes/explain") => self.explain(query.as_deref()),
            ("POST", "/reload") => match self.reloader.reload("admin API").await {
                Ok(generation) => json(
                    StatusCode::OK,
                    serde_json::json!({"reloaded": true, "generation": generation,
                        "pending_restart": self.reloader.status().pending_restart}),
                ),
                Err(errors) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"error": {"status": 422, "code": "invalid_config",
                        "message": "the config was not reloaded; the previous one keeps serving",
                        "details": errors.to_string().lines().collect::<Vec<_>>()}}),
                ),
            },
            (
                _,
                "/healthz" | "/readyz" | "/metrics" | "/upstreams" | "/brokers" | "/certificates"
                | "/config" | "/routes/explain" | "/reload",
            ) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {path}"),
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no admin endpoint at {path}"),
            ),
        }
    }
}
