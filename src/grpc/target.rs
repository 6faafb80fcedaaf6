//! [`Target`]: where one call goes — the upstream address the proxy picked, the `:authority`
//! to send, and TLS (h2 over TLS with ALPN) or not (h2c with prior knowledge).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Why the gateway cannot make its own gRPC calls to an upstream target: its TLS client cannot
/// be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TargetError {
    /// The SNI is not a DNS name or IP address rustls accepts.
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    /// rustls refused the protocol versions of the crypto provider.
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
    /// A certificate of `ca_file` is not a usable trust anchor.
    #[error("`ca_file`: {0}")]
    CaFile(rustls::Error),
    /// Verification is on, no `ca_file` is given and the system has no CA certificates.
    #[error("no system CA certificates found: set `ca_file` in the upstream's `tls`")]
    NoSystemRoots,
}

/// The upstream of one call.
#[derive(Debug, Clone)]
pub struct Target {
    pub(crate) addr: SocketAddr,
    /// `:authority` of every call, parsed once: formatting the address per call was a visible
    /// share of a transcoded request's cost.
    pub(crate) authority: http::uri::Authority,
    pub(crate) tls: Option<Tls>,
}

/// The authority of a bare address (`10.0.0.1:50051`, `[::1]:50051`).
fn addr_authority(addr: SocketAddr) -> http::uri::Authority {
    // A formatted socket address is always a valid authority.
    http::uri::Authority::try_from(addr.to_string())
        .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"))
}

/// TLS settings of an h2 upstream.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
    /// What distinguishes this TLS client from another's towards the same address and name
    /// (trust, verification, client certificate), so that pooled connections are shared only
    /// between identical ones: an upstream without a client certificate must not ride on a
    /// connection another upstream authenticated.
    pub(crate) identity: u64,
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
            authority: addr_authority(addr),
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
    ) -> Result<Self, TargetError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TargetError::ServerName(server_name.to_string()))?;
        let config = if config.alpn_protocols.iter().any(|p| p == b"h2") {
            config
        } else {
            let mut c = (*config).clone();
            c.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(c)
        };
        Ok(Self {
            addr,
            authority: addr_authority(addr),
            tls: Some(Tls {
                config,
                server_name: name,
                identity: 0,
            }),
        })
    }

    /// Sets what tells this target's TLS client apart from others with the same address and
    /// server name (a digest of its trust roots, verification and client certificate);
    /// connections are pooled by it.
    pub fn with_tls_identity(mut self, identity: u64) -> Self {
        if let Some(tls) = &mut self.tls {
            tls.identity = identity;
        }
        self
    }

    /// Sends `authority` as `:authority` instead of the address.
    pub fn with_authority(mut self, authority: &str) -> Self {
        if let Ok(a) = authority.parse::<http::uri::Authority>() {
            self.authority = a;
        }
        self
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `:authority` sent upstream.
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// The URI of a gRPC path on this target.
    pub(crate) fn uri(&self, path: &str) -> Result<http::Uri, http::Error> {
        let scheme = if self.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        http::Uri::builder()
            .scheme(scheme)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self::h2c(addr)
    }
}

/// The rustls client config of an upstream's TLS settings for connections the gateway makes
/// itself (transcoding, reflection, health checks): the CAs given as DER (`ca_file`) or the
/// system roots, verification on or off, the client certificate if any, and `alpn`. Build it
/// once per upstream: loading the system roots reads the filesystem.
pub fn client_config(
    ca_certs: Option<&[Vec<u8>]>,
    verify: bool,
    client_cert: Option<&Arc<rustls::sign::CertifiedKey>>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TargetError> {
    let provider = crate::config::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TargetError::Setup)?;
    let builder = if !verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca_certs {
            Some(cas) => {
                for der in cas {
                    roots
                        .add(CertificateDer::from(der.clone()))
                        .map_err(TargetError::CaFile)?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(TargetError::NoSystemRoots);
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match client_cert {
        Some(c) => builder.with_client_cert_resolver(Arc::new(OneClientCert(c.clone()))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// `client_cert_file`: the one certificate offered whatever the server asks for (the server
/// decides whether it is acceptable, as with any client).
#[derive(Debug)]
struct OneClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OneClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `verify = false`: any certificate is taken, but the handshake signatures are still checked
/// so the session keys belong to whoever holds that certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
