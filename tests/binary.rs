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
