//! The server's own TLS 1.3 record layer (after the handshake) against real
//! peers: rustls clients in memory and over real sockets, and OpenSSL's
//! `s_client` over a real socket. Key updates both ways (the traffic keys
//! the client ends up with are checked against RFC 8446's derivation from
//! the secrets the client logged), and the records RFC 8446 forbids after
//! the handshake answered with the alert it names.

mod common;
#[path = "support/tls.rs"]
mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::tls13::OkmBlock;
use rustls::pki_types::ServerName;
use rustls::version::{TLS12, TLS13};
use rustls::{
    AlertDescription, ClientConfig, ClientConnection, ConnectionTrafficSecrets, StreamOwned,
    SupportedCipherSuite,
};
use tls::{Pair, Pki};
use tungstenite::{Message, WebSocket};
use wsgate::config::AppKind;
use wsgate::tls::record::RecordError;
use wsgate::tls::{TlsCloseReason, TlsError};

type TlsWs = WebSocket<StreamOwned<ClientConnection, TcpStream>>;

fn start(pki: &Pki) -> wsgate::ServerHandle {
    let leaf = pki.leaf();
    pki.install(&leaf);
    let mut cfg = wsgate::Config::for_tests();
    cfg.app = AppKind::Echo;
    cfg.workers = Some(1);
    cfg.admin_listen = None;
    cfg.tls_cert = Some(pki.cert_path());
    cfg.tls_key = Some(pki.key_path());
    wsgate::start(cfg).expect("server starts")
}

fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsWs {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (ws, _) = tungstenite::client::client(url, StreamOwned::new(conn, tcp)).expect("upgrade");
    ws
}

fn echo(ws: &mut TlsWs, text: &str) {
    ws.send(Message::text(text)).unwrap();
    match ws.read().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), text),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// Keeps the TLS 1.3 traffic secrets a client logs.
#[derive(Debug, Default)]
struct Secrets(Mutex<Vec<(String, Vec<u8>)>>);

impl rustls::KeyLog for Secrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((label.to_string(), secret.to_vec()));
    }
}

impl Secrets {
    fn get(&self, label: &str) -> Vec<u8> {
        let logged = self.0.lock().unwrap();
        let found = logged.iter().rev().find(|(l, _)| l == label);
        found.expect("secret logged").1.clone()
    }
}

const SUITE: SupportedCipherSuite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;

/// HKDF-Expand-Label(secret, label, "", len) with SHA-256 (RFC 8446 7.1),
/// through the hash of the suite the client offers.
fn expand_label(secret: &[u8], label: &str, len: usize) -> Vec<u8> {
    let SupportedCipherSuite::Tls13(suite) = SUITE else {
        unreachable!()
    };
    let expander = suite.hkdf_provider.expander_for_okm(&OkmBlock::new(secret));
    let full = format!("tls13 {label}");
    let info = [
        &(len as u16).to_be_bytes()[..],
        &[full.len() as u8],
        full.as_bytes(),
        &[0u8],
    ];
    let mut out = vec![0u8; len];
    expander.expand_slice(&info, &mut out).unwrap();
    out
}

/// The AES-128-GCM key of the traffic secret `updates` KeyUpdates after
/// `secret` (RFC 8446 7.2, 7.3).
fn key_after(secret: &[u8], updates: usize) -> Vec<u8> {
    let mut secret = secret.to_vec();
    for _ in 0..updates {
        secret = expand_label(&secret, "traffic upd", 32);
    }
    expand_label(&secret, "key", 16)
}

fn aes128_key(secrets: ConnectionTrafficSecrets) -> Vec<u8> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, .. } => key.as_ref().to_vec(),
        _ => panic!("not AES-128-GCM"),
    }
}

/// A TLS 1.3 client config offering only [`SUITE`], logging its secrets to
/// the returned log and allowing their extraction, so a test can check the
/// keys both sides ended up with.
fn logging_client(pki: &Pki) -> (Arc<ClientConfig>, Arc<Secrets>) {
    let log = Arc::new(Secrets::default());
    let mut config = (*pki.client_config_with(&[&TLS13], {
        let mut p = rustls::crypto::ring::default_provider();
        p.cipher_suites = vec![SUITE];
        p
    }))
    .clone();
    config.key_log = log.clone();
    config.enable_secret_extraction = true;
    (Arc::new(config), log)
}

/// A client asks for new keys twice (rustls' `refresh_traffic_keys` sends
/// KeyUpdate with update_requested): messages keep flowing both ways, and
/// the keys the client ends up with are the second generation each way,
/// which it only has if the server answered each request with a KeyUpdate
/// of its own and then wrote under its new key.
#[test]
fn rustls_client_key_updates_over_a_real_socket() {
    let pki = Pki::new();
    let server = start(&pki);
    let (config, log) = logging_client(&pki);
    let mut ws = connect(server.local_addr(), &config);
    echo(&mut ws, "before any key update");
    for round in 1..=2 {
        ws.get_mut().conn.refresh_traffic_keys().unwrap();
        for n in 0..3 {
            echo(&mut ws, &format!("after key update {round}, message {n}"));
        }
    }
    // Take the client's connection out of the stream to read its keys.
    let name = ServerName::try_from("localhost").unwrap();
    let spare = ClientConnection::new(config.clone(), name).unwrap();
    let client = std::mem::replace(&mut ws.get_mut().conn, spare);
    let secrets = client.dangerous_extract_secrets().unwrap();
    let server_secret = log.get("SERVER_TRAFFIC_SECRET_0");
    let client_secret = log.get("CLIENT_TRAFFIC_SECRET_0");
    assert_eq!(aes128_key(secrets.tx.1), key_after(&client_secret, 2));
    assert_eq!(
        aes128_key(secrets.rx.1),
        key_after(&server_secret, 2),
        "the server updated its own key once per request"
    );
    // Each generation starts at sequence number 0: the client read the
    // server's three echoes under the newest key.
    assert_eq!(secrets.rx.0, 3);
    let s = server.total_stats();
    assert_eq!(s.tls_handshakes_full, 1, "{s:?}");
}

/// Reads `s_client`'s stdout into a shared buffer.
fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn wait_for(buf: &Mutex<Vec<u8>>, needle: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if buf
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A masked client text frame.
fn frame(text: &str) -> Vec<u8> {
    assert!(text.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// OpenSSL as the peer: `s_client` sends a KeyUpdate when a line `k`
/// (update_not_requested) or `K` (update_requested) arrives on its stdin.
/// After each, an echo still comes back: the server read the client's
/// records under the client's new key, and after `K` OpenSSL decrypted the
/// server's records after the server's own KeyUpdate.
#[test]
fn openssl_s_client_key_updates_over_a_real_socket() {
    if Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl is not installed (the test needs its s_client)");
    }
    let pki = Pki::new();
    let server = start(&pki);
    let mut child = Command::new("openssl")
        .args(["s_client", "-tls1_3", "-servername", "localhost"])
        .arg("-connect")
        .arg(server.local_addr().to_string())
        .arg("-CAfile")
        .arg(pki.ca_path())
        .args(["-verify_return_error", "-no_ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client starts");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let send = |stdin: &mut std::process::ChildStdin, bytes: &[u8]| {
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
        // s_client reads a command letter only at the start of a read:
        // let it take each write on its own.
        std::thread::sleep(Duration::from_millis(300));
    };
    send(
        &mut stdin,
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    );
    wait_for(&out, b"HTTP/1.1 101", "the upgrade");
    let echo_of = |stdin: &mut std::process::ChildStdin, text: &str| {
        send(stdin, &frame(text));
        let mut want = vec![0x81, text.len() as u8];
        want.extend_from_slice(text.as_bytes());
        wait_for(&out, &want, text);
    };
    echo_of(&mut stdin, "before the key updates");
    send(&mut stdin, b"k\n");
    echo_of(&mut stdin, "after k (update_not_requested)");
    send(&mut stdin, b"K\n");
    echo_of(&mut stdin, "after K (update_requested)");
    send(&mut stdin, b"k\n");
    send(&mut stdin, b"K\n");
    echo_of(&mut stdin, "after k and K again");
    let _ = child.kill();
    let _ = child.wait();
    let stderr = String::from_utf8_lossy(&err.lock().unwrap()).into_owned();
    assert_eq!(stderr.matches("KEYUPDATE").count(), 4, "{stderr}");
    let s = server.total_stats();
    assert_eq!(s.tls_handshakes_full, 1, "{s:?}");
}

fn established_pair() -> Pair {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let mut pair = Pair::new(pki.client_config(&[&TLS13]), &ctx, usize::MAX);
    pair.handshake().unwrap();
    assert!(pair.server.uses_own_records());
    assert_eq!(pair.client_sends(b"hello"), b"hello");
    assert_eq!(pair.server_sends(b"world"), b"world");
    pair
}

/// Sends `bytes` to the established server, expects `want`, and that the
/// client receives the fatal alert RFC 8446 names for it.
fn refused(mut pair: Pair, bytes: &[u8], want: RecordError, alert: AlertDescription) {
    let mut plain = Vec::new();
    let mut out = Vec::new();
    let err = pair
        .server
        .read_tls(bytes, &mut pair.scratch, &mut plain, &mut out)
        .unwrap_err();
    match &err {
        TlsError::Record(got) => assert_eq!(got, &want),
        other => panic!("expected {want:?}, got {other}"),
    }
    assert_eq!(err.close_reason(false), TlsCloseReason::BadRecord);
    pair.client.read_tls(&mut &out[..]).unwrap();
    assert_eq!(
        pair.client.process_new_packets().unwrap_err(),
        rustls::Error::AlertReceived(alert)
    );
    // Nothing more is written after a fatal alert.
    let mut more = Vec::new();
    assert!(pair.server.write_plaintext(b"x", &mut more).is_err());
    assert!(more.is_empty());
}

#[test]
fn change_cipher_spec_after_the_handshake_is_unexpected_message() {
    refused(
        established_pair(),
        &[20, 3, 3, 0, 1, 1],
        RecordError::UnexpectedContentType(20),
        AlertDescription::UnexpectedMessage,
    );
}

#[test]
fn an_oversize_record_is_record_overflow_from_its_header() {
    let len = (wsgate::tls::record::MAX_CIPHERTEXT + 1) as u16;
    refused(
        established_pair(),
        &[23, 3, 3, (len >> 8) as u8, len as u8],
        RecordError::CiphertextOverflow(len as usize),
        AlertDescription::RecordOverflow,
    );
}

#[test]
fn a_plaintext_handshake_record_after_the_handshake_is_unexpected_message() {
    refused(
        established_pair(),
        &[22, 3, 3, 0, 4, 24, 0, 0, 0],
        RecordError::UnexpectedContentType(22),
        AlertDescription::UnexpectedMessage,
    );
}

/// In memory, byte by byte: KeyUpdates from the client (each requesting
/// one back) between messages, both ways, with every record split into
/// single bytes.
#[test]
fn key_updates_both_ways_byte_by_byte() {
    let mut pair = established_pair();
    pair.chunk = 1;
    for round in 0..5 {
        pair.client.refresh_traffic_keys().unwrap();
        let text = format!("client {round}");
        assert_eq!(pair.client_sends(text.as_bytes()), text.as_bytes());
        let text = format!("server {round}");
        assert_eq!(pair.server_sends(text.as_bytes()), text.as_bytes());
        assert_eq!(pair.server.buffered(), 0);
    }
}

/// KeyUpdates without application data between them are limited (each
/// costs a key derivation and an answer): the 33rd in a row is refused.
#[test]
fn a_flood_of_key_updates_is_refused() {
    let mut pair = established_pair();
    for _ in 0..32 {
        pair.client.refresh_traffic_keys().unwrap();
    }
    pair.pump().unwrap();
    // Application data resets the count (each way: the rustls client
    // limits the server's answers the same way).
    assert_eq!(pair.client_sends(b"data"), b"data");
    assert_eq!(pair.server_sends(b"data"), b"data");
    for _ in 0..32 {
        pair.client.refresh_traffic_keys().unwrap();
    }
    pair.pump().unwrap();
    pair.client.refresh_traffic_keys().unwrap();
    let mut bytes = Vec::new();
    pair.client.write_tls(&mut bytes).unwrap();
    refused(
        pair,
        &bytes,
        RecordError::TooManyKeyUpdates(32),
        AlertDescription::UnexpectedMessage,
    );
}

/// The server updates its own write key when a key has protected as many
/// records as the suite allows (here lowered to 4): the client reads every
/// message, and ends up with the server's third key generation: the first
/// key also carried the session tickets, so of 8 messages the second key
/// carries 4 and the first and third the rest.
#[test]
fn the_server_updates_its_key_at_the_record_limit() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let (config, log) = logging_client(&pki);
    let mut pair = Pair::new(config, &ctx, usize::MAX);
    pair.handshake().unwrap();
    pair.server.set_write_key_limit(4);
    let mut got = Vec::new();
    for n in 0..8 {
        got.extend(pair.server_sends(format!("message {n};").as_bytes()));
    }
    let want: String = (0..8).map(|n| format!("message {n};")).collect();
    assert_eq!(String::from_utf8(got).unwrap(), want);
    let secrets = pair.client.dangerous_extract_secrets().unwrap();
    let server_secret = log.get("SERVER_TRAFFIC_SECRET_0");
    assert_eq!(aes128_key(secrets.rx.1), key_after(&server_secret, 2));
    assert!((1..4).contains(&secrets.rx.0), "{}", secrets.rx.0);
}

/// TLS 1.2 stays on rustls, and works as before.
#[test]
fn tls12_connections_stay_on_rustls() {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let mut pair = Pair::new(pki.client_config(&[&TLS12]), &ctx, 3);
    pair.handshake().unwrap();
    assert!(!pair.server.uses_own_records());
    assert_eq!(pair.client_sends(b"hello"), b"hello");
    assert_eq!(pair.server_sends(b"world"), b"world");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever arrives after the handshake, in whatever pieces: no
    /// panic, and the server never holds more than one record's bytes.
    /// Half the inputs start with a valid record header (so the bytes
    /// reach decryption and the inner-content checks), half are raw.
    #[test]
    fn any_bytes_after_the_handshake_never_panic_or_overbuffer(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
        header in proptest::prelude::any::<bool>(),
        chunk in 1usize..5_000,
    ) {
        let mut pair = established_pair();
        let mut bytes = Vec::new();
        if header {
            let len = (body.len() as u16).min(wsgate::tls::record::MAX_CIPHERTEXT as u16);
            bytes.extend_from_slice(&[23, 3, 3, (len >> 8) as u8, len as u8]);
        }
        bytes.extend_from_slice(&body);
        let limit = wsgate::tls::record::HEADER_LEN + wsgate::tls::record::MAX_CIPHERTEXT;
        for piece in bytes.chunks(chunk) {
            let (mut plain, mut out) = (Vec::new(), Vec::new());
            let result = pair.server.read_tls(piece, &mut pair.scratch, &mut plain, &mut out);
            proptest::prop_assert!(pair.server.buffered() < limit);
            proptest::prop_assert!(plain.is_empty(), "nothing forged decrypts");
            if result.is_err() {
                break;
            }
        }
    }
}
