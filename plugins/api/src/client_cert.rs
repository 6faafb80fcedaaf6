//! The client certificate of a mutual-TLS connection, as plugins see it: parsed once per
//! connection by the gateway when the handshake completes, shared by every request on it.

/// The identity in a client's verified leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientCert {
    /// The subject DN in RFC 4514 form, most specific first (`CN=web,O=Example`), as
    /// `openssl x509 -noout -subject -nameopt RFC2253` prints it.
    pub subject: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// DNS names of the subject alternative name extension, in certificate order.
    pub san_dns: Vec<String>,
    /// URIs of the subject alternative name extension (e.g. SPIFFE IDs), in certificate order.
    pub san_uris: Vec<String>,
    /// SHA-256 of the certificate's DER, lower-case hex without separators.
    pub sha256: String,
}

impl ClientCert {
    /// The name a request with this certificate is known by (its `consumer`): the first SAN
    /// URI, else the first SAN DNS name, else the subject's CN, else the fingerprint. A workload
    /// identity (SPIFFE) is the most specific name a certificate carries, a CN the least.
    pub fn identity(&self) -> &str {
        self.san_uris
            .first()
            .or(self.san_dns.first())
            .or(self.common_name.as_ref())
            .unwrap_or(&self.sha256)
    }

    /// The certificate as one element of Envoy's `x-forwarded-client-cert` header:
    /// `Hash=<sha256 hex>;Subject="<DN>";URI=<uri>;DNS=<name>` (one `URI`/`DNS` pair per
    /// name). `Subject` is always quoted, as Envoy writes it; other values only when they hold
    /// `,`, `;` or `=`, with `"` and `\` escaped by a backslash.
    pub fn xfcc(&self) -> String {
        let mut out = format!("Hash={}", self.sha256);
        out.push_str(";Subject=");
        push_quoted(&mut out, &self.subject);
        for uri in &self.san_uris {
            out.push_str(";URI=");
            push_value(&mut out, uri);
        }
        for dns in &self.san_dns {
            out.push_str(";DNS=");
            push_value(&mut out, dns);
        }
        out
    }
}

fn push_value(out: &mut String, v: &str) {
    if v.contains([',', ';', '=', '"']) {
        push_quoted(out, v);
    } else {
        out.push_str(v);
    }
}

fn push_quoted(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> ClientCert {
        ClientCert {
            subject: "CN=web,O=Example\\, Inc.".into(),
            common_name: Some("web".into()),
            san_dns: vec!["web.example".into(), "alt.example".into()],
            san_uris: vec!["spiffe://cluster.local/ns/a/sa/web".into()],
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn identity_prefers_uri_then_dns_then_cn_then_hash() {
        let mut c = cert();
        assert_eq!(c.identity(), "spiffe://cluster.local/ns/a/sa/web");
        c.san_uris.clear();
        assert_eq!(c.identity(), "web.example");
        c.san_dns.clear();
        assert_eq!(c.identity(), "web");
        c.common_name = None;
        assert_eq!(c.identity(), "ab".repeat(32));
    }

    #[test]
    fn xfcc_quotes_as_envoy_does() {
        let c = cert();
        assert_eq!(
            c.xfcc(),
            format!(
                "Hash={};Subject=\"CN=web,O=Example\\\\, Inc.\";\
                 URI=spiffe://cluster.local/ns/a/sa/web;DNS=web.example;DNS=alt.example",
                "ab".repeat(32)
            )
        );
        let odd = ClientCert {
            san_uris: vec!["urn:x;a=\"b\"".into()],
            ..ClientCert::default()
        };
        assert!(
            odd.xfcc().ends_with(";URI=\"urn:x;a=\\\"b\\\"\""),
            "{}",
            odd.xfcc()
        );
    }
}
