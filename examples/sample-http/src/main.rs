//! A small JSON service for the quick start: it answers every request with what it saw, so a
//! curl through the gateway shows the rewritten path, the forwarded headers and the request id.
//!
//! Usage: `sample-http [ADDR] [NAME]` (default `127.0.0.1:3001 users`).
//! Endpoints: `GET /health`, `POST /echo` (returns the body), anything else: a description of the
//! request as JSON.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3001".into());
    let name: &'static str = Box::leak(
        args.next()
            .unwrap_or_else(|| "users".into())
            .into_boxed_str(),
    );
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sample-http: bad address {addr:?}: {e}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sample-http: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("sample-http `{name}` listening on {addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(name, req));
            // Serves HTTP/1.1 and h2c (prior knowledge) on the same port.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(name: &str, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (status, payload) = match (parts.method.as_str(), parts.uri.path()) {
        (_, "/health") => (StatusCode::OK, json!({ "status": "ok", "service": name })),
        ("POST", "/echo") => {
            return Ok(Response::builder()
                .header("content-type", "application/octet-stream")
                .body(Full::new(body))
                .unwrap_or_default())
        }
        _ => {
            let headers: serde_json::Map<String, serde_json::Value> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
                .collect();
            (
                StatusCode::OK,
                json!({
                    "service": name,
                    "method": parts.method.as_str(),
                    "path": parts.uri.path(),
                    "query": parts.uri.query(),
                    "version": format!("{:?}", parts.version),
                    "headers": headers,
                    "body_bytes": body.len(),
                }),
            )
        }
    };
    let bytes = serde_json::to_vec_pretty(&payload).unwrap_or_default();
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_default())
}
