//! wss:// end to end over real sockets: the server started with a test
//! certificate (issued at test time by rcgen, never committed), and real
//! clients: rustls + tungstenite in this process (TLS 1.2 and 1.3,
//! resumption, reload, large messages, fan-out), Python `websockets` with an
//! `ssl` context trusting the test CA, Node `ws`; hostile peers (garbage,
//! truncated and slowloris ClientHellos) closed within the limits.

mod common;
#[path = "support/tls.rs"]
mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, http};
use rustls::pki_types::ServerName;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, StreamOwned};
use tls::Pki;
use tungstenite::{Message, WebSocket};
use wsgate::config::AppKind;

type TlsWs = WebSocket<StreamOwned<ClientConnection, TcpStream>>;

/// A server for `pki`'s current files.
fn start(
    pki: &Pki,
    app: AppKind,
    admin: bool,
    tweak: impl FnOnce(&mut wsgate::Config),
) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.app = app;
    cfg.workers = Some(2);
    if !admin {
        cfg.admin_listen = None;
    }
    cfg.tls_cert = Some(pki.cert_path());
    cfg.tls_key = Some(pki.key_path());
    tweak(&mut cfg);
    wsgate::start(cfg).expect("server starts")
}

fn issue(pki: &Pki) -> tls::Leaf {
    let leaf = pki.leaf();
    pki.install(&leaf);
    leaf
}

/// A wss:// client: TLS with `config`, then the WebSocket upgrade.
fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsWs {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let stream = StreamOwned::new(conn, tcp);
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (ws, _) = tungstenite::client::client(url, stream).expect("wss upgrade");
    ws
}

fn echo(ws: &mut TlsWs, text: &str) {
    ws.send(Message::text(text)).unwrap();
    match ws.read().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), text),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// Closes `ws` and reads until the server ended the TLS stream cleanly
/// (close_notify before its FIN: a bare FIN is an error here).
fn close_cleanly(ws: &mut TlsWs) {
    ws.close(None).unwrap();
    read_to_clean_end(ws);
}

/// Reads until the close handshake is over and the TLS stream ended with
/// close_notify.
fn read_to_clean_end(ws: &mut TlsWs) {
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("unclean close: {e}"),
        }
    }
}

/// `wsgate_tls_reloads_total` by result, as /metrics shows it.
fn assert_reload_counts(admin: SocketAddr, ok: u32, failed: u32) {
    let (_, metrics) = http(admin, "GET", "/metrics", "");
    for (result, n) in [("ok", ok), ("failed", failed)] {
        let line = format!("wsgate_tls_reloads_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "no `{line}` in {metrics}");
    }
}

fn tls_of(ws: &TlsWs) -> &ClientConnection {
    &ws.get_ref().conn
}

#[test]
fn echo_over_tls13_and_tls12() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::Echo, false, |_| {});
    for (version, want) in [
        (&TLS13, ProtocolVersion::TLSv1_3),
        (&TLS12, ProtocolVersion::TLSv1_2),
    ] {
        let config = pki.client_config(&[version]);
        let mut ws = connect(server.local_addr(), &config);
        assert_eq!(tls_of(&ws).protocol_version(), Some(want));
        assert_eq!(tls_of(&ws).alpn_protocol(), Some(&b"http/1.1"[..]));
        for n in 0..20 {
            echo(&mut ws, &format!("hello {n} over {want:?}"));
        }
        close_cleanly(&mut ws);
    }
    let s = server.total_stats();
    assert_eq!(s.tls_handshakes_full, 2, "{s:?}");
}

/// `--tls-min-version 1.3`: a client that speaks only TLS 1.2 gets a
/// protocol_version alert and no connection; a TLS 1.3 client is served as
/// before. With the default (1.2) the same TLS 1.2-only client is served
/// (`echo_over_tls13_and_tls12`).
#[test]
fn tls_min_version_1_3_refuses_a_tls12_only_client() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::Echo, false, |c| {
        c.tls_min_version = wsgate::config::TlsMinVersion::Tls13;
    });
    let mut tcp = TcpStream::connect(server.local_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(pki.client_config(&[&TLS12]), name).unwrap();
    let refused = loop {
        match client.complete_io(&mut tcp) {
            Ok(_) if client.is_handshaking() => continue,
            Ok(_) => panic!("a TLS 1.2-only client completed a handshake"),
            Err(e) => break e,
        }
    };
    let alert = refused
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        alert,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::ProtocolVersion
        )),
        "{refused}"
    );

    let mut ws = connect(server.local_addr(), &pki.client_config(&[&TLS13, &TLS12]));
    assert_eq!(
        tls_of(&ws).protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    echo(&mut ws, "served over TLS 1.3");
    close_cleanly(&mut ws);
    let s = server.total_stats();
    assert_eq!(s.tls_handshakes_full, 1, "{s:?}");
}

/// `wsgate_bytes_in`/`_out` count WebSocket bytes on a TLS connection as
/// on a plain one: a 100-byte text echo is a 106-byte masked frame in and a
/// 102-byte frame out, not the 22 bytes more of its TLS 1.3 record.
#[test]
fn byte_counters_count_websocket_bytes_not_records() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::Echo, false, |_| {});
    let config = pki.client_config(&[&TLS13]);
    let mut ws = connect(server.local_addr(), &config);
    // The worker counts a write after it returns, which may be after the
    // client has read the reply: read the counters once they are still.
    let settled = || {
        let mut last = server.total_stats();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = server.total_stats();
            if (now.bytes_in, now.bytes_out) == (last.bytes_in, last.bytes_out) {
                return now;
            }
            last = now;
        }
    };
    echo(&mut ws, "warm-up");
    let before = settled();
    let text = "x".repeat(100);
    echo(&mut ws, &text);
    let after = settled();
    assert_eq!(after.bytes_in - before.bytes_in, 2 + 4 + 100, "{after:?}");
    assert_eq!(after.bytes_out - before.bytes_out, 2 + 100, "{after:?}");
}

#[test]
fn large_messages_both_ways_through_batched_records() {
    // 4 MiB each way: many 16 KiB records, the socket fills, ciphertext
    // waits in the one pending batch and the rest in the session's queue.
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::Echo, false, |_| {});
    let config = pki.client_config(&[&TLS13]);
    let mut ws = connect(server.local_addr(), &config);
    let big: Vec<u8> = common::pseudo_random(7, 4 << 20);
    ws.send(Message::binary(big.clone())).unwrap();
    match ws.read().unwrap() {
        Message::Binary(b) => assert!(b[..] == big[..], "echo differs"),
        other => panic!("expected binary, got {other:?}"),
    }
    echo(&mut ws, "still fine");
}

#[test]
fn tls13_and_tls12_resume() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::Echo, false, |_| {});
    for version in [&TLS13, &TLS12] {
        let config = pki.client_config(&[version]);
        let mut first = connect(server.local_addr(), &config);
        // TLS 1.3 tickets arrive after the handshake: one round trip reads them.
        echo(&mut first, "first");
        assert_eq!(tls_of(&first).handshake_kind(), Some(HandshakeKind::Full));
        let mut again = connect(server.local_addr(), &config);
        echo(&mut again, "again");
        assert_eq!(
            tls_of(&again).handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{version:?} did not resume"
        );
    }
    let s = server.total_stats();
    assert_eq!(
        (s.tls_handshakes_full, s.tls_handshakes_resumed),
        (2, 2),
        "{s:?}"
    );
}

#[test]
fn reload_serves_the_new_certificate_and_keeps_old_clients_and_refuses_a_bad_file() {
    let pki = Pki::new();
    let old = issue(&pki);
    let server = start(&pki, AppKind::Echo, true, |_| {});
    let admin = server.admin_addr().unwrap();
    let config = pki.client_config(&[&TLS13]);
    let leaf_of = |ws: &TlsWs| tls_of(ws).peer_certificates().unwrap()[0].clone();

    let mut old_client = connect(server.local_addr(), &config);
    assert_eq!(leaf_of(&old_client), old.der);

    let new = issue(&pki);
    let (status, body) = http(admin, "POST", "/reload-tls", "");
    assert_eq!(status, 200, "{body}");
    // A fresh config: no ticket, so a full handshake that shows the leaf.
    let fresh = pki.client_config(&[&TLS13]);
    let mut new_client = connect(server.local_addr(), &fresh);
    assert_eq!(leaf_of(&new_client), new.der);
    echo(&mut new_client, "new");
    echo(&mut old_client, "old client keeps talking");

    // A broken file is refused; the pair in use stays.
    std::fs::write(
        pki.cert_path(),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    let (status, body) = http(admin, "POST", "/reload-tls", "");
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("cert.pem"),
        "the error names the file: {body}"
    );
    assert_eq!(server.reload_tls().map(|r| r.is_err()), Some(true));
    let mut after = connect(server.local_addr(), &pki.client_config(&[&TLS13]));
    assert_eq!(leaf_of(&after), new.der);
    echo(&mut after, "after a refused reload");
    echo(&mut old_client, "old client still talking");

    assert_reload_counts(admin, 1, 2);
}

#[test]
fn garbage_and_truncated_client_hellos_are_closed_and_counted() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::Echo, false, |c| {
        c.handshake_timeout = Duration::from_millis(800);
    });
    // Plain HTTP to a TLS port: not a TLS record; closed at once.
    let mut plain = TcpStream::connect(server.local_addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(common::upgrade_request("/ws", common::SAMPLE_KEY).as_bytes())
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    // An alert (a few bytes), then EOF; never an HTTP answer.
    let mut got = Vec::new();
    loop {
        match plain.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "garbage took {:?}",
        t0.elapsed()
    );
    assert!(!got.starts_with(b"HTTP"), "answered in plaintext: {got:?}");
    eventually(Duration::from_secs(3), "garbage counted", || {
        server.total_stats().tls_failed_handshake >= 1
    });

    // A truncated ClientHello (a record header promising more), then
    // silence, and a slowloris trickling a byte at a time: both closed by
    // the handshake timeout, counted as handshake timeouts.
    let hello = client_hello(&pki);
    let mut truncated = TcpStream::connect(server.local_addr()).unwrap();
    truncated.write_all(&hello[..hello.len() / 2]).unwrap();
    let mut slow = TcpStream::connect(server.local_addr()).unwrap();
    slow.set_nodelay(true).unwrap();
    let t0 = Instant::now();
    let mut sent = 0;
    let mut slow_closed = None;
    while t0.elapsed() < Duration::from_secs(4) && sent < hello.len() - 1 {
        if slow.write_all(&hello[sent..sent + 1]).is_err() {
            slow_closed = Some(t0.elapsed());
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
        slow.set_nonblocking(true).unwrap();
        let r = slow.read(&mut buf);
        slow.set_nonblocking(false).unwrap();
        if matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
        {
            slow_closed = Some(t0.elapsed());
            break;
        }
    }
    let closed_in = slow_closed.expect("slowloris handshake never closed");
    assert!(
        closed_in < Duration::from_millis(2500),
        "closed after {closed_in:?}"
    );
    truncated
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert!(
        matches!(truncated.read(&mut buf), Ok(0) | Err(_)),
        "truncated hello kept open"
    );
    eventually(Duration::from_secs(3), "timeouts counted", || {
        server.total_stats().handshake_timeouts >= 2
    });
    common::assert_workers_alive(&server);
    echo(
        &mut connect(server.local_addr(), &pki.client_config(&[&TLS13])),
        "still serving",
    );
}

/// A real ClientHello, as the rustls client sends it first.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let config = pki.client_config(&[&TLS13, &TLS12]);
    let mut c = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    assert!(out.len() > 100);
    out
}

#[test]
fn oversized_handshake_is_closed_at_the_handshake_budget() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::Echo, false, |c| c.tls_handshake_buffer = 512);
    let hello = client_hello(&pki);
    // Valid record headers (handshake, TLS 1.0) carrying one handshake
    // message that claims 64 KiB: it can only be buffered, never parsed.
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut body = vec![1u8, 0x01, 0x00, 0x00];
    body.extend(std::iter::repeat_n(0u8, 4000));
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend((body.len() as u16).to_be_bytes());
    rec.extend(&body);
    let _ = s.write_all(&rec);
    let mut buf = [0u8; 64];
    let mut eof = false;
    for _ in 0..10 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {
                eof = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(eof, "oversized handshake kept open");
    eventually(Duration::from_secs(3), "counted", || {
        let st = server.total_stats();
        st.tls_failed_too_large + st.tls_failed_handshake >= 1
    });
    drop(hello);
}

#[test]
fn pubsub_fan_out_reaches_tls_subscribers() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::PubSub, false, |_| {});
    let config = pki.client_config(&[&TLS13]);
    let mut subs: Vec<TlsWs> = (0..4)
        .map(|_| connect(server.local_addr(), &config))
        .collect();
    for s in &mut subs {
        s.send(Message::text(r#"{"type":"subscribe","topic":"t"}"#))
            .unwrap();
        let ack: serde_json::Value =
            serde_json::from_str(s.read().unwrap().to_text().unwrap()).unwrap();
        assert_eq!(ack["type"], "subscribed");
    }
    let mut publisher = connect(server.local_addr(), &config);
    let n = 300;
    for i in 0..n {
        let msg = serde_json::json!({"type":"publish","topic":"t","payload":{"i": i, "pad": "y".repeat(700)}});
        publisher.send(Message::text(msg.to_string())).unwrap();
    }
    for s in &mut subs {
        for i in 0..n {
            let m: serde_json::Value =
                serde_json::from_str(s.read().unwrap().to_text().unwrap()).unwrap();
            assert_eq!(m["type"], "message", "{m}");
            assert_eq!(m["payload"]["i"], i, "out of order: {m}");
        }
    }
}

/// A TLS subscriber that stops reading is cut with 1008 like a plain one
/// (on either loop): what it does not take waits as plaintext in its
/// session's queue, where `--max-outbound-bytes` and the slow-consumer
/// rule see it, not as ciphertext piling up in the loop (the io_uring
/// loop's ring takes one batch beyond what is in flight).
#[test]
fn a_tls_subscriber_that_stops_reading_is_cut_as_a_slow_consumer() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::PubSub, false, |cfg| {
        cfg.max_outbound_bytes = 256 << 10;
    });
    let config = pki.client_config(&[&TLS13]);
    let mut slow = connect(server.local_addr(), &config);
    slow.send(Message::text(r#"{"type":"subscribe","topic":"s"}"#))
        .unwrap();
    slow.read().unwrap();
    let mut publisher = connect(server.local_addr(), &config);
    let big = format!(
        r#"{{"type":"publish","topic":"s","payload":"{}"}}"#,
        "z".repeat(60 << 10)
    );
    eventually(Duration::from_secs(30), "slow consumer cut", || {
        for _ in 0..16 {
            publisher.send(Message::text(big.clone())).unwrap();
        }
        server.total_stats().slow_consumers > 0
    });
    // It reads now: what the kernel and the ring held, then 1008.
    slow.get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let code = loop {
        match slow.read() {
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(Message::Text(t)) => assert!(t.len() > 60 << 10, "delivery altered"),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, 1008);
    let s = server.total_stats();
    assert_eq!(s.slow_consumers, 1, "{s:?}");
}

#[test]
fn start_refuses_a_bad_certificate_naming_the_flag() {
    let pki = Pki::new();
    issue(&pki);
    std::fs::write(pki.key_path(), "no key here").unwrap();
    let mut cfg = wsgate::Config::for_tests();
    cfg.admin_listen = None;
    cfg.tls_cert = Some(pki.cert_path());
    cfg.tls_key = Some(pki.key_path());
    let err = wsgate::start(cfg).err().expect("refused");
    let text = err.to_string();
    assert!(text.starts_with("--tls-cert/--tls-key:"), "{text}");
    assert!(text.contains("key.pem"), "{text}");
    // Each flag needs the other.
    let mut half = wsgate::Config::for_tests();
    half.admin_listen = None;
    half.tls_cert = Some(pki.cert_path());
    let e = wsgate::start(half).err().expect("refused");
    assert_eq!(e.to_string(), "--tls-cert needs --tls-key too");
}

/// wss:// on both event loops, whatever `WSGATE_IO_BACKEND` says: a rustls
/// client echoes small and large messages (TLS 1.3 and 1.2) and gets a
/// clean close (close_notify before the FIN, or the read below fails), and
/// Python `websockets` echoes too; the io_uring server really ran on its
/// ring and counted its handshakes.
#[test]
fn wss_echo_works_on_both_event_loops() {
    use wsgate::config::IoBackend;
    let pki = Pki::new();
    issue(&pki);
    for backend in [IoBackend::Epoll, IoBackend::IoUring] {
        let server = start(&pki, AppKind::Echo, false, |cfg| cfg.io_backend = backend);
        for version in [&TLS13, &TLS12] {
            let mut ws = connect(server.local_addr(), &pki.client_config(&[version]));
            for n in 0..10 {
                echo(&mut ws, &format!("hello {n} on {backend:?}"));
            }
            // Larger than a batch: several records, several ring sends.
            let big = "x".repeat(300_000);
            echo(&mut ws, &big);
            close_cleanly(&mut ws);
        }
        let s = server.total_stats();
        assert_eq!(s.tls_handshakes_full, 2, "{backend:?}: {s:?}");
        assert_eq!(
            s.uring_enters > 0,
            backend == IoBackend::IoUring,
            "{backend:?} ran on the wrong loop: {s:?}"
        );
    }
    // A second real client, on the io_uring loop: Python `websockets`
    // against the pub/sub app (fan-out through TLS), TLS 1.3 and 1.2 with
    // session reuse.
    let server = start(&pki, AppKind::PubSub, false, |cfg| {
        cfg.io_backend = IoBackend::IoUring
    });
    python_clients(&pki, &server);
    let s = server.total_stats();
    assert!(s.uring_enters > 0, "{s:?}");
}

/// Python `websockets` over TLS 1.3 and 1.2 against `server`'s pub/sub app
/// (tests/python/tls_client.py); the TLS 1.2 reconnect resumes.
fn python_clients(pki: &Pki, server: &wsgate::ServerHandle) {
    let url = format!("wss://localhost:{}/ws", server.local_addr().port());
    let ca = pki.ca_path();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/tls_client.py");
    for version in ["1.3", "1.2"] {
        run_client(
            "python3",
            &[script, &url, ca.to_str().unwrap(), version],
            "needs python3 -m pip install websockets (tests/run-all.sh does)",
        );
    }
    let s = server.total_stats();
    assert!(s.tls_handshakes_resumed >= 1, "{s:?}");
}

/// Runs a client program and asserts it printed "ok".
fn run_client(program: &str, args: &[&str], install_hint: &str) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} ({install_hint})"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{program} {args:?} failed ({install_hint}):\n{stdout}\n{stderr}"
    );
}

#[test]
fn python_websockets_over_tls13_and_tls12_with_session_reuse() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::PubSub, false, |_| {});
    python_clients(&pki, &server);
}

#[test]
fn node_ws_over_tls() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
    assert!(
        Path::new(dir).join("node_modules/ws").is_dir(),
        "tests/node has no node_modules: run `npm ci` there (tests/run-all.sh does)"
    );
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::PubSub, false, |_| {});
    let url = format!("wss://localhost:{}/ws", server.local_addr().port());
    let ca = pki.ca_path();
    run_client(
        "node",
        &[&format!("{dir}/tls-client.js"), &url, ca.to_str().unwrap()],
        "needs node and `npm ci` in tests/node",
    );
    assert!(server.total_stats().tls_handshakes_full >= 2);
}

#[test]
fn sighup_reloads_the_certificate_without_a_shutdown_and_refuses_a_bad_file() {
    let pki = Pki::new();
    let old = issue(&pki);
    let dir = common::temp_dir("tls-hup");
    let log_path = dir.path().join("wsgate.log");
    let port = common::free_port();
    let admin_port = common::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args(["--app", "echo", "--workers", "2", "--log-level", "info"])
        .env("WSGATE_TLS_CERT", pki.cert_path())
        .env("WSGATE_TLS_KEY", pki.key_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let mut proc = common::Proc(cmd.spawn().expect("spawn wsgate"));
    proc.wait_listening(port, Duration::from_secs(10));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let leaf_of = |ws: &TlsWs| tls_of(ws).peer_certificates().unwrap()[0].clone();
    let fresh = || pki.client_config(&[&TLS13]);

    let mut old_client = connect(addr, &fresh());
    assert_eq!(leaf_of(&old_client), old.der);
    let new = issue(&pki);
    proc.signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), "new certificate served", || {
        leaf_of(&connect(addr, &fresh())) == new.der
    });
    echo(&mut old_client, "kept across the reload");

    // A bad file: refused, logged, the new pair stays, nothing shuts down.
    std::fs::write(
        pki.key_path(),
        "-----BEGIN PRIVATE KEY-----\n\u{1b}[31mnot a key\n",
    )
    .unwrap();
    proc.signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), "refusal logged", || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .contains("TLS certificate reload refused")
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains('\u{1b}'),
        "unescaped control bytes in the log: {log}"
    );
    assert!(
        proc.0.try_wait().unwrap().is_none(),
        "SIGHUP stopped the server"
    );
    assert_eq!(
        http(admin, "GET", "/readyz", "").0,
        200,
        "SIGHUP started a drain"
    );
    let mut after = connect(addr, &fresh());
    assert_eq!(leaf_of(&after), new.der);
    echo(&mut after, "after a refused reload");
    echo(&mut old_client, "old client still talking");
    assert_reload_counts(admin, 1, 1);
    assert!(log.contains("wss://"), "start-up line names wss://: {log}");
}

#[test]
fn headless_chromium_exchanges_messages_over_wss() {
    use std::os::unix::process::CommandExt;
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::PubSub, false, |_| {});
    let port = server.local_addr().port();
    // The test's own subscriber hears what the page publishes.
    let mut watcher = connect(server.local_addr(), &pki.client_config(&[&TLS13]));
    watcher
        .send(Message::text(r#"{"type":"subscribe","topic":"browser"}"#))
        .unwrap();
    assert!(watcher
        .read()
        .unwrap()
        .to_text()
        .unwrap()
        .contains("subscribed"));
    watcher
        .get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let dir = common::temp_dir("tls-chromium");
    let page = dir.path().join("page.html");
    std::fs::write(
        &page,
        format!(
            r#"<!doctype html><script>
const ws = new WebSocket("wss://localhost:{port}/ws");
ws.onopen = () => ws.send(JSON.stringify({{type: "echo", payload: {{from: "chromium"}}}}));
ws.onmessage = (e) => {{
  const m = JSON.parse(e.data);
  if (m.payload && m.payload.from === "chromium")
    ws.send(JSON.stringify({{type: "publish", topic: "browser", payload: {{echoed: m.payload}}}}));
}};
</script>"#
        ),
    )
    .unwrap();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = dir.path().join("profile");
    let mut cmd = Command::new(&chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        // The page trusts the test certificate this way; the server side
        // is the same as with a real one.
        "--ignore-certificate-errors",
        &format!("--user-data-dir={}", profile.display()),
        &format!("file://{}", page.display()),
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .process_group(0);
    let _browser = common::Proc(cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {chromium}: {e} (apt-get install chromium; tests/run-all.sh does)")
    }));
    let got: serde_json::Value = serde_json::from_str(
        watcher
            .read()
            .expect("the page published")
            .to_text()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(got["type"], "message", "{got}");
    assert_eq!(got["payload"]["echoed"]["from"], "chromium", "{got}");
    assert!(server.total_stats().tls_handshakes_full >= 2);
}

/// A stream that reads at most 4 KiB at a time, 1 ms apart: a slow reader
/// that keeps the server's socket full.
struct Slow<S>(S);

impl<S: Read> Read for Slow<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(1));
        let n = buf.len().min(4096);
        self.0.read(&mut buf[..n])
    }
}

impl<S: Write> Write for Slow<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn a_slow_reader_gets_everything_before_the_close_even_at_the_last_batch() {
    // The client sends a big message and its close frame at once, then
    // reads slowly: the echo, the server's close frame and close_notify all
    // wait behind a full socket. The connection is done (both close frames)
    // only once the last encrypted batch has left, not when the session's
    // own queue is empty.
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::Echo, false, |_| {});
    let config = pki.client_config(&[&TLS13]);
    for round in 0..3 {
        let tcp = TcpStream::connect(server.local_addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let sock = tcp.try_clone().unwrap();
        // A small receive buffer keeps the server's socket full.
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(16 * 1024)
            .unwrap();
        let conn =
            ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let stream = Slow(StreamOwned::new(conn, tcp));
        let url = format!("wss://localhost:{}/ws", server.local_addr().port());
        let (mut ws, _) = tungstenite::client::client(url, stream).unwrap();
        let big = common::pseudo_random(round, 3 << 20);
        ws.send(Message::binary(big.clone())).unwrap();
        ws.close(None).unwrap();
        let mut echoed = None;
        let mut close = None;
        loop {
            match ws.read() {
                Ok(Message::Binary(b)) => echoed = Some(b),
                Ok(Message::Close(c)) => close = Some(c),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!(
                    "round {round}: {e} (echo {}, close {close:?})",
                    echoed.is_some()
                ),
            }
        }
        assert!(
            echoed.is_some_and(|b| b[..] == big[..]),
            "round {round}: echo lost"
        );
        drop(sock);
    }
}

#[test]
fn a_drain_closes_tls_clients_with_1001() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::PubSub, false, |c| {
        c.drain_timeout = Duration::from_secs(3);
    });
    let config = pki.client_config(&[&TLS13, &TLS12]);
    let mut clients: Vec<TlsWs> = (0..3)
        .map(|_| connect(server.local_addr(), &config))
        .collect();
    for c in &mut clients {
        c.send(Message::text(r#"{"type":"subscribe","topic":"d"}"#))
            .unwrap();
        c.read().unwrap();
    }
    server.shutdown();
    for c in &mut clients {
        let code = loop {
            match c.read() {
                Ok(Message::Close(Some(f))) => break u16::from(f.code),
                Ok(Message::Close(None)) => panic!("close without a code"),
                Ok(_) => {}
                Err(e) => panic!("no close frame: {e}"),
            }
        };
        assert_eq!(code, 1001);
        // Our answer completes the close handshake.
        read_to_clean_end(c);
    }
    server.join();
}

#[test]
fn handshaking_caps_apply_from_accept_on_a_tls_listener() {
    let pki = Pki::new();
    issue(&pki);
    let server = start(&pki, AppKind::Echo, false, |c| {
        c.max_handshaking_per_ip = 2;
        c.handshake_timeout = Duration::from_secs(5);
    });
    // Two connections that never finish (or start) their TLS handshake
    // hold this address's allowance...
    let _a = TcpStream::connect(server.local_addr()).unwrap();
    let _b = TcpStream::connect(server.local_addr()).unwrap();
    eventually(Duration::from_secs(3), "both accepted", || {
        server.total_stats().accepted >= 2
    });
    // ...so a third is closed at once, with no plaintext answer.
    let mut c = TcpStream::connect(server.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "answered {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(server.total_stats().rejected_unavailable >= 1);
    drop((_a, _b));
    // With them gone, TLS clients get in again.
    eventually(Duration::from_secs(3), "both released", || {
        server.total_stats().closed >= 2
    });
    echo(
        &mut connect(server.local_addr(), &pki.client_config(&[&TLS13])),
        "in",
    );
}

/// Two servers sharing a `--tls-ticket-keys` file (two nodes behind an L4
/// balancer, or a restart): a ticket from one resumes on the other. Without
/// the file each has its own keys and the second handshake is full.
#[test]
fn a_shared_ticket_key_file_resumes_across_servers() {
    let pki = Pki::new();
    issue(&pki);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("ticket.keys");
    std::fs::write(
        &keys,
        "# rotate: new key first\n\
         6f1d0c2b3a495867768594a3b2c1d0e0f1e2d3c4b5a697887766554433221100\n",
    )
    .unwrap();
    for (shared, want) in [(true, HandshakeKind::Resumed), (false, HandshakeKind::Full)] {
        let with_keys = |c: &mut wsgate::Config| {
            if shared {
                c.tls_ticket_keys = Some(keys.clone());
            }
        };
        let a = start(&pki, AppKind::Echo, false, with_keys);
        let b = start(&pki, AppKind::Echo, false, with_keys);
        let config = pki.client_config(&[&TLS13]);
        let mut first = connect(a.local_addr(), &config);
        echo(&mut first, "on a");
        assert_eq!(tls_of(&first).handshake_kind(), Some(HandshakeKind::Full));
        let mut moved = connect(b.local_addr(), &config);
        echo(&mut moved, "on b");
        assert_eq!(
            tls_of(&moved).handshake_kind(),
            Some(want),
            "shared key file: {shared}"
        );
        assert_eq!(b.total_stats().tls_handshakes_resumed, u64::from(shared));
    }
    // A malformed file stops the start, naming the flag and the line.
    std::fs::write(&keys, "not a key\n").unwrap();
    let mut cfg = wsgate::Config::for_tests();
    cfg.admin_listen = None;
    cfg.tls_cert = Some(pki.cert_path());
    cfg.tls_key = Some(pki.key_path());
    cfg.tls_ticket_keys = Some(keys.clone());
    let text = wsgate::start(cfg).err().expect("refused").to_string();
    assert!(
        text.starts_with("--tls-ticket-keys:") && text.contains("line 1"),
        "{text}"
    );
}
