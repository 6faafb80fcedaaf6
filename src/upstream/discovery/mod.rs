//! Service discovery for upstream targets: DNS (A/AAAA and SRV) through a hickory resolver
//! (`dns`), and Consul's health API with blocking queries (`consul`).
//!
//! Every call returns the complete current set of endpoints, sorted and deduplicated, so callers
//! can compare sets cheaply. Deciding when to ask again, what to do on an error (typically: keep
//! the last good set) and swapping the set into a cluster belong to the caller.

mod consul;
mod dns;

use std::net::SocketAddr;

pub use consul::{ConsulClient, ConsulError, ConsulProblem};
pub use dns::{DnsError, DnsResolver};

/// The discovery settings this module runs on are config data, defined with the model.
pub use crate::config::{ConsulQuery, Nameservers};

/// One discovered endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share of traffic; never 0.
    pub weight: u32,
    /// The DNS name the address came from (for SNI / Host), when there was one.
    pub hostname: Option<String>,
}
