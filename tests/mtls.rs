//! Mutual TLS at the edge through the real gateway binary: listeners with `client_auth`
//! `required` and `optional`, the `cert-auth` plugin, `x-forwarded-client-cert`, a rate limit
//! keyed on the certificate's consumer, and the bad inputs of a TLS port (wrong CA, expired,
//! revoked, a stalled handshake, plaintext bytes).
//!
//! Certificates are made here with rcgen; clients are tokio-rustls (to see a handshake refused
//! as such), reqwest with an identity, and `curl --cert` as an independent peer when installed.
//! Refusals in the handshake are proved by `tollgate_tls_handshake_failures_total`, by reason.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{expect_error, Gateway, Upstream};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
const REVOKED_SERIAL: u64 = 4242;

/// A client certificate and its key, as PEM.
struct ClientId {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

/// A CA with its server certificate for `localhost`, client certificates of every kind the
/// tests need, another CA's client certificate, and a CRL revoking one.
struct Pki {
    ca_pem: String,
    crl_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    /// SAN URI `WEB_ID`, CN `web`.
    web: ClientId,
    /// SAN DNS `batch.example`, CN `batch`.
    batch: ClientId,
    /// Valid in 2020 only.
    expired: ClientId,
    /// Revoked in the CRL.
    revoked: ClientId,
    /// Issued by another CA.
    stranger: ClientId,
}

fn new_ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    let pem = p.self_signed(&key).expect("ca").pem();
    (Issuer::new(p, key), pem)
}

fn client(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<SanType>,
    tweak: impl FnOnce(&mut CertificateParams),
) -> ClientId {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.subject_alt_names = sans;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Example");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    tweak(&mut p);
    let cert = p.signed_by(&key, issuer).expect("client cert");
    ClientId {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

impl Pki {
    fn new() -> Pki {
        let (ca, ca_pem) = new_ca("tollgate test CA");
        let (other, _) = new_ca("another test CA");
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&server_key, &ca)
            .expect("server cert");
        let uri = |u: &str| SanType::URI(u.try_into().expect("uri"));
        let dns = |d: &str| SanType::DnsName(d.try_into().expect("dns"));
        let web = client(&ca, "web", vec![uri(WEB_ID)], |_| {});
        let batch = client(&ca, "batch", vec![dns("batch.example")], |_| {});
        let expired = client(&ca, "old", vec![uri(WEB_ID)], |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        });
        let revoked = client(&ca, "gone", vec![uri(WEB_ID)], |p| {
            p.serial_number = Some(SerialNumber::from(REVOKED_SERIAL));
        });
        let stranger = client(&other, "web", vec![uri(WEB_ID)], |_| {});
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2040, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(REVOKED_SERIAL),
                revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca)
        .expect("crl");
        Pki {
            ca_pem,
            crl_pem: crl.pem().expect("crl pem"),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            web,
            batch,
            expired,
            revoked,
            stranger,
        }
    }

    /// Writes the server's files, the CA and the CRL into `dir`.
    fn write(&self, dir: &std::path::Path) {
        std::fs::write(dir.join("server.pem"), &self.server_cert_pem).expect("write");
        std::fs::write(dir.join("server.key"), &self.server_key_pem).expect("write");
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).expect("write");
        std::fs::write(dir.join("ca.crl"), &self.crl_pem).expect("write");
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(self.ca_pem.as_bytes())
            .expect("ca der");
        roots.add(der).expect("root");
        roots
    }
}

/// A gateway with an mTLS listener `mtls` (`client_auth = MODE`, handshake_timeout 1s) beside
/// the test's plaintext one; `routes` go after the upstream `svc`.
async fn start(pki: &Pki, mode: &str, up: &Upstream, routes: &str) -> (Gateway, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    pki.write(dir.path());
    let port = common::free_port();
    let d = dir.path().display();
    let cfg = format!(
        r#"
[[listeners]]
name = "mtls"
address = "127.0.0.1:{port}"

[listeners.tls]
cert_file = "{d}/server.pem"
key_file = "{d}/server.key"
client_auth = "{mode}"
client_ca_file = "{d}/ca.pem"
client_crl_files = ["{d}/ca.crl"]
handshake_timeout = "1s"

[upstreams.svc]
targets = ["{}"]

{routes}
"#,
        up.addr
    );
    let gw = Gateway::start_in(dir, &cfg).await;
    (gw, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A route `NAME` on `prefix` to `svc` with `plugins` (TOML lines of its plugin tables).
fn route(name: &str, prefix: &str, plugins: &str) -> String {
    format!("[routes.{name}]\nprefix = \"{prefix}\"\nupstream = \"svc\"\n{plugins}\n")
}

fn tls_config(pki: &Pki, id: Option<&ClientId>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(pki.roots());
    let config = match id {
        Some(id) => {
            let key = PrivateKeyDer::from_pem_slice_any(id.key_pem.as_bytes());
            builder
                .with_client_auth_cert(vec![id.der.clone()], key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

trait KeyFromPem {
    fn from_pem_slice_any(pem: &[u8]) -> PrivateKeyDer<'static>;
}

impl KeyFromPem for PrivateKeyDer<'static> {
    fn from_pem_slice_any(pem: &[u8]) -> PrivateKeyDer<'static> {
        rustls::pki_types::pem::PemObject::from_pem_slice(pem).expect("key")
    }
}

/// One HTTP/1.1 GET over a fresh TLS connection: the raw response, or why there is none (the
/// handshake or the first read failed, or the server closed without answering).
async fn tls_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<String, String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if out.is_empty() {
            return Err("closed without an answer".to_string());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the TLS exchange hung")
}

/// The value of `tollgate_tls_handshake_failures_total{listener="mtls",reason}` now.
async fn failures(gw: &Gateway, reason: &str) -> u64 {
    let text = gw.metrics().await;
    let series =
        format!("tollgate_tls_handshake_failures_total{{listener=\"mtls\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (generously) until the failure count of `reason` reaches `n`: the server counts a
/// refusal after the client may already have seen it.
async fn await_failures(gw: &Gateway, reason: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = failures(gw, reason).await;
        if now >= n {
            assert_eq!(now, n, "more `{reason}` failures than handshakes refused");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{reason}` failures stayed at {now}, expected {n}:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No line about TLS or a handshake is at error or warning level: refused handshakes are a
/// debug line and a count each, so a scanner cannot flood the log. (pingora's own lines about
/// its upstream pool, say, are not this test's business.)
fn assert_no_error_lines(gw: &Gateway) {
    let logs = gw.logs();
    // The level is the only `ERROR` / `WARN` of a line (coloured or not).
    let loud: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            ["handshake", "tls", "certificate", "listening", "alert"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    assert!(loud.is_empty(), "error or warning lines: {loud:#?}");
}

fn reqwest_client(pki: &Pki, id: Option<&ClientId>, port: u16) -> reqwest::Client {
    common::install_crypto();
    let root = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("root");
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([root])
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .timeout(Duration::from_secs(30));
    if let Some(id) = id {
        let pem = format!("{}{}", id.cert_pem, id.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    b.build().expect("client")
}

#[tokio::test]
async fn required_listener_refuses_missing_wrong_ca_expired_and_revoked_in_the_handshake() {
    let pki = Pki::new();
    let up = Upstream::echo("svc").await;
    let (gw, addr) = start(&pki, "required", &up, &route("all", "/", "")).await;

    let ok = tls_get(addr, tls_config(&pki, Some(&pki.web)), "/x").await;
    assert!(
        ok.as_deref().is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
        "{ok:?}"
    );

    for (id, reason) in [
        (None, "no_certificate"),
        (Some(&pki.stranger), "unknown_ca"),
        (Some(&pki.expired), "expired"),
        (Some(&pki.revoked), "revoked"),
    ] {
        let answer = tls_get(addr, tls_config(&pki, id), "/x").await;
        assert!(answer.is_err(), "{reason}: answered {answer:?}");
        await_failures(&gw, reason, 1).await;
    }
    assert_eq!(up.requests(), 1, "only the valid certificate got through");
    assert_no_error_lines(&gw);
}

#[tokio::test]
async fn optional_listener_with_cert_auth_answers_401_403_and_forwards_the_certificate() {
    let pki = Pki::new();
    let up = Upstream::echo("svc").await;
    let routes = format!(
        "{}{}",
        route(
            "secure",
            "/secure",
            "[routes.secure.plugins.cert-auth]\nsan_uris = [\"spiffe://cluster.local/ns/shop/*\"]\n"
        ),
        route("open", "/open", "")
    );
    let (gw, addr) = start(&pki, "optional", &up, &routes).await;
    let port = addr.port();
    let url = |p: &str| format!("https://localhost:{port}{p}");

    // Without a certificate the connection goes on: an open route serves, cert-auth says 401.
    let anonymous = reqwest_client(&pki, None, port);
    let resp = anonymous.get(url("/open")).send().await.expect("open");
    assert_eq!(resp.status(), 200);
    let resp = anonymous.get(url("/secure")).send().await.expect("secure");
    expect_error(resp, 401, "missing_client_certificate").await;

    // A valid certificate the route does not list: 403.
    let batch = reqwest_client(&pki, Some(&pki.batch), port);
    let resp = batch.get(url("/secure")).send().await.expect("batch");
    expect_error(resp, 403, "client_certificate_not_allowed").await;

    // Allowed: the upstream gets the gateway's XFCC, never the client's, and the consumer.
    let web = reqwest_client(&pki, Some(&pki.web), port);
    let resp = web
        .get(url("/secure"))
        .header("x-forwarded-client-cert", "Hash=forged;URI=spiffe://evil")
        .header("x-consumer", "mallory")
        .send()
        .await
        .expect("web");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
    let v: serde_json::Value = resp.json().await.expect("json");
    let fingerprint = {
        use sha2::Digest;
        hex_lower(&sha2::Sha256::digest(pki.web.der.as_ref()))
    };
    assert_eq!(
        v["headers"]["x-forwarded-client-cert"],
        format!("Hash={fingerprint};Subject=\"CN=web,O=Example\";URI={WEB_ID}"),
        "{v}"
    );
    assert_eq!(v["headers"]["x-consumer"], WEB_ID);
    // HTTP/1.1 over TLS (the gateway's own connection loop) reads the same certificate.
    let h1 = tls_get(addr, tls_config(&pki, Some(&pki.web)), "/secure").await;
    let h1 = h1.expect("HTTP/1.1 over TLS");
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    assert!(h1.contains(&format!("Hash={fingerprint};")), "{h1}");

    // A forged XFCC never passes a route without the plugin either.
    let resp = web
        .get(url("/open"))
        .header("x-forwarded-client-cert", "Hash=forged")
        .send()
        .await
        .expect("open");
    let v: serde_json::Value = resp.json().await.expect("json");
    assert!(v["headers"].get("x-forwarded-client-cert").is_none(), "{v}");

    // A presented certificate that does not verify still fails the handshake.
    let answer = tls_get(addr, tls_config(&pki, Some(&pki.stranger)), "/open").await;
    assert!(answer.is_err(), "{answer:?}");
    await_failures(&gw, "unknown_ca", 1).await;
    assert_no_error_lines(&gw);
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_rate_limit_keys_on_the_certificates_consumer() {
    let pki = Pki::new();
    let up = Upstream::echo("svc").await;
    let plugins = "[routes.api.plugins.cert-auth]\n\
                   san_uris = [\"spiffe://cluster.local/ns/shop/sa/web\"]\n\
                   san_dns = [\"batch.example\"]\n\
                   [routes.api.plugins.rate-limit]\n\
                   limits = [{ rate = \"1/min\", burst = 2, key = [\"consumer\"] }]\n";
    let (_gw, addr) = start(&pki, "required", &up, &route("api", "/api", plugins)).await;
    let port = addr.port();
    let url = format!("https://localhost:{port}/api/x");
    // 1/min: no unit comes back during the test, so each consumer gets exactly its burst.
    let web = reqwest_client(&pki, Some(&pki.web), port);
    for _ in 0..2 {
        assert_eq!(web.get(&url).send().await.expect("web").status(), 200);
    }
    let resp = web.get(&url).send().await.expect("web");
    expect_error(resp, 429, "rate_limited").await;
    let batch = reqwest_client(&pki, Some(&pki.batch), port);
    assert_eq!(batch.get(&url).send().await.expect("batch").status(), 200);
}

#[tokio::test]
async fn plaintext_listener_strips_a_forged_xfcc_and_cert_auth_sees_no_certificate() {
    let up = Upstream::echo("svc").await;
    let cfg = format!(
        "[upstreams.svc]\ntargets = [\"{}\"]\n\n{}{}",
        up.addr,
        route("open", "/open", ""),
        route(
            "secure",
            "/secure",
            "[routes.secure.plugins.cert-auth]\nsan_dns = [\"batch.example\"]\n"
        )
    );
    let gw = Gateway::start(&cfg).await;
    for client in [common::client(), common::h2c_client()] {
        let resp = client
            .get(gw.url("/open"))
            .header(
                "x-forwarded-client-cert",
                "Hash=forged;Subject=\"CN=admin\"",
            )
            .header("X-Forwarded-Client-Cert", "By=spiffe://evil")
            .send()
            .await
            .expect("open");
        let v: serde_json::Value = resp.json().await.expect("json");
        assert!(v["headers"].get("x-forwarded-client-cert").is_none(), "{v}");
        let resp = client.get(gw.url("/secure")).send().await.expect("secure");
        expect_error(resp, 401, "missing_client_certificate").await;
    }
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_and_plaintext_on_the_tls_port_refused() {
    let pki = Pki::new();
    let up = Upstream::echo("svc").await;
    let (gw, addr) = start(&pki, "required", &up, &route("all", "/", "")).await;

    // The start of a ClientHello record, then nothing: closed at the 1s handshake_timeout
    // (the bound here only catches a hang).
    let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(30), stalled.read(&mut buf))
        .await
        .expect("the stalled handshake was never closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    await_failures(&gw, "timeout", 1).await;

    // An HTTP request to the TLS port gets no HTTP answer; the connection is closed.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), plain.read_to_end(&mut got))
        .await
        .expect("plaintext on the TLS port hung");
    assert!(read.is_ok() || got.is_empty(), "{read:?}");
    assert!(
        !got.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    await_failures(&gw, "not_tls", 1).await;

    // The listener still serves.
    let ok = tls_get(addr, tls_config(&pki, Some(&pki.web)), "/x").await;
    assert!(
        ok.as_deref().is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
        "{ok:?}"
    );
    assert_eq!(up.requests(), 1);
    assert_no_error_lines(&gw);
}

#[tokio::test]
async fn curl_with_a_client_certificate_is_an_independent_peer() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let pki = Pki::new();
    let up = Upstream::echo("svc").await;
    let plugins = "[routes.all.plugins.cert-auth]\nsubjects = [\"CN=web,O=Example\"]\n";
    let (gw, addr) = start(&pki, "required", &up, &route("all", "/", plugins)).await;
    let dir = gw.dir.path();
    std::fs::write(dir.join("web.pem"), &pki.web.cert_pem).expect("write");
    std::fs::write(dir.join("web.key"), &pki.web.key_pem).expect("write");
    // curl blocks: it runs off the test's runtime, which serves the upstream meanwhile.
    let curl = |with_cert: bool| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "--cacert"])
            .arg(dir.join("ca.pem"))
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())]);
        if with_cert {
            cmd.arg("--cert")
                .arg(dir.join("web.pem"))
                .arg("--key")
                .arg(dir.join("web.key"));
        }
        cmd.arg(format!("https://localhost:{}/who", addr.port()));
        async move {
            tokio::task::spawn_blocking(move || cmd.output().expect("curl"))
                .await
                .expect("curl task")
        }
    };
    let out = curl(true).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["headers"]["x-consumer"], WEB_ID, "{v}");
    let out = curl(false).await;
    assert!(
        !out.status.success(),
        "curl without a certificate got an answer"
    );
    await_failures(&gw, "no_certificate", 1).await;
}
