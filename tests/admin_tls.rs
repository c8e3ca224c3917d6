//! The admin API over HTTPS (`--admin-tls-cert`/`--admin-tls-key`): real
//! clients (Python's `urllib` with an `ssl` context trusting a test CA
//! issued at test time, and rustls in this process) get every path over
//! TLS; a plaintext request gets no HTTP answer; reload by the admin API
//! serves the new certificate; half a pair or TLS without the admin
//! listener stops the start with the flag named.

mod common;
#[path = "support/tls.rs"]
mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::version::TLS13;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tls::Pki;

/// A plain ws:// server whose admin API speaks HTTPS with `pki`'s files.
fn start(pki: &Pki) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(1);
    cfg.admin_tls_cert = Some(pki.cert_path());
    cfg.admin_tls_key = Some(pki.key_path());
    wsgate::start(cfg).expect("server starts")
}

/// One HTTPS request with rustls: (status line, peer leaf, whole answer).
fn https(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: &str,
) -> (String, Vec<u8>, String) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .expect("a whole answer, ended by close_notify");
    let leaf = s.conn.peer_certificates().unwrap()[0].to_vec();
    let status = answer.lines().next().unwrap_or_default().to_string();
    (status, leaf, answer)
}

#[test]
fn every_admin_path_is_served_over_https_to_python_and_rustls() {
    let pki = Pki::new();
    let leaf = pki.leaf();
    pki.install(&leaf);
    let server = start(&pki);
    let admin = server.admin_addr().unwrap();

    // Python's urllib with an ssl context that trusts only the test CA.
    let script = r#"
import json, ssl, sys, urllib.request
port, ca = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
base = f"https://localhost:{port}"
with urllib.request.urlopen(base + "/healthz", context=ctx, timeout=10) as r:
    assert r.status == 200, r.status
with urllib.request.urlopen(base + "/metrics", context=ctx, timeout=10) as r:
    assert b"wsgate_connections" in r.read()
req = urllib.request.Request(base + "/publish?topic=news", data=b'{"a":1}', method="POST")
with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
    assert json.load(r) == {"delivered": 0}
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &admin.port().to_string()])
        .arg(pki.ca_path())
        .output()
        .expect("python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "python: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let config = pki.client_config(&[&TLS13]);
    let (status, got, answer) = https(admin, &config, "GET", "/readyz", "");
    assert!(status.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(got, leaf.der.to_vec());

    // The client listener is untouched: plain ws:// as configured.
    let mut ws = common::connect(server.local_addr());
    common::send(&mut ws, r#"{"type":"subscribe","topic":"news"}"#);
}

#[test]
fn a_plaintext_request_to_the_https_admin_port_gets_no_http_answer() {
    let pki = Pki::new();
    pki.install(&pki.leaf());
    let server = start(&pki);
    let mut s = TcpStream::connect(server.admin_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    // Closed (at most a TLS alert first), long before the request deadline.
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(answer.len() < 64, "only an alert, if anything: {answer:?}");
}

/// `POST /reload-tls` over HTTPS: (status line, whole answer).
fn reload(admin: SocketAddr, pki: &Pki) -> (String, String) {
    let (status, _, answer) = https(
        admin,
        &pki.client_config(&[&TLS13]),
        "POST",
        "/reload-tls",
        "",
    );
    (status, answer)
}

#[test]
fn reload_by_the_admin_api_serves_the_new_admin_certificate() {
    let pki = Pki::new();
    let old = pki.leaf();
    pki.install(&old);
    let server = start(&pki);
    let admin = server.admin_addr().unwrap();
    let (_, got, _) = https(admin, &pki.client_config(&[&TLS13]), "GET", "/healthz", "");
    assert_eq!(got, old.der.to_vec());

    let new = pki.leaf();
    pki.install(&new);
    let (status, answer) = reload(admin, &pki);
    assert!(status.starts_with("HTTP/1.1 200"), "{answer}");
    // A fresh client config: no ticket, so a full handshake shows the leaf.
    let (_, got, _) = https(admin, &pki.client_config(&[&TLS13]), "GET", "/healthz", "");
    assert_eq!(got, new.der.to_vec());

    // A broken file is refused by name; the pair in use stays.
    std::fs::write(
        pki.cert_path(),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    let (status, answer) = reload(admin, &pki);
    assert!(status.starts_with("HTTP/1.1 422"), "{answer}");
    assert!(answer.contains("cert.pem"), "{answer}");
    let (_, got, _) = https(admin, &pki.client_config(&[&TLS13]), "GET", "/healthz", "");
    assert_eq!(got, new.der.to_vec());
}

#[test]
fn half_a_pair_or_tls_without_the_admin_listener_stops_the_start() {
    let pki = Pki::new();
    pki.install(&pki.leaf());
    let mut cfg = wsgate::Config::for_tests();
    cfg.admin_tls_cert = Some(pki.cert_path());
    let err = wsgate::start(cfg).err().expect("refused").to_string();
    assert!(err.contains("--admin-tls-key"), "{err}");

    let mut cfg = wsgate::Config::for_tests();
    cfg.admin_tls_cert = Some(pki.cert_path());
    cfg.admin_tls_key = Some(pki.key_path());
    cfg.admin_listen = None;
    let err = wsgate::start(cfg).err().expect("refused").to_string();
    assert!(err.contains("admin listener is off"), "{err}");

    let mut cfg = wsgate::Config::for_tests();
    cfg.admin_tls_cert = Some(pki.cert_path());
    cfg.admin_tls_key = Some(pki.cert_path());
    let err = wsgate::start(cfg).err().expect("refused").to_string();
    assert!(err.contains("--admin-tls-cert/--admin-tls-key"), "{err}");
}
