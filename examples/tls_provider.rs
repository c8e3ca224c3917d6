//! Crypto provider benchmark for the TLS layer: full and resumed handshakes
//! per second and the cost of sealing a record, server side, in memory,
//! per rustls crypto provider (aws-lc-rs, the server's, and ring). The client is rustls with ring in every run, so
//! only the server's provider changes; server time is measured inside the
//! layer's calls (`TlsConn::new`, `read_tls`, `write_plaintext`), one core.
//!
//! ```text
//! cargo run --release --example tls_provider
//! ```
//!
//! Results: bench/results/tls-provider.md.

#[path = "../tests/support/tls.rs"]
mod tls;

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::ProducesTickets;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ClientConnection, HandshakeKind};
use wsgate::tls::{TlsConn, TlsContext, TlsScratch, TlsSettings};

type Provider = (&'static str, Arc<CryptoProvider>, Arc<dyn ProducesTickets>);

fn providers() -> Vec<Provider> {
    vec![
        (
            "ring",
            Arc::new(rustls::crypto::ring::default_provider()),
            rustls::crypto::ring::Ticketer::new().unwrap(),
        ),
        (
            "aws-lc-rs",
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
        ),
    ]
}

struct Bufs {
    scratch: TlsScratch,
    plain: Vec<u8>,
    out: Vec<u8>,
    wire: Vec<u8>,
}

/// One handshake to completion (tickets delivered); returns the server
/// connection, the client, and the server time spent.
fn handshake(
    client_config: &Arc<ClientConfig>,
    ctx: &TlsContext,
    b: &mut Bufs,
) -> (TlsConn, ClientConnection, Duration) {
    let mut client =
        ClientConnection::new(client_config.clone(), "localhost".try_into().unwrap()).unwrap();
    let t = Instant::now();
    let mut server = TlsConn::new(ctx.server_config().clone()).unwrap();
    let mut server_time = t.elapsed();
    loop {
        b.wire.clear();
        while client.wants_write() {
            client.write_tls(&mut b.wire).unwrap();
        }
        if b.wire.is_empty() {
            break;
        }
        b.plain.clear();
        b.out.clear();
        let t = Instant::now();
        server
            .read_tls(&b.wire, &mut b.scratch, &mut b.plain, &mut b.out)
            .unwrap();
        server_time += t.elapsed();
        let mut rest = &b.out[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets().unwrap();
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    (server, client, server_time)
}

/// The server's certificate files and a client config maker trusting them.
struct CertKind {
    name: &'static str,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    roots: rustls::RootCertStore,
}

fn client_config(
    kind: &CertKind,
    version: &'static rustls::SupportedProtocolVersion,
    resume: bool,
) -> Arc<ClientConfig> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(kind.roots.clone())
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Arc::new(config)
}

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:.0}/s ({:.0} µs each)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64() * 1e6 / n as f64
    )
}

fn main() {
    let full_n: usize = arg("FULL", 2000);
    let resumed_n: usize = arg("RESUMED", 5000);
    let seal_n: usize = arg("SEAL", 200_000);
    let pki = tls::Pki::new();
    let leaf = pki.leaf();
    pki.install(&leaf);
    let mut kinds = vec![CertKind {
        name: "ECDSA P-256",
        cert: pki.cert_path(),
        key: pki.key_path(),
        roots: {
            let mut roots = rustls::RootCertStore::empty();
            let ca = rustls_pki_types::pem::PemObject::pem_slice_iter(leaf.chain_pem.as_bytes())
                .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.unwrap())
                .last()
                .unwrap();
            roots.add(ca).unwrap();
            roots
        },
    }];
    let rsa_dir = tempfile::tempdir().unwrap();
    if let Some(kind) = rsa_cert(rsa_dir.path()) {
        kinds.push(kind);
    }

    println!("| provider | certificate | TLS 1.3 full | TLS 1.3 resumed | TLS 1.2 full | seal 1 KiB record | seal 16 KiB record |");
    println!("|---|---|---|---|---|---|---|");
    for (name, provider, ticketer) in providers() {
        for kind in &kinds {
            let ctx = TlsContext::with_provider(
                TlsSettings::new(&kind.cert, &kind.key),
                provider.clone(),
                ticketer.clone(),
            )
            .unwrap();
            let mut b = Bufs {
                scratch: TlsScratch::new(Default::default()),
                plain: Vec::with_capacity(64 * 1024),
                out: Vec::with_capacity(64 * 1024),
                wire: Vec::with_capacity(64 * 1024),
            };

            // Full handshakes, TLS 1.3 and 1.2 (resumption off in the client).
            let mut cells = Vec::new();
            for (version, n) in [(&TLS13, full_n), (&TLS12, full_n)] {
                let cfg = client_config(kind, version, false);
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    let (_, client, t) = handshake(&cfg, &ctx, &mut b);
                    assert_eq!(client.handshake_kind(), Some(HandshakeKind::Full));
                    total += t;
                }
                cells.push(rate(n, total));
            }

            // Resumed TLS 1.3: each resumption uses a ticket and gets new ones.
            let cfg = client_config(kind, &TLS13, true);
            let _ = handshake(&cfg, &ctx, &mut b);
            let mut total = Duration::ZERO;
            for _ in 0..resumed_n {
                let (_, client, t) = handshake(&cfg, &ctx, &mut b);
                assert_eq!(client.handshake_kind(), Some(HandshakeKind::Resumed));
                total += t;
            }
            let resumed = rate(resumed_n, total);

            // Sealing: one record of 1 KiB (a typical message) and of 16 KiB
            // (a full batch), TLS 1.3 AES-128-GCM as negotiated by default.
            let cfg = client_config(kind, &TLS13, false);
            let mut seal = Vec::new();
            for size in [1024usize, 16 * 1024] {
                let (mut server, mut client, _) = handshake(&cfg, &ctx, &mut b);
                let payload = vec![0x5au8; size];
                // One record decrypts on the client first: the sealing is real.
                b.out.clear();
                server.write_plaintext(&payload, &mut b.out).unwrap();
                let mut rest = &b.out[..];
                while !rest.is_empty() {
                    client.read_tls(&mut rest).unwrap();
                    client.process_new_packets().unwrap();
                }
                let mut got = vec![0u8; size];
                client.reader().read_exact(&mut got).unwrap();
                assert_eq!(got, payload);
                let n = if size == 1024 { seal_n } else { seal_n / 8 };
                let t = Instant::now();
                for _ in 0..n {
                    b.out.clear();
                    server.write_plaintext(&payload, &mut b.out).unwrap();
                }
                let d = t.elapsed();
                seal.push(format!(
                    "{:.0} ns ({:.2} GB/s)",
                    d.as_secs_f64() * 1e9 / n as f64,
                    (n * size) as f64 / d.as_secs_f64() / 1e9
                ));
            }
            println!(
                "| {name} | {} | {} | {resumed} | {} | {} | {} |",
                kind.name, cells[0], cells[1], seal[0], seal[1]
            );
        }
    }
    println!(
        "\nServer side only, one core; X25519 key exchange, client rustls+ring; {full_n} full handshakes per version, {resumed_n} resumed, \
         {seal_n} 1 KiB seals."
    );
}

/// An RSA-2048 leaf signed by an RSA test CA, made by `openssl` in `dir`
/// (rcgen with ring cannot make RSA keys); None without openssl.
fn rsa_cert(dir: &std::path::Path) -> Option<CertKind> {
    let run = |args: &[&str]| -> Option<()> {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?
            .success();
        ok.then_some(())
    };
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n",
    )
    .ok()?;
    run(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
        "-keyout", "ca.key", "-out", "ca.pem",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "rsa-key.pem",
        "-out",
        "leaf.csr",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "rsa.pem",
        "-extfile",
        "ext",
    ])?;
    let ca = rustls_pki_types::pem::PemObject::from_pem_file(dir.join("ca.pem")).ok()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).ok()?;
    Some(CertKind {
        name: "RSA 2048",
        cert: dir.join("rsa.pem"),
        key: dir.join("rsa-key.pem"),
        roots,
    })
}

fn arg(name: &str, default: usize) -> usize {
    std::env::var(format!("TLS_BENCH_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
