//! A tonic greeter for the gRPC transcoding quick start. `proto/greeter.proto` annotates it
//! with google.api.http rules, so through tollgate
//! `curl -d '{"name":"World"}' localhost:8080/v1/hello` answers `{"message":"Hello, World"}`.
//! It also serves gRPC health and server reflection (v1 and v1alpha), so a route can take its
//! schema from reflection.
//!
//! Usage: `sample-grpc [ADDR]` (default 127.0.0.1:50051).

#![deny(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Code generated from proto/greeter.proto.
pub mod pb {
    tonic::include_proto!("greeter.v1");
}

use pb::greeter_server::{Greeter, GreeterServer};
use pb::{HelloReply, HelloRequest, StreamHellosRequest};

/// The encoded descriptors of greeter.proto and its imports, for reflection.
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/greeter_descriptor.bin"));

#[derive(Debug, Default)]
struct Greetings;

fn greeting(name: &str) -> Result<HelloReply, Status> {
    if name.trim().is_empty() {
        return Err(Status::invalid_argument("name must not be empty"));
    }
    Ok(HelloReply {
        message: format!("Hello, {name}"),
    })
}

type HelloStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for Greetings {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        greeting(&request.into_inner().name).map(Response::new)
    }

    type StreamHellosStream = HelloStream;

    async fn stream_hellos(
        &self,
        request: Request<StreamHellosRequest>,
    ) -> Result<Response<Self::StreamHellosStream>, Status> {
        let req = request.into_inner();
        let first = greeting(&req.name)?;
        let count = match req.count {
            0 => 3,
            n @ 1..=100 => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "count must be between 1 and 100, not {n}"
                )))
            }
        };
        let interval = Duration::from_millis(match req.interval_ms {
            n if n <= 0 => 200,
            n => u64::from(n.unsigned_abs().min(10_000)),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for i in 1..=count {
                let reply = HelloReply {
                    message: format!("{} ({i}/{count})", first.message),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return; // the client went away
                }
                if i < count {
                    tokio::time::sleep(interval).await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_string())
        .parse()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GreeterServer<Greetings>>().await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    println!("sample-grpc listening on {addr} (h2c)");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(GreeterServer::new(Greetings))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
