//! The `wsgate` binary itself: --help, and serving echo until SIGTERM, which
//! closes clients with 1001 and exits 0.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

#[test]
fn help_exits_0_and_documents_the_core_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--help")
        .output()
        .expect("run wsgate --help");
    assert!(out.status.success(), "{:?}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--workers",
        "--max-message-size",
        "--handshake-timeout",
        "--app",
    ] {
        assert!(
            text.contains(flag),
            "--help does not mention {flag}:\n{text}"
        );
    }
}

#[test]
fn serves_echo_then_sigterm_sends_1001_and_exits_0() {
    let port = free_port();
    let mut proc = Proc::wsgate(port, &["--app", "echo", "--workers", "2"], &[]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ws = connect(addr);
    ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![1, 2, 3]));
    ws.send(Message::text("echo app")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("echo app"));

    let t0 = Instant::now();
    proc.signal(libc::SIGTERM);
    let code = loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(Message::Close(None)) => panic!("close frame without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame after SIGTERM: {e}"),
        }
    };
    assert_eq!(code, 1001);
    // tungstenite answered the close; the server then closes TCP.
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
    let status = proc.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
    // With its only client gone, the drain does not wait for its 10 s timeout.
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        t0.elapsed()
    );
    // And the port is no longer served.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// Test ports come from the kernel's free ports, and until wsgate binds its
/// port another process may take it: wsgate's SO_REUSEPORT listeners then
/// share it with that process. Waiting for "something accepts on the port"
/// was then satisfied by the other listener, and a connection made after it
/// closed was refused (the flake this start-up wait fixes). Waiting for the
/// child's own listener is not fooled.
#[test]
fn the_start_up_wait_is_not_fooled_by_another_listener_on_the_port() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.set_reuse_address(true).unwrap();
    other.set_reuse_port(true).unwrap();
    other.bind(&addr.into()).unwrap();
    other.listen(16).unwrap();
    // A slow start, as a loaded machine gives one.
    let mut proc = Proc(
        Command::new("bash")
            .args(["-c", "sleep 0.5 && exec \"$@\"", "wsgate"])
            .arg(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--listen", &addr.to_string(), "--admin-listen", "off"])
            .args(["--app", "echo", "--workers", "2", "--log-level", "error"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn wsgate"),
    );
    proc.wait_listening(port, Duration::from_secs(10));
    drop(other);
    let mut ws = connect(addr);
    ws.send(Message::text("mine")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("mine"));
}
