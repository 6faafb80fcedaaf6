//! `[[listeners]]` and `[admin]`: the addresses the gateway binds, TLS of the listeners.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::super::spanned::Spanned;
use tollgate_plugin_api::Secret;

use super::super::file;
use super::super::file::ClientAuthMode;
use super::super::model::{
    AdminSettings, ClientAuth, ClientLimits, ClientTrust, Listener, ListenerTls,
};
use super::super::{tls, DEFAULT_ADMIN_ADDRESS};
use super::server::ClientLimitKeys;
use super::Validator;

/// How long a client may take over the TLS handshake unless its listener says otherwise.
const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Validator<'_, '_> {
    /// `[[listeners]]`, each with the server's client limits under its own.
    pub(super) fn listeners(
        &mut self,
        ls: &[Spanned<file::ListenerSection>],
        defaults: ClientLimits,
    ) -> Vec<Listener> {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for (i, l) in ls.iter().enumerate() {
            let l = l.get_ref();
            let address = match l.address.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.c.at(
                        l.address.span(),
                        format!(
                            "invalid listener address `{}`: expected IP:PORT, e.g. \"0.0.0.0:8080\"",
                            l.address.get_ref()
                        ),
                    );
                    continue;
                }
            };
            if let Some(prev) = seen.insert(address, i) {
                self.c.at(
                    l.address.span(),
                    format!(
                        "listener address {address} is already used by listener #{}",
                        prev + 1
                    ),
                );
            }
            // A listener whose TLS files are bad is left out (and reported).
            let tls = match &l.tls {
                Some(t) => match self.listener_tls(t.get_ref()) {
                    Some(tls) => Some(tls),
                    None => continue,
                },
                None => None,
            };
            out.push(Listener {
                name: l
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("listener-{}", i + 1)),
                address,
                h2c: l.h2c.unwrap_or(tls.is_none()),
                tls,
                client: self.client_limits(
                    defaults,
                    &ClientLimitKeys {
                        request_header_timeout: l.request_header_timeout.as_ref(),
                        client_body_timeout: l.client_body_timeout.as_ref(),
                        request_timeout: l.request_timeout.as_ref(),
                        escaped_slashes: l.escaped_slashes,
                    },
                ),
            });
        }
        if ls.is_empty() {
            self.c.at(
                0..0,
                "no `[[listeners]]`: add at least one, e.g. `[[listeners]]` with `address = \"0.0.0.0:8080\"`",
            );
        }
        out
    }

    /// The certificate and key of a listener, read and checked to belong together.
    fn listener_tls(&mut self, t: &file::ListenerTls) -> Option<ListenerTls> {
        let cert_file = self.existing_file(&t.cert_file, "certificate");
        let key_file = self.existing_file(&t.key_file, "private key");
        // Every key of the table is checked before any result is used, so that one `check`
        // reports all of its mistakes.
        let certified_key = match (&cert_file, &key_file) {
            (Some(cert), Some(key)) => match tls::load_certified_key(cert, key) {
                Ok(k) => Some(k),
                Err(tls::KeyError::Cert(m)) => {
                    self.c.at(t.cert_file.span(), m);
                    None
                }
                Err(tls::KeyError::Key(m)) => {
                    self.c.at(t.key_file.span(), m);
                    None
                }
            },
            _ => None,
        };
        let client_auth = self.client_auth(t);
        let handshake_timeout = self.nonzero_duration(
            t.handshake_timeout.as_ref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
            || "`handshake_timeout` must be more than 0s".into(),
        );
        let (cert_file, key_file, certified_key, client_auth) =
            (cert_file?, key_file?, certified_key?, client_auth?);
        Some(ListenerTls {
            cert_file,
            key_file,
            h2: t.h2.unwrap_or(true),
            certified_key,
            client_auth,
            handshake_timeout,
        })
    }

    /// `client_auth` with its CA bundle and revocation lists, read and checked now so that a
    /// bad file is reported at its key rather than failing handshakes later.
    fn client_auth(&mut self, t: &file::ListenerTls) -> Option<ClientAuth> {
        let mode = t.client_auth.as_ref().map(|m| *m.get_ref());
        let required = match mode.unwrap_or_default() {
            ClientAuthMode::None => {
                let stray = t
                    .client_ca_file
                    .as_ref()
                    .map(|f| (f.span(), "client_ca_file"))
                    .or(t
                        .client_crl_files
                        .as_ref()
                        .map(|f| (f.span(), "client_crl_files")));
                if let Some((span, key)) = stray {
                    self.c.at(
                        span,
                        format!(
                            "`{key}` is set but `client_auth` is \"none\", so no client \
                             certificate is asked for; set `client_auth = \"optional\"` or \
                             `\"required\"`, or remove `{key}`"
                        ),
                    );
                    return None;
                }
                return Some(ClientAuth::None);
            }
            ClientAuthMode::Optional => false,
            ClientAuthMode::Required => true,
        };
        let Some(ca) = t.client_ca_file.as_ref() else {
            let span = t.client_auth.as_ref().map_or(0..0, |m| m.span());
            self.c.at(
                span,
                "`client_auth` asks for client certificates but no `client_ca_file` says which \
                 CAs may issue them; add `client_ca_file = \"PATH\"` (a PEM bundle)",
            );
            return None;
        };
        let ca_der = match self.existing_file(ca, "client CA") {
            Some(ca_file) => match tls::read_pem_certs(&ca_file) {
                Ok(c) => Some((ca_file, c)),
                Err(m) => {
                    self.c.at(ca.span(), format!("`client_ca_file`: {m}"));
                    None
                }
            },
            None => None,
        };
        let Some((ca_file, ca_der)) = ca_der else {
            // The CRLs cannot be checked against a CA that did not load; their files can.
            for f in t.client_crl_files.iter().flat_map(|f| f.get_ref()) {
                self.existing_file(f, "CRL");
            }
            return None;
        };
        let mut crl_files = Vec::new();
        let mut crl_der = Vec::new();
        let mut crls_ok = true;
        for f in t.client_crl_files.iter().flat_map(|f| f.get_ref()) {
            let Some(path) = self.existing_file(f, "CRL") else {
                crls_ok = false;
                continue;
            };
            // Each file is checked alone, so that a bad one is reported at its own position.
            let checked = tls::read_crls(&path).and_then(|crls| {
                tls::client_verifier(&ca_der, &crls, required)
                    .map(|_| crls)
                    .map_err(|e| match e {
                        tls::VerifierError::Crl(m) => format!("`{}`: {m}", path.display()),
                        tls::VerifierError::Ca(m) => m,
                    })
            });
            match checked {
                Ok(crls) => {
                    crl_der.extend(crls);
                    crl_files.push(path);
                }
                Err(m) => {
                    self.c.at(f.span(), m);
                    crls_ok = false;
                }
            }
        }
        if !crls_ok {
            return None;
        }
        let verifier = match tls::client_verifier(&ca_der, &crl_der, required) {
            Ok(v) => v,
            Err(tls::VerifierError::Ca(m) | tls::VerifierError::Crl(m)) => {
                self.c.at(
                    ca.span(),
                    format!("`client_ca_file` `{}`: {m}", ca_file.display()),
                );
                return None;
            }
        };
        Some(ClientAuth::Verify {
            required,
            trust: ClientTrust {
                ca_file,
                crl_files,
                ca_der,
                crl_der,
                verifier,
            },
        })
    }

    /// `[admin]`, whose address must not be a listener's.
    pub(super) fn admin(
        &mut self,
        a: Option<&file::AdminSection>,
        listeners: &[Listener],
    ) -> Option<AdminSettings> {
        let admin = self.admin_settings(a)?;
        if let Some(l) = listeners.iter().find(|l| l.address == admin.address) {
            match a {
                Some(section) => self.c.at(
                    section.address.as_ref().map_or(0..0, |a| a.span()),
                    format!(
                        "admin address {} is already used by listener `{}`",
                        admin.address, l.name
                    ),
                ),
                None => self.c.at(
                    0..0,
                    format!(
                        "listener `{}` uses {}, the default admin address; move it or set `[admin] address`",
                        l.name, admin.address
                    ),
                ),
            }
        }
        Some(admin)
    }

    fn admin_settings(&mut self, a: Option<&file::AdminSection>) -> Option<AdminSettings> {
        if a.and_then(|a| a.enabled) == Some(false) {
            return None;
        }
        let addr = match a.and_then(|a| a.address.as_ref()) {
            Some(s) => match s.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.c.at(
                        s.span(),
                        format!("invalid admin address `{}`: expected IP:PORT", s.get_ref()),
                    );
                    return None;
                }
            },
            None => DEFAULT_ADMIN_ADDRESS.parse().ok()?,
        };
        let token = match a.and_then(|a| a.token_env.as_ref()) {
            None => None,
            Some(var) => match std::env::var(var.get_ref()) {
                Ok(t) if !t.trim().is_empty() => Some(Secret::new(t.trim().to_string())),
                _ => {
                    self.c.at(
                        var.span(),
                        format!(
                            "admin token variable `{}` is not set (or empty)",
                            var.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        Some(AdminSettings {
            address: addr,
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load_exact, valid};

    #[test]
    fn listener_address_that_is_not_ip_and_port_is_reported() {
        assert_eq!(
            errors("[[listeners]]\naddress = \"localhost:8080\"\n"),
            ["gateway.toml:2:11: invalid listener address `localhost:8080`: expected IP:PORT, e.g. \"0.0.0.0:8080\""]
        );
    }

    #[test]
    fn listener_address_used_twice_is_reported_on_the_second_listener() {
        assert_eq!(
            errors(
                "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\n\
                 [[listeners]]\naddress = \"127.0.0.1:8080\"\n"
            ),
            ["gateway.toml:5:11: listener address 127.0.0.1:8080 is already used by listener #1"]
        );
    }

    #[test]
    fn unknown_key_in_listener_is_reported_at_the_key() {
        assert_eq!(
            errors("[[listeners]]\naddress = \"127.0.0.1:8080\"\nh2 = true\n"),
            ["gateway.toml:3:1: unknown field `h2`, expected one of `name`, `address`, `h2c`, `tls`, `request_header_timeout`, `client_body_timeout`, `request_timeout`, `escaped_slashes`"]
        );
    }

    #[test]
    fn missing_tls_certificate_and_key_files_are_reported_at_each_value() {
        assert_eq!(
            errors(
                "[[listeners]]\naddress = \"127.0.0.1:8443\"\n\
                 tls = { cert_file = \"missing-cert.pem\", key_file = \"missing-key.pem\" }\n"
            ),
            [
                "gateway.toml:3:21: certificate file `missing-cert.pem` does not exist",
                "gateway.toml:3:52: private key file `missing-key.pem` does not exist",
            ]
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_reported_at_the_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = rcgen::generate_simple_self_signed(vec!["a".into()]).expect("cert");
        let other = rcgen::generate_simple_self_signed(vec!["b".into()]).expect("cert");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, one.cert.pem()).expect("cert");
        std::fs::write(&key, other.signing_key.serialize_pem()).expect("key");
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:8443\"\n\
             tls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
            cert.display(),
            key.display()
        );
        // The key file's value starts 36 characters and the certificate's path further in.
        let key_col = 36 + cert.display().to_string().len();
        assert_eq!(
            errors(&text),
            [format!(
                "gateway.toml:3:{key_col}: private key `{}` does not match certificate `{}`",
                key.display(),
                cert.display()
            )]
        );
    }

    /// A directory with a server certificate and key, a client CA and a CRL of that CA, and
    /// the start of a config whose listener's `[listeners.tls]` table uses the first two.
    fn mtls_files() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(dir.path().join("cert.pem"), server.cert.pem()).expect("cert");
        std::fs::write(
            dir.path().join("key.pem"),
            server.signing_key.serialize_pem(),
        )
        .expect("key");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("ca");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let now = rcgen::date_time_ymd(2026, 1, 1);
        let crl = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(2030, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("crl");
        std::fs::write(dir.path().join("ca.crl"), crl.pem().expect("pem")).expect("crl");
        std::fs::write(dir.path().join("ca.der.crl"), crl.der()).expect("crl");
        std::fs::write(dir.path().join("empty"), "").expect("empty");
        std::fs::write(dir.path().join("junk.crl"), "not a crl at all").expect("junk");
        let head = format!(
            "[[listeners]]\naddress = \"127.0.0.1:8443\"\n[listeners.tls]\n\
             cert_file = \"{0}/cert.pem\"\nkey_file = \"{0}/key.pem\"\n",
            dir.path().display()
        );
        (dir, head)
    }

    #[test]
    fn client_auth_loads_its_ca_and_crls_in_pem_and_der() {
        let (dir, head) = mtls_files();
        let d = dir.path().display();
        let built = valid(&format!(
            "{head}client_auth = \"optional\"\nclient_ca_file = \"{d}/ca.pem\"\n\
             client_crl_files = [\"{d}/ca.crl\", \"{d}/ca.der.crl\"]\nhandshake_timeout = \"3s\"\n"
        ));
        let tls = built.config.listeners[0].tls.as_ref().expect("tls");
        assert_eq!(tls.handshake_timeout, std::time::Duration::from_secs(3));
        let super::ClientAuth::Verify { required, trust } = &tls.client_auth else {
            panic!("client auth");
        };
        assert!(!required);
        assert_eq!((trust.ca_der.len(), trust.crl_der.len()), (1, 2));
        let built = valid(&head);
        let tls = built.config.listeners[0].tls.as_ref().expect("tls");
        assert!(matches!(tls.client_auth, super::ClientAuth::None));
        assert_eq!(tls.handshake_timeout, std::time::Duration::from_secs(10));
    }

    #[test]
    fn every_mistake_of_a_tls_table_is_reported_at_once() {
        let (dir, _) = mtls_files();
        let d = dir.path().display();
        assert_eq!(
            errors(&format!(
                "[[listeners]]\naddress = \"127.0.0.1:8443\"\n[listeners.tls]\n\
                 cert_file = \"nope.pem\"\nkey_file = \"{d}/key.pem\"\n\
                 client_auth = \"required\"\nclient_ca_file = \"{d}\"\n\
                 client_crl_files = [\"nope.crl\"]\nhandshake_timeout = \"0s\"\n"
            )),
            [
                "gateway.toml:4:13: certificate file `nope.pem` does not exist".to_string(),
                format!("gateway.toml:7:18: client CA file `{d}` is a directory (name a file)"),
                "gateway.toml:8:21: CRL file `nope.crl` does not exist".to_string(),
                "gateway.toml:9:21: `handshake_timeout` must be more than 0s".to_string(),
            ]
        );
    }

    #[test]
    fn client_auth_mistakes_are_reported_at_their_keys() {
        let (dir, head) = mtls_files();
        let d = dir.path().display();
        let err = |tail: &str| errors(&format!("{head}{tail}"));
        assert_eq!(
            err(&format!("client_ca_file = \"{d}/ca.pem\"\n")),
            [
                "gateway.toml:6:18: `client_ca_file` is set but `client_auth` is \"none\", so no \
              client certificate is asked for; set `client_auth = \"optional\"` or \
              `\"required\"`, or remove `client_ca_file`"
            ]
        );
        assert_eq!(
            err("client_auth = \"required\"\n"),
            [
                "gateway.toml:6:15: `client_auth` asks for client certificates but no \
              `client_ca_file` says which CAs may issue them; add `client_ca_file = \"PATH\"` \
              (a PEM bundle)"
            ]
        );
        assert_eq!(
            err("client_auth = \"required\"\nclient_ca_file = \"nope.pem\"\n"),
            ["gateway.toml:7:18: client CA file `nope.pem` does not exist"]
        );
        assert_eq!(
            err(&format!(
                "client_auth = \"required\"\nclient_ca_file = \"{d}/empty\"\n"
            )),
            [format!(
                "gateway.toml:7:18: `client_ca_file`: no PEM certificate found in `{d}/empty`"
            )]
        );
        let crl = |file: &str| {
            err(&format!(
                "client_auth = \"required\"\nclient_ca_file = \"{d}/ca.pem\"\n\
                 client_crl_files = [\"{d}/ca.crl\", \"{d}/{file}\"]\n"
            ))
        };
        let col = 25 + format!("{d}/ca.crl").len();
        assert_eq!(
            crl("junk.crl"),
            [format!(
                "gateway.toml:8:{col}: `{d}/junk.crl` is not a certificate revocation list \
                 (PEM `X509 CRL` blocks, or one DER CRL)"
            )]
        );
        assert_eq!(
            crl("empty"),
            [format!("gateway.toml:8:{col}: no CRL found in `{d}/empty`")]
        );
        assert_eq!(
            err("handshake_timeout = \"0s\"\n"),
            ["gateway.toml:6:21: `handshake_timeout` must be more than 0s"]
        );
        assert_eq!(
            err("client_auth = \"sometimes\"\n")[0],
            "gateway.toml:6:15: unknown variant `sometimes`, expected one of `none`, `optional`, `required`"
        );
    }

    #[test]
    fn listeners_get_names_and_h2c_unless_they_have_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("cert");
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).expect("key");
        let built = valid(&format!(
            "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
             [[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:8443\"\n\
             tls = {{ cert_file = \"{0}/cert.pem\", key_file = \"{0}/key.pem\" }}\n",
            dir.path().display()
        ));
        let [plain, tls] = &built.config.listeners[..] else {
            panic!("two listeners");
        };
        assert_eq!((plain.name.as_str(), plain.h2c), ("listener-1", true));
        assert_eq!((tls.name.as_str(), tls.h2c), ("public", false));
        assert!(tls.tls.as_ref().is_some_and(|t| t.h2));
    }

    #[test]
    fn config_without_listeners_is_reported_at_the_top() {
        assert_eq!(
            load_exact("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n").err().unwrap_or_default(),
            ["gateway.toml:1:1: no `[[listeners]]`: add at least one, e.g. `[[listeners]]` with `address = \"0.0.0.0:8080\"`"]
        );
    }

    #[test]
    fn bad_admin_address_is_reported() {
        assert_eq!(
            errors("[admin]\naddress = \"nowhere\"\n"),
            ["gateway.toml:2:11: invalid admin address `nowhere`: expected IP:PORT"]
        );
    }

    #[test]
    fn admin_address_clashing_with_a_listener_is_reported() {
        assert_eq!(
            errors("[[listeners]]\naddress = \"127.0.0.1:8080\"\n[admin]\naddress = \"127.0.0.1:8080\"\n"),
            ["gateway.toml:4:11: admin address 127.0.0.1:8080 is already used by listener `listener-1`"]
        );
    }

    #[test]
    fn a_listener_on_the_default_admin_address_is_told_to_move() {
        assert_eq!(
            errors("[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:9901\"\n"),
            ["gateway.toml:1:1: listener `public` uses 127.0.0.1:9901, the default admin address; move it or set `[admin] address`"]
        );
        let built =
            valid("[[listeners]]\naddress = \"127.0.0.1:9901\"\n[admin]\nenabled = false\n");
        assert!(built.config.admin.is_none());
    }

    #[test]
    fn an_unset_admin_token_variable_is_reported() {
        assert_eq!(
            errors("[admin]\ntoken_env = \"TOLLGATE_TEST_UNSET_ADMIN_TOKEN\"\n"),
            ["gateway.toml:2:13: admin token variable `TOLLGATE_TEST_UNSET_ADMIN_TOKEN` is not set (or empty)"]
        );
    }
}
