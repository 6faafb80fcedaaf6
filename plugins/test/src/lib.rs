//! Test helpers for tollgate plugin crates, one copy for all of them: build a plugin from TOML
//! the way gateway.toml does, make requests and contexts, and run a plugin's phases in the
//! gateway's order without a gateway.
//!
//! A plugin crate takes it as a dev-dependency (`tollgate-plugin-test.workspace = true`):
//!
//! ```ignore
//! use tollgate_plugin_test::{build, ctx, request};
//!
//! let p = build::<BodyLimitPlugin>("{ max_bytes = 10 }").unwrap();
//! let mut req = request("POST", "/upload", &[("content-length", "11")]);
//! assert!(p.on_request(&mut req, &mut ctx()).await.is_err());
//! ```
//!
//! Helpers panic on a mistake of the test itself (a TOML or header that does not parse), like
//! an `unwrap` in the test would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod config;
mod request;
mod run;

pub use config::{build, build_err, build_in, render};
pub use request::{ctx, ctx_from, header_list, header_values, request, response_header};
pub use run::{answer, pass, respond, run_body, run_chain, Outcome};
