//! A test certificate authority: rcgen certificates for TLS listeners, mutual-TLS upstreams and
//! the gateway's client certificates, and a TLS front that requires a client certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A test CA and the certificates it issues.
pub struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
}

/// A certificate and its key, as PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A new CA with a fresh key.
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tollgate test CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca");
        Pki {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 named `cn`, with `key` (or a new one).
    pub fn issue(&self, cn: &str, serial: u8, key: Option<&rcgen::KeyPair>) -> Leaf {
        self.issue_until(cn, serial, key, None)
    }

    /// Like `issue`, valid in 2000 only: long expired.
    pub fn issue_expired(&self, cn: &str, serial: u8) -> Leaf {
        self.issue_until(cn, serial, None, Some((2000, 2001)))
    }

    fn issue_until(
        &self,
        cn: &str,
        serial: u8,
        key: Option<&rcgen::KeyPair>,
        years: Option<(i32, i32)>,
    ) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[serial]));
        if let Some((from, to)) = years {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let fresh;
        let key = match key {
            Some(k) => k,
            None => {
                fresh = rcgen::KeyPair::generate().expect("key");
                &fresh
            }
        };
        let cert = params.signed_by(key, &self.ca).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("root");
        roots
    }

    /// A client trusting this CA, speaking HTTP/1.1.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        super::install_crypto();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A TLS terminator in front of `backend` (ALPN h2 and http/1.1) that requires a client
/// certificate issued by `pki`'s CA, serving `server`: a mutual-TLS upstream.
pub async fn mtls_front(backend: SocketAddr, pki: &Pki, server: &Leaf) -> SocketAddr {
    super::install_crypto();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(pki.roots()))
        .build()
        .expect("verifier");
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("key");
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.der.clone()], key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    super::terminate_tls(config, backend).await
}
