//! `[[listeners]]` and `[admin]`: the addresses the gateway binds, TLS of the listeners.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::super::spanned::Spanned;
use tollgate_plugin_api::Secret;

use super::super::file;
use super::super::model::{AdminSettings, ClientLimits, Listener, ListenerTls};
use super::super::{tls, DEFAULT_ADMIN_ADDRESS};
use super::server::ClientLimitKeys;
use super::Validator;

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
        let (cert_file, key_file) = (cert_file?, key_file?);
        let certified_key = match tls::load_certified_key(&cert_file, &key_file) {
            Ok(k) => k,
            Err(tls::KeyError::Cert(m)) => {
                self.c.at(t.cert_file.span(), m);
                return None;
            }
            Err(tls::KeyError::Key(m)) => {
                self.c.at(t.key_file.span(), m);
                return None;
            }
        };
        Some(ListenerTls {
            cert_file,
            key_file,
            h2: t.h2.unwrap_or(true),
            certified_key,
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
                "gateway.toml:3:{key_col}: private key `{}` does not match certificate `{}`: \
                 keys may not be consistent: KeyMismatch",
                key.display(),
                cert.display()
            )]
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
