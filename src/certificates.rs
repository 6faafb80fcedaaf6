//! The certificates a config puts in use — listener certificates and upstream client
//! certificates — described for the admin `/certificates` endpoint and the
//! `tollgate_certificate_expiry_seconds` gauge. Both read the live snapshot when asked, so what
//! they show is what new handshakes use, and the time left is counted from the moment of the
//! request or scrape.

use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;

use crate::config::GatewayConfig;

/// Where a certificate is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Use {
    /// Served by a listener.
    Listener,
    /// Presented to an upstream's targets (mutual TLS).
    Upstream,
}

impl Use {
    /// The `kind` label and JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            Use::Listener => "listener",
            Use::Upstream => "upstream",
        }
    }
}

/// One certificate in use: the leaf of a listener's or an upstream's chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertificateInfo {
    /// Listener or upstream.
    pub kind: Use,
    /// The listener's or upstream's name.
    pub name: String,
    /// The file it was read from.
    pub cert_file: String,
    /// Subject distinguished name, as RFC 4514 text.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Subject alternative names: DNS names, IP addresses, URIs, e-mail addresses.
    pub sans: Vec<String>,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Seconds from now until `not_after`; negative once expired.
    pub expires_in_seconds: i64,
}

/// Every certificate `config` uses, listeners first, each in file order.
pub fn in_use(config: &GatewayConfig, now: SystemTime) -> Vec<CertificateInfo> {
    let listeners = config.listeners.iter().filter_map(|l| {
        let tls = l.tls.as_ref()?;
        Some((
            Use::Listener,
            l.name.as_str(),
            &tls.cert_file,
            &tls.certified_key,
        ))
    });
    let upstreams = config.upstreams.iter().filter_map(|u| {
        let c = u.tls.as_ref()?.client_cert.as_ref()?;
        Some((Use::Upstream, &*u.name, &c.cert_file, &c.certified_key))
    });
    listeners
        .chain(upstreams)
        .filter_map(|(kind, name, file, key)| {
            describe(kind, name, file, key.end_entity_cert().ok()?.as_ref(), now)
        })
        .collect()
}

/// Logs every certificate of `config` that has expired. It is used anyway — a late renewal is
/// no reason to keep serving an equally expired predecessor — so the log says why clients
/// refuse it.
pub fn warn_expired(config: &GatewayConfig) {
    for c in in_use(config, SystemTime::now()) {
        if c.expires_in_seconds <= 0 {
            tracing::warn!(kind = c.kind.as_str(), name = %c.name, cert_file = %c.cert_file,
                not_after = %c.not_after, "certificate has expired; it is used anyway until replaced");
        }
    }
}

/// `None` only for DER that does not parse, which config loading already refused.
fn describe(
    kind: Use,
    name: &str,
    file: &std::path::Path,
    der: &[u8],
    now: SystemTime,
) -> Option<CertificateInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let now_secs = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.iter().filter_map(san).collect())
        .unwrap_or_default();
    Some(CertificateInfo {
        kind,
        name: name.to_string(),
        cert_file: file.display().to_string(),
        // The form cert-auth's `subjects` and x-forwarded-client-cert use, so that a subject
        // copied from here matches there.
        subject: crate::proxy::tls::rfc4514(cert.subject()),
        issuer: crate::proxy::tls::rfc4514(cert.issuer()),
        sans,
        // As `openssl x509 -serial` prints it.
        serial: cert.raw_serial_as_string().replace(':', "").to_uppercase(),
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        expires_in_seconds: not_after.saturating_sub(now_secs),
    })
}

fn san(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(d) => Some(d.to_string()),
        GeneralName::RFC822Name(m) => Some(m.to_string()),
        GeneralName::URI(u) => Some(u.to_string()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => <[u8; 4]>::try_from(*b)
                .ok()
                .map(|a| std::net::Ipv4Addr::from(a).to_string()),
            16 => <[u8; 16]>::try_from(*b)
                .ok()
                .map(|a| std::net::Ipv6Addr::from(a).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Seconds since the epoch as RFC 3339; times before 1970 (no real certificate) clamp to it.
fn rfc3339(secs: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_listener_certificate_is_described_with_its_names_and_time_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = rcgen::CertificateParams::new(vec![
            "gw.example.com".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gw.example.com");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        std::fs::write(dir.path().join("c.pem"), cert.pem()).expect("write");
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).expect("write");
        let text = format!(
            "[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:8443\"\n\
             tls = {{ cert_file = \"{0}/c.pem\", key_file = \"{0}/k.pem\" }}\n\
             [upstreams.u]\ntargets = [\"127.0.0.1:3000\"]\n[routes.r]\nprefix = \"/\"\nupstream = \"u\"\n",
            dir.path().display()
        );
        let registry = crate::plugins::builtin_registry();
        let built = match crate::config::load_str(Path::new("gateway.toml"), &text, &registry) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000 - 3600);
        let certs = in_use(&built.config, now);
        assert_eq!(certs.len(), 1);
        let c = &certs[0];
        assert_eq!((c.kind, c.name.as_str()), (Use::Listener, "public"));
        assert_eq!(c.subject, "CN=gw.example.com");
        assert_eq!(c.sans, ["gw.example.com", "127.0.0.1"]);
        assert_eq!(c.serial, "0ABC");
        assert_eq!(c.not_after, "2030-01-01T00:00:00Z");
        assert_eq!(c.expires_in_seconds, 3600);
    }
}
