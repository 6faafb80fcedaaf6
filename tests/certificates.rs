//! Certificates in operation: a listener's certificate renewed on disk without dropping
//! connections, a broken renewal refused, `/certificates` and the expiry gauge, upstream mutual
//! TLS (proxied requests and health checks), and TLS session resumption on a listener.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{Leaf, Pki};
use common::{free_port, full, Gateway};
use http_body_util::BodyExt;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpListener;

/// Generous bound for anything that has to happen (a reload picked up, a check passed): it
/// catches a hang, never a slow machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// Writes `text` to `dir/name` the way cert-manager and most renewal tools do: a new file
/// renamed over the old one.
fn replace(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` (retried while the listener is not bound yet).
async fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> TlsStream {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(tcp) = tokio::net::TcpStream::connect(addr).await {
            let name = ServerName::try_from("localhost").expect("name");
            match tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
            {
                Ok(tls) => return tls,
                Err(e) => panic!("TLS handshake with the gateway failed: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "the TLS listener never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The certificate a fresh handshake gets.
async fn served_cert(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let tls = connect(addr, config).await;
    tls.get_ref().1.peer_certificates().expect("certs")[0].clone()
}

/// An HTTP/1.1 keep-alive connection over TLS.
async fn keep_alive(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> (
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    CertificateDer<'static>,
) {
    let tls = connect(addr, config).await;
    let cert = tls.get_ref().1.peer_certificates().expect("certs")[0].clone();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http/1.1 handshake");
    tokio::spawn(conn);
    (sender, cert)
}

async fn get_status(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> u16 {
    sender.ready().await.expect("connection still open");
    let req = Request::get("/")
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .expect("request");
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

async fn admin_json(gw: &Gateway, path: &str) -> serde_json::Value {
    common::client()
        .get(format!("http://{}{path}", gw.admin))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json")
}

/// Polls `check` until it holds, failing after `PATIENCE`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway with a watched config and a TLS listener serving `leaf` from `listener.pem`.
async fn tls_gateway(leaf: &Leaf) -> (Gateway, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("listener.pem"), &leaf.cert_pem).expect("cert");
    std::fs::write(dir.path().join("listener.key"), &leaf.key_pem).expect("key");
    let upstream = common::Upstream::echo("app").await;
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let body = format!(
        "[server]\nwatch_config = true\n\n\
         [[listeners]]\nname = \"public-tls\"\naddress = \"{tls_addr}\"\n\
         tls = {{ cert_file = \"listener.pem\", key_file = \"listener.key\", h2 = false }}\n\n\
         [upstreams.app]\ntargets = [\"{}\"]\n\n\
         [routes.all]\nprefix = \"/\"\nupstream = \"app\"\n",
        upstream.addr
    );
    let gw = Gateway::start_in(dir, &body).await;
    // The upstream lives as long as the test's runtime; the gateway only needs its address.
    std::mem::forget(upstream);
    (gw, tls_addr)
}

#[tokio::test]
async fn a_renewed_listener_certificate_serves_new_handshakes_and_open_connections_stay() {
    let pki = Pki::new();
    let key = rcgen::KeyPair::generate().expect("key");
    let (a, b) = (
        pki.issue("gw-a", 1, Some(&key)),
        pki.issue("gw-b", 2, Some(&key)),
    );
    let (gw, addr) = tls_gateway(&a).await;
    let client = pki.client_config();

    let (mut open, cert) = keep_alive(addr, &client).await;
    assert_eq!(cert, a.der, "the first certificate is served");
    assert_eq!(get_status(&mut open).await, 200);

    let listed = admin_json(&gw, "/certificates").await;
    let first = &listed["certificates"][0];
    assert_eq!(first["kind"], "listener", "{listed}");
    assert_eq!(first["name"], "public-tls", "{listed}");
    assert_eq!(first["subject"], "CN=gw-a", "{listed}");
    assert_eq!(first["serial"], "01", "{listed}");
    assert_eq!(
        first["sans"],
        serde_json::json!(["localhost", "127.0.0.1"]),
        "{listed}"
    );
    assert!(
        first["expires_in_seconds"].as_i64().is_some_and(|s| s > 0),
        "{listed}"
    );
    assert!(
        gw.metrics().await.contains(
            "tollgate_certificate_expiry_seconds{kind=\"listener\",name=\"public-tls\",serial=\"01\"}"
        ),
        "the gauge has the listener's certificate"
    );

    replace(gw.dir.path(), "listener.pem", &b.cert_pem);
    eventually("a new handshake gets the renewed certificate", || async {
        served_cert(addr, &client).await == b.der
    })
    .await;

    // The connection made under the old certificate keeps serving.
    assert_eq!(get_status(&mut open).await, 200);
    let listed = admin_json(&gw, "/certificates").await;
    assert_eq!(listed["certificates"][0]["serial"], "02", "{listed}");
    let text = gw.metrics().await;
    assert!(text.contains("serial=\"02\""), "{text}");
    assert!(
        !text.contains("serial=\"01\""),
        "the old series is gone: {text}"
    );
    assert!(
        gw.logs().contains("certificate file change"),
        "{}",
        gw.logs()
    );
}

#[tokio::test]
async fn a_broken_renewal_keeps_the_old_certificate_and_fails_like_a_broken_reload() {
    let pki = Pki::new();
    let a = pki.issue("gw-a", 1, None);
    let (gw, addr) = tls_gateway(&a).await;
    let client = pki.client_config();
    assert_eq!(served_cert(addr, &client).await, a.der);

    let failed_reloads = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("tollgate_config_reloads_total{result=\"failed\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Not PEM, then a certificate of another key: each is refused with the reload's error.
    let other = pki.issue("gw-other", 3, None);
    for (n, (broken, says)) in [
        ("not a certificate\n", "no PEM certificate found"),
        (other.cert_pem.as_str(), "does not match certificate"),
    ]
    .into_iter()
    .enumerate()
    {
        replace(gw.dir.path(), "listener.pem", broken);
        eventually("the failed reload is counted", || async {
            failed_reloads(&gw.metrics().await) > n as u64
        })
        .await;
        let ready = admin_json(&gw, "/readyz").await;
        let error = ready["last_reload_error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{ready}");
        assert!(
            error.contains("gateway.toml:"),
            "the error has its position: {ready}"
        );
        assert_eq!(
            served_cert(addr, &client).await,
            a.der,
            "the old certificate serves"
        );
    }
    assert!(
        gw.logs()
            .contains("config reload failed; the previous config keeps serving"),
        "{}",
        gw.logs()
    );
}

#[tokio::test]
async fn an_expired_certificate_is_served_but_logged_and_counted_below_zero() {
    let pki = Pki::new();
    let expired = pki.issue_expired("gw-old", 7);
    let (gw, _addr) = tls_gateway(&expired).await;
    assert!(
        gw.logs().contains("certificate has expired"),
        "{}",
        gw.logs()
    );
    let listed = admin_json(&gw, "/certificates").await;
    assert_eq!(
        listed["certificates"][0]["not_after"], "2001-01-01T00:00:00Z",
        "{listed}"
    );
    assert!(
        listed["certificates"][0]["expires_in_seconds"]
            .as_i64()
            .is_some_and(|s| s < 0),
        "{listed}"
    );
}

#[tokio::test]
async fn a_second_handshake_with_the_same_client_resumes_the_session() {
    let pki = Pki::new();
    let a = pki.issue("gw-a", 1, None);
    let (_gw, addr) = tls_gateway(&a).await;
    let client = pki.client_config();

    // TLS 1.3 tickets arrive after the handshake: a request makes the client read them.
    let (mut first, _) = keep_alive(addr, &client).await;
    assert_eq!(get_status(&mut first).await, 200);
    let second = connect(addr, &client).await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    // 0-RTT is off: the server never accepts early data.
    assert!(!second.get_ref().1.is_early_data_accepted());

    // TLS 1.2 resumes by session ID from the same cache.
    let mut tls12 =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(pki.roots())
            .with_no_client_auth();
    tls12.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls12 = Arc::new(tls12);
    let (mut first, _) = keep_alive(addr, &tls12).await;
    assert_eq!(get_status(&mut first).await, 200);
    let second = connect(addr, &tls12).await;
    assert_eq!(
        second.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

/// An HTTPS upstream that requires a client certificate issued by `pki`'s CA and answers with
/// the client certificate's subject.
async fn mtls_upstream(pki: &Pki, server: &Leaf) -> SocketAddr {
    common::install_crypto();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(pki.roots()))
        .build()
        .expect("verifier");
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.der.clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let subject = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| {
                        x509_parser::parse_x509_certificate(c.as_ref())
                            .ok()
                            .map(|(_, x)| x.subject().to_string())
                    })
                    .unwrap_or_default();
                let svc = hyper::service::service_fn(move |_req| {
                    let subject = subject.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("x-client-subject", subject)
                                .body(full("ok"))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn upstream_mutual_tls_presents_the_client_certificate_to_requests_and_health_checks() {
    let pki = Pki::new();
    let server = pki.issue("upstream", 10, None);
    let gateway_client = pki.issue("tollgate-client", 11, None);
    let upstream = mtls_upstream(&pki, &server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).expect("ca");
    std::fs::write(dir.path().join("client.pem"), &gateway_client.cert_pem).expect("cert");
    std::fs::write(dir.path().join("client.key"), &gateway_client.key_pem).expect("key");
    let body = format!(
        "[upstreams.with-cert]\ntargets = [\"{upstream}\"]\n\
         tls = {{ sni = \"localhost\", ca_file = \"ca.pem\", client_cert_file = \"client.pem\", client_key_file = \"client.key\" }}\n\
         [upstreams.with-cert.health_check]\npath = \"/\"\ninterval = \"100ms\"\n\n\
         [upstreams.without-cert]\ntargets = [\"{upstream}\"]\n\
         tls = {{ sni = \"localhost\", ca_file = \"ca.pem\" }}\n\
         [upstreams.without-cert.outlier_detection]\nenabled = false\n\n\
         [upstreams.checked-without-cert]\ntargets = [\"{upstream}\"]\n\
         tls = {{ sni = \"localhost\", ca_file = \"ca.pem\" }}\n\
         [upstreams.checked-without-cert.health_check]\npath = \"/\"\ninterval = \"100ms\"\n\n\
         [routes.with]\nprefix = \"/with\"\nupstream = \"with-cert\"\n\
         [routes.without]\nprefix = \"/without\"\nupstream = \"without-cert\"\n"
    );
    let gw = Gateway::start_in(dir, &body).await;
    let http = common::client();

    // Ready means the first round of checks ran: the target is healthy only if the check's
    // TLS handshake presented the certificate.
    let upstreams = admin_json(&gw, "/upstreams").await;
    let with = upstreams["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "with-cert"))
        .expect("with-cert listed");
    assert_eq!(with["targets"][0]["healthy"], true, "{upstreams}");
    let without = upstreams["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "checked-without-cert"))
        .expect("checked-without-cert listed");
    assert_eq!(without["targets"][0]["healthy"], false, "{upstreams}");
    let problem = without["targets"][0]["last_problem"]
        .as_str()
        .unwrap_or_default();
    assert!(problem.contains("CertificateRequired"), "{upstreams}");

    let resp = http.get(gw.url("/with")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-client-subject"],
        "CN=tollgate-client",
        "the upstream saw the gateway's client certificate"
    );

    let started = Instant::now();
    let resp = http.get(gw.url("/without")).send().await.expect("send");
    common::expect_error(resp, 502, "upstream_tls_error").await;
    assert!(started.elapsed() < PATIENCE, "refused, not hung");

    let listed = admin_json(&gw, "/certificates").await;
    let upstream_cert = listed["certificates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["kind"] == "upstream"))
        .expect("the client certificate is listed");
    assert_eq!(upstream_cert["name"], "with-cert", "{listed}");
    assert_eq!(upstream_cert["subject"], "CN=tollgate-client", "{listed}");
    assert!(
        gw.metrics().await.contains(
            "tollgate_certificate_expiry_seconds{kind=\"upstream\",name=\"with-cert\",serial=\"0B\"}"
        ),
        "the gauge has the client certificate"
    );
}

#[tokio::test]
async fn client_certificate_mistakes_are_config_errors_at_their_position() {
    let pki = Pki::new();
    let leaf = pki.issue("c", 1, None);
    let other = pki.issue("o", 2, None);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.pem"), &leaf.cert_pem).expect("cert");
    std::fs::write(dir.path().join("o.key"), &other.key_pem).expect("key");
    std::fs::write(dir.path().join("junk.pem"), "junk").expect("junk");
    let check = |tls: &str| {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.u]\ntargets = [\"127.0.0.1:2\"]\n\
             tls = {{ {tls} }}\n[routes.r]\nprefix = \"/\"\nupstream = \"u\"\n"
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("run check");
        assert!(!out.status.success(), "{tls} must be refused");
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
    };
    let said = check("client_cert_file = \"c.pem\"");
    assert!(
        said.contains("gateway.toml:5:")
            && said.contains("`client_cert_file` needs `client_key_file`"),
        "{said}"
    );
    let said = check("client_key_file = \"o.key\"");
    assert!(
        said.contains("gateway.toml:5:")
            && said.contains("`client_key_file` needs `client_cert_file`"),
        "{said}"
    );
    let said = check("client_cert_file = \"c.pem\", client_key_file = \"o.key\"");
    assert!(
        said.contains("gateway.toml:5:") && said.contains("does not match certificate"),
        "{said}"
    );
    let said = check("client_cert_file = \"junk.pem\", client_key_file = \"o.key\"");
    assert!(
        said.contains("gateway.toml:5:") && said.contains("no PEM certificate found"),
        "{said}"
    );
    let said = check("client_cert_file = \"gone.pem\", client_key_file = \"o.key\"");
    assert!(
        said.contains("client certificate file") && said.contains("does not exist"),
        "{said}"
    );
}
