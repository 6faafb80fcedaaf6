//! Loading and checking TLS material at config time, so that a bad certificate or key is a config
//! error with a position rather than a failure when the listener starts.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Which of the two files is wrong.
pub enum KeyError {
    /// The certificate file.
    Cert(String),
    /// The key file (or the key does not match the certificate).
    Key(String),
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
        KeyError::Key(format!(
            "no usable PEM private key in `{}`: {e}",
            key.display()
        ))
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| {
        KeyError::Key(format!(
            "unsupported private key in `{}`: {e}",
            key.display()
        ))
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        KeyError::Key(format!(
            "private key `{}` does not match certificate `{}`: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok((Arc::new(certified), key_der))
}
