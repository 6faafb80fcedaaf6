//! Which config keys a reload applies and which need a restart (or a binary upgrade): the one
//! table of that, in code. Every field of the process-wide sections is named here, so a new
//! field does not compile until it is classified; docs/operations/admin-reload-upgrade.md holds
//! the same table for users.
//!
//! Reloadable: everything the proxy reads from the snapshot per connection, handshake or request
//! (routes, upstreams, plugins, limits, trusted proxies, the admin token, a listener's
//! certificate), and what the reloader applies
//! itself: `server.watch_config` (starts or stops the file watcher), `log.level` (the filter is
//! swapped), `[access_log]` (the writer is retargeted) and `[tracing]` (the exporter is swapped).
//! Restart-only: what pingora or the sockets took at start.

use std::collections::BTreeMap;

use super::model::{
    AdminSettings, ClientAuth, GatewayConfig, Listener, ListenerTls, LogSettings, ServerSettings,
};

/// The process-wide part of a config: the sections holding restart-only keys.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    server: ServerSettings,
    log: LogSettings,
    listeners: Vec<Listener>,
    admin: Option<AdminSettings>,
}

impl ProcessSettings {
    /// The process-wide part of `config`.
    pub fn of(config: &GatewayConfig) -> Self {
        // Every section, so that a new one has to be classified here.
        let GatewayConfig {
            server,
            log,
            listeners,
            admin,
            // Read from the snapshot per request, or applied by the reloader.
            upstreams: _,
            brokers: _,
            routes: _,
            table: _,
            access_log: _,
            tracing: _,
            // Not settings.
            source: _,
            view: _,
        } = config;
        Self {
            server: server.clone(),
            log: log.clone(),
            listeners: listeners.clone(),
            admin: admin.clone(),
        }
    }

    /// The keys whose value in `next` differs from this (the running process's) and that only a
    /// restart applies, as paths such as `server.threads` or `listeners.public.address`.
    pub fn restart_only_changes(&self, next: &ProcessSettings) -> Vec<String> {
        let mut changes = Changes(Vec::new());
        changes.server(&self.server, &next.server);
        changes.log(&self.log, &next.log);
        changes.listeners(&self.listeners, &next.listeners);
        changes.admin(self.admin.as_ref(), next.admin.as_ref());
        changes.0
    }
}

struct Changes(Vec<String>);

impl Changes {
    fn restart<T: PartialEq>(&mut self, key: impl Into<String>, running: &T, next: &T) {
        if running != next {
            self.0.push(key.into());
        }
    }

    fn server(&mut self, running: &ServerSettings, next: &ServerSettings) {
        let ServerSettings {
            // pingora's ServerConf, read once when the server is built.
            threads,
            keepalive_pool_size,
            graceful_shutdown_timeout,
            upgrade_sock,
            // Read from the snapshot per request.
            trusted_proxies: _,
            max_request_header_bytes: _,
            max_uri_bytes: _,
            // Applied by the reloader.
            watch_config: _,
            // Client deadlines and path rules: read per connection and request.
            client: _,
        } = next;
        self.restart("server.threads", &running.threads, threads);
        self.restart(
            "server.keepalive_pool_size",
            &running.keepalive_pool_size,
            keepalive_pool_size,
        );
        self.restart(
            "server.graceful_shutdown_timeout",
            &running.graceful_shutdown_timeout,
            graceful_shutdown_timeout,
        );
        self.restart("server.upgrade_sock", &running.upgrade_sock, upgrade_sock);
    }

    fn log(&mut self, running: &LogSettings, next: &LogSettings) {
        let LogSettings {
            // The subscriber's formatter is installed once.
            format,
            // Applied by the reloader (the filter is swapped).
            level: _,
        } = next;
        self.restart("log.format", &running.format, format);
    }

    /// Listeners are matched by name: one added or removed is `listeners.NAME`.
    fn listeners(&mut self, running: &[Listener], next: &[Listener]) {
        let by_name = |ls: &[Listener]| -> BTreeMap<String, Listener> {
            ls.iter().map(|l| (l.name.clone(), l.clone())).collect()
        };
        let (running, next) = (by_name(running), by_name(next));
        for name in running
            .keys()
            .chain(next.keys().filter(|n| !running.contains_key(*n)))
        {
            let (Some(old), Some(new)) = (running.get(name), next.get(name)) else {
                self.0.push(format!("listeners.{name}"));
                continue;
            };
            let Listener {
                // The identity of the listener.
                name: _,
                // Bound, and given to pingora's services, at start.
                address,
                h2c,
                tls,
                // Client deadlines and path rules: read per connection and request.
                client: _,
            } = new;
            self.restart(format!("listeners.{name}.address"), &old.address, address);
            self.restart(format!("listeners.{name}.h2c"), &old.h2c, h2c);
            if !same_tls(old.tls.as_ref(), tls.as_ref()) {
                self.0.push(format!("listeners.{name}.tls"));
            }
        }
    }

    fn admin(&mut self, running: Option<&AdminSettings>, next: Option<&AdminSettings>) {
        let (Some(running), Some(next)) = (running, next) else {
            self.restart("admin.enabled", &running.is_some(), &next.is_some());
            return;
        };
        let AdminSettings {
            // Bound at start.
            address,
            // Read from the snapshot per request.
            token: _,
        } = next;
        self.restart("admin.address", &running.address, address);
    }
}

/// Whether two TLS settings differ only in what a reload applies: the certificate resolver reads
/// the live snapshot on every handshake, so the certificate, its key and their paths are
/// reloadable; turning TLS on or off, the ALPN offer, client verification and the handshake
/// timeout were given to pingora at start.
fn same_tls(a: Option<&ListenerTls>, b: Option<&ListenerTls>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let ListenerTls {
                h2,
                // Read per handshake from the snapshot.
                cert_file: _,
                key_file: _,
                certified_key: _,
                // Built into the listener's acceptor at start.
                client_auth,
                handshake_timeout,
            } = b;
            a.h2 == *h2
                && same_client_auth(&a.client_auth, client_auth)
                && a.handshake_timeout == *handshake_timeout
        }
        _ => false,
    }
}

/// Whether two listeners verify clients alike: the verifier is built into the listener's
/// acceptor at start, so new CA or CRL contents at the same paths are a change too.
fn same_client_auth(a: &ClientAuth, b: &ClientAuth) -> bool {
    match (a, b) {
        (ClientAuth::None, ClientAuth::None) => true,
        (
            ClientAuth::Verify {
                required: ra,
                trust: ta,
            },
            ClientAuth::Verify {
                required: rb,
                trust: tb,
            },
        ) => {
            ra == rb
                && ta.ca_file == tb.ca_file
                && ta.crl_files == tb.crl_files
                && ta.ca_der == tb.ca_der
                && ta.crl_der == tb.crl_der
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(toml: &str) -> ProcessSettings {
        let registry = crate::plugins::builtin_registry();
        let text = format!(
            "{toml}\n[upstreams.u]\ntargets = [\"127.0.0.1:3000\"]\n[routes.r]\nprefix = \"/\"\nupstream = \"u\"\n"
        );
        match super::super::load_str(Path::new("gateway.toml"), &text, &registry) {
            Ok(built) => ProcessSettings::of(&built.config),
            Err(e) => panic!("{e}"),
        }
    }

    const BASE: &str = "[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:8080\"\n";

    fn changes(running: &str, next: &str) -> Vec<String> {
        settings(running).restart_only_changes(&settings(next))
    }

    #[test]
    fn process_wide_keys_need_a_restart() {
        let next = "[server]\nthreads = 3\nkeepalive_pool_size = 7\n\
                    graceful_shutdown_timeout = \"3s\"\nupgrade_sock = \"/tmp/x.sock\"\n\
                    [log]\nformat = \"json\"\n\
                    [admin]\naddress = \"127.0.0.1:9999\"\n\
                    [[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:8081\"\nh2c = false\n";
        let running = "[server]\nthreads = 2\n[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:8080\"\n";
        assert_eq!(
            changes(running, next),
            [
                "server.threads",
                "server.keepalive_pool_size",
                "server.graceful_shutdown_timeout",
                "server.upgrade_sock",
                "log.format",
                "listeners.public.address",
                "listeners.public.h2c",
                "admin.address",
            ]
        );
    }

    #[test]
    fn per_request_and_reloader_applied_keys_are_reloadable() {
        let next = format!(
            "{BASE}[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\nmax_request_header_bytes = 1024\n\
             max_uri_bytes = 512\nwatch_config = true\n\
             [log]\nlevel = \"debug\"\n[access_log]\nenabled = false\n\
             [plugins.request-id]\n"
        );
        assert_eq!(changes(BASE, &next), Vec::<String>::new());
    }

    #[test]
    fn listeners_added_removed_or_disabled_admin_are_named() {
        let next = "[[listeners]]\nname = \"other\"\naddress = \"127.0.0.1:8080\"\n\
                    [admin]\nenabled = false\n";
        assert_eq!(
            changes(BASE, next),
            ["listeners.public", "listeners.other", "admin.enabled"]
        );
    }

    #[test]
    fn listener_certificates_are_reloadable_but_tls_on_off_and_h2_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write_cert = |name: &str| {
            let cert =
                rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.cert.pem()).expect("cert");
            std::fs::write(
                dir.path().join(format!("{name}.key")),
                cert.signing_key.serialize_pem(),
            )
            .expect("key");
        };
        let tls = |name: &str, h2: bool| {
            format!(
                "[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:8443\"\n\
                 tls = {{ cert_file = \"{0}/{name}.pem\", key_file = \"{0}/{name}.key\", h2 = {h2} }}\n",
                dir.path().display()
            )
        };
        write_cert("a");
        write_cert("b");
        let running = settings(&tls("a", true));
        write_cert("a");
        assert!(running
            .restart_only_changes(&settings(&tls("a", true)))
            .is_empty());
        assert!(running
            .restart_only_changes(&settings(&tls("b", true)))
            .is_empty());
        assert_eq!(
            running.restart_only_changes(&settings(&tls("b", false))),
            ["listeners.public.tls"]
        );
        assert_eq!(
            running.restart_only_changes(&settings(
                "[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:8443\"\nh2c = false\n"
            )),
            ["listeners.public.tls"]
        );
    }

    #[test]
    fn client_auth_its_ca_contents_and_the_handshake_timeout_need_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("cert");
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).expect("key");
        let write_ca = || {
            let ca = rcgen::generate_simple_self_signed(vec!["ca".to_string()]).expect("ca");
            std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).expect("ca");
        };
        write_ca();
        let tls = |extra: &str| {
            format!(
                "[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:8443\"\n\
                 [listeners.tls]\ncert_file = \"{0}/cert.pem\"\nkey_file = \"{0}/key.pem\"\n{extra}",
                dir.path().display()
            )
        };
        let mtls = tls(&format!(
            "client_auth = \"required\"\nclient_ca_file = \"{}/ca.pem\"\n",
            dir.path().display()
        ));
        let running = settings(&mtls);
        assert!(running.restart_only_changes(&settings(&mtls)).is_empty());
        for next in [
            tls(""),
            mtls.replace("required", "optional"),
            format!("{mtls}handshake_timeout = \"2s\"\n"),
        ] {
            assert_eq!(
                running.restart_only_changes(&settings(&next)),
                ["listeners.public.tls"],
                "{next}"
            );
        }
        write_ca();
        assert_eq!(
            running.restart_only_changes(&settings(&mtls)),
            ["listeners.public.tls"]
        );
    }

    #[test]
    fn reverting_a_change_clears_it() {
        let running = settings(BASE);
        let changed = settings("[server]\nthreads = 5\n[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:8080\"\n");
        assert_eq!(running.restart_only_changes(&changed), ["server.threads"]);
        assert!(running.restart_only_changes(&settings(BASE)).is_empty());
    }
}
