//! tollgate: an API gateway and edge reverse proxy on pingora.
//!
//! A request flows listener → router → plugin chain → upstream → response phase → logging; see
//! docs/architecture.md. This crate holds the gateway core; plugins live in their own crates
//! under plugins/ and meet the core through `tollgate-plugin-api`.

#![deny(clippy::unwrap_used)]

pub mod admin;
pub mod broker;
pub mod certificates;
pub mod config;
pub mod error;
pub mod grpc;
pub mod handler;
pub mod logging;
pub mod plugins;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod upgrade_lock;
pub mod upstream;
