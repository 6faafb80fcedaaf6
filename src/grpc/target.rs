//! [`Target`]: where one call goes — the upstream address the proxy picked, the `:authority`
//! to send, and TLS (h2 over TLS with ALPN) or not (h2c with prior knowledge).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;

/// The upstream of one call.
#[derive(Debug, Clone)]
pub struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) authority: Option<String>,
    pub(crate) tls: Option<Tls>,
}

/// TLS settings of an h2 upstream.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Target {
    /// Plaintext HTTP/2 with prior knowledge.
    pub fn h2c(addr: SocketAddr) -> Self {
        Self {
            addr,
            authority: None,
            tls: None,
        }
    }

    /// HTTP/2 over TLS. `config` carries the trust roots and client certificate of the
    /// upstream's TLS settings; ALPN `h2` is set on a copy if it does not offer it already.
    /// `server_name` is the SNI and the name the certificate must match.
    pub fn h2(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<Self, String> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| format!("`{server_name}` is not a valid TLS server name"))?;
        let config = if config.alpn_protocols.iter().any(|p| p == b"h2") {
            config
        } else {
            let mut c = (*config).clone();
            c.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(c)
        };
        Ok(Self {
            addr,
            authority: None,
            tls: Some(Tls {
                config,
                server_name: name,
            }),
        })
    }

    /// Sends `authority` as `:authority` instead of the address.
    pub fn with_authority(mut self, authority: &str) -> Self {
        if authority.parse::<http::uri::Authority>().is_ok() {
            self.authority = Some(authority.to_string());
        }
        self
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `:authority` sent upstream.
    pub fn authority(&self) -> String {
        self.authority
            .clone()
            .unwrap_or_else(|| self.addr.to_string())
    }

    /// `https` over TLS, else `http`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The URI of a gRPC path on this target.
    pub(crate) fn uri(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme(), self.authority(), path)
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self::h2c(addr)
    }
}
