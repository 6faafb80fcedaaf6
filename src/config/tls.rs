//! Loading and checking TLS material at config time, so that a bad certificate or key is a config
//! error with a position rather than a failure when the listener starts.

use std::path::Path;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Which of the two files is wrong.
pub enum KeyError {
    /// The certificate file.
    Cert(String),
    /// The key file (or the key does not match the certificate).
    Key(String),
}

/// The one crypto provider of the process: listeners, upstream connections, the gateway's own
/// gRPC and health-check clients, client-certificate checks, and (through `aws-lc-rs` itself)
/// jwt-auth's signatures. aws-lc-rs rather than ring: a server-side TLS 1.3 handshake costs
/// 45 % less CPU with an RSA-2048 certificate and 10 % less with ECDSA P-256, resumed ones 15 %
/// less (`cargo bench --bench tls`, BENCHMARKS.md). ring stays linked only because pingora's
/// rustls glue, the broker clients and rcgen name it.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Reads a PEM file of certificates into DER, rejecting files with none or with broken ones.
pub fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from `{}`: {e}", path.display()))?
        .collect();
    let certs =
        certs.map_err(|e| format!("invalid PEM certificate in `{}`: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate found in `{}`", path.display()));
    }
    for c in &certs {
        if x509_parser::parse_x509_certificate(c.as_ref()).is_err() {
            return Err(format!(
                "a certificate in `{}` is not valid X.509",
                path.display()
            ));
        }
    }
    Ok(certs.into_iter().map(|c| c.as_ref().to_vec()).collect())
}

/// Loads a certificate chain and its private key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, KeyError> {
    load_pair(cert, key).map(|(certified, _)| certified)
}

/// A client certificate for upstream mutual TLS: as [`load_certified_key`], plus the form
/// pingora's connector takes.
pub fn load_client_cert(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, Arc<pingora_core::utils::tls::CertKey>), KeyError> {
    let (certified, key_der) = load_pair(cert, key)?;
    // pingora turns these bytes back into a key with an `unwrap`, per connection: what it
    // cannot read must be refused here.
    let der = key_der.secret_der().to_vec();
    if PrivateKeyDer::try_from(der.clone()).is_err() {
        return Err(KeyError::Key(format!(
            "private key `{}` is not in a DER form the upstream connector reads (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )));
    }
    let chain = certified.cert.iter().map(|c| c.as_ref().to_vec()).collect();
    Ok((
        certified,
        Arc::new(pingora_core::utils::tls::CertKey::new(chain, der)),
    ))
}

fn load_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, PrivateKeyDer<'static>), KeyError> {
    let chain: Vec<CertificateDer<'static>> = read_pem_certs(cert)
        .map_err(KeyError::Cert)?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        let encrypted =
            std::fs::read(key).is_ok_and(|b| b.windows(21).any(|w| w == b"ENCRYPTED PRIVATE KEY"));
        KeyError::Key(if encrypted {
            format!(
                "private key `{}` is encrypted; the gateway reads unencrypted keys only (decrypt \
                 it with `openssl pkey -in KEY -out PLAIN.key` and protect the file instead)",
                key.display()
            )
        } else {
            format!("no usable PEM private key in `{}`: {e}", key.display())
        })
    })?;
    let signing_key = crypto_provider()
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| {
            KeyError::Key(format!(
                "unsupported private key in `{}`: {e}",
                key.display()
            ))
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        let why = match e {
            // The message says it all; rustls' own words add only its enum's name.
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => String::new(),
            other => format!(": {other}"),
        };
        KeyError::Key(format!(
            "private key `{}` does not match certificate `{}`{why}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok((Arc::new(certified), key_der))
}

/// Reads certificate revocation lists from a PEM file (any number of `X509 CRL` blocks) or a
/// DER file (one), rejecting files with none.
pub fn read_crls(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read CRL file `{}`: {e}", path.display()))?;
    let crls: Vec<Vec<u8>> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let crls: Result<Vec<_>, _> = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .map(|c| c.map(|c| c.as_ref().to_vec()))
            .collect();
        crls.map_err(|e| format!("invalid PEM CRL in `{}`: {e}", path.display()))?
    } else if bytes.is_empty() {
        Vec::new()
    } else {
        vec![bytes]
    };
    if crls.is_empty() {
        return Err(format!("no CRL found in `{}`", path.display()));
    }
    for crl in &crls {
        if !matches!(x509_parser::parse_x509_crl(crl), Ok((rest, _)) if rest.is_empty()) {
            return Err(format!(
                "`{}` is not a certificate revocation list (PEM `X509 CRL` blocks, or one DER \
                 CRL)",
                path.display()
            ));
        }
    }
    Ok(crls)
}

/// rustls' verifier of client certificates: chains to one of `roots`, not revoked by `crls`;
/// unless `required`, a client may also present none, with the process's one crypto provider.
pub fn client_verifier(
    roots: &[Vec<u8>],
    crls: &[Vec<u8>],
    required: bool,
) -> Result<Arc<dyn ClientCertVerifier>, VerifierError> {
    let mut store = RootCertStore::empty();
    for der in roots {
        store
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| VerifierError::Ca(format!("a certificate is not a usable CA: {e}")))?;
    }
    let provider = crypto_provider();
    // A CA without a listed CRL is not checked for revocation (webpki would refuse every
    // certificate it issued), so CRLs can be given for some CAs of a bundle and not others.
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .allow_unknown_revocation_status()
        .with_crls(
            crls.iter()
                .map(|c| CertificateRevocationListDer::from(c.clone())),
        );
    if !required {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| match e {
        VerifierBuilderError::InvalidCrl(e) => VerifierError::Crl(format!("invalid CRL: {e:?}")),
        other => VerifierError::Ca(other.to_string()),
    })
}

/// Which input of [`client_verifier`] is wrong.
#[derive(Debug)]
pub enum VerifierError {
    /// The CA bundle.
    Ca(String),
    /// A revocation list.
    Crl(String),
}
