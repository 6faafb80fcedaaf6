//! The admin listener: operational endpoints, on loopback by default. `/healthz` answers as soon
//! as the process serves; `/upstreams` shows every target's health, ejection and load.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::snapshot::Snapshot;

/// The admin HTTP app.
pub struct AdminApp {
    snapshot: Arc<ArcSwap<Snapshot>>,
}

impl AdminApp {
    /// An admin app reporting on the current snapshot.
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        Self { snapshot }
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => {
                let snap = self.snapshot.load();
                json(
                    StatusCode::OK,
                    serde_json::json!({"status": "ok", "generation": snap.generation}),
                )
            }
            "/upstreams" => {
                let snap = self.snapshot.load();
                let upstreams: Vec<serde_json::Value> =
                    snap.clusters.iter().map(|c| c.view()).collect();
                json(
                    StatusCode::OK,
                    serde_json::json!({"generation": snap.generation, "upstreams": upstreams}),
                )
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": {"status": 404, "code": "not_found",
                    "message": format!("no admin endpoint at {path}")}}),
            ),
        }
    }
}
