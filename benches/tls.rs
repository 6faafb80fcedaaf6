//! A TLS 1.3 handshake in memory, the server side configured as the gateway's listeners are,
//! with each of rustls' two crypto providers on the server (the client always uses aws-lc-rs,
//! so the difference between two lines is the server's). This is what chose the gateway's one
//! provider (docs/architecture.md, "TLS"): ECDSA P-256 and RSA-2048 certificates, full and
//! resumed handshakes, TLS_AES_128_GCM_SHA256 with X25519 as in the load benchmark
//! (benches/load/tls.py).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn provider(name: &str) -> CryptoProvider {
    let mut p = match name {
        "ring" => rustls::crypto::ring::default_provider(),
        _ => rustls::crypto::aws_lc_rs::default_provider(),
    };
    p.cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    p.kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::X25519);
    p
}

/// A self-signed certificate for `localhost` with `key` (PEM).
fn certificate(key_pem: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::from_pem(key_pem).expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    let der = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    (cert.der().clone(), der)
}

fn server(
    name: &str,
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider(name)))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.clone_key())
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

fn client(cert: &CertificateDer<'static>, resume: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider("aws-lc-rs")))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// One handshake, bytes passed between the two sides in memory, until both are done and the
/// client has read the server's session tickets (so that the next one can resume).
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = ClientConnection::new(client.clone(), name).expect("client");
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..10 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let mut read = &buf[..];
        while !read.is_empty() {
            s.read_tls(&mut read).expect("server read");
            s.process_new_packets().expect("server process");
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        let mut read = &buf[..];
        while !read.is_empty() {
            c.read_tls(&mut read).expect("client read");
            c.process_new_packets().expect("client process");
        }
        if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() {
            return;
        }
    }
    panic!("the handshake did not finish");
}

fn handshakes(cr: &mut Criterion) {
    let root = env!("CARGO_MANIFEST_DIR");
    let keys = [
        (
            "ecdsa-p256",
            format!("{root}/tests/fixtures/jwt/ec256.key.pem"),
        ),
        (
            "rsa-2048",
            format!("{root}/tests/fixtures/jwt/rsa1.key.pem"),
        ),
    ];
    let mut group = cr.benchmark_group("tls13_handshake");
    for (cert_kind, path) in keys {
        let pem = std::fs::read_to_string(&path).expect("key file");
        let (cert, key) = certificate(&pem);
        for name in ["ring", "aws-lc-rs"] {
            let server = server(name, &cert, &key);
            let fresh = client(&cert, false);
            group.bench_function(BenchmarkId::new(format!("full/{cert_kind}"), name), |b| {
                b.iter(|| handshake(&server, &fresh))
            });
            // One client config keeps its session cache: every handshake after the first
            // resumes (the server's in-memory cache, rustls' default).
            let resuming = client(&cert, true);
            handshake(&server, &resuming);
            group.bench_function(
                BenchmarkId::new(format!("resumed/{cert_kind}"), name),
                |b| b.iter(|| handshake(&server, &resuming)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
