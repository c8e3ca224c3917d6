//! One attacker against everyone else, over real sockets: whatever one
//! client sends, it may cost that client its connection, never another
//! client theirs, a worker, or the process's health.
//!
//! Covers: a handshake that panicked the JWT code, a bug hit inside one
//! connection's processing (debug-build trigger), a worker that dies anyway
//! (health turns 503), half-open handshakes from one address, silent
//! clients under `--defer-accept`, a request head sent a byte per segment,
//! and client text reaching the log.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use wsgate::protocol::frame::OpCode;

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x).
fn try_connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: IpAddr = from.parse().unwrap();
    socket
        .bind(&SocketAddr::new(local, 0).into())
        .expect("bind a loopback source address");
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let tcp: TcpStream = socket.into();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(READ_WITHIN)).unwrap();
    Ok(tcp)
}

fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    try_connect_from(from, to).expect("connect")
}

/// GET on the admin listener: (status, body).
fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    http(admin, "GET", path, "")
}

/// The value of one sample (exact name and labels) in a /metrics text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[test]
fn a_non_ascii_authorization_header_gets_401_and_every_worker_survives() {
    let server = start_echo(|c| c.jwt_secret = Some("s3cret".into()));
    // 'é' straddles byte 7 of the value: slicing there panicked a worker
    // per handshake, so a few of these took every worker down.
    for _ in 0..8 {
        let mut c = RawClient::connect(server.local_addr());
        let req = upgrade_request("/ws", SAMPLE_KEY)
            .replace("\r\n\r\n", "\r\nAuthorization: Bearer\u{e9}x\r\n\r\n");
        c.send(req.as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 401, "{:?}", r.head);
    }
    assert_workers_alive(&server);
    assert!(server.workers_alive());
    assert_eq!(server.total_stats().panics, 0, "fixed, not merely caught");
}

#[test]
fn a_token_expiring_at_the_end_of_time_does_not_overflow_the_expiry_clock() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let server = start_echo(|c| {
        c.jwt_secret = Some("s3cret".into());
        // exp + grace is computed when the heartbeat timer is set (at the
        // upgrade) and every time it fires.
        c.jwt_expiry_grace = Duration::from_secs(30);
        c.ping_interval = Duration::from_millis(100);
    });
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "exp": u64::MAX }),
        &EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap();
    let mut c = RawClient::connect(server.local_addr());
    let req = upgrade_request("/ws", SAMPLE_KEY).replace(
        "\r\n\r\n",
        &format!("\r\nAuthorization: Bearer {token}\r\n\r\n"),
    );
    c.send(req.as_bytes());
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    // Silent past the ping interval: the heartbeat ran and pinged.
    assert_eq!(c.frame().0, OpCode::Ping);
    c.send_frame(true, OpCode::Text, b"still here");
    assert_eq!(c.frame(), (OpCode::Text, b"still here".to_vec()));
    assert_workers_alive(&server);
    assert_eq!(server.total_stats().panics, 0);
}

#[test]
// The trigger exists only in debug builds (the default for `cargo test`).
#[cfg(debug_assertions)]
fn a_panic_closes_only_its_connection_with_1011_and_is_counted() {
    let server = start_echo(|c| {
        // One worker: the bystanders share the panicking connection's loop.
        c.workers = Some(1);
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.debug_panic_trigger = true;
    });
    let addr = server.local_addr();
    let mut bystanders: Vec<RawClient> = (0..3).map(|_| RawClient::upgraded(addr)).collect();
    // One bystander is mid-message when the bug hits.
    bystanders[2].send_frame(false, OpCode::Text, b"first half, ");
    for round in 1..=2u64 {
        let mut victim = RawClient::upgraded(addr);
        victim.send_frame(
            true,
            OpCode::Text,
            wsgate::config::DEBUG_PANIC_MESSAGE.as_bytes(),
        );
        victim.expect_close(1011);
        assert_eq!(server.total_stats().panics, round);
        for (i, b) in bystanders.iter_mut().enumerate().take(2) {
            let text = format!("bystander {i} round {round}");
            b.send_frame(true, OpCode::Text, text.as_bytes());
            assert_eq!(b.frame(), (OpCode::Text, text.into_bytes()));
        }
    }
    bystanders[2].send_frame(true, OpCode::Continuation, b"second half");
    assert_eq!(
        bystanders[2].frame(),
        (OpCode::Text, b"first half, second half".to_vec())
    );
    let (status, metrics) = admin_get(server.admin_addr().unwrap(), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, "wsgate_panics_total{worker=\"0\"}"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(admin_get(server.admin_addr().unwrap(), "/readyz").0, 200);
    assert_eq!(server.total_stats().open, 3);
    assert_healthy(&server);
}

#[test]
// The trigger exists only in debug builds (the default for `cargo test`).
#[cfg(debug_assertions)]
fn a_worker_that_dies_turns_readyz_and_healthz_503() {
    let server = start_echo(|c| c.admin_listen = Some("127.0.0.1:0".parse().unwrap()));
    let admin = server.admin_addr().unwrap();
    assert_eq!(admin_get(admin, "/readyz").0, 200);
    assert_eq!(admin_get(admin, "/healthz").0, 200);
    // A bug outside any connection's guarded processing kills the thread.
    server.debug_kill_worker(0);
    eventually(
        Duration::from_secs(5),
        "readyz reports the dead worker",
        || admin_get(admin, "/readyz").0 == 503,
    );
    let (status, body) = admin_get(admin, "/readyz");
    assert_eq!(status, 503);
    assert!(body.contains("worker down"), "{body}");
    assert_eq!(admin_get(admin, "/healthz").0, 503);
    assert!(!server.workers_alive());
    let (_, metrics) = admin_get(admin, "/metrics");
    assert_eq!(
        sample(&metrics, "wsgate_worker_up{worker=\"0\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "wsgate_worker_up{worker=\"1\"}"),
        Some(1.0)
    );
    // The surviving worker still serves (the dead one's listener left the
    // port's group with it).
    for _ in 0..4 {
        assert_still_serves(server.local_addr());
    }
}

/// Runs the wsgate binary with at most `nofile` descriptors.
fn wsgate_with_nofile(nofile: u32, port: u16, admin: u16, extra: &[&str]) -> Proc {
    let bin = env!("CARGO_BIN_EXE_wsgate");
    let mut p = Proc(
        Command::new("bash")
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--app", "echo", "--workers", "2", "--log-level", "error"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wsgate under bash"),
    );
    p.wait_listening(port, Duration::from_secs(10));
    p.wait_listening(admin, Duration::from_secs(10));
    p
}

#[test]
fn half_open_handshakes_from_one_address_do_not_lock_out_another() {
    let (port, admin_port) = (free_port(), free_port());
    // 1,024 descriptors: 2,000 half-open handshakes would exhaust them;
    // the default cap lets one address hold 512.
    let _server = wsgate_with_nofile(1024, port, admin_port, &["--handshake-timeout", "60s"]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut attacker = Vec::with_capacity(2000);
    for _ in 0..2000 {
        // The attacker does not care whether each attempt works.
        if let Ok(mut s) = try_connect_from("127.0.0.2", addr) {
            // Refused ones may already be closed: a failed write is fine.
            let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n");
            attacker.push(s);
        }
    }
    // A client from another address upgrades and is served.
    let mut c = RawClient::from_stream(connect_from("127.0.0.3", addr));
    c.send(upgrade_request("/ws", SAMPLE_KEY).as_bytes());
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    c.send_frame(true, OpCode::Text, b"not locked out");
    assert_eq!(c.frame(), (OpCode::Text, b"not locked out".to_vec()));

    // One more from the attacker's address, sending nothing: refused at
    // once with 503.
    let mut probe = connect_from("127.0.0.2", addr);
    let mut answer = String::new();
    let _ = probe.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    assert!(answer.contains("Retry-After: 1\r\n"), "{answer:?}");

    // Every attempt from the attacker's address past the first 512 (the
    // default cap) and the probe are refused once the server accepted them.
    let attempts = attacker.len() as f64 + 1.0;
    eventually(Duration::from_secs(10), "all attempts accepted", || {
        let (_, metrics) = admin_get(admin, "/metrics");
        let refused = sample(
            &metrics,
            "wsgate_connections_refused_total{limit=\"handshaking_per_ip\"}",
        );
        refused == Some(attempts - 512.0)
    });
    let (_, metrics) = admin_get(admin, "/metrics");
    let held = sample(&metrics, "wsgate_connections_handshaking").unwrap();
    assert_eq!(held, 512.0, "the per-address cap holds");
    drop(attacker);
}

/// `--defer-accept`: a client that connects and sends nothing stays with
/// the kernel (never accepted, so it holds no handshake slot), while one
/// that sends its request is served; without the setting the silent one is
/// accepted at once and counts as handshaking.
#[test]
fn with_defer_accept_a_silent_client_is_not_accepted_while_a_sending_one_is_served() {
    for (defer, silent_held) in [(Duration::from_secs(5), 0.0), (Duration::ZERO, 1.0)] {
        let server = start_echo(|c| {
            c.defer_accept = defer;
            c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        });
        let admin = server.admin_addr().unwrap();
        let _silent = connect_from("127.0.0.2", server.local_addr());
        let mut c = RawClient::from_stream(connect_from("127.0.0.3", server.local_addr()));
        c.send(upgrade_request("/ws", SAMPLE_KEY).as_bytes());
        let head = c.read_head();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
        c.send_frame(true, OpCode::Text, b"served");
        assert_eq!(c.frame(), (OpCode::Text, b"served".to_vec()));
        // The silent client connected before the served one, so the kernel
        // had it ready first: given time, it would have been accepted.
        std::thread::sleep(Duration::from_millis(300));
        let (_, metrics) = admin_get(admin, "/metrics");
        assert_eq!(
            sample(&metrics, "wsgate_connections_handshaking"),
            Some(silent_held),
            "defer {defer:?}"
        );
    }
}

#[test]
fn a_request_head_sent_a_byte_per_segment_is_accepted() {
    let server = start_echo(|_| {});
    let pad = "p".repeat(7_600);
    let req = upgrade_request("/ws", SAMPLE_KEY)
        .replace("\r\n\r\n", &format!("\r\nX-Pad: {pad}\r\n\r\n"));
    assert!(req.len() > 7_700 && req.len() < 8 * 1024);
    let mut c = RawClient::connect(server.local_addr());
    for b in req.as_bytes() {
        // TCP_NODELAY: every write is its own segment.
        c.tcp.write_all(std::slice::from_ref(b)).unwrap();
    }
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    c.send_frame(true, OpCode::Text, b"after a slow head");
    assert_eq!(c.frame(), (OpCode::Text, b"after a slow head".to_vec()));
}

#[test]
fn client_text_in_the_log_is_escaped() {
    use base64::Engine as _;
    let port = free_port();
    let mut child = wsgate_command(port)
        .args([
            "--jwt-secret",
            "s3cret",
            "--log-level",
            "debug",
            "--workers",
            "1",
        ])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsgate");
    common::wait_child_listening(&mut child, port, Duration::from_secs(10), None);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(
        br#"{"alg":"HS256\n2030-01-01T00:00:00Z  INFO wsgate: FORGED\u001b[2J","typ":"JWT"}"#,
    );
    let token = format!("{header}.{}.c2ln", b64.encode(br#"{"exp":9999999999}"#));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = RawClient::connect(addr);
    let req = upgrade_request(&format!("/ws?token={token}"), SAMPLE_KEY);
    c.send(req.as_bytes());
    assert_eq!(c.read_response().status, 401);
    // Something the log surely has after the refusal: the shutdown line.
    let _ = child.kill();
    let _ = child.wait();
    let mut log = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut log).unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("FORGED"), "the refusal is logged: {log}");
    for line in log.lines() {
        assert!(
            !line.trim_start().starts_with("2030-01-01"),
            "a client forged a log line: {line:?}"
        );
    }
    assert!(
        !log.contains("\u{1b}[2J"),
        "raw ESC reached the log: {log:?}"
    );
}
