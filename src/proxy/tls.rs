//! The TLS handshake of a listener's connections, done by the connection loop (src/proxy/
//! connection.rs) rather than by pingora's listener.
//!
//! pingora's listener gives a handshake a fixed 60 s and logs every failed one at error level,
//! so a port scanner, a client with a wrong or revoked certificate or plaintext sent to the TLS
//! port each wrote an error line. TLS listeners are therefore bound as TCP listeners and the
//! loop runs pingora's acceptor itself: under the listener's `handshake_timeout`, each failure
//! logged at debug and counted in `tollgate_tls_handshake_failures_total{listener,reason}`.
//!
//! The client certificate (on listeners with `client_auth`) is parsed here once per connection,
//! when the handshake completes, into a [`ClientCert`] kept in the connection's TLS digest; every
//! request of the connection reads it from there (src/proxy/prepare.rs).

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::listeners::tls::{Acceptor, TlsSettings};
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::Stream;
use sha2::{Digest, Sha256};
use tollgate_plugin_api::ClientCert;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

/// The TLS listeners as bound at start: a connection's local address says whose acceptor
/// handshakes it.
#[derive(Default)]
pub struct TlsEndpoints(Vec<(SocketAddr, Arc<TlsEndpoint>)>);

/// One TLS listener: its acceptor (certificate, ALPN, client verifier) and handshake deadline.
pub struct TlsEndpoint {
    listener: Arc<str>,
    acceptor: Acceptor,
    timeout: Duration,
}

impl TlsEndpoints {
    /// Adds the listener `name` bound to `address`, with pingora's settings for it.
    pub fn add(
        &mut self,
        name: &str,
        address: SocketAddr,
        settings: TlsSettings,
        timeout: Duration,
    ) {
        let endpoint = TlsEndpoint {
            listener: Arc::from(name),
            // pingora's build panics only without a certificate resolver; server.rs always
            // sets one (the certificate checked at load).
            acceptor: settings.build(),
            timeout,
        };
        self.0.push((address, Arc::new(endpoint)));
    }

    /// Whether no listener serves TLS.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The TLS listener that accepted a connection on `local`: the one bound to that address,
    /// else to the unspecified address on its port.
    pub fn find(&self, local: Option<SocketAddr>) -> Option<&TlsEndpoint> {
        let local = local?;
        self.0
            .iter()
            .find(|(a, _)| *a == local)
            .or_else(|| {
                self.0
                    .iter()
                    .find(|(a, _)| a.port() == local.port() && a.ip().is_unspecified())
            })
            .map(|(_, e)| &**e)
    }
}

/// The settings to build a TLS listener's acceptor from: with the callback that keeps the
/// client's certificate.
pub fn settings() -> pingora_error::Result<TlsSettings> {
    TlsSettings::with_callbacks(Box::new(KeepClientCert))
}

impl TlsEndpoint {
    /// Handshakes a plain connection accepted by this listener: the TLS stream, or `None` when
    /// the handshake failed or ran out of time (logged at debug and counted; the connection is
    /// closed by being dropped).
    pub async fn handshake(&self, stream: Stream) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        // TLS listeners are bound as TCP listeners, which make L4 streams.
        let l4 = stream.into_any().downcast::<L4Stream>().ok()?;
        let reason =
            match tokio::time::timeout(self.timeout, self.acceptor.tls_handshake(*l4)).await {
                Ok(Ok(tls)) => return Some(Box::new(tls)),
                Ok(Err(e)) => {
                    let reason = failure_reason(&e);
                    tracing::debug!(listener = %self.listener, peer = ?peer, reason, error = %e,
                    "TLS handshake failed");
                    reason
                }
                Err(_) => {
                    tracing::debug!(listener = %self.listener, peer = ?peer,
                    timeout = ?self.timeout, "TLS handshake timed out");
                    "timeout"
                }
            };
        if let Some(m) = crate::telemetry::metrics::metrics() {
            m.tls_handshake_failures
                .with_label_values(&[&*self.listener, reason])
                .inc();
        }
        None
    }
}

/// Why a handshake failed, as the metric's `reason` label: a small fixed set. pingora keeps
/// only the text of rustls' error (its `explain_err` drops the cause), so the text is what is
/// read; the tests below build it from rustls' own errors, so a change of wording shows.
fn failure_reason(e: &pingora_error::Error) -> &'static str {
    reason_of(&e.to_string())
}

fn reason_of(text: &str) -> &'static str {
    const REASONS: &[(&str, &str)] = &[
        ("peer sent no certificates", "no_certificate"),
        ("invalid peer certificate: certificate expired", "expired"),
        ("invalid peer certificate: Expired", "expired"),
        ("invalid peer certificate: Revoked", "revoked"),
        ("invalid peer certificate: UnknownIssuer", "unknown_ca"),
        ("invalid peer certificate", "bad_certificate"),
        ("corrupt message of type InvalidContentType", "not_tls"),
        ("received corrupt message", "malformed"),
        ("received unexpected", "malformed"),
        ("peer is incompatible", "incompatible"),
        ("received fatal alert", "alert_received"),
        ("unexpected end of file", "closed"),
        // tokio-rustls' words for a peer that closed before its ClientHello was complete (a
        // TCP health check, a port scan).
        ("tls handshake eof", "closed"),
        ("Connection reset", "closed"),
        ("Broken pipe", "closed"),
    ];
    REASONS
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map_or("other", |(_, reason)| reason)
}

/// pingora's post-handshake hook: the peer's verified leaf, parsed once for the connection.
struct KeepClientCert;

#[async_trait]
impl TlsAccept for KeepClientCert {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let cert = parse_client_cert(tls.peer_certificate_der()?)?;
        Some(Arc::new(Arc::new(cert)))
    }
}

/// The client certificate of a connection's requests, if the client presented one.
pub fn client_cert(digest: &pingora_core::protocols::tls::SslDigest) -> Option<Arc<ClientCert>> {
    digest.extension.get::<Arc<ClientCert>>().cloned()
}

/// The identity in a certificate rustls has verified; `None` for DER that x509-parser cannot
/// read (the request then sees no certificate, as if none had been presented).
pub fn parse_client_cert(der: &[u8]) -> Option<ClientCert> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut out = ClientCert {
        subject: rfc4514(cert.subject()),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        sha256: hex::encode(Sha256::digest(der)),
        ..ClientCert::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => out.san_dns.push((*d).to_string()),
                GeneralName::URI(u) => out.san_uris.push((*u).to_string()),
                _ => {}
            }
        }
    }
    Some(out)
}

/// A distinguished name in RFC 4514 form: the last RDN first, `,` between RDNs, `+` inside one,
/// attribute short names where known (else the dotted OID), special characters escaped, and
/// values that are not strings as `#` and hex.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for (i, rdn) in name
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(v) => escape_value(&mut out, v),
                Err(_) => {
                    out.push('#');
                    out.push_str(&hex::encode(attr.attr_value().data));
                }
            }
        }
    }
    out
}

fn escape_value(out: &mut String, v: &str) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_is_read_from_the_leaf() {
        let mut p = rcgen::CertificateParams::new(vec!["web.example".to_string()]).unwrap();
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/a/sa/web".try_into().unwrap(),
        ));
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc.");
        dn.push(rcgen::DnType::CommonName, "web");
        p.distinguished_name = dn;
        let der = cert(p);
        let c = parse_client_cert(&der).unwrap();
        assert_eq!(c.subject, "CN=web,O=Example\\, Inc.");
        assert_eq!(c.common_name.as_deref(), Some("web"));
        assert_eq!(c.san_dns, ["web.example"]);
        assert_eq!(c.san_uris, ["spiffe://cluster.local/ns/a/sa/web"]);
        assert_eq!(c.sha256, hex::encode(Sha256::digest(&der)));
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert!(parse_client_cert(b"not a certificate").is_none());
        assert!(parse_client_cert(&[]).is_none());
    }

    #[test]
    fn failures_are_told_apart_by_rustls_wording() {
        use rustls::{CertificateError as C, Error as E, InvalidMessage};
        let reason = |e: E| reason_of(&format!("tls connect error: {e}"));
        assert_eq!(reason(E::NoCertificatesPresented), "no_certificate");
        assert_eq!(reason(E::InvalidCertificate(C::Expired)), "expired");
        let now = rustls::pki_types::UnixTime::now();
        let expired = C::ExpiredContext {
            time: now,
            not_after: rustls::pki_types::UnixTime::since_unix_epoch(
                std::time::Duration::from_secs(1),
            ),
        };
        assert_eq!(reason(E::InvalidCertificate(expired)), "expired");
        assert_eq!(reason(E::InvalidCertificate(C::Revoked)), "revoked");
        assert_eq!(
            reason(E::InvalidCertificate(C::UnknownIssuer)),
            "unknown_ca"
        );
        assert_eq!(
            reason(E::InvalidCertificate(C::BadSignature)),
            "bad_certificate"
        );
        assert_eq!(
            reason(E::InvalidMessage(InvalidMessage::InvalidContentType)),
            "not_tls"
        );
        assert_eq!(
            reason(E::InvalidMessage(InvalidMessage::MissingData("x"))),
            "malformed"
        );
        assert_eq!(
            reason_of("tls connect error: unexpected end of file"),
            "closed"
        );
        assert_eq!(
            reason_of("TLS handshake error: tls handshake eof"),
            "closed"
        );
        assert_eq!(reason_of("something new"), "other");
    }

    #[test]
    fn rfc4514_escapes_what_it_must() {
        let mut s = String::new();
        escape_value(&mut s, "#a b+c ");
        assert_eq!(s, "\\#a b\\+c\\ ");
    }
}
